"""Records each shard's contiguous ack frontier in the checkpoint store, in batches."""

from __future__ import annotations

import anyio

from flowstream.checkpoints.base import SHARD_END, CheckpointSession, is_ahead
from flowstream.errors import CheckpointError
from flowstream.report import RunReport

__all__ = ["Checkpointer"]


class Checkpointer:
    """Collects frontier advances from shard runners and writes them every `interval`
    seconds (at once when the interval is 0), at a shard's end, and on `flush()`."""

    def __init__(self, session: CheckpointSession, interval: float, report: RunReport) -> None:
        self._session = session
        self._interval = interval
        self._report = report
        self._pending: dict[str, str] = {}
        self._lock = anyio.Lock()
        self._wake = anyio.Event()

    def advance(self, shard_id: str, position: str) -> None:
        """Note that every record of `shard_id` up to `position` is done."""
        previous = self._pending.get(shard_id)
        if previous is None or is_ahead(position, previous):
            self._pending[shard_id] = position
            if self._interval <= 0:
                self._wake.set()

    async def shard_end(self, shard_id: str) -> None:
        """Record that `shard_id` is read to its end and done; returns once durable, so
        its children may start."""
        self._pending[shard_id] = SHARD_END
        await self.flush()

    async def flush(self) -> None:
        """Write every pending advance now."""
        async with self._lock:
            if not self._pending:
                return
            batch, self._pending = self._pending, {}
            try:
                await self._session.save(batch)
            except BaseException as exc:
                # Keep what could not be written so a later flush retries it.
                for shard_id, position in batch.items():
                    self.advance(shard_id, position)
                if isinstance(exc, CheckpointError | anyio.get_cancelled_exc_class()):
                    raise
                if isinstance(exc, Exception):
                    raise CheckpointError(
                        f"checkpoint store failed to save {len(batch)} position(s): "
                        f"{type(exc).__name__}: {exc}; the pipeline stops rather than run "
                        "on with progress it cannot record"
                    ) from exc
                raise
            for shard_id, position in batch.items():
                shard = self._report.shards.get(shard_id)
                if shard is not None:
                    shard.checkpoint = position

    async def run(self) -> None:
        """Flush on the interval until cancelled."""
        while True:
            if self._interval > 0:
                await anyio.sleep(self._interval)
            else:
                await self._wake.wait()
                self._wake = anyio.Event()
            await self.flush()
