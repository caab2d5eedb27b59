"""SQLite: a consistent snapshot written out as SQL, replayed in one transaction to restore.

The dump runs inside a read transaction, which pins one snapshot of the database for its whole
duration (in WAL mode writers carry on meanwhile). Unlike the sqlite3 backup API, this needs no
full copy of the database in memory or on disk before the SQL can stream out.
"""

import fcntl
import io
import os
import shutil
import sqlite3
import tempfile
from contextlib import contextmanager
from pathlib import Path

from ..exceptions import DatabaseBusy, DatabaseUnavailable, DumpFailed, RestoreFailed, ToolMissing
from ..streams import ReadableStream
from .base import CHUNK_SIZE, DatabaseEngine

DUMP_WRAPPER_STATEMENTS = {"BEGIN TRANSACTION;", "COMMIT;"}
DUMP_TOOL = "HoppyBrew SQLite dump"  # the manifest's dump_tool_version
ITERDUMP = "Python sqlite3 iterdump"  # the one before, which made older backups
# Numbers in the database file's header that applications set; a dump of the schema and rows leaves them out.
HEADER_VALUES = ("user_version", "application_id")


class SQLiteEngine(DatabaseEngine):
    vendor = "sqlite"
    required_tools = ()

    @property
    def path(self):
        return Path(self.settings_dict["NAME"])

    def describe(self):
        return str(self.path)

    def connect(self, timeout=5.0, read_only=False):
        if not self.path.is_file():
            raise DatabaseUnavailable(f"The SQLite database {self.path} does not exist.")
        uri = f"file:{self.path}?mode={'ro' if read_only else 'rw'}"
        try:
            connection = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=timeout)
        except sqlite3.Error as exc:
            raise DatabaseUnavailable(f"Cannot open the SQLite database {self.path}: {exc}") from None
        return connection

    def versions(self):
        if sqlite3.sqlite_version_info < OLDEST_SQLITE:
            raise ToolMissing(
                f"Backups of SQLite databases need SQLite {'.'.join(map(str, OLDEST_SQLITE))} or later in the "
                f"Python that makes them; this one has SQLite {sqlite3.sqlite_version}. Run them with a newer Python "
                "(the python:3.11 images have SQLite 3.40)."
            )
        return {"server": f"SQLite {sqlite3.sqlite_version}", "dump_tool": DUMP_TOOL}

    def dump_as_made(self, manifest):
        made_by_iterdump = manifest.get("dump_tool_version") == ITERDUMP
        return self.dump(IterdumpStream if made_by_iterdump else SQLiteDumpStream)

    @contextmanager
    def dump(self, stream=None):
        connection = self.connect(read_only=True)
        try:
            connection.execute("BEGIN")
            connection.execute("SELECT count(*) FROM sqlite_master").fetchone()  # pins the snapshot
            values = {name: connection.execute(f"PRAGMA {name}").fetchone()[0] for name in HEADER_VALUES}
            header = [f"PRAGMA {name} = {value};" for name, value in values.items()]
            yield (stream or SQLiteDumpStream)(connection, header)
        except sqlite3.Error as exc:
            raise DumpFailed(f"Reading the SQLite database {self.path} failed: {exc}") from None
        finally:
            connection.close()

    def restore(self, stream, lock_timeout):
        connection = self.connect(timeout=lock_timeout)
        try:
            # Foreign keys are checked by SQLite at the statement level when enabled; the dump
            # recreates tables in name order, so they are off while it replays.
            connection.execute("PRAGMA foreign_keys = OFF")
            try:
                connection.execute("BEGIN IMMEDIATE")
            except sqlite3.OperationalError as exc:
                raise DatabaseBusy(
                    f"The database {self.path} is busy ({exc}) for more than {lock_timeout} s. "
                    "Nothing was changed; try again."
                ) from None
            try:
                drop_everything(connection)
                replay(connection, stream)
                connection.execute("COMMIT")
            except BaseException as exc:
                connection.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error):
                    raise RestoreFailed(
                        f"Database restore failed; the database was not changed. SQLite said: {exc}"
                    ) from None
                raise
        finally:
            connection.close()

    @contextmanager
    def lock(self, exclusive, purpose="operations"):
        # A lock file beside the database: the kernel releases it when the holder dies.
        lock_path = self.path.with_name(f".{self.path.name}.{purpose}.lock")
        try:
            descriptor = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise DatabaseUnavailable(f"Cannot create the lock file {lock_path}: {exc.strerror}") from None
        try:
            try:
                fcntl.flock(descriptor, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
            except BlockingIOError:
                raise self.lock_taken(purpose) from None
            yield
        finally:
            os.close(descriptor)

    def create_database(self, name, advice=None):
        path = Path(name)
        try:
            with open(path, "xb"):  # a file that exists is never taken over
                pass
        except OSError as exc:
            raise DatabaseUnavailable(f"Cannot create the SQLite database {path}: {exc.strerror or exc}.") from None
        return SQLiteEngine(self.alias, {**self.settings_dict, "NAME": str(path)})

    def drop_database(self, name):
        for suffix in ("", "-wal", "-shm", "-journal"):
            Path(f"{name}{suffix}").unlink(missing_ok=True)

    @contextmanager
    def scratch(self):
        # In a directory of its own under the temporary directory, not next to the live file.
        directory = tempfile.mkdtemp(prefix="hoppybrew-drill-")
        try:
            yield self.create_database(str(Path(directory) / "drill.sqlite3"))
        finally:
            shutil.rmtree(directory, ignore_errors=True)

    def count_rows(self, table, among=()):
        connection = self.connect(read_only=True)
        try:
            return connection.execute(f"SELECT count(*) FROM {quote(table)}").fetchone()[0]
        finally:
            connection.close()

    def size_bytes(self):
        total = 0
        for suffix in ("", "-wal"):
            try:
                total += os.path.getsize(f"{self.path}{suffix}")
            except OSError:
                pass
        return total


class SQLiteDumpStream:
    """The database as SQL that rebuilds it exactly, in chunks of ``CHUNK_SIZE``, counting the
    rows of each table. Python's ``iterdump`` is not enough: it renumbers the rowids of tables
    without an INTEGER PRIMARY KEY (an FTS index of external content then points at the wrong
    rows), and writes virtual tables (FTS5, R*Tree) through ``writable_schema`` with their rows
    inserted before the table exists, so such a dump never restores. Here every rowid is kept,
    and a virtual table is created by its own statement (which makes its shadow tables), whose
    contents are then replaced by the dump's, as SQLite's own ``.dump`` does. The ``header``
    statements (PRAGMAs that set the file header's numbers) go in before the final COMMIT."""

    restore_requirements = None  # a SQLite dump needs nothing outside its file

    def __init__(self, connection, header=()):
        self.connection = connection
        self.header = list(header)
        self.row_counts = {}

    def __iter__(self):
        buffer = []
        size = 0
        for line in self.lines():
            buffer.append(line)
            size += len(line) + 1
            if size >= CHUNK_SIZE:
                yield ("\n".join(buffer) + "\n").encode()
                buffer, size = [], 0
        if buffer:
            yield ("\n".join(buffer) + "\n").encode()

    def lines(self):
        """In the order ``iterdump`` wrote (a drill of a backup made before compares it with a
        dump of today), but for what it got wrong."""
        connection = self.connection
        yield "BEGIN TRANSACTION;"
        # PRAGMA table_list (SQLite 3.37) tells virtual and shadow tables from the others.
        self.tables = {
            name: (kind, without_rowid)
            for schema, name, kind, _, without_rowid, _ in connection.execute("PRAGMA main.table_list")
            if schema == "main"
        }
        sequences = []
        for name, sql in connection.execute(TABLES).fetchall():
            kind = self.tables[name][0]
            if name == "sqlite_sequence":  # last: the rows inserted before it move its counters
                sequences = [f"DELETE FROM {quote(name)};", *self.rows(name)]
                continue
            if name == "sqlite_stat1":
                yield 'ANALYZE "sqlite_master";'  # makes the planner's statistics table, analyzing nothing
            elif name.startswith("sqlite_"):
                continue  # sqlite_stat4 exists only in some builds of SQLite: ANALYZE remakes it
            elif kind == "shadow":
                yield f"DELETE FROM {quote(name)};"  # made, with rows of its own, by its virtual table
            else:
                yield f"{sql};"
            if kind != "virtual":  # a virtual table's rows live in its shadow tables
                yield from self.rows(name)
        for (sql,) in connection.execute(OTHER_OBJECTS):
            yield f"{sql};"
        yield from sequences
        yield from self.header
        yield "COMMIT;"

    def rows(self, table):
        columns, rowid = self.columns(table)
        listed = f"({','.join(map(quote, columns))})" if rowid else ""  # else every column, in order
        into = f"INSERT INTO {quote(table)}{listed} VALUES("
        count = 0
        for values in self.connection.execute(
            f"SELECT {','.join(f'quote({quote(column)})' for column in columns)} FROM {quote(table)}"
        ):
            count += 1
            yield f"{into}{','.join(values)});"
        if count:
            self.row_counts[table] = count

    def columns(self, table):
        """The columns an INSERT sets (not generated ones), led by the rowid unless a column is
        it (INTEGER PRIMARY KEY) or every name that reaches it is a column's; and whether it is."""
        info = self.connection.execute(f"PRAGMA main.table_xinfo({quote(table)})").fetchall()
        columns = [name for _, name, _, _, _, _, hidden in info if hidden == 0]
        keys = [declared for _, _, declared, _, _, key, _ in info if key]
        aliased = (
            len(keys) == 1
            and keys[0].upper() == "INTEGER"
            # INTEGER PRIMARY KEY DESC is an index of its own, not the rowid.
            and not self.connection.execute(PRIMARY_KEY_INDEX, (table,)).fetchone()
        )
        if self.tables[table][1] or aliased or table in SQLITE_TABLES:  # SQLite's own: no one reads their rowids
            return columns, False
        taken = {name.lower() for _, name, *_ in info}  # a generated column may be called rowid
        rowid = [name for name in ("rowid", "_rowid_", "oid") if name not in taken][:1]
        return rowid + columns, bool(rowid)


TABLES = (
    "SELECT name, sql FROM sqlite_schema WHERE type = 'table' AND sql IS NOT NULL "
    # Virtual tables first, as they make their shadow tables; then by name, which a restore keeps
    # (a drill compares the dump of the restored database with the backup's).
    "ORDER BY sql NOT LIKE 'CREATE VIRTUAL TABLE%', name"
)
OTHER_OBJECTS = (
    "SELECT sql FROM sqlite_schema WHERE type IN ('index', 'trigger', 'view') AND sql IS NOT NULL ORDER BY rowid"
)
PRIMARY_KEY_INDEX = "SELECT 1 FROM pragma_index_list(?) WHERE origin = 'pk'"
# SQLite's own tables that a restore empties: AUTOINCREMENT's counters and the planner's statistics
# (the dump rebuilds sqlite_sequence and sqlite_stat1; sqlite_stat4 is ANALYZE's to remake).
SQLITE_TABLES = ("sqlite_sequence", "sqlite_stat1", "sqlite_stat4")
# PRAGMA table_list, which tells virtual and shadow tables from the others, came with 3.37 (2021).
OLDEST_SQLITE = (3, 37)


class IterdumpStream(SQLiteDumpStream):
    """The form of Python's ``iterdump``, which made backups before ``SQLiteDumpStream``: a drill
    of one compares it with this."""

    def lines(self):
        for line in self.connection.iterdump():
            if line == "COMMIT;":
                yield from self.header
            yield line


def quote(name):
    return '"' + name.replace('"', '""') + '"'


def drop_everything(connection):
    """Remove every view, table and trigger, and empty SQLite's own tables, so the dump rebuilds
    the database exactly. Virtual tables go before the other tables: dropping one drops its
    shadow tables, which must still be there."""
    objects = connection.execute(
        "SELECT type, name, sql LIKE 'CREATE VIRTUAL TABLE%' FROM sqlite_schema "
        "WHERE name NOT LIKE 'sqlite\\_%' ESCAPE '\\' AND type IN ('view', 'table', 'trigger')"
    ).fetchall()
    order = {"trigger": 0, "view": 1, "table": 2}
    for kind, name, _virtual in sorted(objects, key=lambda item: (order[item[0]], not item[2])):
        connection.execute(f"DROP {kind.upper()} IF EXISTS {quote(name)}")
    for (name,) in connection.execute(f"SELECT name FROM sqlite_schema WHERE name IN {SQLITE_TABLES}").fetchall():
        connection.execute(f"DELETE FROM {quote(name)}")


def replay(connection, stream):
    """Execute the dump statement by statement inside the caller's transaction.

    The dump's own BEGIN/COMMIT (there for restoring by hand with the sqlite3 shell) are skipped.
    Statements are read line by line, so memory holds one statement at a time.
    """
    text = io.TextIOWrapper(io.BufferedReader(ReadableStream(stream), CHUNK_SIZE), encoding="utf-8", newline="")
    statement = []
    for line in text:
        statement.append(line)
        joined = "".join(statement)
        if not sqlite3.complete_statement(joined):
            continue
        statement = []
        sql = joined.strip()
        if sql in DUMP_WRAPPER_STATEMENTS:
            continue
        connection.execute(sql)
    if "".join(statement).strip():
        raise RestoreFailed(
            "Database restore failed; the database was not changed. The dump ends in the middle of a statement."
        )
