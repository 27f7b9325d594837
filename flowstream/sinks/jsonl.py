"""`sinks.jsonl(path)`: appends one JSON line per element to a file.

A batch is acknowledged once its lines are written and flushed to the operating system
(and with `fsync=True`, to the disk). Records are written in the stream's JSON shape,
so a file of records replays with `sources.jsonl(path)`. An element that cannot be
one line (not serialisable, or text holding a line break) fails alone and is not retried;
the rest of its batch is written.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import BinaryIO, final

import anyio

from flowstream.errors import SinkError
from flowstream.serialize import encode_lines
from flowstream.sinks.base import Batch, SendResult, Sink, SinkWriter

__all__ = ["JsonlSink", "jsonl"]


@final
class JsonlSink(Sink):
    """Appends elements as JSON lines to `path`."""

    def __init__(self, path: str | os.PathLike[str], *, fsync: bool = False) -> None:
        self.path = Path(path)
        self.fsync = fsync

    def describe(self) -> str:
        return f"jsonl({self.path})"

    def open(self) -> AbstractAsyncContextManager[SinkWriter]:
        return self._open()

    @asynccontextmanager
    async def _open(self) -> AsyncIterator[SinkWriter]:
        try:
            file = self.path.open("ab")
        except OSError as exc:
            raise SinkError(
                f"jsonl sink cannot open {self.path} for appending: {exc.strerror}; check "
                "that its directory exists and is writable"
            ) from None
        try:
            yield _JsonlWriter(file, self.fsync)
        finally:
            file.close()


class _JsonlWriter(SinkWriter):
    def __init__(self, file: BinaryIO, fsync: bool) -> None:
        self._file = file
        self._fsync = fsync
        self._lock = anyio.Lock()  # shards write whole batches, never interleaved lines

    async def send(self, batch: Batch) -> SendResult | None:
        data, failed = encode_lines(batch.values)
        async with self._lock:
            if self._fsync:
                await anyio.to_thread.run_sync(self._write_durably, data)
            else:
                self._file.write(data)
                self._file.flush()
        return SendResult(failed, retryable=False) if failed else None

    def _write_durably(self, data: bytes) -> None:
        self._file.write(data)
        self._file.flush()
        os.fsync(self._file.fileno())


def jsonl(path: str | os.PathLike[str], *, fsync: bool = False) -> JsonlSink:
    """A sink that appends one JSON line per element to `path`."""
    return JsonlSink(path, fsync=fsync)
