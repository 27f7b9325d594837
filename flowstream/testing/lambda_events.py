"""Lambda events and contexts for testing a `pipeline.lambda_handler()` without Lambda:
`lambda_event(records)` wraps records (from a `MemoryStream`, or decoded from anywhere)
in the event Lambda's DynamoDB event source mapping sends, and `lambda_context()` is a
context whose deadline counts down."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable
from typing import Any

from flowstream.record import Record

__all__ = ["FakeLambdaContext", "lambda_context", "lambda_event"]


def lambda_event(
    records: Iterable[Record],
    *,
    stream_arn: str | None = None,
    region: str | None = None,
) -> dict[str, Any]:
    """``{"Records": [...]}`` as Lambda sends it for `records`: each with
    ``eventVersion`` "1.1", ``eventSource`` "aws:dynamodb", ``awsRegion``,
    ``eventSourceARN`` and ``ApproximateCreationDateTime`` in epoch seconds (a float),
    and no ``shardId`` (Lambda's events carry none). `stream_arn` and `region` replace
    what the records carry (a `MemoryStream`'s records carry its region, not its ARN)."""
    out = []
    for record in records:
        if not isinstance(record, Record):
            raise TypeError(
                f"lambda_event() takes flowstream Records, got {type(record).__name__}; "
                "decode dicts first with fs.decode_records(...)"
            )
        wire = record.to_dict()
        wire.pop("shardId", None)
        wire["eventVersion"] = "1.1"
        wire["eventSource"] = "aws:dynamodb"
        wire["awsRegion"] = region or record.aws_region or "us-east-1"
        arn = stream_arn or record.event_source_arn
        if not arn:
            arn = (
                f"arn:aws:dynamodb:{wire['awsRegion']}:000000000000:table/memory/stream/"
                "2026-01-01T00:00:00.000"
            )
        wire["eventSourceARN"] = arn
        created = wire["dynamodb"].get("ApproximateCreationDateTime")
        if created is not None:
            wire["dynamodb"]["ApproximateCreationDateTime"] = float(created)
        out.append(wire)
    return {"Records": out}


class FakeLambdaContext:
    """The parts of Lambda's context object a handler reads: a request id, the
    function's names, and the time left until the deadline (counting down for real)."""

    def __init__(self, timeout: float, request_id: str, function_name: str) -> None:
        self.aws_request_id = request_id
        self.function_name = function_name
        self.function_version = "$LATEST"
        self.invoked_function_arn = (
            f"arn:aws:lambda:us-east-1:000000000000:function:{function_name}"
        )
        self.memory_limit_in_mb = "128"
        self.log_group_name = f"/aws/lambda/{function_name}"
        self.log_stream_name = "local"
        self._deadline = time.monotonic() + timeout

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


def lambda_context(
    *, timeout: float = 60.0, request_id: str | None = None, function_name: str = "test"
) -> FakeLambdaContext:
    """A context whose deadline is `timeout` seconds from now."""
    return FakeLambdaContext(timeout, request_id or str(uuid.uuid4()), function_name)
