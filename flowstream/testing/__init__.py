"""Helpers for testing pipelines without AWS: `MemoryStream`, a live in-memory stream
that is also a source."""

from flowstream.testing.memory_stream import MemoryStream as MemoryStream

__all__ = ["MemoryStream"]
