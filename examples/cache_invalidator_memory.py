"""A cache invalidator over a MemoryStream: MODIFY/REMOVE of users become invalidations.

Run: python examples/cache_invalidator_memory.py
"""

from __future__ import annotations

from typing import Any

import anyio

import flowstream as fs
from flowstream import checkpoints, sinks
from flowstream.testing import MemoryStream


def invalidation(record: fs.Record) -> dict[str, Any]:
    return {"key": record.keys["pk"], "op": record.event_name.value}


async def main() -> None:
    stream = MemoryStream(table="Users")
    shards = [stream.add_shard() for _ in range(2)]
    for n in range(10):
        pk = f"user#{n % 4}"
        stream.put(shards[n % 2], ["INSERT", "MODIFY", "REMOVE"][n % 3], {"pk": pk}, {"pk": pk})

    removed = sinks.collect("removed")
    pipeline = (
        fs.Pipeline(stream, name="user-cache")
        .filter(events=["MODIFY", "REMOVE"])
        .map(invalidation)
        .route(fs.when(lambda m: m["op"] == "REMOVE", removed), otherwise=sinks.stdout())
    )
    print(pipeline.describe())
    report = await pipeline.run(checkpoints=checkpoints.memory(), drain=True)
    print("removed:", removed.items)
    print(report.summary())


if __name__ == "__main__":
    anyio.run(main)
