"""Where progress is kept: `memory()` (this process), `sqlite(path)` (durable, one
machine) and `dynamodb(table)` (durable, in a DynamoDB table)."""

from flowstream.checkpoints.base import SHARD_END as SHARD_END
from flowstream.checkpoints.base import CheckpointStore as CheckpointStore
from flowstream.checkpoints.dynamodb import dynamodb as dynamodb
from flowstream.checkpoints.memory import memory as memory
from flowstream.checkpoints.sqlite import sqlite as sqlite

__all__ = ["SHARD_END", "CheckpointStore", "dynamodb", "memory", "sqlite"]
