"""Adapters between the ways bytes flow here: objects with ``read()``, iterators of chunks, and
the raw streams that ``io.BufferedReader`` and ``io.TextIOWrapper`` want."""

import io


class RawReader(io.RawIOBase):
    """Base of the streams here that define ``read()`` (wrappers that watch a stream go by, or
    adapt one): ``readinto`` in its terms, for ``io.BufferedReader``, ``shutil.copyfileobj``
    and the decompressors."""

    def readable(self):
        return True

    def readinto(self, buffer):
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


class ReadableStream(RawReader):
    """Any object with ``read()``, as a raw stream (for line-by-line reading)."""

    def __init__(self, stream):
        self.stream = stream

    def read(self, size=-1):
        return self.stream.read(size)


class ChunkStream(io.RawIOBase):
    """An iterator of byte chunks (a dump), as a raw stream."""

    def __init__(self, chunks):
        self.chunks = iter(chunks)
        self.pending = b""

    def readable(self):
        return True

    def readinto(self, buffer):
        while not self.pending:
            self.pending = next(self.chunks, b"")
            if not self.pending:
                return 0
        size = min(len(buffer), len(self.pending))
        buffer[:size] = self.pending[:size]
        self.pending = self.pending[size:]
        return size
