"""Compression codecs, and the byte counters and checksums that ride along the stream.

gzip is written by ISA-L (``isal``) in threads: standard gzip that ``gunzip`` reads, several
times faster than zlib, which is what keeps a ``.sql.gz`` backup as fast as the dump itself.
zstd is faster still, for those who can use ``zstd -dc`` when restoring by hand.
"""

import hashlib
import os

from .conf import backup_settings
from .encryption import SUFFIX as ENCRYPTED_SUFFIX
from .encryption import Sealed

CHUNK_SIZE = 1024 * 1024


def compression_threads():
    return backup_settings.COMPRESSION_THREADS or os.cpu_count() or 1


class Gzip:
    name = "gzip"
    suffix = ".sql.gz"

    def compressor(self, raw):
        from isal import igzip_threaded

        # Level 2 is ISA-L's default: about the size of gzip -6 at a fraction of its time.
        return igzip_threaded.open(raw, "wb", compresslevel=2, threads=compression_threads())

    def decompressor(self, raw):
        from isal import igzip_threaded

        # One helper thread inflates while the caller feeds the database.
        return igzip_threaded.open(raw, "rb", threads=1)


class Zstd:
    name = "zstd"
    suffix = ".sql.zst"

    def compressor(self, raw):
        import zstandard

        return zstandard.ZstdCompressor(level=3, threads=compression_threads()).stream_writer(raw, closefd=False)

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


class CountingReader:
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

    def readinto(self, buffer):
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def readable(self):
        return True

    @property
    def closed(self):
        return False

    @property
    def sha256(self):
        return self._sha256.hexdigest()


def file_sha256(stream):
    """sha256 and size of everything left in ``stream``."""
    reader = CountingReader(stream)
    while reader.read(CHUNK_SIZE):
        pass
    return reader.sha256, reader.size
