"""Where records come from: `dynamodb(...)` (a DynamoDB stream), `jsonl(path)` (a
recorded file), and `flowstream.testing.MemoryStream` (in memory)."""

from flowstream.sources.base import Position as Position
from flowstream.sources.base import Source as Source
from flowstream.sources.dynamodb import dynamodb as dynamodb
from flowstream.sources.jsonl import jsonl as jsonl

__all__ = ["Position", "Source", "dynamodb", "jsonl"]
