"""The sink protocol: how the runtime hands a shard's elements to a destination.

A `Sink` is configuration; `Sink.open()` gives a `SinkWriter` for one run. The runtime
calls `SinkWriter.send()` with a `Batch`: one shard's elements for this sink, in
sequence order, each next to the record it came from. Calls for different shards may
run concurrently; calls for one shard never overlap and come in order. `send()` returns
when the destination has the elements (that is the acknowledgement) and reports items
that failed, so only those are retried.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import msgspec

from flowstream.callables import is_async_callable
from flowstream.errors import PipelineError
from flowstream.record import Record

__all__ = ["Batch", "SendResult", "Sink", "SinkWriter", "checked_writer", "item_key"]


# Sorted names and numbers as numbers: stable across runs and languages, and 1 (a number)
# stays apart from "1" (a string), as DynamoDB keeps them.
_KEY_ENCODER = msgspec.json.Encoder(order="sorted", decimal_format="number")


def item_key(record: Record) -> str:
    """The record's DynamoDB keys as one stable string, e.g. ``{"pk":"user#1","sk":0}``:
    every change of one item gets the same one. Sinks use it as the default ordering key
    (a FIFO group, a partition key, a cache key)."""
    return _KEY_ENCODER.encode(record.keys).decode()


class Batch(msgspec.Struct, gc=False):
    """One shard's elements for one sink, in sequence order.

    `values[i]` came from `records[i]` (several values may share a record after a
    `flat_map`); use the record for idempotency keys and ordering keys. Treat a batch as
    read-only: with `.to(a, b)` both sinks get the same lists, and a retry reuses them.
    """

    shard_id: str
    values: list[Any]
    records: list[Record]

    def __len__(self) -> int:
        return len(self.values)

    def subset(self, indices: list[int]) -> Batch:
        """The items at `indices` (in that order), e.g. those to retry."""
        values, records = self.values, self.records
        return Batch(self.shard_id, [values[i] for i in indices], [records[i] for i in indices])


class SendResult(msgspec.Struct, gc=False):
    """The outcome of a `send()` that delivered some items but not all.

    `failed` maps the index of each failed item in the batch to its error; every other
    item was delivered. A `DeliveryError(retryable=False)` marks an item that retrying
    cannot fix (a value the destination rejects); `retryable=False` here marks them all.
    The runtime retries the failed items (in order) unless the earliest one cannot be
    retried.
    """

    failed: Mapping[int, BaseException]
    retryable: bool = True


class SinkWriter(ABC):
    """A sink, open for one run."""

    @abstractmethod
    async def send(self, batch: Batch) -> SendResult | None:
        """Deliver `batch`; return None when every item was delivered, a `SendResult`
        naming the items that failed, or raise when none was delivered."""


class Sink(ABC):
    """A destination for pipeline elements."""

    @property
    def name(self) -> str:
        """The sink's name in plans and reports."""
        return self.describe()

    @abstractmethod
    def describe(self) -> str:
        """A short, human-readable description, e.g. ``jsonl(out.jsonl)``."""

    @abstractmethod
    def open(self) -> AbstractAsyncContextManager[SinkWriter]:
        """Open the sink for one run (connections, files) and close it afterwards."""


class SimpleSink(Sink, SinkWriter):
    """A sink with nothing to open: it is its own writer."""

    def open(self) -> AbstractAsyncContextManager[SinkWriter]:
        return self._self_context()

    @asynccontextmanager
    async def _self_context(self) -> AsyncIterator[SinkWriter]:
        yield self


def checked_writer(sink: Sink, writer: SinkWriter) -> SinkWriter:
    """The writer `sink` opened, once it is known that its `send()` can be awaited: a
    plain ``def send`` would fail on the first batch, far from its cause."""
    if not is_async_callable(writer.send):
        cls = type(writer).__name__
        raise PipelineError(
            f"sink {sink.name}: {cls}.send() is a plain function, but flowstream awaits it; "
            f"define it as `async def send(self, batch)` (a blocking call inside can run "
            "in a thread: `await anyio.to_thread.run_sync(...)`)"
        )
    return writer
