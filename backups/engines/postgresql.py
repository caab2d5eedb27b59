"""PostgreSQL: ``pg_dump`` to plain SQL, ``psql`` in one transaction to restore."""

import os
import re
from contextlib import contextmanager

from django.db import connections
from django.db.backends.postgresql.client import DatabaseClient

from ..exceptions import DatabaseBusy, DatabaseUnavailable, RestoreFailed, ToolMissing
from .base import DatabaseEngine, DumpStream, ProcessDump, RowCounter, describe_exit, run_fed, run_tool

# Advisory lock keys: (application, purpose). Advisory locks live inside one database, so the
# database being backed up is part of the key by construction.
LOCK_APPLICATION = 0x48425042  # "HBPB"
LOCK_PURPOSES = {"operations": 1, "schedule": 2, "cleanup": 3, "verify": 4}

DUMP_OPTIONS = [
    "--format=plain",
    # Restorable over a live database and on another server, by hand: drop what exists first,
    # and leave owners and grants to whoever restores.
    "--clean",
    "--if-exists",
    "--no-owner",
    "--no-privileges",
    "--no-password",
]

# The transaction is opened here and committed only after the last byte of the dump: psql's
# --single-transaction would commit at end of input, so a feeder that dies midway (killed, out of
# memory) would leave half a dump committed. Without a COMMIT the server rolls everything back.
RESTORE_BEGIN = "BEGIN;\n"
RESTORE_COMMIT = b"\nCOMMIT;\n"

# Runs first inside the restore's transaction. Taking every table's lock up front, with a
# timeout, makes a busy database fail fast instead of waiting behind other sessions. Then
# everything the dump could not know about (tables, types, schemas created since the backup)
# is dropped, so that the result equals the backup exactly. Extension members are left to the
# extensions, which the dump drops and recreates itself.
RESTORE_PRELUDE = """
SET LOCAL lock_timeout = '{lock_timeout}s';
DO $hoppybrew$
DECLARE
    item record;
BEGIN
    FOR item IN
        SELECT format('%I.%I', n.nspname, c.relname) AS name
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema')
          AND n.nspname NOT LIKE 'pg\\_%'
    LOOP
        EXECUTE 'LOCK TABLE ' || item.name || ' IN ACCESS EXCLUSIVE MODE';
    END LOOP;
    FOR item IN
        SELECT e.extname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace
        WHERE n.nspname <> 'pg_catalog'
    LOOP
        EXECUTE format('DROP EXTENSION IF EXISTS %I CASCADE', item.extname);
    END LOOP;
    FOR item IN
        SELECT n.nspname FROM pg_namespace n
        WHERE n.nspname NOT IN ('public', 'pg_catalog', 'information_schema')
          AND n.nspname NOT LIKE 'pg\\_%'
    LOOP
        EXECUTE format('DROP SCHEMA IF EXISTS %I CASCADE', item.nspname);
    END LOOP;
    FOR item IN
        SELECT CASE c.relkind WHEN 'v' THEN 'VIEW' WHEN 'm' THEN 'MATERIALIZED VIEW'
                              WHEN 'S' THEN 'SEQUENCE' WHEN 'f' THEN 'FOREIGN TABLE' ELSE 'TABLE' END AS kind,
               format('public.%I', c.relname) AS name
        FROM pg_class c
        WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
          AND NOT c.relispartition
          -- sequences of serial and identity columns go with their tables
          AND NOT (c.relkind = 'S' AND EXISTS (
              SELECT 1 FROM pg_depend d
              WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype IN ('a', 'i')))
    LOOP
        EXECUTE format('DROP %s IF EXISTS %s CASCADE', item.kind, item.name);
    END LOOP;
    FOR item IN
        SELECT CASE p.prokind WHEN 'a' THEN 'AGGREGATE' WHEN 'p' THEN 'PROCEDURE' ELSE 'FUNCTION' END AS kind,
               p.oid::regprocedure::text AS name
        FROM pg_proc p WHERE p.pronamespace = 'public'::regnamespace
    LOOP
        EXECUTE format('DROP %s IF EXISTS %s CASCADE', item.kind, item.name);
    END LOOP;
    FOR item IN
        SELECT t.oid::regtype::text AS name FROM pg_type t
        WHERE t.typnamespace = 'public'::regnamespace AND t.typtype IN ('c', 'd', 'e', 'r')
          AND (t.typtype <> 'c' OR (SELECT relkind FROM pg_class WHERE oid = t.typrelid) = 'c')
    LOOP
        EXECUTE format('DROP TYPE IF EXISTS %s CASCADE', item.name);
    END LOOP;
END
$hoppybrew$;
"""

VERSION_PATTERN = re.compile(r"(\d+)(?:\.(\d+))?")
# schema.table as pg_dump writes it in COPY headers, each part plain or double-quoted.
QUALIFIED_NAME = re.compile(r'(?:"(?:[^"]|"")+"|[A-Za-z_][A-Za-z0-9_$]*)\.(?:"(?:[^"]|"")+"|[A-Za-z_][A-Za-z0-9_$]*)')


class PostgreSQLEngine(DatabaseEngine):
    vendor = "postgresql"
    required_tools = ("pg_dump", "psql")
    # Each dump carries a random key on these lines (PostgreSQL 15.14+).
    volatile_prefixes = (b"\\restrict ", b"\\unrestrict ")

    def command(self, tool, parameters):
        """Argument list and environment for a client tool, built the way ``dbshell`` does:
        the password travels in the child's environment, never on its command line."""
        args, env = DatabaseClient.settings_to_cmd_args_env(self.settings_dict, parameters)
        args[0] = tool
        return args, {**os.environ, "PGCONNECT_TIMEOUT": "10", "PGAPPNAME": "hoppybrew-backups", **(env or {})}

    def connect(self):
        """A separate autocommit connection, outside Django's, for locks and small queries."""
        import psycopg2

        params = connections[self.alias].get_connection_params()
        params.pop("cursor_factory", None)
        params.pop("context", None)
        params["dbname"] = self.database_name  # a drill's scratch database has its own name
        params.setdefault("connect_timeout", 10)
        try:
            connection = psycopg2.connect(**params)
        except psycopg2.OperationalError as exc:
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else "connection refused"
            raise DatabaseUnavailable(
                f"Cannot connect to the PostgreSQL database {self.describe()}: {first_line}"
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
        args, env = self.command("pg_dump", DUMP_OPTIONS)
        counter = CopyRowCounter()
        with ProcessDump(args, env, "pg_dump").run() as stdout:
            yield DumpStream(stdout, counter)

    def restore(self, stream, lock_timeout):
        args, env = self.command("psql", ["-X", "-q", "-v", "ON_ERROR_STOP=1", "--no-password", "-f", "-"])
        prelude = RESTORE_BEGIN + RESTORE_PRELUDE.format(lock_timeout=int(lock_timeout))
        returncode, message = run_fed(args, env, "psql", prelude.encode(), stream, epilogue=RESTORE_COMMIT)
        if returncode == 0:
            return
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

    def create_database(self, name):
        import psycopg2
        from psycopg2 import sql

        connection = self.connect()
        try:
            with connection.cursor() as cursor:
                cursor.execute(sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(name)))
        except psycopg2.Error as exc:
            raise DatabaseUnavailable(
                f"Cannot create the database {name}: {str(exc).strip()}. "
                "The database user needs the CREATEDB privilege."
            ) from None
        finally:
            connection.close()
        return PostgreSQLEngine(self.alias, {**self.settings_dict, "NAME": name})

    def drop_database(self, name):
        from psycopg2 import sql

        connection = self.connect()
        try:
            with connection.cursor() as cursor:
                cursor.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        finally:
            connection.close()

    def count_rows(self, table):
        if not QUALIFIED_NAME.fullmatch(table):
            raise ValueError(f"not a table name from a dump: {table!r}")
        return self.query_value(f"SELECT count(*) FROM {table}")


def _major(text):
    match = VERSION_PATTERN.search(text or "")
    return int(match.group(1)) if match else None


COPY_HEADER = re.compile(rb"^COPY (?P<table>.+?) (?:\(.*\) )?FROM stdin;$")


class CopyRowCounter(RowCounter):
    """Counts the rows of each ``COPY ... FROM stdin;`` block of a plain pg_dump.

    Inside a block every line is one row and the block ends with a line holding only ``\\.``
    (data lines escape backslashes, so no row can look like it). Counting newlines with
    ``bytes.count`` keeps this far cheaper than the compression that follows.
    """

    TERMINATOR = b"\n\\.\n"

    def __init__(self):
        super().__init__()
        self._rows = 0
        self._tail = b""  # outside a block: the unfinished last line
        self._previous = b""  # inside a block: the last bytes seen, to find a split terminator

    def find_rows(self, chunk, position):
        data = self._tail + chunk[position:] if self._tail else chunk
        start = 0 if self._tail else position
        self._tail = b""
        while True:
            if data.startswith(b"COPY ", start):
                line_start = start
            else:
                found = data.find(b"\nCOPY ", start)
                if found < 0:
                    newline = data.rfind(b"\n", start)
                    self._tail = data[newline + 1 :] if newline >= 0 else data[start:]
                    return len(chunk)
                line_start = found + 1
            line_end = data.find(b"\n", line_start)
            if line_end < 0:
                self._tail = data[line_start:]
                return len(chunk)
            match = COPY_HEADER.match(data[line_start:line_end])
            if match is None:
                start = line_end + 1
                continue
            self.table = match["table"].decode("utf-8", "replace")
            self._rows = 0
            self._previous = b"\n"
            # Continue in block mode from the byte after the header, in the caller's chunk.
            return len(chunk) - (len(data) - (line_end + 1))

    def pass_rows(self, chunk, position):
        boundary = self._previous + chunk[position : position + 3]
        found = boundary.find(self.TERMINATOR)
        if found >= 0:
            end = position + (found + 4 - len(self._previous))
            # The terminator's first newline ends the last row; if it was in the previous
            # chunk it has been counted there (and end - 3 would count from the chunk's end).
            self._rows += chunk.count(b"\n", position, max(position, end - 3))
            return self._finish_block(end)
        # Most chunks hold no terminator: rfind tells so in half the time find takes on dump
        # data (CPython's reverse search skips better here); then find locates the first one.
        found = chunk.rfind(self.TERMINATOR, position)
        if found >= 0:
            found = chunk.find(self.TERMINATOR, position, found + 4)
        if found < 0:
            self._rows += chunk.count(b"\n", position)
            if len(chunk) - position >= 3:
                self._previous = chunk[-3:]
            else:
                self._previous = (self._previous + chunk[position:])[-3:]
            return len(chunk)
        self._rows += chunk.count(b"\n", position, found + 1)
        return self._finish_block(found + 4)

    def _finish_block(self, end):
        self.counts[self.table] = self.counts.get(self.table, 0) + self._rows
        self.table = None
        self._previous = b""
        return end
