"""Where records come from: `dynamodb(...)` (a DynamoDB stream), `jsonl(path)` (a
recorded file), `dead_letters(letters)` (the records of dead letters), and
`flowstream.testing.MemoryStream` (in memory)."""

from flowstream.sources.base import Position as Position
from flowstream.sources.base import Source as Source
from flowstream.sources.dead_letters import dead_letters as dead_letters
from flowstream.sources.dynamodb import dynamodb as dynamodb
from flowstream.sources.jsonl import jsonl as jsonl

__all__ = ["Position", "Source", "dead_letters", "dynamodb", "jsonl"]
