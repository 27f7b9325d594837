"""Where records come from: `jsonl(path)` (a recorded file), and
`flowstream.testing.MemoryStream` (in memory)."""

from flowstream.sources.base import Position as Position
from flowstream.sources.base import Source as Source
from flowstream.sources.jsonl import jsonl as jsonl

__all__ = ["Position", "Source", "jsonl"]
