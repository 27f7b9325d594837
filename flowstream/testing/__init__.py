"""Helpers for testing pipelines without AWS: `MemoryStream`, a live in-memory stream
that is also a source, `LocalStreamsServer`, which serves one over the DynamoDB Streams
wire protocol, and `lambda_event()` / `lambda_context()` for a `pipeline.lambda_handler()`."""

from flowstream.testing.lambda_events import FakeLambdaContext as FakeLambdaContext
from flowstream.testing.lambda_events import lambda_context as lambda_context
from flowstream.testing.lambda_events import lambda_event as lambda_event
from flowstream.testing.local_server import LocalStreamsServer as LocalStreamsServer
from flowstream.testing.memory_stream import MemoryStream as MemoryStream

__all__ = [
    "FakeLambdaContext",
    "LocalStreamsServer",
    "MemoryStream",
    "lambda_context",
    "lambda_event",
]
