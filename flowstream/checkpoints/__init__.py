"""Where progress is kept: `memory()` (this process) and `sqlite(path)` (durable)."""

from flowstream.checkpoints.base import SHARD_END as SHARD_END
from flowstream.checkpoints.base import CheckpointStore as CheckpointStore
from flowstream.checkpoints.memory import memory as memory
from flowstream.checkpoints.sqlite import sqlite as sqlite

__all__ = ["SHARD_END", "CheckpointStore", "memory", "sqlite"]
