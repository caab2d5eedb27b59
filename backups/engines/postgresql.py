"""PostgreSQL: ``pg_dump`` to plain SQL, ``psql`` in one transaction to restore."""

import collections
import getpass
import hashlib
import itertools
import os
import re
import secrets
import tempfile
import time
from contextlib import contextmanager, nullcontext
from datetime import UTC, datetime
from functools import partial

from django.db.backends.postgresql.client import DatabaseClient

from ..conf import backup_settings
from ..exceptions import DatabaseBusy, DatabaseUnavailable, DumpFailed, InvalidRequest, RestoreFailed, ToolMissing
from ..formatting import first_line
from ..streams import ChunkStream
from .base import (
    CHUNK_SIZE,
    DatabaseEngine,
    DumpStream,
    OutputCut,
    ProcessDump,
    describe_exit,
    name_prefix,
    run_fed,
    run_tool,
)
from .pg_parallel import NEED, DumpCut, Entries, ParallelLoad, copied_table, dump_codec, table_name

# Advisory lock keys: (application, purpose). Advisory locks live inside one database, so the
# database being backed up is part of the key by construction.
LOCK_APPLICATION = 0x48425042  # "HBPB"
LOCK_PURPOSES = {"operations": 1, "schedule": 2, "cleanup": 3, "verify": 4}

# Plain SQL, which OneTransactionDump makes one transaction: one BEGIN at the top, one COMMIT at
# the very end and nothing in between (plain pg_dump wraps large objects in a BEGIN/COMMIT of
# their own, which would commit half a restore), as pg_restore --single-transaction writes it.
# Such a file commits nothing unless it is whole, by hand too. No owners: restorable on another
# server by whoever restores. Privileges stay (GRANTs and default privileges come back as they were).
DUMP_OPTIONS = [
    "--format=plain",
    "--no-owner",
    "--no-password",
    # Replication set-up, not data: restoring a subscription would connect to its publisher.
    "--no-subscriptions",
]
# A parallel backup's directory archive, turned into the same SQL by pg_restore.
TO_SQL_OPTIONS = ["--single-transaction", "--no-owner", "--file=-"]

# Spliced in right after the file's BEGIN, so it runs in the restore's one transaction, in the
# app and by hand alike: it refuses when a role the dump grants to is missing, locks every table
# with a timeout (the hoppybrew.lock_timeout setting, none by hand) so that a busy database fails
# fast, then leaves the database as initdb made it: no schema but an empty public, no large
# object, publication, event trigger or extension (but those in public the role may not drop,
# which the dump keeps as they are: see ``extensions_kept``). The dump, which does not drop anything
# itself, then recreates exactly what it holds. Schemas are dropped whole; public (which pg_dump
# does not create) is emptied through its dependants, so no list of object kinds can miss one.
RESTORE_CLEANUP = r"""
DO $hoppybrew$
DECLARE
    missing text;
    public_oid oid;
    item record;
    object record;
BEGIN
    PERFORM pg_catalog.set_config('search_path', '', true);
    PERFORM pg_catalog.set_config('client_min_messages', 'warning', true);
    -- Before anything changes: every role the backup grants privileges to must exist here.
    SELECT pg_catalog.string_agg(pg_catalog.quote_ident(name), ', ' ORDER BY name) INTO missing
    FROM pg_catalog.unnest(ARRAY[/*roles*/]::text[]) AS name
    WHERE NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = name);
    IF missing IS NOT NULL THEN
        RAISE EXCEPTION 'hoppybrew: the backup grants privileges to roles that do not exist on this server: %', missing
            USING HINT = 'Create them first (CREATE ROLE name NOLOGIN;), then restore again. Nothing was changed.';
    END IF;
    -- A busy database fails fast, before anything is dropped.
    PERFORM pg_catalog.set_config('lock_timeout',
        coalesce(nullif(pg_catalog.current_setting('hoppybrew.lock_timeout', true), ''), '0'), true);
    FOR item IN
        SELECT pg_catalog.format('%I.%I', n.nspname, c.relname) AS name FROM pg_catalog.pg_class c
        JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relkind IN ('r', 'p', 'f') AND n.nspname <> 'information_schema' AND n.nspname NOT LIKE 'pg\_%'
    LOOP
        EXECUTE pg_catalog.format('LOCK TABLE %s IN ACCESS EXCLUSIVE MODE', item.name);
    END LOOP;
    -- Objects outside schemas, then every schema but public whole, with what is in them.
    FOR item IN SELECT evtname FROM pg_catalog.pg_event_trigger LOOP
        EXECUTE pg_catalog.format('DROP EVENT TRIGGER %I', item.evtname);
    END LOOP;
    FOR item IN SELECT pubname FROM pg_catalog.pg_publication LOOP
        EXECUTE pg_catalog.format('DROP PUBLICATION %I', item.pubname);
    END LOOP;
    -- An extension in public that the role may not drop (a superuser made it for the site) stays:
    -- the dump's CREATE EXTENSION IF NOT EXISTS keeps it as it is, and its objects are its own.
    FOR item IN
        SELECT e.extname FROM pg_catalog.pg_extension e
        WHERE e.extnamespace <> 'pg_catalog'::pg_catalog.regnamespace
          AND (pg_catalog.pg_has_role(e.extowner, 'USAGE') OR e.extnamespace <> 'public'::pg_catalog.regnamespace)
    LOOP
        EXECUTE pg_catalog.format('DROP EXTENSION IF EXISTS %I CASCADE', item.extname);
    END LOOP;
    FOR item IN
        SELECT nspname FROM pg_catalog.pg_namespace
        WHERE nspname NOT IN ('public', 'information_schema') AND nspname NOT LIKE 'pg\_%'
    LOOP
        EXECUTE pg_catalog.format('DROP SCHEMA %I CASCADE', item.nspname);
    END LOOP;
    PERFORM pg_catalog.lo_unlink(oid) FROM pg_catalog.pg_largeobject_metadata;
    -- public stays (initdb made it; pg_dump does not create it), emptied: everything in a schema
    -- depends on it, so its dependants are exactly what to drop. Objects that belong to another
    -- (a range's constructors, a table's row type) go with their owner.
    SELECT oid INTO public_oid FROM pg_catalog.pg_namespace WHERE nspname = 'public';
    IF public_oid IS NULL THEN
        CREATE SCHEMA public;
        COMMENT ON SCHEMA public IS 'standard public schema';
        GRANT USAGE ON SCHEMA public TO PUBLIC;
    END IF;
    FOR item IN
        SELECT d.classid, d.objid FROM pg_catalog.pg_depend d
        WHERE d.refclassid = 'pg_catalog.pg_namespace'::pg_catalog.regclass AND d.refobjid = public_oid
          AND d.deptype = 'n' AND d.classid <> 'pg_catalog.pg_extension'::pg_catalog.regclass
          AND NOT EXISTS (
              SELECT FROM pg_catalog.pg_depend owner
              WHERE owner.classid = d.classid AND owner.objid = d.objid AND owner.deptype IN ('i', 'e')
                AND (owner.refclassid, owner.refobjid) <> (d.classid, d.objid))
        ORDER BY d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass DESC, d.objid
    LOOP
        -- An earlier CASCADE may have taken it already.
        CONTINUE WHEN NOT EXISTS (
            SELECT FROM pg_catalog.pg_depend d
            WHERE d.classid = item.classid AND d.objid = item.objid AND d.refobjid = public_oid);
        SELECT * INTO object FROM pg_catalog.pg_identify_object(item.classid, item.objid, 0);
        EXECUTE pg_catalog.format('DROP %s %s CASCADE',
            CASE object.type WHEN 'composite type' THEN 'TYPE' WHEN 'statistics object' THEN 'STATISTICS'
                             ELSE pg_catalog.upper(object.type) END,
            object.identity);
    END LOOP;
    -- Default privileges back to the built-in ones: none per schema, the hard-wired ones globally.
    FOR item IN
        SELECT d.defaclrole::pg_catalog.regrole AS role, n.nspname, acl.grantee, kinds.keyword
        FROM pg_catalog.pg_default_acl d
        LEFT JOIN pg_catalog.pg_namespace n ON n.oid = d.defaclnamespace
        JOIN (VALUES ('r', 'TABLES'), ('S', 'SEQUENCES'), ('f', 'FUNCTIONS'), ('T', 'TYPES'), ('n', 'SCHEMAS'))
            AS kinds (objtype, keyword) ON kinds.objtype = d.defaclobjtype,
        pg_catalog.aclexplode(d.defaclacl) acl
    LOOP
        EXECUTE pg_catalog.format('ALTER DEFAULT PRIVILEGES FOR ROLE %s %s REVOKE ALL ON %s FROM %s', item.role,
            CASE WHEN item.nspname IS NULL THEN '' ELSE pg_catalog.format('IN SCHEMA %I', item.nspname) END,
            item.keyword, CASE item.grantee WHEN 0 THEN 'PUBLIC' ELSE item.grantee::pg_catalog.regrole::text END);
    END LOOP;
    FOR item IN
        SELECT d.defaclrole::pg_catalog.regrole AS role, kinds.keyword, acl.grantee, acl.privilege_type
        FROM (SELECT DISTINCT defaclrole, defaclobjtype FROM pg_catalog.pg_default_acl WHERE defaclnamespace = 0) d
        JOIN (VALUES ('r', 'r', 'TABLES'), ('S', 's', 'SEQUENCES'), ('f', 'f', 'FUNCTIONS'), ('T', 'T', 'TYPES'),
                     ('n', 'n', 'SCHEMAS')) AS kinds (objtype, acltype, keyword) ON kinds.objtype = d.defaclobjtype,
        pg_catalog.aclexplode(pg_catalog.acldefault(kinds.acltype::"char", d.defaclrole)) acl
    LOOP
        EXECUTE pg_catalog.format('ALTER DEFAULT PRIVILEGES FOR ROLE %s GRANT %s ON %s TO %s', item.role,
            item.privilege_type, item.keyword,
            CASE item.grantee WHEN 0 THEN 'PUBLIC' ELSE item.grantee::pg_catalog.regrole::text END);
    END LOOP;
    -- What is left outside schemas: casts between built-in types, wrappers without functions.
    FOR item IN
        SELECT pg_catalog.format_type(castsource, NULL) AS source, pg_catalog.format_type(casttarget, NULL) AS target
        FROM pg_catalog.pg_cast c WHERE c.oid >= 16384 AND NOT EXISTS (
            SELECT FROM pg_catalog.pg_depend d
            WHERE d.classid = 'pg_catalog.pg_cast'::pg_catalog.regclass AND d.objid = c.oid AND d.deptype IN ('i', 'e'))
    LOOP
        EXECUTE pg_catalog.format('DROP CAST IF EXISTS (%s AS %s) CASCADE', item.source, item.target);
    END LOOP;
    FOR item IN SELECT fdwname FROM pg_catalog.pg_foreign_data_wrapper LOOP
        EXECUTE pg_catalog.format('DROP FOREIGN DATA WRAPPER IF EXISTS %I CASCADE', item.fdwname);
    END LOOP;
    -- public's privileges and comment as initdb made them; the dump applies its changes to them.
    IF public_oid IS NOT NULL AND pg_catalog.pg_has_role(
        (SELECT nspowner FROM pg_catalog.pg_namespace WHERE oid = public_oid), 'USAGE') THEN
        FOR item IN
            SELECT DISTINCT acl.grantee FROM pg_catalog.pg_namespace n, pg_catalog.aclexplode(n.nspacl) acl
            WHERE n.oid = public_oid
        LOOP
            EXECUTE pg_catalog.format('REVOKE ALL ON SCHEMA public FROM %s',
                CASE item.grantee WHEN 0 THEN 'PUBLIC' ELSE item.grantee::pg_catalog.regrole::text END);
        END LOOP;
        -- initdb's grants name initdb's owner; ALTER SCHEMA ... OWNER moves them to the new one.
        FOR item IN
            SELECT CASE WHEN acl.grantee = acl.grantor THEN n.nspowner ELSE acl.grantee END AS grantee,
                   acl.privilege_type
            FROM pg_catalog.pg_namespace n
            LEFT JOIN pg_catalog.pg_init_privs i
              ON i.objoid = n.oid AND i.classoid = 'pg_catalog.pg_namespace'::pg_catalog.regclass AND i.objsubid = 0,
            pg_catalog.aclexplode(coalesce(i.initprivs, pg_catalog.acldefault('n', n.nspowner))) acl
            WHERE n.oid = public_oid
        LOOP
            EXECUTE pg_catalog.format('GRANT %s ON SCHEMA public TO %s', item.privilege_type,
                CASE item.grantee WHEN 0 THEN 'PUBLIC' ELSE item.grantee::pg_catalog.regrole::text END);
        END LOOP;
        COMMENT ON SCHEMA public IS 'standard public schema';
    END IF;
END
$hoppybrew$;
"""
# Backups made before the dump opened its own transaction: the app wraps them in one.
LEGACY_BEGIN = "BEGIN;\n"
COMMIT = b"\nCOMMIT;\n"

# Roles named by the privileges a dump carries (grantees of every ACL and the roles that own
# default privileges), except the built-in ones. Each catalog with an ACL column is here.
GRANTED_ROLES = """
SELECT DISTINCT r.rolname FROM (
    SELECT (pg_catalog.aclexplode(relacl)).grantee FROM pg_catalog.pg_class WHERE oid >= 16384
    UNION ALL SELECT (pg_catalog.aclexplode(attacl)).grantee FROM pg_catalog.pg_attribute WHERE attrelid >= 16384
    UNION ALL SELECT (pg_catalog.aclexplode(nspacl)).grantee FROM pg_catalog.pg_namespace
    UNION ALL SELECT (pg_catalog.aclexplode(proacl)).grantee FROM pg_catalog.pg_proc WHERE oid >= 16384
    UNION ALL SELECT (pg_catalog.aclexplode(typacl)).grantee FROM pg_catalog.pg_type WHERE oid >= 16384
    UNION ALL SELECT (pg_catalog.aclexplode(lomacl)).grantee FROM pg_catalog.pg_largeobject_metadata
    UNION ALL SELECT (pg_catalog.aclexplode(fdwacl)).grantee FROM pg_catalog.pg_foreign_data_wrapper
    UNION ALL SELECT (pg_catalog.aclexplode(srvacl)).grantee FROM pg_catalog.pg_foreign_server
    UNION ALL SELECT (pg_catalog.aclexplode(lanacl)).grantee FROM pg_catalog.pg_language WHERE oid >= 16384
    UNION ALL SELECT (pg_catalog.aclexplode(defaclacl)).grantee FROM pg_catalog.pg_default_acl
    UNION ALL SELECT defaclrole FROM pg_catalog.pg_default_acl
) granted JOIN pg_catalog.pg_roles r ON r.oid = granted.grantee
WHERE r.oid >= 16384
ORDER BY 1
"""

INDEX_MEMORY = "256MB"
# psql replaying a dump fed on its standard input.
PSQL_FED = ["-X", "-q", "-v", "ON_ERROR_STOP=1", "--no-password", "-f", "-"]
# Restore beside, then switch.
SWITCH_RETRY_SECONDS = 0.05
# The role may create a database, owns this one, and may create each of its extensions in a new
# one: a superuser, or the extension is trusted (a superuser may have made an untrusted one here).
CAN_RESTORE_BESIDE = """
SELECT (r.rolcreatedb OR r.rolsuper) AND pg_catalog.pg_has_role(d.datdba, 'USAGE')
   AND (r.rolsuper OR NOT EXISTS (
       SELECT FROM pg_catalog.pg_extension e
       WHERE e.extnamespace <> 'pg_catalog'::pg_catalog.regnamespace AND NOT EXISTS (
           SELECT FROM pg_catalog.pg_available_extension_versions v
           WHERE v.name = e.extname AND v.version = e.extversion AND v.trusted)))
FROM pg_catalog.pg_roles r, pg_catalog.pg_database d
WHERE r.rolname = current_user AND d.datname = pg_catalog.current_database()
"""
LOAD_VIA_ROOT = b"-- load via partition root "  # pg_dump's comment before such a COPY
EXTENSIONS_KEPT = """
SELECT pg_catalog.quote_ident(extname) FROM pg_catalog.pg_extension
WHERE extnamespace = 'public'::pg_catalog.regnamespace AND NOT pg_catalog.pg_has_role(extowner, 'USAGE')
"""
PUBLIC_OWNER = "SELECT nspowner::pg_catalog.regrole::text FROM pg_catalog.pg_namespace WHERE nspname = 'public'"
DATABASE_PROPERTIES = f"""
SELECT pg_catalog.pg_encoding_to_char(d.encoding) AS encoding, d.datcollate AS collate, d.datctype AS ctype,
       d.datlocprovider AS locale_provider, d.daticulocale AS icu_locale, t.spcname AS tablespace,
       d.datdba::pg_catalog.regrole::text AS owner, pg_catalog.shobj_description(d.oid, 'pg_database') AS comment,
       d.datconnlimit AS limit, d.datallowconn AS allow_connections, d.datacl IS NULL AS default_grants,
       ({PUBLIC_OWNER}) AS public_owner
FROM pg_catalog.pg_database d JOIN pg_catalog.pg_tablespace t ON t.oid = d.dattablespace
WHERE d.datname = pg_catalog.current_database()
"""
# (role or NULL for everyone, setting, value) of every ALTER DATABASE/ROLE ... IN DATABASE ... SET.
DATABASE_SETTINGS = """
SELECT r.rolname, pg_catalog.split_part(setting, '=', 1),
       pg_catalog.substr(setting, pg_catalog.strpos(setting, '=') + 1)
FROM pg_catalog.pg_db_role_setting s
JOIN pg_catalog.pg_database d ON d.oid = s.setdatabase AND d.datname = pg_catalog.current_database()
LEFT JOIN pg_catalog.pg_roles r ON r.oid = s.setrole,
pg_catalog.unnest(s.setconfig) WITH ORDINALITY AS config (setting, position)
ORDER BY 1 NULLS FIRST, config.position
"""
# (grantee or NULL for PUBLIC, privilege, grantable) on the database, the owner's own excepted.
DATABASE_GRANTS = """
SELECT CASE acl.grantee WHEN 0 THEN NULL ELSE acl.grantee::pg_catalog.regrole::text END,
       acl.privilege_type, acl.is_grantable
FROM pg_catalog.pg_database d,
     pg_catalog.aclexplode(coalesce(d.datacl, pg_catalog.acldefault('d', d.datdba))) acl
WHERE d.datname = pg_catalog.current_database() AND acl.grantee <> d.datdba
ORDER BY 1 NULLS FIRST, 2
"""
SESSIONS = """
SELECT pid FROM pg_catalog.pg_stat_activity WHERE datname = ANY(%s) AND pid <> pg_catalog.pg_backend_pid()
"""
# Settings whose values are lists, stored already quoted (as pg_dumpall knows them too).
LIST_SETTINGS = {"search_path", "temp_tablespaces", "session_preload_libraries", "local_preload_libraries"}

VERSION_PATTERN = re.compile(r"(\d+)(?:\.(\d+))?")
# A row of a partitioned table that lies in none of the dump's other tables (to_regclass: a name
# that is not there cannot hold it).
OWN_COPY = (
    "tableoid <> ALL (ARRAY(SELECT c::oid FROM unnest(%s::text[]) name, to_regclass(name) c WHERE c IS NOT NULL))"
)
# Databases whose name starts so and whose comment starts with a mark, on a server that is no
# standby (which lists its primary's databases, those in use included).
MARKED_DATABASES = """
SELECT datname, pg_catalog.shobj_description(d.oid, 'pg_database') FROM pg_catalog.pg_database d
WHERE starts_with(datname, %s) AND starts_with(pg_catalog.shobj_description(d.oid, 'pg_database'), %s)
  AND NOT pg_catalog.pg_is_in_recovery()
"""
MARK_TIME = "%Y-%m-%dT%H:%M:%SZ"
PARTITIONED_TABLE = "SELECT EXISTS (SELECT FROM pg_catalog.pg_class WHERE oid = to_regclass(%s) AND relkind = 'p')"
# schema.table as pg_dump writes it in COPY headers, each part plain or double-quoted.
QUALIFIED_NAME = re.compile(r'(?:"(?:[^"]|"")+"|[A-Za-z_][A-Za-z0-9_$]*)\.(?:"(?:[^"]|"")+"|[A-Za-z_][A-Za-z0-9_$]*)')


class PostgreSQLEngine(DatabaseEngine):
    vendor = "postgresql"
    required_tools = ("pg_dump", "pg_restore", "psql")
    maintenance_database = "postgres"
    # Each dump carries a random key on these lines (PostgreSQL 15.14+). The comments and blank
    # lines around each object carry no SQL, and differ where the dump had nothing to say: a
    # scratch database's public schema has another owner, so its (empty) entry comes and goes.
    volatile_prefixes = (b"\\restrict ", b"\\unrestrict ", b"--\n", b"-- Name: ", b"-- *not* ", b"\n")

    def command(self, tool, parameters):
        """Argument list and environment for a client tool, built the way ``dbshell`` does:
        the password travels in the child's environment, never on its command line."""
        args, env = DatabaseClient.settings_to_cmd_args_env(self.settings_dict, parameters)
        args[0] = tool
        return args, {**os.environ, "PGCONNECT_TIMEOUT": "10", "PGAPPNAME": "hoppybrew-backups", **(env or {})}

    def connect(self):
        """A separate autocommit connection, outside Django's, for locks and small queries."""
        import psycopg2

        params = self.connection_params()
        params.pop("cursor_factory", None)
        params.pop("context", None)
        params["dbname"] = self.database_name  # a drill's scratch database has its own name
        params.setdefault("connect_timeout", 10)
        try:
            connection = psycopg2.connect(**params)
        except psycopg2.OperationalError as exc:
            raise DatabaseUnavailable(
                f"Cannot connect to the PostgreSQL database {self.describe()}: {first_line(exc, 'connection refused')}"
            ) from None
        connection.autocommit = True
        return connection

    def versions(self):
        server = self.query_value("SHOW server_version")
        dump_tool = run_tool(["pg_dump", "--version"], os.environ, "pg_dump").strip()
        server_major = _major(server)
        tool_major = _major(dump_tool.rsplit(")", 1)[-1])  # "pg_dump (PostgreSQL) 15.20 (Debian ...)"
        if tool_major is not None and server_major is not None and tool_major < server_major:
            raise ToolMissing(
                f"pg_dump {tool_major} cannot dump a PostgreSQL {server_major} server: install the "
                f"PostgreSQL {server_major} client tools (postgresql-client-{server_major}) where backups run."
            )
        return {"server": f"PostgreSQL {server}", "dump_tool": dump_tool}

    @contextmanager
    def dump(self):
        roles = self.granted_roles()
        jobs = backup_settings.JOBS
        with self.archive(jobs) if jobs > 1 else nullcontext(None) as directory:
            if directory is None:
                args, env = self.command("pg_dump", DUMP_OPTIONS)
                process = ProcessDump(args, env, "pg_dump")
            else:
                process = ProcessDump(["pg_restore", *TO_SQL_OPTIONS, directory], os.environ, "pg_restore")
            with explained_dump_failure(self.role_name()), process.run() as stdout:
                stream = OneTransactionDump(stdout, restore_cleanup(roles), wrap=directory is None)
                stream.restore_requirements = {"roles": roles}
                yield stream

    @contextmanager
    def archive(self, jobs):
        """A directory-format archive of the database written by ``jobs`` workers that share one
        snapshot (pg_dump -j), compressed (gzip level 1, the fastest pg_dump 15 offers), in a
        private temporary directory; yields its path, which pg_restore turns into the SQL of a
        serial backup, statement for statement."""
        with tempfile.TemporaryDirectory(prefix="hoppybrew-dump-") as scratch:
            directory = os.path.join(scratch, "archive")
            options = [option for option in DUMP_OPTIONS if not option.startswith("--format")]
            args, env = self.command(
                "pg_dump", ["--format=directory", f"--jobs={jobs}", "--compress=1", f"--file={directory}", *options]
            )
            with explained_dump_failure(self.role_name()), ProcessDump(args, env, "pg_dump").run() as stdout:
                stdout.read()  # it writes nothing here; the exit status says whether it worked
            yield directory

    def role_name(self):
        """The role the site connects as: libpq's default is the login name."""
        return self.settings_dict.get("USER") or getpass.getuser()

    def comparable(self, lines):
        """Rows that pg_dump loads through their partitioned table (it does for a hash on an enum,
        whose hash depends on OIDs that a restore makes anew) may land in another partition, so
        the entry of each partition holds others: they are compared as one multiset per
        partitioned table (a count and a sum of hashes), after everything else."""
        through = {}  # partitioned table: [rows, sum of their hashes]
        root = None
        in_rows = False
        for line in lines:
            if in_rows:
                if line == b"\\.\n":
                    in_rows, root = False, None
                    yield line
                else:
                    tally = through.setdefault(root, [0, 0])
                    tally[0] += 1
                    tally[1] = (tally[1] + int.from_bytes(hashlib.sha256(line).digest()[:16], "big")) % (1 << 128)
                continue
            if line.startswith(LOAD_VIA_ROOT):
                root = line[len(LOAD_VIA_ROOT) :].strip()
            elif root is not None and line.startswith(b"COPY "):
                in_rows = True
            yield line
        for table, (rows, total) in sorted(through.items()):
            yield b"-- rows loaded through %s: %d, %032x\n" % (table, rows, total)

    def extensions_kept(self):
        """The extensions in public that the role may not drop, which the cleanup keeps: quoted,
        as a dump's entries name them. Their COMMENTs, which only their owner may set, are left
        out of the restore (the comment stays as it is)."""
        return self.query_column(EXTENSIONS_KEPT)

    def granted_roles(self):
        return self.query_column(GRANTED_ROLES)

    def check_restore_requirements(self, requirements):
        wanted = (requirements or {}).get("roles") or []
        if not wanted:
            return
        connection = self.connect()
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT rolname FROM pg_catalog.pg_roles WHERE rolname = ANY(%s)", (wanted,))
                present = {name for (name,) in cursor.fetchall()}
        finally:
            connection.close()
        missing = [name for name in wanted if name not in present]
        if missing:
            raise InvalidRequest(
                f"The backup grants privileges to roles that do not exist on the server of {self.describe()}: "
                f"{', '.join(missing)}. Create them first (for example CREATE ROLE {missing[0]} NOLOGIN;), then "
                "restore again. Nothing was changed."
            )

    def restore(self, stream, lock_timeout, jobs=1):
        """Replay the dump in one transaction; or, into a new database nobody uses yet (beside
        the live one), with ``jobs`` sessions side by side (``pg_parallel``), which returns the
        rows the server loaded into each table (psql alone returns None: it does not tell)."""
        args, env = self.command("psql", PSQL_FED)
        head = read_head(stream)
        # Index builds (one sort each, with PostgreSQL's parallel workers) are much of a restore's
        # time; more memory than the 64 MB default keeps their sorts off the disk.
        setting = (
            f"SET hoppybrew.lock_timeout = '{int(lock_timeout)}s';\nSET maintenance_work_mem = '{INDEX_MEMORY}';\n"
        )
        if jobs > 1 and opens_own_transaction(head):
            load = ParallelLoad(self.command("psql", PSQL_FED), self.connect, jobs, setting.encode())
            return load.run(WithheldCommit(head, stream).read)
        if opens_own_transaction(head):
            # The file's own COMMIT is held back and sent only once the whole stream has been
            # read: whatever follows it, or a stream that fails at its end, stays inside the
            # transaction.
            prelude, epilogue = setting.encode(), COMMIT
            stream = WithheldCommit(head, stream)
        else:
            prelude = (LEGACY_BEGIN + setting + restore_cleanup([])).encode()
            epilogue = COMMIT
            stream = ChunkStream(itertools.chain([head], iter(partial(stream.read, CHUNK_SIZE), b"")))
        kept = self.extensions_kept()
        if kept:
            stream = ChunkStream(without_comments_on(stream.read, kept))
        returncode, message = run_fed(args, env, "psql", prelude, stream, epilogue=epilogue)
        if returncode == 0:
            return None
        if "lock timeout" in message:
            raise DatabaseBusy(
                f"The database {self.database_name} is busy: other sessions kept their locks for "
                f"more than {lock_timeout} s. Nothing was changed; stop the application or try again."
            )
        raise RestoreFailed(
            f"Database restore failed; the database was not changed. psql said: {describe_exit(returncode, message)}"
        )

    @contextmanager
    def lock(self, exclusive, purpose="operations"):
        connection = self.connect()
        try:
            function = "pg_try_advisory_lock" if exclusive else "pg_try_advisory_lock_shared"
            with connection.cursor() as cursor:
                cursor.execute(f"SELECT {function}(%s, %s)", (LOCK_APPLICATION, LOCK_PURPOSES[purpose]))
                acquired = cursor.fetchone()[0]
            if not acquired:
                raise self.lock_taken(purpose)
            yield
        finally:
            # Closing the session releases the lock; so does the death of this process.
            connection.close()

    def size_bytes(self):
        return self.query_value("SELECT pg_database_size(current_database())")

    def create_database(self, name, advice=None, like=None):
        """``like``: the ``database_properties`` of a database whose encoding and locale the new
        one takes (``create_database_like``); else the server's defaults."""
        import psycopg2
        from psycopg2 import sql

        connection = self.connect()
        try:
            if like is not None:
                create_database_like(connection, name, like)
            else:
                with connection.cursor() as cursor:
                    cursor.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(name)))
        except psycopg2.Error as exc:
            raise DatabaseUnavailable(
                f"Cannot create the database {name}: {str(exc).strip()}. "
                f"{advice or 'The database user needs the CREATEDB privilege.'}"
            ) from None
        finally:
            connection.close()
        return PostgreSQLEngine(self.alias, {**self.settings_dict, "NAME": name})

    def scratch_options(self):
        """A scratch database of one not in UTF-8 (LATIN1...) is made like it, encoding and locale:
        pg_dump writes a database's text in its own encoding, and a drill compares the dumps of the
        two line by line (and checks that depend on the locale hold alike)."""
        live = self.database_properties()
        if live["encoding"] == "UTF8":
            return {}
        return {"like": {**live, "tablespace": "pg_default"}}  # a drill's own place

    def scratch_advice(self):
        if self.drills_elsewhere():
            return "The role in BACKUP_VERIFY_DATABASE_URL needs the CREATEDB privilege there."
        return (
            "The site's database role needs the CREATEDB privilege, or set BACKUP_VERIFY_DATABASE_URL to a "
            "server (or a role on this one) that may create databases."
        )

    def cannot_create_databases(self):
        if self.query_value("SELECT rolcreatedb OR rolsuper FROM pg_roles WHERE rolname = current_user"):
            return None
        return f"the database role {self.role_name()!r} may not create databases (CREATEDB)"

    def count_rows(self, table, among=()):
        """The rows of ``table`` itself, as its COPY in the dump loaded them: an inheritance
        parent's leave out its children's, which have a COPY of their own; a partitioned table,
        which holds none itself, has those of its partitions that pg_dump loads through it (it
        does for some: "load via partition root"), which are those without a COPY of their own
        among the dump's tables ``among``."""
        if not QUALIFIED_NAME.fullmatch(table):
            raise ValueError(f"not a table name from a dump: {table!r}")
        connection = self.connect()
        try:
            with connection.cursor() as cursor:
                # No statement_timeout of the role's or the database's cuts the count of a big
                # table short; LOCAL, so a pooled server session keeps its own.
                cursor.execute("BEGIN; SET LOCAL statement_timeout = 0")
                cursor.execute(PARTITIONED_TABLE, (table,))
                if not cursor.fetchone()[0]:
                    cursor.execute(f"SELECT count(*) FROM ONLY {table}")
                else:
                    others = [name for name in among if name != table]
                    cursor.execute(f"SELECT count(*) FROM {table} WHERE {OWN_COPY}", (others,))
                return cursor.fetchone()[0]
        finally:
            connection.close()  # the transaction ends with it

    def recorded_rows(self, table_rows):
        """Backups made before 2026-12-06 name a table without columns with a trailing space, as
        its COPY line has two ("COPY public.t  FROM stdin;"); no name pg_dump writes ends in one."""
        if not table_rows:
            return table_rows
        return {table.rstrip(" "): rows for table, rows in table_rows.items()}

    # -- restore beside, then switch ---------------------------------------------------------

    def can_restore_beside(self):
        # Renaming a database takes its owner with CREATEDB (or a superuser), from another database.
        return self.database_name != self.maintenance_database and bool(self.query_value(CAN_RESTORE_BESIDE))

    def restore_beside(self, stream, lock_timeout, check):
        new = f"{self.beside_prefix}{secrets.token_hex(4)}"
        live = self.database_properties()
        try:
            with self.maintenance_connection() as connection, refused("create a database beside it"):
                create_database_like(connection, new, live)
                with connection.cursor() as cursor:  # what a killed restore leaves is known by this mark
                    comment_on_database(cursor, new, loading_mark(self.database_name))  # until the switch
            sibling = PostgreSQLEngine(self.alias, {**self.settings_dict, "NAME": new})
            with refused("give the new database's public schema the live one's owner"):
                sibling.adopt_public_owner(live["public_owner"])
            copied = sibling.restore(stream, lock_timeout, jobs=backup_settings.RESTORE_JOBS)
            check(sibling, copied)
            with self.maintenance_connection() as connection, refused("give the restored database its properties"):
                copy_database_properties(connection, new, live)
            return self.switch(new, live, lock_timeout)
        except BaseException:
            self.drop_database(new)
            raise

    def adopt_public_owner(self, owner):
        """public, which a dump never creates, comes from template0 owned by pg_database_owner;
        the live one's owner may be another (databases made before PostgreSQL 15, or from
        template1). The restore's cleanup then resets its privileges for that owner."""
        from psycopg2 import sql

        if owner is None or owner == self.query_value(PUBLIC_OWNER):
            return
        connection = self.connect()
        try:
            with connection.cursor() as cursor:
                cursor.execute(sql.SQL("ALTER SCHEMA public OWNER TO {}").format(sql.Identifier(owner)))
        finally:
            connection.close()

    def switch(self, new, live, lock_timeout):
        """Swap the names of the live database and ``new`` in one transaction, after ending the
        sessions on both; returns the old database's new name. New sessions are kept out of the
        live database meanwhile, and let in again whatever happens."""
        from psycopg2 import errors, sql

        undo = f"{name_prefix(self.database_name)}_undo_{datetime.now(UTC):%Y%m%d_%H%M%S}"
        name, new_name, undo_name = (sql.Identifier(n) for n in (self.database_name, new, undo))
        allow = sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS {}")
        deadline = time.monotonic() + lock_timeout
        with self.maintenance_connection() as connection:
            cursor = connection.cursor()
            cursor.execute(allow.format(name, sql.SQL("false")))
            switched = False
            try:
                while not switched:
                    end_sessions(cursor, [self.database_name, new])
                    connection.autocommit = False  # one transaction: both names change, or neither
                    try:
                        cursor.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(name, undo_name))
                        cursor.execute(sql.SQL("ALTER DATABASE {} RENAME TO {}").format(new_name, name))
                        comment_on_database(cursor, self.database_name, live["comment"])
                        connection.commit()
                        switched = True
                    except errors.ObjectInUse:
                        connection.rollback()
                        if time.monotonic() > deadline:
                            raise DatabaseBusy(
                                f"The database {self.database_name} still had sessions after {lock_timeout} s that "
                                "could not be ended (another role's, or a superuser's). Nothing was changed; the "
                                f"restored copy was dropped. End them (pg_stat_activity shows them) and try again."
                            ) from None
                        time.sleep(SWITCH_RETRY_SECONDS)
                    except BaseException:
                        connection.rollback()
                        raise
                    finally:
                        connection.autocommit = True
            finally:
                # The live database (the new one, once switched) takes connections as before.
                cursor.execute(allow.format(name, sql.SQL("true" if live["allow_connections"] else "false")))
                if switched:
                    cursor.execute(allow.format(undo_name, sql.SQL("true")))
        return undo

    def database_properties(self):
        """What lives on the database itself rather than in it, for ``create_database_like``
        and ``copy_database_properties``."""
        connection = self.connect()
        try:
            with connection.cursor() as cursor:
                cursor.execute(DATABASE_PROPERTIES)
                names = [column.name for column in cursor.description]
                properties = dict(zip(names, cursor.fetchone(), strict=True))
                cursor.execute(DATABASE_SETTINGS)
                properties["settings"] = cursor.fetchall()
                cursor.execute(DATABASE_GRANTS)
                properties["grants"] = cursor.fetchall()
        finally:
            connection.close()
        return properties

    @contextmanager
    def maintenance_connection(self):
        """An autocommit connection to the server's maintenance database: databases are created,
        renamed and dropped from outside them."""
        engine = PostgreSQLEngine(self.alias, {**self.settings_dict, "NAME": self.maintenance_database})
        connection = engine.connect()
        try:
            yield connection
        finally:
            connection.close()

    def drop_database(self, name):
        from psycopg2 import sql

        with self.maintenance_connection() as connection, connection.cursor() as cursor:
            cursor.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

    def undo_databases(self):
        prefix = f"{name_prefix(self.database_name)}_undo_"
        with self.maintenance_connection() as connection, connection.cursor() as cursor:
            cursor.execute("SELECT datname FROM pg_catalog.pg_database WHERE starts_with(datname, %s)", (prefix,))
            names = [name for (name,) in cursor.fetchall()]
        found = []
        for name in sorted(names):
            try:
                made_at = datetime.strptime(name.removeprefix(prefix), "%Y%m%d_%H%M%S").replace(tzinfo=UTC)
            except ValueError:
                continue  # not one of ours
            found.append((name, made_at))
        return found

    def drop_undo_database(self, name):
        if name not in dict(self.undo_databases()):
            raise ValueError(f"{name!r} is no undo database of {self.database_name}")
        self.drop_database(name)

    @property
    def beside_prefix(self):
        return f"{name_prefix(self.database_name)}_restore_"

    def interrupted_loads(self):
        # Only databases marked by restore_beside for this very database: a name alone could be
        # anyone's.
        prefix, mark = self.beside_prefix, loading_mark(self.database_name)
        return sorted(
            name
            for name, comment in self.marked_databases(self, prefix, mark)
            if comment == mark and re.fullmatch("[0-9a-f]{8}", name.removeprefix(prefix))
        )

    @contextmanager
    def kept_as_scratch(self, name, database):
        import psycopg2

        with self.maintenance_connection() as connection, connection.cursor() as cursor:
            try:
                comment_on_database(cursor, name, f"{scratch_mark(database)}{datetime.now(UTC):{MARK_TIME}}")
            except psycopg2.Error as exc:
                raise DatabaseUnavailable(f"Cannot mark the scratch database {name}: {first_line(exc)}") from None
        # A session of its own, for as long as it is used: a database with sessions is never dropped
        # as a leftover, whatever the gaps between the drill's own connections.
        keeper = PostgreSQLEngine(self.alias, {**self.settings_dict, "NAME": name}).connect()
        try:
            yield
        finally:
            keeper.close()

    def stale_scratches(self, made_before):
        prefix, mark = f"{name_prefix(self.database_name)}_drill_", scratch_mark(self.database_name)
        stale = []
        for name, comment in self.marked_databases(PostgreSQLEngine(self.alias, self.drill_server()), prefix, mark):
            try:
                made_at = datetime.strptime(comment.removeprefix(mark), MARK_TIME).replace(tzinfo=UTC)
            except ValueError:
                continue
            if made_at < made_before and re.fullmatch("[0-9a-f]{8}", name.removeprefix(prefix)):
                stale.append(name)
        return sorted(stale)

    def marked_databases(self, server, prefix, mark):
        """(name, comment) of the databases on ``server`` named ``prefix``... whose comment starts
        with ``mark``."""
        import psycopg2

        with server.maintenance_connection() as connection, connection.cursor() as cursor:
            try:
                cursor.execute(MARKED_DATABASES, (prefix, mark))
            except psycopg2.Error as exc:
                raise DatabaseUnavailable(
                    f"Cannot list the databases made for {self.describe()}: {first_line(exc)}"
                ) from None
            return cursor.fetchall()

    def drop_stale_scratch(self, name, made_before):
        if name not in self.stale_scratches(made_before):
            return False
        PostgreSQLEngine(self.alias, self.drill_server()).drop_unused(name)
        return True

    def drop_unused(self, name):
        """Drop the database ``name`` unless it has sessions (``DatabaseBusy`` then): no FORCE."""
        import psycopg2
        from psycopg2 import sql

        with self.maintenance_connection() as connection, connection.cursor() as cursor:
            try:
                cursor.execute(sql.SQL("DROP DATABASE {}").format(sql.Identifier(name)))
            except psycopg2.Error as exc:
                raise DatabaseBusy(f"{name} was not dropped: {first_line(exc)}.") from None

    def drop_interrupted_load(self, name):
        if name not in self.interrupted_loads():
            return False  # gone meanwhile, or never one
        # Without FORCE: a database with sessions (a load whose lock was lost, someone looking) stays.
        self.drop_unused(name)
        return True


@contextmanager
def refused(doing):
    """The server's refusal to ``doing`` (a role without the right), as a failed restore."""
    import psycopg2

    try:
        yield
    except psycopg2.Error as exc:
        raise RestoreFailed(
            f"Database restore failed; the database was not changed. PostgreSQL would not let the restore "
            f"{doing}: {first_line(exc)}. Set BACKUP_RESTORE_METHOD=in-place, or give the role the right."
        ) from None


def end_sessions(cursor, databases):
    """Ask every session on ``databases`` to end; those this role may not end (a superuser's,
    another role's) stay, and the rename that follows waits for them."""
    import psycopg2

    cursor.execute(SESSIONS, (databases,))
    for (pid,) in cursor.fetchall():
        try:
            cursor.execute("SELECT pg_catalog.pg_terminate_backend(%s)", (pid,))
        except psycopg2.Error:
            pass


def scratch_mark(database):
    return f"hoppybrew: a scratch database of {database}, made "


def loading_mark(database):
    return f"hoppybrew: a restore of {database} loading beside it"


def comment_on_database(cursor, name, comment):
    from psycopg2 import sql

    cursor.execute(sql.SQL("COMMENT ON DATABASE {} IS {}").format(sql.Identifier(name), sql.Literal(comment)))


def create_database_like(connection, name, live):
    """A new empty database with the live one's encoding, locale and tablespace."""
    from psycopg2 import sql

    options = [
        sql.SQL("TEMPLATE template0 ENCODING {} LC_COLLATE {} LC_CTYPE {}").format(
            sql.Literal(live["encoding"]), sql.Literal(live["collate"]), sql.Literal(live["ctype"])
        )
    ]
    if live["tablespace"] != "pg_default":  # naming it would take a privilege on it
        options.append(sql.SQL("TABLESPACE {}").format(sql.Identifier(live["tablespace"])))
    if live["locale_provider"] == "i":
        options.append(sql.SQL("LOCALE_PROVIDER icu ICU_LOCALE {}").format(sql.Literal(live["icu_locale"])))
    with connection.cursor() as cursor:
        cursor.execute(sql.SQL("CREATE DATABASE {} ").format(sql.Identifier(name)) + sql.SQL(" ").join(options))


def copy_database_properties(connection, name, live):
    """Give database ``name`` what lives on the live database itself: owner, connection limit,
    settings (ALTER DATABASE/ROLE ... SET) and grants. Its comment comes with the switch, which
    replaces the mark ``restore_beside`` gave it."""
    from psycopg2 import sql

    target = sql.Identifier(name)
    with connection.cursor() as cursor:
        cursor.execute(sql.SQL("ALTER DATABASE {} OWNER TO {}").format(target, sql.Identifier(live["owner"])))
        cursor.execute(sql.SQL("ALTER DATABASE {} CONNECTION LIMIT {}").format(target, sql.Literal(live["limit"])))
        for role, setting, value in live["settings"]:
            # List settings (search_path) come back as the server wrote them, quoted as needed.
            value = sql.SQL(value) if setting in LIST_SETTINGS else sql.Literal(value)
            if role is None:
                statement = sql.SQL("ALTER DATABASE {} SET {} = {}").format(target, sql.Identifier(setting), value)
            else:
                statement = sql.SQL("ALTER ROLE {} IN DATABASE {} SET {} = {}").format(
                    sql.Identifier(role), target, sql.Identifier(setting), value
                )
            cursor.execute(statement)
        if live["default_grants"]:  # never granted nor revoked: a new database's are the same
            return
        cursor.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(target))
        for grantee, privilege, grantable in live["grants"]:
            cursor.execute(
                sql.SQL("GRANT {} ON DATABASE {} TO {}{}").format(
                    sql.SQL(privilege),
                    target,
                    sql.SQL("PUBLIC") if grantee is None else sql.Identifier(grantee),
                    sql.SQL(" WITH GRANT OPTION" if grantable else ""),
                )
            )


def _major(text):
    match = VERSION_PATTERN.search(text or "")
    return int(match.group(1)) if match else None


# What PostgreSQL answers pg_dump when a policy would hide rows from it (pg_dump turns row security off).
ROW_SECURITY_REFUSED = "query would be affected by row-level security policy"
# What pg_dump writes last, before psql's \unrestrict: the COMMIT goes right before it.
CLOSING_COMMENT = b"--\n-- PostgreSQL database dump complete\n--\n"
# Entries of large objects' data, which plain pg_dump wraps in a transaction of their own.
LARGE_OBJECT_KINDS = frozenset({b"BLOBS", b"LARGE OBJECTS"})
# Bytes of output held back until the dump ends: the closing comment is among its last 200.
CLOSING_TAIL = 4096


@contextmanager
def explained_dump_failure(role):
    """pg_dump's failures that need more than its own words to be acted on."""
    try:
        yield
    except DumpFailed as exc:
        if ROW_SECURITY_REFUSED not in exc.message:
            raise
        raise DumpFailed(
            f"{exc.message.rstrip('.')}. The database role {role!r} is subject to row-level security on that "
            "table (FORCE ROW LEVEL SECURITY), so it cannot read every row, and a backup without them would not "
            f"be one. Give the role BYPASSRLS (as a superuser: ALTER ROLE {role} BYPASSRLS;), or make backups as "
            "a role that has it."
        ) from None


class OneTransactionDump(DumpStream):
    """A PostgreSQL backup's SQL: the dump as one transaction with the cleanup right after its
    BEGIN, and the rows of each table counted on the way, in one pass of ``pg_parallel.Entries``
    (which knows PostgreSQL's quoting: a function body that looks like a table's rows is none).
    Data lines escape newlines and backslashes, so each line of a COPY block is one row.

    From plain pg_dump (``wrap``) it writes what ``pg_restore --single-transaction`` would, byte
    for byte, without a process to copy every byte once more: BEGIN before the first statement,
    the large objects' own BEGIN and COMMIT left out, COMMIT before the closing comment. From
    pg_restore's output (a parallel backup's), which has them, it splices the cleanup in.
    """

    OPENING = b"\nBEGIN;\n"
    NO_OPENING = "pg_restore wrote no BEGIN at the start of the dump; its output is not understood."
    STRAY_TRANSACTION = "pg_dump wrote a BEGIN or COMMIT outside large objects; its output is not understood."
    NOT_WHOLE = "pg_dump's output ended before its closing comment: the dump is not whole."

    def __init__(self, stdout, cleanup, wrap):
        super().__init__(stdout)
        self.cleanup = cleanup.encode()
        self.wrap = wrap
        self.counts = {}
        self.codec = "utf-8"  # of the dump's text, known from its head

    @property
    def row_counts(self):
        return dict(self.counts)

    def __iter__(self):
        self.head = []  # the output up to the first entry, where the BEGIN goes
        self.held = collections.deque()  # the last pieces of output, where the COMMIT goes
        self.held_bytes = 0
        self.kind = self.table = None
        self.rows = 0
        self.after_transaction = False
        scan = Entries().scan()
        next(scan)
        for chunk in super().__iter__():
            yield from self._pieces(scan, chunk)
        yield from self._pieces(scan, b"")
        yield from self._closing()

    def _pieces(self, scan, chunk):
        """The output for ``chunk`` (an empty one ends the dump) that need not be held back."""
        out = []
        try:
            event = scan.send(chunk)
            while event is not NEED:
                self._take(*event, out)
                event = next(scan)
        except StopIteration:
            pass
        except DumpCut:
            raise OutputCut(self.NOT_WHOLE) from None
        if not self.wrap:
            return out
        self.held.extend(out)
        self.held_bytes += sum(map(len, out))
        released = []
        while self.held and self.held_bytes - len(self.held[0]) >= CLOSING_TAIL:
            released.append(self.held.popleft())
            self.held_bytes -= len(released[-1])
        return released

    def _take(self, what, payload, out):
        if what == "entry":
            self.kind = payload
            if self.head is not None:
                out.append(self._opening())
            return
        if what == "copy":
            self.table = table_name(copied_table(payload), self.codec)
            self.rows = 0
        elif what == "rows":
            self.rows += payload.count(b"\n")
        elif what == "copy_end":
            self.counts[self.table] = self.counts.get(self.table, 0) + self.rows
        elif what == "transaction" and self.wrap:
            if self.kind not in LARGE_OBJECT_KINDS:
                raise DumpFailed(self.STRAY_TRANSACTION)
            self.after_transaction = True
            return
        if self.after_transaction:  # the blank line after a left-out BEGIN or COMMIT goes too
            self.after_transaction = False
            payload = payload[1:] if payload.startswith(b"\n") else payload
        (out if self.head is None else self.head).append(payload)

    def _opening(self):
        head, self.head = b"".join(self.head), None
        self.codec = dump_codec(head)
        if self.wrap:
            start = statement_start(head)
            if start is None:
                raise OutputCut(self.NOT_WHOLE)
            return head[:start] + b"BEGIN;\n" + self.cleanup + b"\n" + head[start:]
        found = head.find(self.OPENING)
        if found < 0:
            raise DumpFailed(self.NO_OPENING)
        cut = found + len(self.OPENING)
        return head[:cut] + self.cleanup + head[cut:]

    def _closing(self):
        if self.head is not None:  # a dump without entries
            if not b"".join(self.head).strip():
                return  # no output at all: the tool's exit status says why
            opening = self._opening()
            if not self.wrap:
                yield opening
                return
            self.held.append(opening)
        if self.wrap:
            tail = b"".join(self.held)
            found = tail.rfind(b"\n" + CLOSING_COMMENT) + 1
            if found == 0:
                raise OutputCut(self.NOT_WHOLE)
            yield tail[:found] + COMMIT[1:] + b"\n" + tail[found:]


def without_comments_on(read, extensions):
    """The dump from ``read`` without the COMMENT entries on ``extensions`` (quoted names)."""
    headers = tuple(b"-- Name: EXTENSION %s; Type: COMMENT; " % name.encode() for name in extensions)
    skipping = False
    kind = None
    try:
        for event, payload in Entries(read):
            if event == "entry":
                kind = payload
                continue
            if kind is not None:  # the text right after an entry starts is its header line
                skipping = kind == b"COMMENT" and payload.startswith(headers)
                kind = None
            if not skipping:
                yield payload
    except DumpCut as cut:
        raise RestoreFailed(f"Database restore failed; the database was not changed. {cut}") from None


def restore_cleanup(roles):
    """The cleanup for a dump that grants to ``roles``, as SQL."""
    literals = ", ".join("'" + role.replace("'", "''") + "'" for role in roles)
    return RESTORE_CLEANUP.replace("/*roles*/", literals)


def statement_start(head):
    """Where the first line of ``head`` that is neither blank nor a comment nor psql's
    \\restrict starts, if ``head`` holds all of that line."""
    position = 0
    for line in head.split(b"\n")[:-1]:  # the last one may be cut short
        stripped = line.strip()
        if stripped and not stripped.startswith((b"--", b"\\restrict ")):
            return position
        position += len(line) + 1
    return None


def first_statement(head):
    """The first line of ``head`` that is neither blank nor a comment nor psql's \\restrict, if
    ``head`` holds all of it."""
    start = statement_start(head)
    return None if start is None else head[start : head.index(b"\n", start)].strip()


def read_head(stream):
    """The start of the stream, up to and including its first statement (or all of a short one)."""
    head = b""
    while first_statement(head) is None and len(head) < CHUNK_SIZE:
        chunk = stream.read(CHUNK_SIZE)
        if not chunk:
            break
        head += chunk
    return head


def opens_own_transaction(head):
    """Whether the dump's first statement is its own BEGIN (dumps from this version on)."""
    return first_statement(head) == b"BEGIN;"


class WithheldCommit:
    """A reader of a dump that opens its own transaction, without the COMMIT that ends it.

    The final COMMIT stands a few lines before the end (only comments follow), so the last
    ``TAIL`` bytes are held back until the stream ends, and the last COMMIT among them is
    dropped. A stream without one is not a whole dump.
    """

    TAIL = 4096

    def __init__(self, head, stream):
        self.stream = stream
        self.pending = head
        self.ended = False

    def read(self, size=CHUNK_SIZE):
        while not self.ended and len(self.pending) <= self.TAIL:
            chunk = self.stream.read(CHUNK_SIZE)
            if not chunk:
                self.ended = True
                self.pending = self._without_commit(self.pending)
                break
            self.pending += chunk
        limit = len(self.pending) if self.ended else len(self.pending) - self.TAIL
        data, self.pending = self.pending[: min(size, limit)], self.pending[min(size, limit) :]
        return data

    def _without_commit(self, tail):
        found = tail.rfind(COMMIT, max(0, len(tail) - self.TAIL - len(COMMIT)))
        if found < 0:
            raise RestoreFailed(
                "Database restore failed; the database was not changed. The dump ends without its COMMIT: "
                "the file is not whole."
            )
        return tail[: found + 1] + tail[found + len(COMMIT) :]
