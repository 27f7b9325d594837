"""A checkpoint store in process memory: for tests, and for runs that need no restart.

Positions live on the store object, so a second run with the same object resumes where
the first left off; nothing survives the process.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import final

from flowstream.checkpoints.base import (
    CheckpointSession,
    CheckpointStore,
    StoredCheckpoints,
    check_position,
    is_ahead,
)
from flowstream.errors import CheckpointError

__all__ = ["MemoryCheckpoints", "memory"]


@final
class MemoryCheckpoints(CheckpointStore):
    """Checkpoints kept in a dict on this object; build it with `checkpoints.memory()`."""

    # A save is a dict update, so the runtime may record every ack frontier at once.
    flush_interval: float = 0.0

    def __init__(self) -> None:
        # (pipeline, stream_id) -> shard_id -> position
        self._positions: dict[tuple[str, str], dict[str, str]] = {}

    def open(self, pipeline: str, stream_id: str) -> AbstractAsyncContextManager[CheckpointSession]:
        return self._open(pipeline, stream_id)

    @asynccontextmanager
    async def _open(self, pipeline: str, stream_id: str) -> AsyncIterator[CheckpointSession]:
        session = _MemorySession(self._positions.setdefault((pipeline, stream_id), {}))
        try:
            yield session
        finally:
            session.closed = True

    def positions(self, pipeline: str, stream_id: str) -> dict[str, str]:
        """A copy of the saved positions of `pipeline` on `stream_id` (shard id ->
        position); empty when nothing was saved."""
        return dict(self._positions.get((pipeline, stream_id), {}))

    def describe(self) -> str:
        return "memory()"

    async def inspect(self, pipeline: str, stream_id: str) -> StoredCheckpoints:
        return StoredCheckpoints(self.positions(pipeline, stream_id))

    async def overwrite(
        self, pipeline: str, stream_id: str, positions: Mapping[str, str | None]
    ) -> None:
        for shard_id, position in positions.items():
            if position is not None:
                check_position("memory()", shard_id, position)
        shards = self._positions.setdefault((pipeline, stream_id), {})
        for shard_id, position in positions.items():
            if position is None:
                shards.pop(shard_id, None)
            else:
                shards[shard_id] = position


@final
class _MemorySession(CheckpointSession):
    def __init__(self, shards: dict[str, str]) -> None:
        self._shards = shards
        self.closed = False

    async def load(self) -> dict[str, str]:
        self._check_open()
        return dict(self._shards)

    async def save(self, positions: Mapping[str, str]) -> None:
        self._check_open()
        # Check every position first, so that a bad one saves nothing (like a rolled
        # back transaction in the durable stores).
        for shard_id, position in positions.items():
            check_position("memory()", shard_id, position)
        for shard_id, position in positions.items():
            if is_ahead(position, self._shards.get(shard_id)):
                self._shards[shard_id] = position

    def _check_open(self) -> None:
        if self.closed:
            raise CheckpointError(
                "memory() checkpoint session is closed; load and save only inside "
                "`async with store.open(pipeline, stream_id) as session:`"
            )


def memory() -> MemoryCheckpoints:
    """A new in-memory checkpoint store; reuse the object to resume a pipeline."""
    return MemoryCheckpoints()
