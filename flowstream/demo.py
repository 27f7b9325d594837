"""The embedded demo: a cache invalidator over a live in-memory stream.

A writer task changes users in a 4-shard stream (and splits a shard half way, as
DynamoDB does) while the pipeline runs: MODIFY and REMOVE changes become invalidation
messages, REMOVEs go to one sink and the rest to another, each shard in order, children
after their parents.
"""

from __future__ import annotations

import random
import sys
from typing import Any, TextIO

import anyio

import flowstream as fs
from flowstream import sinks
from flowstream.testing import MemoryStream

__all__ = ["run_demo"]


def _invalidation(record: fs.Record) -> dict[str, Any]:
    return {
        "key": record.keys["pk"],
        "op": record.event_name.value,
        "shard": record.shard_id[-8:],
        "seq": record.sequence_number[-6:],
    }


async def run_demo(*, changes: int = 200, out: TextIO | None = None, seed: int = 7) -> fs.RunReport:
    """Run the demo; print invalidations and the report to `out` (stdout)."""
    out = out or sys.stdout
    rng = random.Random(seed)
    stream = MemoryStream(table="Users")
    shards = [stream.add_shard() for _ in range(4)]
    removes = sinks.stdout(out)
    purges = sinks.collect("purge-queue")
    expected = 0
    delivered = 0
    all_delivered = anyio.Event()
    writing_done = False

    def count(values: list[Any]) -> None:
        nonlocal delivered
        delivered += len(values)
        if writing_done and delivered >= expected:
            all_delivered.set()

    pipeline = (
        fs.Pipeline(stream, name="user-cache")
        .filter(events=["MODIFY", "REMOVE"])
        .filter(lambda r: r.keys["pk"].startswith("user#"))
        .map(_invalidation)
        .route(
            fs.when(lambda m: m["op"] == "REMOVE", removes, sinks.callback(count)),
            otherwise=[purges, sinks.callback(count)],
        )
    )
    print(pipeline.describe(), file=out)
    print("\nREMOVE invalidations as they arrive:", file=out)

    async def write_changes() -> None:
        nonlocal expected, writing_done
        open_shards = list(shards)
        for n in range(changes):
            if n == changes // 2:
                # DynamoDB splits shards as it goes; children are read after the parent.
                parent = open_shards.pop(0)
                open_shards.extend(stream.split(parent))
            shard = rng.choice(open_shards)
            pk = f"{rng.choice(['user', 'user', 'user', 'team'])}#{rng.randrange(50)}"
            event = rng.choices(["INSERT", "MODIFY", "REMOVE"], [3, 6, 1])[0]
            image = {"pk": pk, "name": f"n{n}", "visits": n}
            stream.put(
                shard,
                event,
                {"pk": pk},
                None if event == "REMOVE" else image,
                None if event == "INSERT" else image,
            )
            expected += event != "INSERT" and pk.startswith("user#")
            await anyio.sleep(0.001)
        writing_done = True
        if delivered >= expected:
            all_delivered.set()
        with anyio.fail_after(30):
            await all_delivered.wait()
        stop.set()

    stop = anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(write_changes)
        report = await pipeline.run(stop=stop)
    print(f"\n{len(purges.items)} MODIFY invalidations went to the purge queue.", file=out)
    print(report.summary(), file=out)
    return report
