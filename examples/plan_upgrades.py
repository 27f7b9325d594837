"""Filter patterns: an event source mapping's FilterCriteria brought into a pipeline as
they are, and written back out.

A billing team's Lambda function had this mapping filter: users whose plan changed to
"pro", and deleted users. The same patterns run here on an in-memory stream, with
Lambda's answers; then the pipeline prints the FilterCriteria it would give a mapping.

    python examples/plan_upgrades.py
"""

from __future__ import annotations

import json

import anyio

import flowstream as fs
from flowstream import checkpoints, sinks
from flowstream.testing import MemoryStream

# As they are in the mapping's FilterCriteria (ORed).
FILTERS = [
    '{"eventName": ["MODIFY"], "dynamodb": {"NewImage": {"plan": {"S": ["pro"]}},'
    ' "OldImage": {"plan": {"S": [{"anything-but": "pro"}]}}}}',
    '{"eventName": ["REMOVE"], "dynamodb": {"Keys": {"pk": {"S": [{"prefix": "user#"}]}}}}',
]


def change(record: fs.Record) -> dict[str, str]:
    return {"user": record.keys["pk"], "event": record.event_name.value}


async def main() -> None:
    stream = MemoryStream(table="Users")
    shard = stream.add_shard()
    for n in range(6):
        pk = f"user#{n}"
        stream.put(shard, "INSERT", {"pk": pk}, {"pk": pk, "plan": "free"})
    stream.put(
        shard,
        "MODIFY",
        {"pk": "user#1"},
        {"pk": "user#1", "plan": "pro"},
        {"pk": "user#1", "plan": "free"},
    )
    stream.put(
        shard,
        "MODIFY",
        {"pk": "user#2"},
        {"pk": "user#2", "plan": "free", "n": 2},
        {"pk": "user#2", "plan": "free"},
    )
    stream.put(
        shard,
        "MODIFY",
        {"pk": "user#1"},
        {"pk": "user#1", "plan": "pro", "n": 1},
        {"pk": "user#1", "plan": "pro"},
    )  # still pro: not an upgrade
    stream.put(shard, "REMOVE", {"pk": "user#4"}, None, {"pk": "user#4", "plan": "free"})

    pipeline = (
        fs.Pipeline(stream, name="plan-upgrades")
        .filter(pattern=FILTERS)
        .map(change)
        .to(sinks.stdout())
    )
    report = await pipeline.run(checkpoints=checkpoints.memory(), drain=True)
    print(report.summary())
    print("FilterCriteria:", json.dumps(pipeline.lambda_filter_criteria()))


if __name__ == "__main__":
    anyio.run(main)
