"""Helpers for testing pipelines without AWS: `MemoryStream`, a live in-memory stream
that is also a source, and `LocalStreamsServer`, which serves one over the DynamoDB
Streams wire protocol."""

from flowstream.testing.local_server import LocalStreamsServer as LocalStreamsServer
from flowstream.testing.memory_stream import MemoryStream as MemoryStream

__all__ = ["LocalStreamsServer", "MemoryStream"]
