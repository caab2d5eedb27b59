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

from ..exceptions import DatabaseBusy, DatabaseUnavailable, DumpFailed, RestoreFailed
from ..streams import ReadableStream
from .base import CHUNK_SIZE, DatabaseEngine

DUMP_WRAPPER_STATEMENTS = {"BEGIN TRANSACTION;", "COMMIT;"}
# Numbers in the database file's header that applications set and iterdump leaves out.
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
        return {"server": f"SQLite {sqlite3.sqlite_version}", "dump_tool": "Python sqlite3 iterdump"}

    @contextmanager
    def dump(self):
        connection = self.connect(read_only=True)
        try:
            connection.execute("BEGIN")
            connection.execute("SELECT count(*) FROM sqlite_master").fetchone()  # pins the snapshot
            values = {name: connection.execute(f"PRAGMA {name}").fetchone()[0] for name in HEADER_VALUES}
            header = [f"PRAGMA {name} = {value};" for name, value in values.items()]
            yield SQLiteDumpStream(connection, header)
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

    def count_rows(self, table):
        connection = self.connect(read_only=True)
        try:
            quoted = '"' + table.replace('"', '""') + '"'
            return connection.execute(f"SELECT count(*) FROM {quoted}").fetchone()[0]
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
    """The SQL of ``iterdump``, in chunks of ``CHUNK_SIZE``, counting INSERTs per table; the
    ``header`` statements (PRAGMAs that set the file header's numbers) go in before its final
    COMMIT, so that they are part of the same transaction."""

    restore_requirements = None  # a SQLite dump needs nothing outside its file

    def __init__(self, connection, header=()):
        self.connection = connection
        self.header = list(header)
        self.row_counts = {}

    def __iter__(self):
        buffer = []
        size = 0
        counts = self.row_counts
        for line in self.lines():
            if line.startswith('INSERT INTO "'):
                table = line[13 : line.index('" VALUES(', 13)].replace('""', '"')
                counts[table] = counts.get(table, 0) + 1
            buffer.append(line)
            size += len(line) + 1
            if size >= CHUNK_SIZE:
                yield ("\n".join(buffer) + "\n").encode()
                buffer, size = [], 0
        if buffer:
            yield ("\n".join(buffer) + "\n").encode()

    def lines(self):
        for line in self.connection.iterdump():
            if line == "COMMIT;":
                yield from self.header
            yield line


def drop_everything(connection):
    """Remove every view, table and trigger, so the dump rebuilds the database exactly."""
    objects = connection.execute(
        "SELECT type, name FROM sqlite_master WHERE name NOT LIKE 'sqlite_%' AND type IN ('view', 'table', 'trigger')"
    ).fetchall()
    order = {"trigger": 0, "view": 1, "table": 2}
    for kind, name in sorted(objects, key=lambda item: order[item[0]]):
        quoted = '"' + name.replace('"', '""') + '"'
        connection.execute(f"DROP {kind.upper()} IF EXISTS {quoted}")
    if connection.execute("SELECT 1 FROM sqlite_master WHERE name = 'sqlite_sequence'").fetchone():
        connection.execute('DELETE FROM "sqlite_sequence"')


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
