"""The backup stream: chunks of any size, exact row counts, and files the standard tools read.

The stream reads whatever the dump tool's pipe holds, so chunk boundaries fall anywhere; the
compressors cut their own blocks. None of that may change a byte or a count.
"""

import random
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from backups import compression, services
from backups.engines.base import CHUNK_SIZE, DumpStream, OutputCut, ProcessDump
from backups.engines.pg_parallel import copy_terminator
from backups.engines.postgresql import OneTransactionDump
from backups.exceptions import DumpFailed
from backups.models import Backup
from backups.storage import get_storage

from .conftest import DATASETS, as_superuser, by_hand_psql, execute, fetch, new_database, read_manifest

COMMAND = services.Actor.command()

# A plain dump in miniature, with what could fool a counter: a row that starts with "COPY ",
# rows holding an escaped backslash before a dot (the data "\." is written "\\."), an empty
# table right after another block, a table name with a space, and a function whose body looks
# like a table's rows; and a large object, which plain pg_dump wraps in a transaction of its own.
DUMP = rb"""--
-- PostgreSQL database dump
--
SET statement_timeout = 0;

--
-- Name: looks_like_rows; Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.looks_like_rows() RETURNS text LANGUAGE sql AS $_$SELECT '
--
-- Data for Name: brew; Type: TABLE DATA; Schema: public; Owner: -
--

COPY public.brew (id, name) FROM stdin;
9	not a row
\.
'$_$;

--
-- Data for Name: brew; Type: TABLE DATA; Schema: public; Owner: -
--

COPY public.brew (id, name) FROM stdin;
1	Pale Ale
2	COPY public.fake (id) FROM stdin;
3	ends with \\.
\.

--
-- Data for Name: empty; Type: TABLE DATA; Schema: public; Owner: -
--

COPY public.empty (id) FROM stdin;
\.

--
-- Data for Name: marks; Type: TABLE DATA; Schema: public; Owner: -
--

COPY public.marks (mark) FROM stdin;
\\.
.
\.

--
-- Name: later; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.later (id integer);

--
-- Data for Name: odd name; Type: TABLE DATA; Schema: public; Owner: -
--

COPY public."odd name" (id, notes) FROM stdin;
1	first\nline
2	\N
\.

--
-- Name: brew_id_seq; Type: SEQUENCE SET; Schema: public; Owner: -
--

SELECT pg_catalog.setval('public.brew_id_seq', 3, true);


--
-- Data for Name: BLOBS; Type: BLOBS; Schema: -; Owner: -
--

BEGIN;

SELECT pg_catalog.lo_open('16400', 131072);
SELECT pg_catalog.lowrite(0, '\x424547494e3b0a');
SELECT pg_catalog.lo_close(0);

COMMIT;

--
-- PostgreSQL database dump complete
--

"""
COUNTS = {"public.brew": 3, "public.empty": 0, "public.marks": 2, 'public."odd name"': 2}
CLEANUP = "-- the cleanup\n"
# What pg_restore --single-transaction writes for it, with the cleanup after the BEGIN.
ONE_TRANSACTION = (
    DUMP.replace(b"SET statement_timeout", b"BEGIN;\n-- the cleanup\n\nSET statement_timeout", 1)
    .replace(b"--\n\nBEGIN;\n\nSELECT pg_catalog.lo_open", b"--\n\nSELECT pg_catalog.lo_open")
    .replace(b"lo_close(0);\n\nCOMMIT;\n\n--", b"lo_close(0);\n\n--")
    .replace(b"--\n-- PostgreSQL database dump complete", b"COMMIT;\n\n--\n-- PostgreSQL database dump complete")
)


class Chunks:
    """A tool's stdout that hands out the given chunks."""

    def __init__(self, chunks):
        self.chunks = list(chunks)

    def read(self, size):
        assert all(len(chunk) <= size for chunk in self.chunks)
        return self.chunks.pop(0) if self.chunks else b""


def one_transaction(chunks):
    stream = OneTransactionDump(Chunks(chunks), CLEANUP, wrap=True)
    return b"".join(stream), stream.row_counts


def test_the_backup_stream_is_one_transaction_with_exact_counts_wherever_the_dump_is_split():
    assert ONE_TRANSACTION.count(b"\nBEGIN;\n") == ONE_TRANSACTION.count(b"\nCOMMIT;\n") == 1
    assert one_transaction([DUMP]) == (ONE_TRANSACTION, COUNTS)
    for split in range(1, len(DUMP)):
        assert one_transaction([DUMP[:split], DUMP[split:]]) == (ONE_TRANSACTION, COUNTS), f"split at byte {split}"
    generator = random.Random(9)
    for _ in range(200):
        chunks, position = [], 0
        while position < len(DUMP):
            size = generator.randint(1, 40)
            chunks.append(DUMP[position : position + size])
            position += size
        assert one_transaction(chunks) == (ONE_TRANSACTION, COUNTS)


def test_the_end_of_a_tables_rows_is_found_among_backslashes_of_every_kind():
    """copy_terminator looks at backslashes first and falls back to the plain search when there
    are many: both find what the plain search finds, and nothing inside a row."""
    rows = [b"1\t\\N\n", b"\\.\tnot the end\n", b"a\\\\.\n", b"\\N\t\\N\t\\N\n", b"x\\.\n", b"\\.y\n", b"plain\n"]
    generator = random.Random(19)
    for _ in range(2000):
        body = b"".join(generator.choice(rows) for _ in range(generator.randint(0, 12)))
        text = body + generator.choice([b"\\.\n", b"\\.", b"", b"\\.\nmore\n\\.\n"])
        for start in {0, len(body) // 2, len(body)}:
            found = text.find(b"\n\\.\n", start)
            assert copy_terminator(text, start) == (found + 1 if found >= 0 else -1), (text, start)


def test_the_backup_stream_refuses_what_would_not_be_one_transaction():
    stray = DUMP.replace(
        b"CREATE TABLE public.later (id integer);", b"COMMIT;\nCREATE TABLE public.later (id integer);"
    )
    with pytest.raises(DumpFailed, match="BEGIN or COMMIT outside large objects"):
        one_transaction([stray])
    for cut in (DUMP[: DUMP.index(b"--\n-- PostgreSQL database dump complete")], DUMP[: DUMP.index(b"2\t\\N")]):
        with pytest.raises(OutputCut, match="not whole"):
            one_transaction([cut])
    assert one_transaction([]) == (b"", {})  # no output at all: the tool's exit status tells why


@pytest.mark.parametrize("status", [0, 3])
def test_a_dump_cut_short_reports_the_tools_own_failure_first(status):
    """Where the tool failed, its stderr says why; where it claims success, the stream does."""
    half = DUMP[: len(DUMP) // 2]
    writer = (
        f"import sys; sys.stdout.buffer.write({half!r}); "
        f"sys.stderr.write('server closed the connection'); sys.exit({status})"
    )
    with pytest.raises(DumpFailed) as failure:
        with ProcessDump([sys.executable, "-c", writer], None, "pg_dump").run() as stdout:
            b"".join(OneTransactionDump(stdout, CLEANUP, wrap=True))
    expected = "pg_dump failed: .*server closed the connection" if status else "not whole"
    assert failure.match(expected)


WRITER = """
import sys, time
dump = sys.stdin.buffer.read()
out = sys.stdout.buffer
for start in range(0, len(dump), 7):  # dribbles, as pg_dump does when the server is slow
    out.write(dump[start:start + 7]); out.flush()
    if start % 700 == 0:
        time.sleep(0.001)
out.write(dump * 400)  # then a burst larger than the pipe
out.flush()
"""


def test_the_dump_stream_delivers_a_pipe_unchanged_whatever_the_writer_does():
    process = subprocess.Popen(
        [sys.executable, "-c", WRITER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    process.stdin.write(DUMP)
    process.stdin.close()
    chunks = list(DumpStream(process.stdout))
    assert process.wait() == 0
    assert b"".join(chunks) == DUMP * 401
    assert max(len(chunk) for chunk in chunks) <= CHUNK_SIZE


@pytest.fixture
def big_brew(db):
    """Enough rows for many compression blocks, spread over several threads."""
    execute(
        "default",
        "CREATE TABLE brew (id integer PRIMARY KEY, notes text)",
        "INSERT INTO brew SELECT i, md5(i::text) || repeat(' hoppy', i % 40) FROM generate_series(1, 60000) i",
    )


def dense_numbers(seed):
    """Rows of random floats, as COPY writes them: where gzip's level 3 saves about 1 %."""
    generator = random.Random(seed)
    return b"".join(b"%d\t%.15f\t%.15f\n" % (i, generator.random(), generator.random() * 1000) for i in range(40000))


def test_gzip_takes_level_2_only_where_level_3_does_not_pay_in_one_member(monkeypatch, tmp_path):
    monkeypatch.setattr(compression, "SEGMENT_BYTES", 256 * 1024)  # a sample every write below
    text = (DATASETS / "pagila-data.sql").read_bytes()[1 << 20 : 11 << 18]  # rows of several tables
    numbers = dense_numbers(seed=7)
    path = tmp_path / "levels.sql.gz"
    levels = []
    with path.open("wb") as raw:
        writer = compression.Gzip().compressor(raw)
        for part in (text, numbers, text):
            chosen = []
            for start in range(0, len(part), 256 * 1024):
                writer.write(part[start : start + 256 * 1024])
                chosen.append(writer.level)
            # The first write is never sampled, and a sample may begin in the part before.
            levels.append(chosen[2:])
        writer.close()
    assert levels == [[3] * len(levels[0]), [2] * len(levels[1]), [3] * len(levels[2])]
    whole = text + numbers + text
    assert subprocess.run(["gunzip", "-c", str(path)], check=True, capture_output=True).stdout == whole
    # One member: even a reader that stops after the first (zlib's) reads it all.
    assert zlib.decompress(path.read_bytes(), 31) == whole
    with path.open("rb") as raw, compression.Gzip().decompressor(raw) as reader:
        assert reader.read() == whole


def test_gzip_gathers_its_sample_from_small_writes(monkeypatch, tmp_path):
    monkeypatch.setattr(compression, "SEGMENT_BYTES", 256 * 1024)
    numbers = dense_numbers(seed=11)
    with (tmp_path / "small.sql.gz").open("wb") as raw:
        writer = compression.Gzip().compressor(raw)
        for start in range(0, len(numbers), 16 * 1024):  # a pipe that was not enlarged
            writer.write(numbers[start : start + 16 * 1024])
        writer.close()
    assert writer.level == 2
    assert zlib.decompress((tmp_path / "small.sql.gz").read_bytes(), 31) == numbers


def dirty_bytes():
    """The system's file pages written but not yet handed to the disk (Linux's /proc/meminfo)."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("Dirty:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("/proc/meminfo has no Dirty line")


def test_a_local_backup_goes_to_disk_while_it_is_written(backup_dir, tmp_path):
    chunk, chunks = random.Random(3).randbytes(CHUNK_SIZE), 128
    # The control: the kernel leaves a file written plainly in memory (its writeback waits for
    # gigabytes), so all of it would wait for the backup's fsync.
    before = dirty_bytes()
    with (tmp_path / "plain").open("wb") as plain:
        for _ in range(chunks):
            plain.write(chunk)
        plain.flush()
        left_plain = dirty_bytes() - before
    assert left_plain > chunks * CHUNK_SIZE // 2, "this machine writes files back at once: nothing to compare"
    before = dirty_bytes()
    with get_storage().writer("behind.sql.gz") as stream:
        for _ in range(chunks):
            stream.write(chunk)
        stream.flush()
        left_behind = dirty_bytes() - before
    assert left_behind < left_plain // 4
    assert (backup_dir / "behind.sql.gz").read_bytes() == chunk * chunks


def decompressed_size(command, path):
    result = subprocess.run([*command, str(path)], check=True, capture_output=True)
    return len(result.stdout)


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize(("compression", "reader"), [("gzip", ["gunzip", "-c"]), ("zstd", ["zstd", "-dc"])])
def test_compressed_files_hold_the_whole_dump_for_the_standard_tools(
    big_brew, backup_dir, settings, compression, reader, threads
):
    settings.BACKUP_COMPRESSION = compression
    settings.BACKUP_COMPRESSION_THREADS = threads
    made = services.create_backup(actor=COMMAND)
    manifest = read_manifest(backup_dir, made.filename)
    assert manifest["uncompressed_bytes"] > 8 * CHUNK_SIZE
    assert decompressed_size(reader, backup_dir / made.filename) == manifest["uncompressed_bytes"]
    assert manifest["table_rows"]["public.brew"] == 60000


@pytest.mark.django_db(transaction=True)
def test_a_zstd_backup_restores_by_hand_and_through_the_app(backup_dir, settings):
    settings.BACKUP_COMPRESSION = "zstd"
    execute("default", "CREATE TABLE brew (id integer PRIMARY KEY, name text)", "INSERT INTO brew VALUES (1, 'Gose')")
    made = services.create_backup(actor=COMMAND)
    assert made.filename.endswith(".sql.zst")
    with new_database(f"hoppybrew_zstd_by_hand{settings.SUFFIX}") as scratch:
        pipeline = f"zstd -dc {backup_dir / made.filename} | {by_hand_psql(scratch)}"
        subprocess.run(["bash", "-o", "pipefail", "-c", pipeline], check=True, capture_output=True)
        assert as_superuser(scratch, "SELECT name FROM brew") == [("Gose",)]
    execute("default", "UPDATE brew SET name = 'Kriek'")
    services.restore_backup(made.filename, actor=COMMAND, pre_restore_backup=False)
    assert fetch("default", "SELECT name FROM brew") == [("Gose",)]
    assert Backup.objects.filter(filename=made.filename).exists()
