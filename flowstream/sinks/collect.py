"""`sinks.collect()`: keeps every element in memory, in arrival order (tests, notebooks)."""

from __future__ import annotations

from typing import Any, final

from flowstream.record import Record
from flowstream.sinks.base import Batch, SendResult, SimpleSink

__all__ = ["CollectSink", "collect"]


@final
class CollectSink(SimpleSink):
    """Appends each batch to `items` (and the originating records to `records`).

    Within a shard, `items` holds elements in sequence order; across shards, in the
    order batches arrived. `by_shard()` groups them per shard.
    """

    def __init__(self, name: str = "collect") -> None:
        self._name = name
        self.items: list[Any] = []
        self.records: list[Record] = []
        self.shards: list[str] = []

    def describe(self) -> str:
        return self._name

    async def send(self, batch: Batch) -> SendResult | None:
        self.items.extend(batch.values)
        self.records.extend(batch.records)
        self.shards.extend([batch.shard_id] * len(batch.values))
        return None

    def by_shard(self) -> dict[str, list[Any]]:
        """The elements of each shard, in the order they arrived."""
        grouped: dict[str, list[Any]] = {}
        for shard_id, item in zip(self.shards, self.items, strict=True):
            grouped.setdefault(shard_id, []).append(item)
        return grouped

    def clear(self) -> None:
        self.items.clear()
        self.records.clear()
        self.shards.clear()


def collect(name: str = "collect") -> CollectSink:
    """A sink that keeps every element in `.items`, in arrival order."""
    return CollectSink(name)
