"""One log line per invocation in CloudWatch's embedded metric format: a JSON object on
stdout that CloudWatch Logs turns into metrics (records in, filtered, delivered,
dead-lettered, failed, duration) without an API call, and that reads as a log line."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Final

import msgspec

__all__ = ["Invocation", "emf_line"]

_COUNTS: Final = ("Records", "Filtered", "Delivered", "DeadLettered", "Failed")
_ENCODE: Final = msgspec.json.Encoder().encode


@dataclass(slots=True)
class Invocation:
    """What one invocation did; `failed` counts the records handed back to Lambda."""

    records: int = 0
    filtered: int = 0
    delivered: int = 0
    dead_lettered: int = 0
    failed: int = 0
    duration_ms: float = 0.0
    first_failure: str | None = None
    stop: str = ""


def emf_line(pipeline: str, namespace: str, done: Invocation, request_id: str) -> bytes:
    """The invocation as one embedded-metric-format JSON line (with its newline)."""
    metrics: list[dict[str, str]] = [{"Name": name, "Unit": "Count"} for name in _COUNTS]
    metrics.append({"Name": "Duration", "Unit": "Milliseconds"})
    line: dict[str, Any] = {
        "_aws": {
            "Timestamp": int(time.time() * 1000),
            "CloudWatchMetrics": [
                {"Namespace": namespace, "Dimensions": [["pipeline"]], "Metrics": metrics}
            ],
        },
        "pipeline": pipeline,
        "Records": done.records,
        "Filtered": done.filtered,
        "Delivered": done.delivered,
        "DeadLettered": done.dead_lettered,
        "Failed": done.failed,
        "Duration": round(done.duration_ms, 3),
        "requestId": request_id,
    }
    if done.first_failure is not None:
        line["firstFailure"] = done.first_failure
    if done.stop:
        line["stop"] = done.stop
    return _ENCODE(line) + b"\n"
