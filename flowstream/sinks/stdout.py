"""`sinks.stdout()`: one line per element on standard output."""

from __future__ import annotations

import sys
from typing import TextIO, final

from flowstream.serialize import encode_lines
from flowstream.sinks.base import Batch, SendResult, SimpleSink

__all__ = ["StdoutSink", "stdout"]


@final
class StdoutSink(SimpleSink):
    """Writes each element as a line (JSON for structured values) and flushes per batch."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream

    def describe(self) -> str:
        return "stdout"

    async def send(self, batch: Batch) -> SendResult | None:
        data, failed = encode_lines(batch.values)
        stream = self._stream or sys.stdout
        stream.write(data.decode())
        stream.flush()
        return SendResult(failed, retryable=False) if failed else None


def stdout(stream: TextIO | None = None) -> StdoutSink:
    """A sink that prints each element as one line (to `stream`, default sys.stdout)."""
    return StdoutSink(stream)
