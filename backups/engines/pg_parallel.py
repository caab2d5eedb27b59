"""The PostgreSQL engine's parallel load: a dump restored into a new database beside the live one
by several sessions at once (``BACKUP_RESTORE_JOBS``), before the switch.

A dump is one transaction, which a single session replays on one core. A database that nobody
uses yet needs no such transaction: a failure drops it whole. So the dump is read once, in order,
and split at the entries pg_restore marks (``-- Name: ...; Type: ...``):

- everything before the first table's rows (schemas, types, functions, tables) runs in one
  session and one transaction, the dump's own, which commits before any row is loaded;
- the rows of every table go out in chunks of whole lines to a pool of sessions, each chunk to
  whichever session is free, so a big table loads on several cores (its rows' physical order,
  which only a SELECT without ORDER BY shows, then differs from the live database's);
- indexes and constraints (``INDEX``, ``CONSTRAINT`` entries: primary keys, unique, exclusion and
  check constraints) are built by the pool once every row is in, side by side, those of the
  tables with the most data first (as pg_restore orders its work): the longest builds start
  together, and the short ones fill the gaps, rather than one long build running alone at the
  end. A plain primary key
  or unique constraint of an ordinary table is built as its unique index, then made the constraint
  (``ADD CONSTRAINT ... USING INDEX``, which only links the two) by the first session once the pool
  is done: ``ADD CONSTRAINT`` would lock the table against every other index built on it meanwhile,
  while index builds on one table run side by side. The catalog ends up the same either way. The
  flags an entry sets on its table (``CLUSTER ON``, ``REPLICA IDENTITY USING INDEX``) are set then
  too: two of them on one table, each after its index build in a session of its own, deadlock;
- every other entry (sequence values, large objects, foreign keys, triggers, rules, policies,
  grants, refreshes of materialized views...) runs in the first session, in the dump's order,
  after everything before it has finished, in a transaction of its own until the pool is next
  given work.

Entries are found by a small lexer that knows PostgreSQL's quoting (strings, quoted names,
dollar quotes, comments), so text inside a function body is never taken for an entry. The first
session is ``psql`` fed through its standard input, as an in-place restore is; the pool's are
connections of this process, whose rows go straight into COPY. A session that fails stops them
all, and the caller then drops the new database.
"""

import codecs
import collections
import queue
import re
import secrets
import subprocess
import threading

from ..exceptions import RestoreFailed
from .base import CHUNK_SIZE, STDERR_LIMIT, describe_exit, tool_missing

# Entries whose statements the pool runs side by side once the rows are in.
PARALLEL_KINDS = frozenset({b"INDEX", b"CONSTRAINT"})
# Blank lines and comments (the text of a table's entry around its rows, or of a key's entry around
# its statement); a last comment may end without its newline.
BLANK_OR_COMMENT_LINES = rb"(?:[ \t]*\n|--[^\n]*\n)*"
NOTHING_TO_RUN = re.compile(BLANK_OR_COMMENT_LINES + rb"(?:--[^\n]*)?")
# A constraint entry that is a plain primary key or unique constraint, as pg_dump writes one; any
# option (INCLUDE, WITH, a tablespace, DEFERRABLE, NULLS NOT DISTINCT, CLUSTER ON...) is not.
IDENTIFIER = rb'(?:[a-z_][a-z0-9_$]*|"(?:[^"]|"")+")'
PLAIN_KEY = re.compile(
    rb"(?P<before>%(lines)s)ALTER TABLE ONLY (?P<table>%(id)s\.%(id)s)\n"
    rb"    ADD CONSTRAINT (?P<name>%(id)s) (?P<kind>PRIMARY KEY|UNIQUE) \((?P<columns>%(id)s(?:, %(id)s)*)\);\n"
    rb"(?P<after>%(nothing)s)"
    % {b"id": IDENTIFIER, b"lines": BLANK_OR_COMMENT_LINES, b"nothing": NOTHING_TO_RUN.pattern}
)
# What pg_dump appends to an index's or a key's entry to set a flag of its table. Each takes a lock
# that conflicts with the index builds (SHARE) of the table's other entries: two of them on one
# table in two sessions of the pool deadlock. They run after the pool instead (see _to_pool).
TABLE_FLAG = re.compile(
    rb"ALTER TABLE (?:ONLY )?%(id)s\.%(id)s (?:CLUSTER ON|REPLICA IDENTITY USING INDEX) %(id)s;\n" % {b"id": IDENTIFIER}
)
# The table an index's or a constraint's entry builds on.
BUILT_ON = re.compile(
    rb"^(?:CREATE (?:UNIQUE )?INDEX %(id)s ON (?:ONLY )?|ALTER TABLE (?:ONLY )?)(%(id)s\.%(id)s)[ \n]"
    % {b"id": IDENTIFIER},
    re.M,
)
# The table a COPY loads: a name as pg_dump writes it, or else whatever comes before the columns
# (none for a table without columns: "COPY public.t  FROM stdin;").
COPIED_TABLE = re.compile(rb"COPY (%(id)s\.%(id)s|.+?) +(?:\(|FROM stdin;)" % {b"id": IDENTIFIER})
# A table's COPY statement whole, where a quoted name in it holds a newline (pg_dump writes the
# statement on one line otherwise), and the most of it waited for: 1,600 columns of 63 bytes.
COPY_STATEMENT = re.compile(rb'COPY (?:[^"\n]|"(?:[^"]|"")*+")*? FROM stdin;\n')
COPY_STATEMENT_LIMIT = 256 * 1024
# Builds held back to be handed out biggest first: up to this much of their text, so memory stays
# flat however many indexes a dump holds.
HELD_BUILDS_BYTES = 1024 * 1024
ORDINARY_TABLE = "SELECT relkind = 'r' FROM pg_catalog.pg_class WHERE oid = pg_catalog.to_regclass(%s)"
# Session settings pg_restore changes between entries; each session is told the current ones.
TRACKED_SETTINGS = (b"SET default_tablespace = ", b"SET default_table_access_method = ")
HEADER = re.compile(rb"-- (?:Data for )?Name: .*; Type: ([A-Z][A-Z ]*); Schema: [^;\n]*; Owner: [^\n]*\n")
# What can change the lexer's state at the top level, or start a line it looks at.
TOKEN = re.compile(
    rb"\n(?=-- Name: |-- Data for Name: |SET default_ta|COPY |BEGIN;\n|COMMIT;\n|\\|ALTER TABLE )|"
    rb"--|/\*|(?<![A-Za-z0-9_$\x80-\xff])[Ee]'|'|\"|"
    rb"(?<![A-Za-z0-9_$\x80-\xff])\$(?:[A-Za-z_\x80-\xff][A-Za-z0-9_\x80-\xff]*)?\$"
)
E_STRING_END = re.compile(rb"\\.|'", re.DOTALL)
BLOCK_COMMENT = re.compile(rb"/\*|\*/")
# Bytes left unscanned at the end of the buffer until more arrive: no token is longer.
MARGIN = 256
QUEUED_CHUNKS = 4  # per session of the pool: memory stays flat
MARK = re.compile(rb"hoppybrew-mark-[0-9a-f]{16}")
WAIT = 0.2  # seconds between looks at whether another session has failed
# The session settings pg_restore writes at the top of a dump.
SESSION_SETTING = re.compile(rb"^(?:SET [a-z_]+ = [^\n]*;|SELECT pg_catalog\.set_config\([^\n]*\);)\n", re.M)
# The encoding of a dump's text (pg_dump writes the database's), and Python's codec for each server
# encoding whose name Python does not know as it is.
CLIENT_ENCODING = re.compile(rb"^SET client_encoding = '([A-Za-z0-9_]+)';$", re.M)
CODECS = {
    "UTF8": "utf-8",
    **{f"LATIN{n}": f"iso8859_{part}" for n, part in enumerate((1, 2, 3, 4, 9, 10, 13, 14, 15, 16), start=1)},
    **{f"WIN{page}": f"cp{page}" for page in (866, 874, 1250, 1251, 1252, 1253, 1254, 1255, 1256, 1257, 1258)},
    "EUC_CN": "gb2312",
    "KOI8R": "koi8_r",
    "KOI8U": "koi8_u",
}


TERMINATOR_LOOKS = 8  # backslashes looked at before copy_terminator searches for the whole line
NEWLINE = ord("\n")


class DumpCut(Exception):
    """The dump ended where it cannot end (its reader says; what it means is the caller's)."""


NEED = ("need", None)  # what Entries.scan() yields when it wants the next chunk sent in


class Entries:
    """The events of a dump: ("text", bytes) to run, ("entry", kind) where an entry starts (its
    header follows as text), ("setting", line) for a tracked SET, ("meta", line) for a line of
    psql's own, ("transaction", line) for a BEGIN or COMMIT of the dump's own, ("flag", line) for
    an index's or key's ``TABLE_FLAG`` statement, ("copy", line)
    where a table's rows start, ("rows", whole lines) and ("copy_end", its terminator). Every
    byte of the dump is in exactly one payload, in order (an entry's is its kind).

    Iterating pulls the dump from ``read``; ``scan()`` is the same as a generator to push chunks
    into (``send``; an empty one ends the dump), as the row counter of a backup does."""

    def __init__(self, read=None):
        self.read = read
        self.buffer = b""
        self.position = 0
        self.ended = False
        self.state = "top"
        self.closer = None  # of a dollar quote
        self.depth = 0  # of nested block comments
        self.kind = None  # of the current entry

    def __iter__(self):
        scan = self.scan()
        try:
            event = next(scan)
            while True:
                if event is NEED:
                    event = scan.send(self.read(CHUNK_SIZE))
                else:
                    yield event
                    event = next(scan)
        except StopIteration:
            return

    def append(self, chunk):
        """Drop what was handed out and add ``chunk``; an empty one is the end of the dump."""
        self.buffer = self.buffer[self.position :] + chunk
        self.position = 0
        self.ended = not chunk

    def scan(self):
        handed = 0  # the buffer up to here was handed out
        while True:
            if self.state == "copy":
                if handed < self.position:
                    yield "text", self.buffer[handed : self.position]
                yield from self._rows()
                handed = self.position
                continue
            found = self._scan()
            if found is None:  # the buffer is scanned: hand it out and read on
                if handed < self.position:
                    yield "text", self.buffer[handed : self.position]
                if self.ended:
                    return
                self.append((yield NEED))
                handed = 0
                continue
            event, start, end = found
            if handed < start:
                yield "text", self.buffer[handed:start]
            if event == "entry":
                yield "entry", self.kind
                yield "text", self.buffer[start:end]
            else:
                yield event, self.buffer[start:end]
            handed = end

    def _scan(self):
        """Advance to the next event: (event, start, end), or None when the rest of the buffer
        is needed to go on (it then ends at ``position``)."""
        buffer = self.buffer
        limit = len(buffer) if self.ended else len(buffer) - MARGIN
        while True:
            if self.state == "top":
                match = TOKEN.search(buffer, self.position)
                if match is None or match.start() >= limit:
                    self.position = max(self.position, limit)
                    return None
                token = match.group()
                if token == b"\n":
                    line_start = match.end()
                    line_end = buffer.find(b"\n", line_start)
                    if line_end < 0 and not self.ended:
                        self.position = match.start()
                        return None
                    line_end = len(buffer) if line_end < 0 else line_end + 1
                    line = buffer[line_start:line_end]
                    header = HEADER.fullmatch(line)
                    if header is not None:
                        self.kind = header.group(1)
                        self.position = line_end
                        return "entry", line_start, line_end
                    if line.startswith(b"\\"):
                        self.position = line_end
                        return "meta", line_start, line_end
                    if line in (b"BEGIN;\n", b"COMMIT;\n"):
                        self.position = line_end
                        return "transaction", line_start, line_end
                    if line.startswith(TRACKED_SETTINGS) and line.endswith(b";\n"):
                        self.position = line_end
                        return "setting", line_start, line_end
                    if self.kind in PARALLEL_KINDS and TABLE_FLAG.fullmatch(line):
                        self.position = line_end
                        return "flag", line_start, line_end
                    if self.kind == b"TABLE DATA" and line.startswith(b"COPY "):
                        # The whole statement, whose quoted names may hold newlines or " FROM stdin;".
                        statement = COPY_STATEMENT.match(buffer, line_start)
                        if statement is not None:
                            self.position = statement.end()
                            self.state = "copy"
                            return "copy", line_start, statement.end()
                        if not self.ended and len(buffer) - line_start < COPY_STATEMENT_LIMIT:
                            self.position = match.start()  # its end is yet to come
                            return None
                    self.position = line_start  # an ordinary line: scan it
                    continue
                self.position = match.end()
                if token == b"--":
                    self.state = "line-comment"
                elif token == b"/*":
                    self.state, self.depth = "block-comment", 1
                elif token == b"'":
                    self.state = "string"
                elif token in (b"E'", b"e'"):
                    self.state = "e-string"
                elif token == b'"':
                    self.state = "identifier"
                else:
                    self.state, self.closer = "dollar", token
            elif self.state == "line-comment":
                found = buffer.find(b"\n", self.position)
                if found < 0:
                    return self._need_more(len(buffer))
                self.position, self.state = found, "top"  # the newline may start a line of interest
            elif self.state in ("string", "identifier"):
                quote = b"'" if self.state == "string" else b'"'
                found = buffer.find(quote, self.position)
                if found < 0:
                    return self._need_more(len(buffer))
                if found + 1 == len(buffer) and not self.ended:
                    return self._need_more(found)  # a doubled quote, or the end?
                if buffer[found + 1 : found + 2] == quote:
                    self.position = found + 2
                else:
                    self.position, self.state = found + 1, "top"
            elif self.state == "e-string":
                match = E_STRING_END.search(buffer, self.position)
                if match is None:
                    return self._need_more(len(buffer) - 1)  # keep a backslash that ends the buffer
                if match.group() != b"'":
                    self.position = match.end()
                elif match.end() == len(buffer) and not self.ended:
                    return self._need_more(match.start())
                elif buffer[match.end() : match.end() + 1] == b"'":
                    self.position = match.end() + 1
                else:
                    self.position, self.state = match.end(), "top"
            elif self.state == "dollar":
                found = buffer.find(self.closer, self.position)
                if found < 0:
                    return self._need_more(len(buffer) - len(self.closer) + 1)
                self.position, self.state = found + len(self.closer), "top"
            else:  # block comment
                match = BLOCK_COMMENT.search(buffer, self.position)
                if match is None:
                    return self._need_more(len(buffer) - 1)
                self.depth += 1 if match.group() == b"/*" else -1
                self.position = match.end()
                if self.depth == 0:
                    self.state = "top"

    def _need_more(self, resume):
        """Inside a quote or comment that goes on past the buffer: scanning resumes at
        ``resume`` once more has been read. At the end of the stream, the rest is text."""
        if self.ended:
            self.position, self.state = len(self.buffer), "top"
        else:
            self.position = max(self.position, resume)
        return None

    def _rows(self):
        """The rows of a COPY, in chunks of whole lines, then its end."""
        while True:
            buffer = self.buffer
            if buffer.startswith(b"\\.\n", self.position):
                end = self.position
            else:
                end = copy_terminator(buffer, self.position)
            if end >= 0:
                if end > self.position:
                    yield "rows", buffer[self.position : end]
                # Past the terminator but for its newline, which may start a line of interest.
                self.position = end + 2
                self.state = "top"
                yield "copy_end", buffer[end : end + 2]
                return
            last_line = buffer.rfind(b"\n", self.position, max(self.position, len(buffer) - 3))
            if last_line >= self.position:
                yield "rows", buffer[self.position : last_line + 1]
                self.position = last_line + 1
            if self.ended:
                raise DumpCut("The dump ends inside a table's rows: the file is not whole.")
            self.append((yield NEED))


def copy_terminator(buffer, start):
    """Where the line ``\\.`` begins after the line that begins at ``start``, or -1. Rows seldom
    hold a backslash, so looking for backslashes (memchr) is several times faster than for the
    whole terminator, whose newline is everywhere; rows full of them get the plain search."""
    position = start + 1
    for _ in range(TERMINATOR_LOOKS):
        found = buffer.find(b"\\", position)
        if found < 0:
            return -1
        if buffer[found - 1] == NEWLINE and buffer.startswith(b".\n", found + 1):
            return found
        position = found + 1
    found = buffer.find(b"\n\\.\n", position - 1)
    return found + 1 if found >= 0 else -1


class Stopped(Exception):
    """Another session failed, or the load was given up."""


class SerialSession:
    """The serial session: psql, fed by a thread of its own from ``source`` (a queue of items)."""

    def __init__(self, load, source, preamble):
        args, env = load.command
        self.load = load
        self.source = source
        try:
            # psql answers marks on stderr, which it does not buffer (its stdout it does).
            self.process = subprocess.Popen(
                args, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env
            )
        except OSError as exc:
            raise tool_missing("psql", exc) from None
        self.said = collections.deque(maxlen=20)  # its last lines on stderr, for the error
        self.marks = {}
        self.settings = {}  # tracked settings as this session last received them
        self.preamble = preamble
        self.writer = threading.Thread(target=self._write, daemon=True)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.writer.start()
        self.reader.start()

    def _write(self):
        try:
            self.send(self.preamble)
            while (item := self.load.take(self.source)) is not None:
                self.perform(*item)
            self.process.stdin.close()
        except Stopped:
            pass
        except (OSError, ValueError):  # psql is gone: its reader tells why
            self.load.fail(self)
        except BaseException:
            self.load.fail(self)
            self.process.kill()
            raise

    def _read(self):
        for line in self.process.stderr:
            token = MARK.search(line)
            event = self.marks.pop(token.group(), None) if token else None
            if event is not None:
                event.set()
            else:
                self.said.append(line)
        if self.process.wait() != 0:
            self.load.fail(self)

    def perform(self, what, payload):
        if what == "sql":
            settings, text = payload
            for name, line in settings.items():
                if self.settings.get(name) != line:
                    self.send(line)
                    self.settings[name] = line
            self.send(text)
        else:
            self.mark(payload)

    def send(self, data):
        self.process.stdin.write(data)

    def mark(self, event):
        """Ask psql to answer once it has run everything before; ``event`` is set when it has."""
        token = f"hoppybrew-mark-{secrets.token_hex(8)}".encode()
        self.marks[token] = event
        self.send(b"DO $hoppybrew$BEGIN RAISE WARNING '" + token + b"'; END$hoppybrew$;\n")
        self.process.stdin.flush()

    def stop(self):
        if self.process.poll() is None:
            self.process.kill()

    def join(self):
        self.writer.join()
        self.reader.join()
        self.process.wait()

    def failure(self):
        code = self.process.poll()
        said = b"".join(self.said).decode("utf-8", "replace").strip()
        return describe_exit(code if code is not None else 1, said[-STDERR_LIMIT:])


class PoolSession:
    """A session of the pool: a connection of its own (psycopg2, autocommit) on a thread of its
    own, taking items from the shared queue. Rows go straight into COPY, without a psql to
    read them line by line: on two cores, that CPU is the server's."""

    def __init__(self, load, connect, settings):
        self.load = load
        self.connect = connect
        self.settings_sql = settings
        self.settings = {}  # tracked settings as this session last received them
        self.held = None  # an item taken while in a COPY, for after it
        self.error = None
        self.connection = None
        self.copied = collections.Counter()  # rows its COPYs loaded, by table
        self.writer = threading.Thread(target=self._work, daemon=True)
        self.writer.start()

    def _work(self):
        import psycopg2

        connection = None
        try:
            connection = self.connection = self.connect()
            with connection.cursor() as cursor:
                cursor.execute(self.settings_sql)
                while (item := self._next()) is not None:
                    self.perform(cursor, *item)
        except Stopped:
            pass
        except psycopg2.Error as exc:
            self.error = str(exc).strip()
            self.load.fail(self)
        except BaseException as exc:
            self.error = f"{type(exc).__name__}: {exc}"
            self.load.fail(self)
            raise
        finally:
            if connection is not None:
                connection.close()

    def _next(self):
        item, self.held = self.held or self.load.take(self.load.shared), None
        return item

    def perform(self, cursor, what, payload):
        if what == "rows":
            copy_line, rows = payload
            # As bytes: the statement is in the dump's encoding, which the session was set to.
            cursor.copy_expert(copy_line, CopyFeed(self, copy_line, rows), size=CHUNK_SIZE)
            self.copied[copied_table(copy_line)] += cursor.rowcount
        elif what == "sql":
            settings, text = payload
            changed = [line for name, line in settings.items() if self.settings.get(name) != line]
            self.settings.update(settings)
            cursor.execute(b"".join(changed) + text)
        elif what == "barrier":
            self.load.meet()

    def failure(self):
        return self.error or "stopped"

    def stop(self):
        connection = self.connection
        if connection is not None and not connection.closed:
            connection.cancel()  # a statement or COPY under way ends now

    def join(self):
        self.writer.join()


class CopyFeed:
    """What a pool session's COPY reads: the rows of its table for as long as the queue hands it
    more of them; anything else waits for the COPY to end."""

    def __init__(self, session, copy_line, rows):
        self.session = session
        self.copy_line = copy_line
        self.rows = rows

    def read(self, size=-1):
        if self.rows is None:
            item = self.session.load.take(self.session.load.shared)
            if item is not None and item[0] == "rows" and item[1][0] == self.copy_line:
                return item[1][1]
            self.session.held = item
            self.rows = b""
        rows, self.rows = self.rows, None if self.rows else b""
        return rows


class ParallelLoad:
    """Loads a dump (one that opens its own transaction, without its final COMMIT) with one
    serial session and a pool of ``jobs`` more, all psql ``command`` = (args, env)."""

    def __init__(self, command, connect, jobs, prelude):
        self.command = command  # (args, env) of psql, for the serial session
        self.connect = connect  # a new autocommit connection, for each session of the pool
        self.jobs = jobs
        self.prelude = prelude  # what every session starts with (bytes)
        self.failed = None
        self.stopping = threading.Event()
        self.serial = None
        self.serial_items = queue.Queue(maxsize=QUEUED_CHUNKS)
        self.pool = []
        self.shared = queue.Queue(maxsize=QUEUED_CHUNKS * jobs)
        self.barrier = threading.Barrier(jobs + 1)
        self.current = {}  # tracked settings as the dump last set them
        self.pool_settings = b""
        self.codec = "utf-8"  # of the dump's text, known from its head
        self.serial_pending = False  # the serial session has work not known to be done
        self.pool_work = None  # "rows" or "sql": what the pool was given since its last barrier
        self.in_transaction = True  # the serial session's: at first the dump's own
        self.lookup = None  # a connection of the dispatcher's, to ask what kind a table is
        self.after_pool = []  # for the serial session once the pool is done: keys' links, tables' flags
        self.row_bytes = collections.Counter()  # of each table's rows, by its name as the dump writes it
        self.held_builds = []  # (minus its table's row bytes, its order in the dump, item), for the pool
        self.held_bytes = 0

    # -- called by the sessions' threads ------------------------------------------------------

    def take(self, items):
        while not self.stopping.is_set():
            try:
                return items.get(timeout=WAIT)
            except queue.Empty:
                continue
        raise Stopped

    def fail(self, session):
        if self.failed is None and not self.stopping.is_set():
            self.failed = session
        self.stopping.set()
        self.barrier.abort()

    def wait(self, event):
        while not event.wait(WAIT):
            if self.stopping.is_set():
                raise Stopped

    def meet(self):
        try:
            self.barrier.wait()
        except threading.BrokenBarrierError:
            raise Stopped from None

    def put(self, items, item):
        while not self.stopping.is_set():
            try:
                items.put(item, timeout=WAIT)
                return
            except queue.Full:
                continue
        raise Stopped

    # -- the dispatcher -----------------------------------------------------------------------

    def run(self, read):
        """Load the dump ``read`` gives; returns the rows the server says each table's COPYs
        loaded ({table: rows}, tables named as ``OneTransactionDump.row_counts`` names them)."""
        try:
            self._dispatch(read)
        except Stopped:
            pass
        except DumpCut as cut:
            self.stop()
            raise RestoreFailed(f"Database restore failed; the database was not changed. {cut}") from None
        except BaseException:
            self.stop()
            raise
        finally:
            self._finish()
        if self.failed is not None:
            raise RestoreFailed(
                "Database restore failed; the database was not changed. psql said: " + self.failed.failure()
            )
        copied = sum((session.copied for session in self.pool), collections.Counter())
        return {table_name(table, self.codec): rows for table, rows in copied.items()}

    def _dispatch(self, read):
        head = []  # the dump up to its first entry: its session settings and its BEGIN
        collecting = None  # the text of an entry for the pool
        kind = None
        copy_line = table = None
        for event, payload in Entries(read):
            if event == "transaction":
                event = "text"  # the head's BEGIN: the serial session's, like any statement
            if self.serial is None:
                if event == "entry":
                    self._start_serial(b"".join(head))
                else:
                    if event == "setting":
                        self.current[setting_name(payload)] = payload
                    head.append(payload)
                    continue
            if event == "entry":
                if collecting is not None:
                    self._to_pool(kind, *collecting)
                    collecting = None
                kind = payload
                if kind in PARALLEL_KINDS:
                    self._before_pool("sql")
                    collecting = (dict(self.current), [], [])  # settings, text, flags
                elif kind != b"TABLE DATA":
                    self._before_serial()
            elif event == "setting":
                self.current[setting_name(payload)] = payload
            elif event == "meta":  # psql's own (\restrict, \unrestrict): the serial session's
                self.put(self.serial_items, ("sql", ({}, payload)))
            elif event == "copy":
                self._before_pool("rows")
                copy_line, table = payload, copied_table(payload)
            elif event == "rows":
                self.row_bytes[table] += len(payload)
                self.put(self.shared, ("rows", (copy_line, payload)))
            elif event == "flag":
                collecting[2].append(payload)
            elif event == "text":
                if collecting is not None:
                    collecting[1].append(payload)
                elif kind == b"TABLE DATA" and NOTHING_TO_RUN.fullmatch(payload):
                    continue  # the comments around a table's rows
                else:
                    if kind == b"TABLE DATA":
                        self._before_serial()
                    self._to_serial(payload)
        if self.serial is None:
            raise RestoreFailed("Database restore failed; the database was not changed. The dump holds no entries.")
        if collecting is not None:
            self._to_pool(kind, *collecting)
        self._before_serial()
        self._commit()
        self._sync_serial()

    def _start_serial(self, head):
        self.serial = SerialSession(self, self.serial_items, self.prelude + head)
        self.serial_pending = True
        # The pool's sessions start as the dump's own session does: with the SET lines pg_restore
        # writes at the top (the cleanup before them is the serial session's work).
        self.pool_settings = b"".join(SESSION_SETTING.findall(head))
        self.codec = dump_codec(head)

    def _to_serial(self, text):
        """The serial session runs in a transaction, opened again after each commit for the pool:
        its statements rely on it (a large object's descriptor lives as long as its transaction)."""
        if not self.in_transaction:
            text = b"BEGIN;\n" + text
            self.in_transaction = True
        self.put(self.serial_items, ("sql", (dict(self.current), text)))
        self.serial_pending = True

    def _to_pool(self, kind, settings, texts, flags):
        text = b"".join(texts)
        key = PLAIN_KEY.fullmatch(text) if kind == b"CONSTRAINT" else None
        if key is not None and self._is_ordinary_table(key["table"]):
            # Built side by side with the table's other indexes, linked after (see the top).
            name, table = key["name"], key["table"]
            index = b"CREATE UNIQUE INDEX %s ON %s USING btree (%s);\n" % (name, table, key["columns"])
            text = key["before"] + index + key["after"]
            self.after_pool.append(
                b"ALTER TABLE ONLY %s\n    ADD CONSTRAINT %s %s USING INDEX %s;\n" % (table, name, key["kind"], name)
            )
        self.after_pool.extend(flags)
        built_on = BUILT_ON.search(text)
        size = self.row_bytes[built_on.group(1)] if built_on else 0
        self.held_builds.append((-size, len(self.held_builds), ("sql", (settings, text))))
        self.held_bytes += len(text)
        if self.held_bytes > HELD_BUILDS_BYTES:
            self._hand_out_builds()

    def _hand_out_builds(self):
        """To the pool, the builds on the tables with the most data first."""
        for _size, _order, item in sorted(self.held_builds):
            self.put(self.shared, item)
        self.held_builds, self.held_bytes = [], 0

    def _is_ordinary_table(self, table):
        """Not a partitioned table, whose indexes cannot become constraints. A server that does
        not answer gets the dump's own statement (the pool's sessions report what is wrong)."""
        import psycopg2

        try:
            if self.lookup is None:
                self.lookup = self.connect()
            with self.lookup.cursor() as cursor:
                cursor.execute(ORDINARY_TABLE, (table_name(table, self.codec),))
                found = cursor.fetchone()
        except psycopg2.Error:
            return False
        return found is not None and found[0]

    def _commit(self):
        if self.in_transaction:
            self.put(self.serial_items, ("sql", ({}, b"COMMIT;\n")))
            self.in_transaction = False

    def _sync_serial(self):
        if self.serial_pending:
            done = threading.Event()
            self.put(self.serial_items, ("mark", done))
            self.wait(done)
            self.serial_pending = False

    def _before_pool(self, work):
        """The pool may start ``work`` ("rows" or "sql") once the serial session's work is done
        and committed and, for a change of work, the pool's own."""
        self._commit()
        self._sync_serial()
        if self.pool_work is not None and self.pool_work != work:
            self._barrier()
        while len(self.pool) < self.jobs:
            self.pool.append(PoolSession(self, self.connect, self.prelude + self.pool_settings))
        self.pool_work = work

    def _before_serial(self):
        if self.pool_work is not None:
            self._barrier()
            self.pool_work = None
        if self.after_pool:
            self._to_serial(b"".join(self.after_pool))
            self.after_pool = []

    def _barrier(self):
        """Wait until every session of the pool has run all it was given."""
        self._hand_out_builds()
        for _ in self.pool:
            self.put(self.shared, ("barrier", None))
        self.meet()
        self.barrier.reset()

    def stop(self):
        self.stopping.set()
        self.barrier.abort()
        for session in self.sessions():
            session.stop()

    def sessions(self):
        return [session for session in (self.serial, *self.pool) if session is not None]

    def _finish(self):
        """Close every session's input and wait for it to end; after a failure, end them all."""
        if self.stopping.is_set():
            self.stop()
        else:
            try:
                if self.serial is not None:
                    self.put(self.serial_items, None)
                for _ in self.pool:
                    self.put(self.shared, None)
            except Stopped:
                self.stop()
        for session in self.sessions():
            session.join()
        if self.lookup is not None:
            self.lookup.close()


def copied_table(copy_line):
    """The table a COPY line loads (bytes), as the dump names it: the key of its row counts."""
    return COPIED_TABLE.match(copy_line).group(1)


def dump_codec(head):
    """Python's codec for the text of the dump whose beginning is ``head``: that of the
    ``client_encoding`` it sets, UTF-8 where it sets none Python knows (SQL_ASCII has none)."""
    found = CLIENT_ENCODING.search(head)
    name = found.group(1).decode().upper() if found else "UTF8"
    codec = CODECS.get(name, name.lower())
    try:
        codecs.lookup(codec)
    except LookupError:
        return "utf-8"
    return codec


def table_name(table, codec):
    """A table's name (bytes, as ``copied_table`` gives it) as text, for the row counts."""
    return table.decode(codec, "replace")


def setting_name(line):
    return line.split(b"=", 1)[0]
