"""Compression codecs, and the byte counters and checksums that ride along the stream.

gzip is written by ISA-L (``isal``): standard gzip that ``gunzip`` reads, several times faster
than zlib, which is what keeps a ``.sql.gz`` backup as fast as the dump itself.
zstd is faster still, for those who can use ``zstd -dc`` when restoring by hand.
``bench/RESULTS.md`` has the measurements behind the levels and sizes chosen here.
"""

import hashlib
import os

from .conf import backup_settings
from .encryption import SUFFIX as ENCRYPTED_SUFFIX
from .encryption import Sealed
from .streams import RawReader

CHUNK_SIZE = 1024 * 1024
# The compressor threads' unit of work. A few blocks are in flight per thread, so this bounds the
# memory; gzip carries its 32 KiB window across blocks, so smaller blocks cost no ratio.
BLOCK_SIZE = 256 * 1024
# zstd's smallest job: multithreaded zstd buffers a few jobs per thread (about 50 MiB with two
# threads at the default job size), and on dumps smaller jobs compress as well.
ZSTD_JOB_SIZE = 512 * 1024


def compression_threads():
    """BACKUP_COMPRESSION_THREADS, else half the cores, at most two. One thread already compresses
    faster than pg_dump writes; more only take CPU from pg_dump and the database server, which
    set the pace."""
    return backup_settings.COMPRESSION_THREADS or min(2, max(1, (os.cpu_count() or 1) // 2))


def worker_threads():
    """Threads for the compression libraries: with a single thread, the backup's own thread
    compresses, since one helper thread would only add hand-offs (measured: 10% more CPU)."""
    threads = compression_threads()
    return threads if threads > 1 else 0


class Gzip:
    name = "gzip"
    suffix = ".sql.gz"

    def compressor(self, raw):
        from isal import igzip_threaded

        # Level 3, ISA-L's best, stays within about 10% of gzip -6's size; level 2, its
        # default, writes about 15% more on realistic dumps for half the CPU time. Either keeps
        # up with pg_dump on two cores.
        return igzip_threaded.open(raw, "wb", compresslevel=3, threads=worker_threads(), block_size=BLOCK_SIZE)

    def decompressor(self, raw):
        from isal import igzip_threaded

        # One helper thread inflates while the caller feeds the database.
        return igzip_threaded.open(raw, "rb", threads=1)


class Zstd:
    name = "zstd"
    suffix = ".sql.zst"

    def compressor(self, raw):
        import zstandard

        # Level 1: zstd is chosen for speed, and on SQL dumps level 1 compresses about as well
        # as the default level 3 (the benchmark's: 6% smaller) in 60% of the time.
        parameters = zstandard.ZstdCompressionParameters.from_level(1, threads=worker_threads(), job_size=ZSTD_JOB_SIZE)
        return zstandard.ZstdCompressor(compression_params=parameters).stream_writer(raw, closefd=False)

    def decompressor(self, raw):
        import zstandard

        return zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True, closefd=False)


CODECS = {codec.name: codec for codec in (Gzip(), Zstd())}


def configured_codec():
    """The codec new backups are written with; encrypted when BACKUP_ENCRYPTION_RECIPIENTS is set."""
    codec = CODECS[backup_settings.COMPRESSION]
    return Sealed(codec) if backup_settings.ENCRYPTION_RECIPIENTS else codec


def codec_for(filename):
    """The codec that reads ``filename``, from its suffix (``.age`` adds decryption)."""
    name = filename.removesuffix(ENCRYPTED_SUFFIX)
    for codec in CODECS.values():
        if name.endswith(codec.suffix):
            return Sealed(codec, filename) if name != filename else codec
    raise ValueError(f"no codec reads {filename!r}")


class CountingWriter:
    """Passes bytes to ``raw`` while counting them and computing their sha256."""

    def __init__(self, raw):
        self.raw = raw
        self.size = 0
        self._sha256 = hashlib.sha256()

    def write(self, data):
        self.raw.write(data)
        self._sha256.update(data)
        self.size += len(data)
        return len(data)

    def flush(self):
        self.raw.flush()

    @property
    def sha256(self):
        return self._sha256.hexdigest()


class CountingReader(RawReader):
    """Reads from ``raw`` while counting the bytes and computing their sha256."""

    def __init__(self, raw):
        self.raw = raw
        self.size = 0
        self._sha256 = hashlib.sha256()

    def read(self, size=-1):
        data = self.raw.read(size)
        self._sha256.update(data)
        self.size += len(data)
        return data

    @property
    def sha256(self):
        return self._sha256.hexdigest()


def file_sha256(stream):
    """sha256 and size of everything left in ``stream``."""
    reader = CountingReader(stream)
    while reader.read(CHUNK_SIZE):
        pass
    return reader.sha256, reader.size
