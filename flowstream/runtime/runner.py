"""One shard's runner: read pages, process them, deliver in order, advance the frontier.

Two tasks joined by a one-page buffer: the producer reads and processes the next page
while the consumer delivers the current one, so a slow sink overlaps the next poll. The
consumer is the only one that delivers, one page at a time, so every sink sees the
shard's elements in sequence order, and the frontier moves only past pages (or the
prefix of a page) that every sink acknowledged.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from flowstream.errors import SinkError
from flowstream.plan import Plan, Processed, StepFailure
from flowstream.policy import RetryPolicy
from flowstream.record import Record
from flowstream.report import ShardReport, ShardState, SinkReport
from flowstream.runtime.checkpointer import Checkpointer
from flowstream.sinks.base import Batch, SendResult, SinkWriter
from flowstream.sources.base import Shard, ShardReader

__all__ = ["ShardRunner"]

logger = logging.getLogger("flowstream")


@dataclass(slots=True)
class _Work:
    """A page (or the part of it before a failure) ready to deliver.

    `records` is what the plan ran over; `done` is how many leading records are
    finished once this is delivered.
    """

    records: list[Record]
    processed: Processed
    done: int
    caught_up: bool = False
    ended: bool = False
    stop: StepFailure | None = None


@dataclass(slots=True)
class _SinkFailure:
    record_index: int
    step: str
    error: BaseException
    #: a stop came while waiting to retry: the record is not failed, just not done
    interrupted: bool = False


@dataclass
class ShardRunner:
    """Runs one shard until it ends, drains (when draining), stops at a failure, or is
    told to stop."""

    shard: Shard
    reader: ShardReader
    plan: Plan
    writers: list[SinkWriter]
    sink_reports: list[SinkReport]
    report: ShardReport
    checkpointer: Checkpointer
    drain: bool
    policy: RetryPolicy
    _polling: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    _stopping: bool = False
    _stop_requested: anyio.Event = field(default_factory=anyio.Event)

    def stop(self) -> None:
        """Stop polling; the page being delivered finishes, later ones are left for the
        next run. A sink waiting to retry gives up at once: what it has not acknowledged
        is read again by the next run."""
        self._stopping = True
        self._polling.cancel()
        self._stop_requested.set()

    async def run(self) -> ShardState:
        send, receive = anyio.create_memory_object_stream[_Work](1)
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._produce, send)
            try:
                state = await self._consume(receive)
            finally:
                self._polling.cancel()
                receive.close()
        return state

    # -- producer: read and process ---------------------------------------------------

    async def _produce(self, send: MemoryObjectSendStream[_Work]) -> None:
        with send, self._polling:
            while True:
                page = await self.reader.read()
                self.report.read += len(page.records)
                if page.note:
                    self.report.notes.append(page.note)
                records = page.records
                attempt = 0
                while True:
                    processed = await self.plan.process(records)
                    failure = processed.failure
                    if failure is None:
                        await send.send(
                            _Work(records, processed, len(records), page.caught_up, page.ended)
                        )
                        break
                    # Deliver what came before the failing record, then retry from it.
                    await send.send(_Work(records, processed, failure.record_index))
                    if failure.record_index > 0:
                        attempt = 0  # a new failing record: it gets its own retries
                    records = records[failure.record_index :]
                    if attempt >= self.policy.retries:
                        await send.send(_Work(records, _EMPTY, 0, stop=failure))
                        return
                    attempt += 1
                    self.report.retries += 1
                    logger.warning(
                        "shard %s: %s failed on record %s (%s: %s); retry %d of %d",
                        self.shard.shard_id,
                        failure.step,
                        records[0].sequence_number,
                        type(failure.error).__name__,
                        failure.error,
                        attempt,
                        self.policy.retries,
                    )
                    await anyio.sleep(self.policy.delay(attempt))
                if page.ended or (self.drain and page.caught_up):
                    return

    # -- consumer: deliver and acknowledge ----------------------------------------------

    async def _consume(self, receive: MemoryObjectReceiveStream[_Work]) -> ShardState:
        async for work in receive:
            if self._stopping:
                break  # left unacknowledged: the next run reads it again
            if work.stop is not None:
                return self._stopped(work.records, 0, work.stop.step, work.stop.error, 1)
            failure = await self._deliver(work)
            if failure is not None:
                # count what was settled before the failing record; the rest is read again
                filtered, dropped = work.processed.counts_before(failure.record_index)
                self.report.filtered += filtered
                self.report.dropped += dropped
                if failure.interrupted:
                    if failure.record_index:
                        done = work.records[failure.record_index - 1].sequence_number
                        self.checkpointer.advance(self.shard.shard_id, done)
                    return ShardState.INTERRUPTED
                return self._stopped(
                    work.records, failure.record_index, failure.step, failure.error, 0
                )
            p = work.processed
            self.report.filtered += p.filtered
            self.report.dropped += p.dropped
            if work.done:
                self.checkpointer.advance(
                    self.shard.shard_id, work.records[work.done - 1].sequence_number
                )
            if work.ended:
                await self.checkpointer.shard_end(self.shard.shard_id)
                return ShardState.ENDED
            if self.drain and work.caught_up:
                return ShardState.CAUGHT_UP
        return ShardState.INTERRUPTED

    def _stopped(
        self,
        records: list[Record],
        index: int,
        step: str,
        error: BaseException,
        failed: int,
    ) -> ShardState:
        if index:
            self.checkpointer.advance(self.shard.shard_id, records[index - 1].sequence_number)
        record = records[index]
        self.report.failed += failed
        self.report.stopped_at = record.sequence_number
        self.report.error = f"{step}: {type(error).__name__}: {error}"
        logger.error(
            "shard %s stopped at record %s after %d retries: %s",
            self.shard.shard_id,
            record.sequence_number,
            self.policy.retries,
            self.report.error,
        )
        return ShardState.STOPPED

    async def _deliver(self, work: _Work) -> _SinkFailure | None:
        jobs = [(i, out) for i, out in enumerate(work.processed.outputs) if out[0]]
        if not jobs:
            return None
        records = work.records
        if len(jobs) == 1:
            i, (values, origins) = jobs[0]
            return await self._send(i, values, origins, [records[o] for o in origins])
        failures: list[_SinkFailure] = []
        # Sinks of a fan-out share one origins list: look their records up once a page.
        looked_up: dict[int, list[Record]] = {}

        async def send_one(i: int, values: list[Any], origins: list[int]) -> None:
            of = looked_up.get(id(origins))
            if of is None:
                of = looked_up[id(origins)] = [records[o] for o in origins]
            failure = await self._send(i, values, origins, of)
            if failure is not None:
                failures.append(failure)

        async with anyio.create_task_group() as tg:
            for i, (values, origins) in jobs:
                tg.start_soon(send_one, i, values, origins)
        return min(failures, key=lambda f: f.record_index) if failures else None

    async def _send(
        self, i: int, values: list[Any], origins: list[int], records: list[Record]
    ) -> _SinkFailure | None:
        """Deliver to sink `i` (`records[k]` is where `values[k]` came from), retrying
        only the items that failed."""
        writer, stats = self.writers[i], self.sink_reports[i]
        batch = Batch(self.shard.shard_id, values, records)
        attempt = 0
        while True:
            stats.batches += 1
            retryable = True
            try:
                result = await writer.send(batch)
            except Exception as exc:
                failed: dict[int, BaseException] = dict.fromkeys(range(len(batch)), exc)
            else:
                failed, retryable = _outcome(result, len(batch), stats.name)
            delivered = len(batch) - len(failed)
            stats.delivered += delivered
            self.report.delivered += delivered
            if not failed:
                return None
            first = min(failed)
            # The earliest failure decides: later items wait behind it either way.
            retryable = retryable and getattr(failed[first], "retryable", True) is not False
            if not retryable or attempt >= self.policy.retries:
                stats.failed += len(failed)
                self.report.failed += len(failed)
                return _SinkFailure(origins[first], f"sink {stats.name}", failed[first])
            attempt += 1
            self.report.retries += 1
            logger.warning(
                "shard %s: sink %s failed %d of %d item(s) (%s: %s); retry %d of %d",
                self.shard.shard_id,
                stats.name,
                len(failed),
                len(batch),
                type(failed[first]).__name__,
                failed[first],
                attempt,
                self.policy.retries,
            )
            keep = sorted(failed)
            batch = batch.subset(keep)
            origins = [origins[k] for k in keep]
            with anyio.move_on_after(_retry_delay(self.policy.delay(attempt), failed.values())):
                await self._stop_requested.wait()
            if self._stop_requested.is_set():
                return _SinkFailure(origins[0], f"sink {stats.name}", failed[first], True)


def _outcome(result: object, size: int, sink: str) -> tuple[dict[int, BaseException], bool]:
    """What a `send()` of `size` items returned, as (failed items, retryable).

    A result that breaks the protocol is a sink bug: it cannot be trusted to say which
    items were delivered, so none is taken as delivered, and retrying does not help."""
    if result is None:
        return {}, True
    if isinstance(result, SendResult):
        try:
            failed = dict(result.failed)
        except (TypeError, ValueError):
            failed = {}
            problem = f"returned SendResult.failed={result.failed!r}, which is not a mapping"
        else:
            bad = [k for k in failed if type(k) is not int or not 0 <= k < size]
            if not bad:
                return failed, result.retryable
            problem = f"reported item {bad[0]!r} as failed in a batch of {size} item(s)"
        problem += f"; SendResult.failed must map indices from 0 to {size - 1} to errors"
    else:
        problem = (
            f"returned {type(result).__name__} from send(); return None when every item "
            "was delivered, or a SendResult naming the items that failed"
        )
    return dict.fromkeys(range(size), SinkError(f"sink {sink} {problem}")), False


_EMPTY = Processed([])


#: Longest wait a destination's Retry-After can impose on one retry.
_MAX_RETRY_AFTER = 300.0


def _retry_delay(backoff: float, errors: Iterable[BaseException]) -> float:
    """The backoff, or longer when a destination said how long to wait."""
    asked = [getattr(e, "retry_after", None) for e in errors]
    waits = [float(a) for a in asked if isinstance(a, int | float) and a > 0]
    return max([backoff, *(min(w, _MAX_RETRY_AFTER) for w in waits)])
