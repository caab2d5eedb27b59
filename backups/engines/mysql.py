"""MySQL and MariaDB: ``mysqldump`` to plain SQL, the ``mysql`` client to restore.

MySQL cannot roll back DDL, so a restore cannot be all or nothing: it locks every table (giving
up, with nothing changed, when other sessions keep them busy), drops everything the database
holds, then replays the dump statement by statement. ``restore_is_transactional = False`` makes
the service prove first that the dump and the pre-restore backup both load (into scratch
databases), and put the pre-restore backup back when the live restore still stops partway
(raising ``RestoreIncomplete``: a lost connection, a killed client).

Locks are named locks (``GET_LOCK``) held by a connection of their own, so they vanish with it.
MySQL and MariaDB have exclusive named locks only. Shared holders (backups) each take one of
``SHARED_LOCK_SLOTS`` locks and an exclusive holder (a restore) takes them all: up to that many
backups of one database run side by side, and a restore runs alone.
"""

import hashlib
import io
import logging
import os
import re
from contextlib import contextmanager
from functools import cached_property

import pymysql
from django.db.backends.mysql.client import DatabaseClient

from ..exceptions import (
    BackupError,
    DatabaseBusy,
    DatabaseUnavailable,
    DumpFailed,
    RestoreFailed,
    RestoreIncomplete,
)
from .base import DatabaseEngine, DumpStream, ProcessDump, RowCounter, describe_exit, run_fed, run_tool

COMMON_DUMP_OPTIONS = [
    "--default-character-set=utf8mb4",
    # Tablespace statements need the PROCESS privilege and do not carry over to another server.
    "--no-tablespaces",
]
# A dump is three mysqldump runs, written one after the other: the tables and sequences, then
# the rows with the triggers, routines and events, then the views in the order they depend on
# each other. mysqldump itself writes views in name order over placeholders, and a view WITH
# CHECK OPTION over a view still a placeholder fails to load (ERROR 1368). mysqldump's defaults
# (--opt) write DROP ... IF EXISTS before every table, view, routine and event.
STRUCTURE_OPTIONS = [*COMMON_DUMP_OPTIONS, "--no-data", "--skip-triggers"]
DATA_OPTIONS = [
    *COMMON_DUMP_OPTIONS,
    # One consistent snapshot of InnoDB tables, without locking them.
    "--single-transaction",
    "--no-create-info",
    "--routines",
    "--triggers",
    "--events",
    # Binary columns as hex literals: exact bytes whatever the character set of the restore.
    "--hex-blob",
]
VIEW_OPTIONS = STRUCTURE_OPTIONS
RESTORE_OPTIONS = [
    "--default-character-set=utf8mb4",
    # The client's own limit; the dump's longest statement (one big row) fits the server's.
    "--max-allowed-packet=1G",
]
logger = logging.getLogger("backups")
SHARED_LOCK_SLOTS = 16
LOCK_NAME_LIMIT = 64  # MySQL refuses longer lock names
LOCK_WAIT_TIMEOUT = 1205  # ER_LOCK_WAIT_TIMEOUT


class MySQLEngine(DatabaseEngine):
    vendor = "mysql"
    required_tools = ("mysqldump", "mysql")
    restore_is_transactional = False
    # mysqldump's comments name the database and the time of the dump; they carry no data.
    volatile_prefixes = (b"--",)

    def command(self, tool, parameters):
        """Argument list and environment for a client tool, built the way ``dbshell`` does (the
        password in MYSQL_PWD, never on the command line), connecting exactly as Django does.

        Option files (~/.my.cnf) and this process's MYSQL_* variables would override the
        settings (a password in ~/.my.cnf beats MYSQL_PWD), so the tools read neither, unless
        OPTIONS names a file. PyMySQL, the site's driver, uses TCP unless HOST is a socket
        path; the tools would take the Unix socket for "localhost", so they are told to use TCP.
        """
        args, env = DatabaseClient.settings_to_cmd_args_env(self.settings_dict, parameters)
        args[0] = tool
        if not self.settings_dict["OPTIONS"].get("read_default_file"):
            args.insert(1, "--no-defaults")
        host = self.settings_dict["OPTIONS"].get("host", self.settings_dict["HOST"])
        if "/" not in host:
            args.insert(2, "--protocol=TCP")
        inherited = {name: value for name, value in os.environ.items() if not name.startswith("MYSQL_")}
        return args, {**inherited, **(env or {})}

    def connect(self):
        """A separate autocommit connection, outside Django's, for locks and small queries."""
        params = self.connection_params()
        params["database"] = self.database_name  # a drill's scratch database has its own name
        params.setdefault("connect_timeout", 10)
        params["autocommit"] = True
        params["charset"] = "utf8mb4"  # names and definitions with 4-byte characters (emoji)
        try:
            return pymysql.connect(**params)
        except pymysql.MySQLError as exc:
            raise DatabaseUnavailable(
                f"Cannot connect to the MySQL database {self.describe()}: {reason(exc)}"
            ) from None

    def versions(self):
        server = self.query_value("SELECT VERSION()")
        flavour = "MariaDB" if "mariadb" in server.lower() else "MySQL"
        return {"server": f"{flavour} {server}", "dump_tool": self.dump_tool_version}

    @cached_property
    def dump_tool_version(self):
        return run_tool(["mysqldump", "--version"], os.environ, "mysqldump").strip()

    @contextmanager
    def dump(self):
        views, repairs = self.inspect_schema()
        others = [f"--ignore-table={self.database_name}.{name}" for name in views]
        structure = repair_definitions(self.capture(STRUCTURE_OPTIONS + others), repairs)
        view_sql = self.capture(VIEW_OPTIONS + views) if views else b""
        history = history_options(self.dump_tool_version)
        args, env = self.command(
            "mysqldump", DATA_OPTIONS + history + others + mysql_only_dump_options(self.dump_tool_version)
        )
        with ProcessDump(args, env, "mysqldump").run() as stdout:
            yield DumpStream(ConcatenatedStream(structure, stdout, view_sql), InsertRowCounter())

    def capture(self, options):
        """The whole output of a small mysqldump run (one without rows)."""
        args, env = self.command("mysqldump", options + mysql_only_dump_options(self.dump_tool_version))
        with ProcessDump(args, env, "mysqldump").run() as stdout:
            return stdout.read()

    def inspect_schema(self):
        """The database's views, each after the views it reads, and the repairs its table
        definitions need (see ``find_repairs``)."""
        connection = self.connect()
        try:
            with connection.cursor() as cursor:
                cursor.execute(
                    "SELECT TABLE_NAME, VIEW_DEFINITION FROM information_schema.VIEWS WHERE TABLE_SCHEMA = DATABASE()"
                )
                views = views_in_dependency_order(dict(cursor.fetchall()))
                return views, find_repairs(cursor)
        except pymysql.MySQLError as exc:
            raise DumpFailed(f"Reading the schema of {self.describe()} failed: {reason(exc)}") from None
        finally:
            connection.close()

    def restore(self, stream, lock_timeout):
        connection = self.connect()
        try:
            with connection.cursor() as cursor:
                objects = list_objects(cursor)
                lock_tables(
                    cursor, [name for kind, name in objects if kind == "TABLE"], lock_timeout, self.database_name
                )
                try:
                    drop(cursor, objects)
                except pymysql.MySQLError as exc:
                    raise RestoreIncomplete(f"emptying the database failed: {reason(exc)}") from None
        finally:
            connection.close()
        try:
            self.replay(stream, lock_timeout)
        except RestoreIncomplete:
            raise
        except BackupError as exc:
            # A damaged file, say: the database is emptied and partly refilled by now.
            raise RestoreIncomplete(exc.message, status_code=exc.status_code) from None
        except Exception:
            logger.exception("The restore of %s stopped on an unexpected error", self.describe())
            raise RestoreIncomplete("unexpected error; see the server log") from None

    def replay(self, stream, lock_timeout):
        """Run the dump through the ``mysql`` client, which stops at the first error."""
        args, env = self.command("mysql", RESTORE_OPTIONS)
        prelude = f"SET SESSION lock_wait_timeout = {int(lock_timeout)};\n".encode()
        returncode, message = run_fed(args, env, "mysql", prelude, stream)
        if returncode != 0:
            raise RestoreIncomplete(f"mysql stopped at an error: {describe_exit(returncode, client_error(message))}")

    @contextmanager
    def lock(self, exclusive, purpose="operations"):
        connection = self.connect()
        try:
            names = [self.lock_name(purpose, slot) for slot in range(SHARED_LOCK_SLOTS)]
            with connection.cursor() as cursor:
                if exclusive:
                    cursor.execute("SELECT " + ", ".join(["GET_LOCK(%s, 0)"] * len(names)), names)
                    acquired = all(result == 1 for result in cursor.fetchone())
                else:
                    acquired = any(take_lock(cursor, name) for name in names)
            if not acquired:
                raise self.lock_taken(purpose)
            yield
        finally:
            # Closing the session releases its locks; so does the death of this process.
            connection.close()

    def lock_name(self, purpose, slot):
        """Named locks are server-wide: the name carries the database's."""
        name = f"hoppybrew-backups.{purpose}.{slot}.{self.database_name}"
        if len(name) > LOCK_NAME_LIMIT:
            name = f"hoppybrew-backups.{purpose}.{slot}.{hashlib.sha256(self.database_name.encode()).hexdigest()[:32]}"
        return name

    def create_database(self, name, advice=None):
        connection = self.connect()
        try:
            with connection.cursor() as cursor:
                cursor.execute(f"CREATE DATABASE {quote(name)} CHARACTER SET utf8mb4")
        except pymysql.MySQLError as exc:
            raise DatabaseUnavailable(
                f"Cannot create the database {name}: {reason(exc)}. "
                f"{advice or 'The database user needs the CREATE privilege on new databases.'}"
            ) from None
        finally:
            connection.close()
        return MySQLEngine(self.alias, {**self.settings_dict, "NAME": name})

    def drop_database(self, name):
        connection = self.connect()
        try:
            with connection.cursor() as cursor:
                cursor.execute(f"DROP DATABASE IF EXISTS {quote(name)}")
        finally:
            connection.close()

    def scratch_advice(self):
        where = "the role in BACKUP_VERIFY_DATABASE_URL" if self.drills_elsewhere() else "the database user"
        pattern = self.scratch_name().rsplit("_", 1)[0].replace("_", r"\_") + r"\_%"
        return (
            "Restore drills load backups into such scratch databases, and a restore proves there that its dump "
            f"loads before it touches the live database. Nothing was changed. Let {where} create them, e.g. "
            f"GRANT ALL ON `{pattern}`.* TO that user."
        )

    def count_rows(self, table, among=()):
        """Past rows of a system-versioned table count too: the dump has them."""
        versioned = self.query_value(
            "SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() "
            f"AND TABLE_TYPE = 'SYSTEM VERSIONED' AND TABLE_NAME = {literal(table)}"
        )
        return self.query_value(f"SELECT COUNT(*) FROM {quote(table)}{' FOR SYSTEM_TIME ALL' if versioned else ''}")

    def size_bytes(self):
        total = self.query_value(
            "SELECT COALESCE(SUM(DATA_LENGTH + INDEX_LENGTH), 0) FROM information_schema.TABLES "
            "WHERE TABLE_SCHEMA = DATABASE()"
        )
        return int(total)


def mysql_only_dump_options(dump_tool_version):
    """Options of MySQL's own mysqldump, which MariaDB's does not know."""
    if "mariadb" in dump_tool_version.lower():
        return []
    # A dump from a server with GTIDs would otherwise set GTID_PURGED, which fails on any server
    # that has GTIDs of its own: the very server it came from, among others.
    return ["--set-gtid-purged=OFF"]


def history_options(dump_tool_version):
    """The past rows of system-versioned tables, with their timestamps: MariaDB's mysqldump
    writes them from 10.11 on (and sets system_versioning_insert_history for their restore)."""
    version = re.search(r"(\d+)\.(\d+)\.\d+-MariaDB", dump_tool_version)
    return ["--dump-history"] if version and (int(version[1]), int(version[2])) >= (10, 11) else []


def client_error(stderr):
    """The client's error, without the failing statement that MariaDB's client prints before it
    (at times a whole INSERT of row data)."""
    start = stderr.rfind("\nERROR ")
    return stderr[start + 1 :] if start >= 0 else stderr


def reason(exc):
    """A PyMySQL error's message without its numeric code."""
    return str(exc.args[-1]) if exc.args else str(exc)


def quote(name):
    return "`" + name.replace("`", "``") + "`"


def literal(text):
    """A string literal, escaped as SHOW CREATE TABLE writes them."""
    return "'" + text.replace("\\", "\\\\").replace("'", "''") + "'"


def views_in_dependency_order(definitions):
    """View names, each after every view whose quoted name its definition mentions; ties (and a
    cycle, which only a false mention can make) in name order, so that every dump of the same
    schema lists them alike (restore drills compare dumps line by line)."""
    mentions = {
        name: {other for other in definitions if other != name and quote(other) in definition}
        for name, definition in definitions.items()
    }
    ordered, remaining = [], sorted(definitions)
    while remaining:
        ready = next((name for name in remaining if not mentions[name] & set(remaining)), remaining[0])
        ordered.append(ready)
        remaining.remove(ready)
    return ordered


MEMBERS = re.compile(r"'(?:[^']|'')*'")
SCRATCH_TABLE = "`hoppybrew_backups_column`"


def find_repairs(cursor):
    """What SHOW CREATE TABLE gets wrong: MariaDB passes ENUM and SET members and string
    defaults through its utf8mb3 metadata, so each 4-byte character (an emoji) comes out as '?'
    though the table holds it, and a column loaded as written loses its values. The true text
    is read back through a temporary copy of the column: its members by their numbers, its
    default from an empty row.

    Returns ``{table: [(column, [(wrong, right), ...])]}``: replacements in the column's line.
    """
    cursor.execute(
        "SELECT c.TABLE_NAME, c.COLUMN_NAME, c.DATA_TYPE, c.COLUMN_TYPE, c.COLUMN_DEFAULT "
        "FROM information_schema.COLUMNS c JOIN information_schema.TABLES t "
        "ON t.TABLE_SCHEMA = c.TABLE_SCHEMA AND t.TABLE_NAME = c.TABLE_NAME "
        "WHERE c.TABLE_SCHEMA = DATABASE() AND t.TABLE_TYPE IN ('BASE TABLE', 'SYSTEM VERSIONED') "
        "AND ((c.DATA_TYPE IN ('enum', 'set') AND c.COLUMN_TYPE LIKE '%?%') OR c.COLUMN_DEFAULT LIKE '''%?%''') "
        "ORDER BY c.TABLE_NAME, c.ORDINAL_POSITION"
    )
    repairs = {}
    for table, column, data_type, column_type, default in cursor.fetchall():
        cursor.execute(f"CREATE TEMPORARY TABLE {SCRATCH_TABLE} SELECT {quote(column)} FROM {quote(table)} LIMIT 0")
        try:
            changes = []
            if data_type in ("enum", "set") and "?" in column_type:
                count = len(MEMBERS.findall(column_type))
                numbers = range(1, count + 1) if data_type == "enum" else (1 << bit for bit in range(count))
                cursor.execute(f"INSERT INTO {SCRATCH_TABLE} VALUES " + ", ".join(f"({number})" for number in numbers))
                cursor.execute(f"SELECT {quote(column)} FROM {SCRATCH_TABLE} ORDER BY {quote(column)} + 0")
                members = ",".join(literal(member) for (member,) in cursor.fetchall())
                changes.append((column_type, f"{data_type}({members})"))
                cursor.execute(f"DELETE FROM {SCRATCH_TABLE}")
            if default and default.startswith("'") and "?" in default:
                cursor.execute(f"INSERT INTO {SCRATCH_TABLE} () VALUES ()")
                cursor.execute(f"SELECT {quote(column)} FROM {SCRATCH_TABLE}")
                changes.append((f"DEFAULT {default}", f"DEFAULT {literal(cursor.fetchone()[0])}"))
        finally:
            cursor.execute(f"DROP TEMPORARY TABLE {SCRATCH_TABLE}")
        repairs.setdefault(table, []).append((column, changes))
    return repairs


def repair_definitions(structure, repairs):
    """``structure`` (mysqldump's CREATE TABLE statements) with the ``find_repairs`` made, each
    in its own table's statement and column's line."""
    for table, columns in repairs.items():
        start = structure.find(f"\nCREATE TABLE {quote(table)} (\n".encode())
        end = structure.find(b"\n)", start)
        if start < 0 or end < 0:
            continue  # dropped since it was inspected
        lines = structure[start:end].split(b"\n")
        for column, changes in columns:
            prefix = f"  {quote(column)} ".encode()
            for number, line in enumerate(lines):
                if line.startswith(prefix):
                    for wrong, right in changes:
                        line = line.replace(wrong.encode(), right.encode(), 1)
                    lines[number] = line
        structure = structure[:start] + b"\n".join(lines) + structure[end:]
    return structure


class ConcatenatedStream:
    """The three mysqldump runs as one stream: the two small outputs, read whole, around the
    pipe of the run that streams the rows (whose descriptor ``DumpStream`` may enlarge)."""

    def __init__(self, head, pipe, tail):
        self.pipe = pipe
        self.parts = [io.BytesIO(head), pipe, io.BytesIO(tail)]

    def fileno(self):
        return self.pipe.fileno()

    def read1(self, size=-1):
        while self.parts:
            data = self.parts[0].read1(size)
            if data:
                return data
            self.parts.pop(0)
        return b""

    read = read1


def take_lock(cursor, name):
    cursor.execute("SELECT GET_LOCK(%s, 0)", [name])
    return cursor.fetchone()[0] == 1


def lock_tables(cursor, tables, lock_timeout, database_name):
    """Take the lock of every table at once, waiting at most ``lock_timeout`` seconds for the
    sessions that use them; held until the tables are dropped."""
    cursor.execute("SET SESSION lock_wait_timeout = %s", [int(lock_timeout)])
    cursor.execute("SET SESSION foreign_key_checks = 0")
    if not tables:
        return
    try:
        cursor.execute("LOCK TABLES " + ", ".join(f"{quote(name)} WRITE" for name in tables))
    except pymysql.MySQLError as exc:
        if exc.args and exc.args[0] == LOCK_WAIT_TIMEOUT:
            raise DatabaseBusy(
                f"The database {database_name} is busy: other sessions kept its tables in use for more than "
                f"{lock_timeout} s. Nothing was changed; stop the application or try again."
            ) from None
        raise RestoreFailed(
            f"Database restore failed; the database was not changed. Locking its tables failed: {reason(exc)}"
        ) from None


def list_objects(cursor):
    """(kind, name) of everything in the current database that a dump can recreate."""
    cursor.execute(
        "SELECT IF(TABLE_TYPE = 'VIEW', 'VIEW', 'TABLE'), TABLE_NAME "
        "FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE() "
        "UNION ALL SELECT ROUTINE_TYPE, ROUTINE_NAME "
        "FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA = DATABASE() "
        "UNION ALL SELECT 'EVENT', EVENT_NAME FROM information_schema.EVENTS WHERE EVENT_SCHEMA = DATABASE()"
    )
    return cursor.fetchall()


def drop(cursor, objects):
    """Remove everything, so that the restored database holds exactly what the dump does (and not
    a table created since, say). Tables (with their triggers; MariaDB's sequences are tables too)
    go while locked; views, routines and events cannot be dropped under LOCK TABLES."""
    tables = [quote(name) for kind, name in objects if kind == "TABLE"]
    if tables:
        cursor.execute("DROP TABLE IF EXISTS " + ", ".join(tables))
    cursor.execute("UNLOCK TABLES")
    for kind, name in objects:
        if kind != "TABLE":
            cursor.execute(f"DROP {kind} IF EXISTS {quote(name)}")


class InsertRowCounter(RowCounter):
    """Counts the rows of each table in mysqldump's INSERT statements as the dump streams past.

    mysqldump escapes newlines, quotes and backslashes inside string literals (``\\n``, ``\\'``,
    ``\\\\``), so a raw newline never occurs inside a value. MariaDB's mysqldump writes one row
    per line after ``INSERT INTO `t` VALUES``; the statement ends with the first ``);`` at the
    end of a line, and counting rows is counting lines, with ``bytes.count``. MySQL's writes a
    whole statement on one line, where the ``),(`` between rows are counted outside string
    literals. ``CREATE TABLE`` lines record empty tables as 0; the bodies of triggers, routines
    and events (between ``DELIMITER ;;`` and ``DELIMITER ;``) are not data and are skipped.
    """

    STATEMENT = re.compile(rb"^(?:(INSERT INTO|CREATE TABLE) `((?:[^`]|``)+)`|(DELIMITER ;;)$)", re.MULTILINE)
    BLOCK_END = re.compile(rb"^DELIMITER ;$", re.MULTILINE)
    ROWS_END = b");\n"

    def __init__(self):
        super().__init__()
        self._line = []  # the unfinished last line, in pieces
        self._in_block = False
        self._rows = 0
        self._previous = b""  # in row lines: the last bytes seen, to find a split ROWS_END

    def find_rows(self, chunk, position):
        """Looks at complete lines only; returns where to go on in ``chunk``."""
        first_newline = chunk.find(b"\n", position)
        if first_newline < 0:
            self._line.append(chunk[position:])
            return len(chunk)
        if self._line:
            # The line begun in an earlier chunk ends here: look at it alone.
            line = b"".join([*self._line, chunk[position : first_newline + 1]])
            self._line = []
            match = self._pattern().match(line)
            if match:
                self._on_statement(match, line, len(line) - 1)
            return first_newline + 1
        end = chunk.rfind(b"\n", position) + 1
        match = self._pattern().search(chunk, position, end)
        if match is None:
            return end
        line_end = chunk.index(b"\n", match.end())
        self._on_statement(match, chunk, line_end)
        return line_end + 1

    def _pattern(self):
        return self.BLOCK_END if self._in_block else self.STATEMENT

    def _on_statement(self, match, data, line_end):
        if self._in_block:
            self._in_block = False
        elif match[3]:
            self._in_block = True
        else:
            table = match[2].replace(b"``", b"`").decode("utf-8", "replace")
            if match[1] == b"CREATE TABLE":
                self.counts.setdefault(table, 0)
            elif data.endswith(b");", match.end(), line_end):
                self._add(table, count_row_separators(data[match.end() : line_end]) + 1)
            else:
                # With a column list (invisible columns, history), the first row shares the line.
                first_row_here = not data.endswith(b" VALUES", match.end(), line_end)
                self.table, self._rows, self._previous = table, int(first_row_here), b""

    def pass_rows(self, chunk, position):
        boundary = self._previous + chunk[position : position + len(self.ROWS_END) - 1]
        found = boundary.find(self.ROWS_END)
        if 0 <= found < len(self._previous):  # split between the last chunk and this one
            end = position + found + len(self.ROWS_END) - len(self._previous)
        else:
            found = chunk.find(self.ROWS_END, position)
            if found < 0:
                self._rows += chunk.count(b"\n", position)
                keep = len(self.ROWS_END) - 1
                self._previous = (self._previous + chunk[max(position, len(chunk) - keep) :])[-keep:]
                return len(chunk)
            end = found + len(self.ROWS_END)
        self._add(self.table, self._rows + chunk.count(b"\n", position, end))
        self.table = None
        return end

    def _add(self, table, rows):
        self.counts[table] = self.counts.get(table, 0) + rows


def count_row_separators(values):
    """The ``),(`` between rows in one line of VALUES, leaving out any inside string literals.

    Without the escaped backslashes and then the escaped quotes, every quote left opens or closes
    a literal, so every other piece between quotes is SQL.
    """
    if b"\\" in values:
        values = values.replace(b"\\\\", b"").replace(b"\\'", b"")
    return b"'".join(values.split(b"'")[::2]).count(b"),(")
