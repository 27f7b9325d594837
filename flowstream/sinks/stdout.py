"""`sinks.stdout()`: one line per element on standard output."""

from __future__ import annotations

import sys
from typing import TextIO, final

from flowstream.serialize import encode_lines
from flowstream.sinks.base import Batch, SendResult, SimpleSink

__all__ = ["StdoutSink", "stdout"]


@final
class StdoutSink(SimpleSink):
    """Writes each element as a line (JSON for structured values) and flushes per batch.
    Text with line breaks is printed as it is; bytes that are not UTF-8 are printed
    with backslash escapes rather than failing the batch."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream

    def describe(self) -> str:
        return "stdout"

    async def send(self, batch: Batch) -> SendResult | None:
        data, failed = encode_lines(batch.values, multiline=True)
        # Looked up per batch, so a redirected or captured sys.stdout is honoured.
        stream = sys.stdout if self._stream is None else self._stream
        stream.write(data.decode(errors="backslashreplace"))
        stream.flush()
        return SendResult(failed, retryable=False) if failed else None


def stdout(stream: TextIO | None = None) -> StdoutSink:
    """A sink that prints each element as one line (to `stream`, default sys.stdout)."""
    return StdoutSink(stream)
