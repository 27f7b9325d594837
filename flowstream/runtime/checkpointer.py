"""Records each shard's contiguous ack frontier in the checkpoint store, in batches."""

from __future__ import annotations

import anyio

from flowstream.checkpoints.base import SHARD_END, CheckpointSession, is_ahead
from flowstream.errors import CheckpointError
from flowstream.report import RunReport

__all__ = ["Checkpointer"]


class Checkpointer:
    """Collects frontier advances from shard runners and writes them every `interval`
    seconds (at once when the interval is 0), once `records` records are done since the
    last write (when given), at a shard's end, and on `flush()`."""

    def __init__(
        self,
        session: CheckpointSession,
        interval: float,
        report: RunReport,
        records: int | None = None,
    ) -> None:
        self._session = session
        self._interval = interval
        self._records = records
        self._report = report
        self._pending: dict[str, str] = {}
        self._done = 0  # records done since the last write
        self._lock = anyio.Lock()
        self._wake = anyio.Event()

    def advance(self, shard_id: str, position: str, records: int = 0) -> None:
        """Note that every record of `shard_id` up to `position` is done (`records` more
        of them than before)."""
        previous = self._pending.get(shard_id)
        if previous is None or is_ahead(position, previous):
            self._pending[shard_id] = position
            self._done += records
            if self._interval <= 0 or (self._records is not None and self._done >= self._records):
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
            done, self._done = self._done, 0
            writes = self._report.checkpoint_writes
            try:
                refused = await self._session.save(batch)
            except BaseException as exc:
                if isinstance(exc, Exception):
                    writes["failed"] = writes.get("failed", 0) + 1
                # Keep what could not be written, and its count, so a later flush retries it.
                for shard_id, position in batch.items():
                    self.advance(shard_id, position)
                self._done += done
                if isinstance(exc, CheckpointError | anyio.get_cancelled_exc_class()):
                    raise
                if isinstance(exc, Exception):
                    raise CheckpointError(
                        f"checkpoint store failed to save {len(batch)} position(s): "
                        f"{type(exc).__name__}: {exc}; the pipeline stops rather than run "
                        "on with progress it cannot record"
                    ) from exc
                raise
            writes["ok"] = writes.get("ok", 0) + 1
            if refused:
                writes["refused"] = writes.get("refused", 0) + len(refused)
            for shard_id, position in batch.items():
                shard = self._report.shards.get(shard_id)
                if shard is not None and not (refused and shard_id in refused):
                    shard.checkpoint = position

    async def run(self) -> None:
        """Flush on the interval until cancelled."""
        while True:
            if self._interval > 0:
                with anyio.move_on_after(self._interval):
                    await self._wake.wait()
            else:
                await self._wake.wait()
            self._wake = anyio.Event()
            await self.flush()
