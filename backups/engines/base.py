"""The contract every database engine fulfils.

An engine knows how to dump one database (a Django alias) as plain SQL, how to replace that
database's whole content from such a dump (all or nothing where the database can roll back its
schema changes; the service undoes a failed restore elsewhere), and how to take the
per-database lock that keeps a restore and a backup of the same database apart. Everything else
(names, compression, storage, manifests, the catalog) is the service's business.
"""

import fcntl
import secrets
import shutil
import subprocess
import tempfile
import time
from contextlib import closing, contextmanager

from django.db import connections

from ..conf import backup_settings
from ..exceptions import DumpFailed, OperationInProgress, ToolMissing

STDERR_LIMIT = 64 * 1024
# Large enough that per-chunk work is noise, small enough that the few chunks in flight between
# the dump, the compressor threads and the storage keep the process's memory flat and small.
CHUNK_SIZE = 256 * 1024
# A dump tool writes a few KiB at a time. Reading it from a 1 MiB pipe, and pausing briefly
# whenever the pipe was nearly empty, lets its output pile up into large chunks: this process
# then wakes up a few thousand times per GB instead of a few hundred thousand, and spends 40%
# less CPU reading. 1 MiB holds several milliseconds of pg_dump's output.
PIPE_SIZE = 1024 * 1024
PAUSE_SECONDS = 0.001


class DatabaseEngine:
    """Base class; one subclass per Django database vendor."""

    #: Django's ``connection.vendor`` this engine serves, also recorded in manifests.
    vendor = None
    #: Command-line tools the engine runs, checked before work starts.
    required_tools = ()
    #: False when the database cannot roll back a failed restore (MySQL's DDL commits at once);
    #: the service then makes the pre-restore backup mandatory and restores it on failure.
    restore_is_transactional = True
    #: Lines that differ between two dumps of the same data (random keys, dates); a restore
    #: drill ignores them when it compares its re-dump with the backup.
    volatile_prefixes = ()
    #: The database a drill server's URL names when it names none (where CREATE DATABASE runs).
    maintenance_database = ""

    def __init__(self, alias, settings_dict=None):
        self.alias = alias
        # A scratch database for a restore drill is the alias's settings with another NAME.
        self.settings_dict = settings_dict or connections[alias].settings_dict

    # -- identity -------------------------------------------------------------------------

    @property
    def database_name(self):
        return str(self.settings_dict["NAME"])

    @property
    def database_host(self):
        return self.settings_dict.get("HOST") or ""

    def describe(self):
        """Name and host as a person would write them, for messages."""
        host = self.database_host
        return f"{self.database_name} on {host}" if host else self.database_name

    # -- hooks ------------------------------------------------------------------------------

    def check_tools(self):
        """Raise ``ToolMissing`` naming every tool that is not on PATH."""
        missing = [tool for tool in self.required_tools if shutil.which(tool) is None]
        if missing:
            raise ToolMissing(
                f"{', '.join(missing)} not found on PATH; install the {self.vendor} client tools "
                "on the machine that runs the backups."
            )

    def connection_params(self):
        """The driver's connection parameters, made by Django from this engine's settings: the
        alias's own, or a drill's scratch database's (another name, perhaps another server)."""
        wrapper = connections[self.alias]
        if self.settings_dict is wrapper.settings_dict:
            return wrapper.get_connection_params()
        return type(wrapper)(self.settings_dict, self.alias).get_connection_params()

    def connect(self):
        """A DB-API connection of its own, outside Django's (locks and small queries must not
        share Django's, which a restore closes); raise ``DatabaseUnavailable`` when it fails."""
        raise NotImplementedError("subclasses of DatabaseEngine must provide a connect() method")

    def query_value(self, sql):
        """The first value ``sql`` answers, on a connection of its own."""
        return self.query_column(sql)[0]

    def query_column(self, sql):
        """The first value of every row ``sql`` answers, on a connection of its own."""
        connection = self.connect()
        try:
            with closing(connection.cursor()) as cursor:
                cursor.execute(sql)
                return [row[0] for row in cursor.fetchall()]
        finally:
            connection.close()

    def versions(self):
        """``{"server": ..., "dump_tool": ...}`` for the manifest; raises ``ToolMissing`` when
        the dump tool cannot handle this server, ``DatabaseUnavailable`` when there is none."""
        raise NotImplementedError("subclasses of DatabaseEngine must provide a versions() method")

    @contextmanager
    def dump(self):
        """Yield the database as plain SQL from one consistent snapshot: an iterable of byte
        chunks with ``row_counts`` (rows per table, counted as they passed; may be None). On
        leaving the block, raise ``DumpFailed`` if the dump did not complete."""
        raise NotImplementedError("subclasses of DatabaseEngine must provide a dump() method")
        yield

    def comparable(self, lines):
        """The lines of a dump as a restore drill compares them, the backup's and the restored
        database's alike: as they are, unless some may rightly come in another order."""
        return lines

    def dump_as_made(self, manifest):
        """``dump()``, as the dump tool that made the backup of ``manifest`` wrote it (its
        ``dump_tool_version``): what a restore drill compares the backup with. Engines whose
        dump has changed its form keep the old form here."""
        return self.dump()

    def restore(self, stream, lock_timeout):
        """Replace everything in the database with the plain SQL read from ``stream``.

        All or nothing: on any error nothing is changed and ``RestoreFailed`` carries the
        tool's message. Objects that are not in the dump (a table added since) are removed.
        Raise ``DatabaseBusy`` when other sessions keep their locks beyond ``lock_timeout``
        seconds.

        An engine that cannot roll back (``restore_is_transactional = False``) raises
        ``RestoreIncomplete`` when it stopped after changing the database, and the service
        puts the pre-restore backup back; any other error still means nothing was changed.
        """
        raise NotImplementedError("subclasses of DatabaseEngine must provide a restore() method")

    @contextmanager
    def lock(self, exclusive, purpose="operations"):
        """Hold a per-database lock and raise ``OperationInProgress`` at once when it is taken.

        ``operations``: shared for backups (they can run side by side), exclusive for restores.
        ``schedule``, ``cleanup`` and ``verify``: one host at a time runs a scheduled job or a
        restore drill of this database. The lock must
        vanish with its holder, should the process die, and be seen by every host that uses
        the same database."""
        raise NotImplementedError("subclasses of DatabaseEngine must provide a lock() method")
        yield

    # -- restore beside, then switch -------------------------------------------------------------

    def can_restore_beside(self):
        """Whether ``restore_beside`` can work here (the role may create and rename databases).
        Engines that cannot keep this answer."""
        return False

    def restore_beside(self, stream, lock_timeout, check):
        """Load the dump into a new database next to this one, ``check(engine, copied)`` it (an
        engine for the loaded database, and the rows the load saw the server take into each table,
        ``{table: rows}``, or None where it cannot tell; raising stops here), then give it this
        database's name in one short step that ends the sessions on both; returns the name the
        old database now has (the undo, kept for BACKUP_RESTORE_KEEP_OLD_HOURS). On any error
        before that step ends, the live database is as it was and the new one is gone. Only where
        ``can_restore_beside()``."""
        raise NotImplementedError(f"{self.vendor} databases cannot be restored beside the live one")

    def undo_databases(self):
        """The undo databases that ``restore_beside`` left of this one: ``(name, made_at)`` pairs."""
        return []

    def interrupted_loads(self):
        """The new databases that ``restore_beside`` made for this one and could not drop, its
        process killed during the load: names. Only the holder of the ``operations`` lock (which
        keeps restores out) may take them for leftovers."""
        return []

    def drop_undo_database(self, name):
        """Drop an undo database listed by ``undo_databases``."""
        raise NotImplementedError(f"{self.vendor} databases have no undo databases")

    def drop_interrupted_load(self, name):
        """Drop ``name`` if ``interrupted_loads`` lists it, and say whether it did; ``DatabaseBusy``
        if it has sessions."""
        raise NotImplementedError(f"{self.vendor} databases are never restored beside the live one")

    def check_restore_requirements(self, requirements):
        """Raise ``InvalidRequest`` when this database lacks what a backup's
        ``restore_requirements`` (from its manifest; None for older backups) say it needs, before
        anything is changed. Engines whose dumps need nothing outside the database keep this."""

    def lock_taken(self, purpose):
        """The error for a lock that someone else holds, saying what they are doing."""
        doing = {
            "operations": "Another backup or restore",
            "schedule": "The scheduled backup",
            "cleanup": "A cleanup",
            "verify": "A verification",
        }[purpose]
        return OperationInProgress(
            f"{doing} of the database {self.database_name} is running; try again when it has finished."
        )

    def size_bytes(self):
        """The database's current size on disk, for confirmation pages."""
        raise NotImplementedError("subclasses of DatabaseEngine must provide a size_bytes() method")

    def create_database(self, name, advice=None):
        """Create a new, empty database ``name`` next to this one (the same server; SQLite: a
        file path) and return an engine for it. Raise ``DatabaseUnavailable`` when it cannot be
        created (no privilege, the name is taken), with ``advice`` on what to do, if given:
        never reuse a database that exists. An engine's ``scratch_options`` may add keywords."""
        raise NotImplementedError("subclasses of DatabaseEngine must provide a create_database() method")

    def drop_database(self, name):
        """Remove the database ``name`` that ``create_database()`` made; nothing when it is gone."""
        raise NotImplementedError("subclasses of DatabaseEngine must provide a drop_database() method")

    @contextmanager
    def scratch(self):
        """A new, empty database of the same kind, on the drill server (``drill_server()``), for
        restore drills, the proofs of restores that cannot roll back, and model restores: yields
        an engine for it and removes it on exit. Never the live database."""
        server = type(self)(self.alias, self.drill_server())  # BACKUP_VERIFY_DATABASE_URL's, if set
        engine = server.create_database(self.scratch_name(), advice=self.scratch_advice(), **self.scratch_options())
        try:
            with server.kept_as_scratch(engine.database_name, self.database_name):
                yield engine
        finally:
            server.drop_database(engine.database_name)

    @contextmanager
    def kept_as_scratch(self, name, database):
        """Hook: while the block runs, the new database ``name`` is a scratch database of
        ``database``, in use: marked with the time it was made, so that ``stale_scratches``
        knows it if its process dies, and never taken for one meanwhile. Engines that do not
        mark theirs keep this."""
        yield

    def stale_scratches(self, made_before):
        """The scratch databases of this one that killed processes left on the drill server:
        marked by ``kept_as_scratch`` before ``made_before`` (no drill lasts that long)."""
        return []

    def drop_stale_scratch(self, name, made_before):
        """Drop ``name`` if ``stale_scratches`` lists it, and say whether it did; ``DatabaseBusy``
        if it has sessions."""
        raise NotImplementedError(f"{self.vendor} databases do not mark their scratch databases")

    def scratch_options(self):
        """What ``create_database`` is given for a scratch database of this one (keyword
        arguments), beyond its name."""
        return {}

    def scratch_advice(self):
        """What to do when a scratch database cannot be created, for the error."""
        return None

    def drill_server(self):
        """Settings for a connection to the server where restore drills make their scratch
        databases: BACKUP_VERIFY_DATABASE_URL's server, role and database when it is a server of
        this kind, else this database itself. The site's role then needs no CREATEDB."""
        if not self.drills_elsewhere():
            return self.settings_dict
        server = backup_settings.VERIFY_DATABASE_URL
        given = {key: server[key] for key in ("HOST", "PORT", "USER", "PASSWORD")}
        return {**self.settings_dict, **given, "NAME": server["NAME"] or self.maintenance_database}

    def drills_elsewhere(self):
        """Whether BACKUP_VERIFY_DATABASE_URL names a server for this engine's drills."""
        server = backup_settings.VERIFY_DATABASE_URL
        return server is not None and server["vendor"] == self.vendor

    def drill_blocker(self):
        """Why restore drills of this database cannot make their scratch database, or None
        (also when that cannot be told beforehand)."""
        return None if self.drills_elsewhere() else self.cannot_create_databases()

    def cannot_create_databases(self):
        """Hook: why this database's own connection may not create databases, or None."""
        return None

    def scratch_name(self):
        """A new database's name for a restore drill, recognisably this one's."""
        return f"{name_prefix(self.database_name)}_drill_{secrets.token_hex(4)}"

    def count_rows(self, table, among=()):
        """The number of rows in ``table``, named as in the dump's ``row_counts``, whose tables
        are ``among`` (where a table's count depends on which others have rows of their own)."""
        raise NotImplementedError("subclasses of DatabaseEngine must provide a count_rows() method")

    def recorded_rows(self, table_rows):
        """A manifest's rows by table (``row_counts`` of its dump), named as ``count_rows`` and a
        load's counts name them; engines whose names changed between versions map the old ones."""
        return table_rows


def name_prefix(name):
    """The start of a database's name, for the names of databases made from it: at most 40
    bytes, so that what follows it survives PostgreSQL's 63-byte cut of every name (a letter of
    another script than Latin takes two bytes or more)."""
    return name.encode()[:40].decode("utf-8", "ignore")


class RowCounter:
    """Counts rows per table while a dump streams past.

    A dump alternates between statements and a table's rows. Subclasses say how to find where a
    table's rows start (``find_rows``, which sets ``table``) and how to count them up to their
    end (``pass_rows``, which clears it); each returns the position in ``chunk`` to go on from.
    """

    def __init__(self):
        self.counts = {}
        self.table = None  # the table whose rows are passing, if any

    def feed(self, chunk):
        position = 0
        while position < len(chunk):
            if self.table is None:
                position = self.find_rows(chunk, position)
            else:
                position = self.pass_rows(chunk, position)

    def finish(self):
        """The dump has ended."""

    def find_rows(self, chunk, position):
        raise NotImplementedError("subclasses of RowCounter must provide a find_rows() method")

    def pass_rows(self, chunk, position):
        raise NotImplementedError("subclasses of RowCounter must provide a pass_rows() method")


class OutputCut(DumpFailed):
    """Raised by a stream that read its tool's output to the end and found it cut short: where
    a tool failed, ``ProcessDump`` reports the tool's own message instead, which says why."""


class ProcessDump:
    """A dump tool running as a child process whose stdout is the SQL stream.

    Arguments are lists (no shell); secrets travel in ``env``. stderr goes to a temporary file so
    a chatty tool can never block on a full pipe, and its tail becomes the error.
    """

    def __init__(self, args, env, tool):
        self.args, self.env, self.tool = args, env, tool

    @contextmanager
    def run(self):
        with tempfile.TemporaryFile() as stderr:
            try:
                process = subprocess.Popen(
                    self.args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=stderr, env=self.env
                )
            except OSError as exc:
                raise tool_missing(self.tool, exc) from None
            cut = None
            try:
                try:
                    yield process.stdout
                except OutputCut as exc:
                    cut = exc  # the output has ended, so has the tool: its exit status comes first
            except BaseException:
                process.kill()
                process.wait()
                raise
            finally:
                process.stdout.close()
            returncode = process.wait()
            if returncode != 0:
                raise DumpFailed(f"{self.tool} failed: {describe_exit(returncode, read_tail(stderr))}")
            if cut is not None:
                raise cut


def read_tail(stream, limit=STDERR_LIMIT):
    """The last ``limit`` bytes a process wrote to ``stream`` (a file), decoded for people."""
    stream.seek(0, 2)
    size = stream.tell()
    stream.seek(max(0, size - limit))
    return stream.read().decode("utf-8", "replace").strip()


def describe_exit(returncode, stderr):
    if returncode < 0:
        import signal

        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = str(-returncode)
        reason = f"killed by signal {name}"
    else:
        reason = f"exit status {returncode}"
    return f"{stderr} ({reason})" if stderr else reason


def tool_missing(tool, exc):
    """The error for a client tool that cannot be started (not installed, not executable)."""
    if isinstance(exc, FileNotFoundError):
        return ToolMissing(f"{tool} not found on PATH; install the database client tools where backups run.")
    return ToolMissing(f"{tool} cannot be started ({exc.strerror or exc}); check its installation.")


def run_fed(args, env, tool, prelude, stream, epilogue=b""):
    """Run a restore tool fed ``prelude``, ``stream`` and ``epilogue`` on its stdin (see
    ``feed_process``); returns its exit status and the tail of what it wrote on stderr."""
    with tempfile.TemporaryFile() as stderr:
        try:
            process = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=stderr, env=env)
        except OSError as exc:
            raise tool_missing(tool, exc) from None
        feed_process(process, prelude, stream, epilogue)
        return process.wait(), read_tail(stderr)


def run_tool(args, env, tool, input_bytes=None, timeout=60):
    """Run a short command and return its stdout; raise ``ToolMissing`` or ``DumpFailed``."""
    try:
        result = subprocess.run(args, input=input_bytes, capture_output=True, env=env, timeout=timeout)
    except OSError as exc:
        raise tool_missing(tool, exc) from None
    if result.returncode != 0:
        stderr = result.stderr.decode("utf-8", "replace").strip()[-STDERR_LIMIT:]
        raise DumpFailed(f"{tool} failed: {describe_exit(result.returncode, stderr)}")
    return result.stdout.decode("utf-8", "replace")


class DumpStream:
    """What ``dump()`` yields: an iterable of SQL chunks (of any size up to ``CHUNK_SIZE``),
    and the rows counted per table."""

    #: What the target of a restore must offer, recorded in the manifest and checked by
    #: ``check_restore_requirements`` before anything is touched (PostgreSQL: the roles granted to).
    restore_requirements = None

    def __init__(self, stdout, counter=None):
        self.stdout = stdout
        self.counter = counter

    def __iter__(self):
        # read1 returns what the pipe holds instead of waiting for a full chunk.
        read = getattr(self.stdout, "read1", self.stdout.read)
        pause = PAUSE_SECONDS if enlarge_pipe(self.stdout) else 0
        feed = self.counter.feed if self.counter is not None else None
        while True:
            chunk = read(CHUNK_SIZE)
            if not chunk:
                if self.counter is not None:
                    self.counter.finish()
                return
            if feed is not None:
                feed(chunk)
            yield chunk
            if pause and len(chunk) < CHUNK_SIZE // 2:
                time.sleep(pause)

    @property
    def row_counts(self):
        return dict(self.counter.counts) if self.counter is not None else None


def enlarge_pipe(stream):
    """Give the pipe behind ``stream`` a ``PIPE_SIZE`` buffer; False when it is no pipe or the
    system refuses (another OS, or the user's pipe memory is used up)."""
    try:
        return fcntl.fcntl(stream.fileno(), fcntl.F_SETPIPE_SZ, PIPE_SIZE) >= PIPE_SIZE
    except (AttributeError, OSError, ValueError):
        return False


def feed_process(process, prelude, stream, epilogue=b""):
    """Write ``prelude``, all of ``stream``, then ``epilogue`` to the process's stdin.

    If reading the stream fails (a damaged file, a checksum that does not match), the process
    is killed before its stdin is closed, so that it never takes the failure for the end of its
    input. Only the ``epilogue`` may finish the work (psql's COMMIT).
    """
    try:
        process.stdin.write(prelude)
        while True:
            chunk = stream.read(CHUNK_SIZE)
            if not chunk:
                break
            process.stdin.write(chunk)
        process.stdin.write(epilogue)
    except BrokenPipeError:
        pass  # psql stopped reading: it failed, and its exit status and stderr say why
    except BaseException:
        process.kill()
        process.wait()
        _close_quietly(process.stdin)
        raise
    _close_quietly(process.stdin)


def _close_quietly(stream):
    try:
        stream.close()
    except BrokenPipeError:
        pass
