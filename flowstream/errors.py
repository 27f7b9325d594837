"""The errors flowstream raises, one root and a few leaves.

```
FlowstreamError
 ├── PipelineError          a pipeline that cannot run; raised when it is built (or run)
 ├── AttributeValueError    DynamoDB JSON that does not map to Python, or back
 ├── RecordDecodeError      a stream record or page body that is not what DynamoDB sends
 ├── SourceError            a source that cannot be read
 │    ├── TrimmedDataError  records expired from the stream before they were read
 │    └── StreamNotFoundError  the stream was deleted or disabled
 ├── SinkError              a sink that cannot be opened or cannot deliver
 │    └── DeliveryError     an item the destination did not take (retryable or not)
 │         └── NotSentError an item a sink held back behind an earlier failure
 ├── CheckpointError        a checkpoint store that cannot load or save
 └── ShardStoppedError      a drained run in which one or more shards stopped at a failure
```

Every message names the thing, the problem and the fix.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flowstream.report import RunReport

__all__ = [
    "AttributeValueError",
    "CheckpointError",
    "DeliveryError",
    "NotSentError",
    "FlowstreamError",
    "PipelineError",
    "RecordDecodeError",
    "ShardStoppedError",
    "SinkError",
    "SourceError",
    "StreamNotFoundError",
    "TrimmedDataError",
]


class FlowstreamError(Exception):
    """Root of every error flowstream raises on purpose."""


class PipelineError(FlowstreamError):
    """A pipeline that cannot run: raised by the builder methods of `Pipeline` and by
    `Pipeline.run()` before anything is read."""


class AttributeValueError(FlowstreamError, ValueError):
    """Raised by `flowstream.attrvalue` (and by lazy image access on a `Record`) when a
    value does not map between DynamoDB JSON and Python. `path` names the attribute,
    e.g. ``NewImage.address.zip``."""

    def __init__(self, path: str, problem: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__(f"{path}: {problem}" if path else problem)


class RecordDecodeError(FlowstreamError, ValueError):
    """Raised by `decode_records()` and sources when a body is not a DynamoDB Streams
    GetRecords response or Lambda event."""


class SourceError(FlowstreamError):
    """A source that cannot be opened or read (missing stream, bad configuration)."""


class TrimmedDataError(SourceError):
    """Records were trimmed from the stream (older than its 24 h retention) before they
    were read: they are lost, and the user must know."""


class StreamNotFoundError(SourceError):
    """The stream is gone (deleted, or its table's stream was disabled): the whole
    pipeline stops with this error, since no shard of it can be read any more."""


class SinkError(FlowstreamError):
    """A sink that cannot be opened or that rejected a delivery for good."""


class DeliveryError(SinkError):
    """Sinks report it for an item (or a batch) the destination did not take.

    `retryable` says whether trying again can help: throttling, timeouts and 5xx can;
    a value the destination rejects (too large, malformed, 4xx) cannot, so the runtime
    does not retry it. `status` and `code` carry the destination's answer when known;
    `retry_after` is how long the destination asked to wait (HTTP ``Retry-After``): the
    runtime waits at least that long before the retry.
    """

    def __init__(
        self,
        message: str,
        *,
        retryable: bool,
        status: int | None = None,
        code: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.status = status
        self.code = code
        self.retry_after = retry_after


class NotSentError(DeliveryError):
    """A sink did not try to send this item: an earlier item of the batch (or of the
    same key) failed, and the item waits behind it to keep order. The runtime sends it
    again after the failing item, without counting an attempt against it."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retryable=True)


class CheckpointError(FlowstreamError):
    """A checkpoint store that cannot load or save; the pipeline stops rather than run on
    with progress it cannot record."""


class ShardStoppedError(FlowstreamError):
    """Raised by `Pipeline.run(drain=True)` after every other shard drained, when one or
    more shards stopped at a record that failed. `report` tells which and why."""

    def __init__(self, report: RunReport) -> None:
        self.report = report
        stopped = report.stopped_shards()
        details = "; ".join(
            f"{shard_id} at sequence number {stats.stopped_at}: {stats.error}"
            for shard_id, stats in stopped.items()
        )
        super().__init__(
            f"{len(stopped)} shard(s) stopped at a failing record ({details}); fix the cause "
            "and run again: each stopped shard resumes from its checkpoint, just before the "
            "failing record"
        )
