"""The cache invalidator as an AWS Lambda function behind the Users table's stream.

Deploy this file with flowstream installed beside it, handler ``lambda_cache_invalidator.handler``,
and an event source mapping on the table's stream with
``FunctionResponseTypes=["ReportBatchItemFailures"]`` and the filter criteria this file
prints (docs/lambda.md). With ``REDIS_URL`` set, changed and deleted users' cache keys
are deleted; every invalidation is also printed, one JSON line each, to the function's log.

Run it here to see a batch go through the handler as Lambda would call it:

    python examples/lambda_cache_invalidator.py
"""

from __future__ import annotations

import json
import os
from typing import Any

import flowstream as fs
from flowstream import sinks, sources
from flowstream.sinks import Sink

__all__ = ["handler", "invalidation", "pipeline"]


def invalidation(record: fs.Record) -> dict[str, Any]:
    return {"key": record.keys["pk"], "op": record.event_name.value}


def _sinks() -> list[Sink]:
    chosen: list[Sink] = [sinks.stdout()]
    if os.environ.get("REDIS_URL"):
        chosen.append(sinks.redis(os.environ["REDIS_URL"], key="user-cache:{pk}"))
    return chosen


# The source names the table for plans and `run()`; Lambda hands the records over instead.
pipeline = (
    fs.Pipeline(sources.dynamodb(table=os.environ.get("USERS_TABLE", "Users")), name="user-cache")
    .filter(events=["MODIFY", "REMOVE"])  # also the mapping's filter: Lambda drops INSERTs
    .filter(lambda r: str(r.keys.get("pk", "")).startswith("user#"))
    .map(invalidation)
    .to(*_sinks())
)

# Built once per execution environment: sinks open on the first invocation and stay open.
handler = pipeline.lambda_handler()


def main() -> None:
    from flowstream.testing import MemoryStream, lambda_context, lambda_event

    print("FilterCriteria:", json.dumps(pipeline.lambda_filter_criteria()))
    stream = MemoryStream(table="Users")
    shard = stream.add_shard()
    for n in range(10):
        pk = f"user#{n % 3}" if n % 4 else f"team#{n}"
        stream.put(shard, ["INSERT", "MODIFY", "REMOVE"][n % 3], {"pk": pk}, {"pk": pk})
    # What Lambda would send once its filter dropped the INSERTs.
    records = [r for r in stream.records() if r.event_name != "INSERT"]
    answer = handler(lambda_event(records), lambda_context(timeout=30))
    done = handler.last
    assert done is not None
    print(
        f"handled {done.records} records: {done.delivered} delivered, "
        f"{done.filtered} filtered, {done.failed} failed; answer {json.dumps(answer)}"
    )
    handler.close()


if __name__ == "__main__":
    main()
