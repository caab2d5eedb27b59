"""Compression codecs, and the byte counters and checksums that ride along the stream.

gzip is written by ISA-L (``isal``): standard gzip that ``gunzip`` reads, several times faster
than zlib, which is what keeps a ``.sql.gz`` backup as fast as the dump itself; at level 3, or 2
where level 3 does not pay (``AdaptiveGzipWriter``).
zstd is faster still, for those who can use ``zstd -dc`` when restoring by hand.
``bench/RESULTS.md`` has the measurements behind the levels and sizes chosen here.
"""

import hashlib
import os
import struct

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
# How gzip's level is chosen (AdaptiveGzipWriter): a sample of this size every segment. Samples
# of 256 KiB agree with 1 MiB ones within 0.2 % on the bench's shapes (1.1-1.2 % on the series
# shape, 2.3-5 % on the brewery shape, 3 % on Pagila and Sakila mostly).
SEGMENT_BYTES = 32 * 1024 * 1024
SAMPLE_BYTES = 256 * 1024
LEVEL_3_GAIN = 0.015
# A gzip member's header: deflate, no name, no time (as gzip -n writes it), unknown system.
GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"


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
        threads = worker_threads()
        if not threads:
            return AdaptiveGzipWriter(raw)
        from isal import igzip_threaded

        # Where cores are to spare, blocks deflated by several threads, at level 3 throughout.
        return igzip_threaded.open(raw, "wb", compresslevel=3, threads=threads, block_size=BLOCK_SIZE)

    def decompressor(self, raw):
        from isal import igzip_threaded

        # One helper thread inflates while the caller feeds the database.
        return igzip_threaded.open(raw, "rb", threads=1)


class AdaptiveGzipWriter:
    """One gzip member deflated by ISA-L in the backup's own thread: at level 3, or level 2 where
    level 3 does not pay. Level 3 writes 2-5 % less than level 2 on text and mixed rows (Pagila,
    the brewery shape) and stays within about 10 % of ``gzip -6``; on dense numbers (the series
    shape) it saves about 1 % for half again the CPU, which on two cores pg_dump and the database
    server need. So from ``SEGMENT_BYTES`` on, and every ``SEGMENT_BYTES`` after, a sample of what
    is being written is deflated at both levels, and level 2 is taken when level 3's is not
    ``LEVEL_3_GAIN`` smaller; a dump smaller than that is all level 3. A change of level ends the
    deflater with a sync flush (an empty stored block, at a byte boundary) and goes on with a
    new one: still one deflate stream, which only never refers back across the change, so every
    gzip reader reads the file as any other."""

    def __init__(self, raw):
        from isal import isal_zlib

        self.zlib = isal_zlib
        self.raw = raw
        self.crc = 0
        self.size = 0
        self.level = 3
        self.deflater = isal_zlib.compressobj(3, isal_zlib.DEFLATED, -15)
        self.until_sample = SEGMENT_BYTES  # input bytes left before the next sample
        self.sample = []
        self.sampled = 0
        raw.write(GZIP_HEADER)

    def write(self, data):
        if self.until_sample <= 0:
            self._add_to_sample(data)
        self.until_sample -= len(data)
        self.crc = self.zlib.crc32(data, self.crc)
        self.size += len(data)
        compressed = self.deflater.compress(data)
        if compressed:
            self.raw.write(compressed)
        return len(data)

    def _add_to_sample(self, data):
        """Gather the sample from as many writes as it takes (a pipe's reads may be small), then
        choose the level of what follows."""
        part = data[: SAMPLE_BYTES - self.sampled]
        self.sample.append(part)
        self.sampled += len(part)
        if self.sampled < SAMPLE_BYTES:
            return
        level = level_for(b"".join(self.sample))
        self.sample, self.sampled, self.until_sample = [], 0, SEGMENT_BYTES
        if level != self.level:
            self.raw.write(self.deflater.flush(self.zlib.Z_SYNC_FLUSH))
            self.deflater = self.zlib.compressobj(level, self.zlib.DEFLATED, -15)
            self.level = level

    def close(self):
        if self.deflater is None:
            return
        deflater, self.deflater = self.deflater, None
        self.raw.write(deflater.flush())
        self.raw.write(struct.pack("<II", self.crc, self.size & 0xFFFFFFFF))


def level_for(sample):
    """ISA-L's level for data like ``sample``: 3, unless its output is not ``LEVEL_3_GAIN``
    smaller than level 2's."""
    from isal import isal_zlib

    level_2 = len(isal_zlib.compress(sample, 2, -15))
    level_3 = len(isal_zlib.compress(sample, 3, -15))
    return 3 if level_3 <= level_2 * (1 - LEVEL_3_GAIN) else 2


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
