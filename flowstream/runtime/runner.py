"""One shard's runner: read pages, process them, deliver in order, advance the frontier.

Two tasks joined by a one-page buffer: the producer reads and processes the next page
while the consumer delivers the current one, so a slow sink overlaps the next poll. The
consumer is the only one that delivers, one page at a time, so every sink sees the
shard's elements in sequence order, and the frontier moves only past pages (or the
prefix of a page) that every sink acknowledged.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

import anyio
import anyio.lowlevel
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from flowstream import log_limit
from flowstream.concurrency import group_by_key
from flowstream.deadletter import DeadLetter, Reason
from flowstream.errors import NotSentError, SinkError
from flowstream.plan import Plan, Processed
from flowstream.policy import FailurePolicy
from flowstream.record import Record
from flowstream.report import ShardReport, ShardState, SinkReport
from flowstream.runtime.checkpointer import Checkpointer
from flowstream.sinks.base import Batch, SendResult, Sink, SinkWriter
from flowstream.sources.base import Page, Shard, ShardReader

__all__ = ["ShardRunner"]

logger = logging.getLogger("flowstream")


@dataclass(slots=True)
class _Letter:
    """A record to dead-letter: where it failed, why, and after how many attempts."""

    record_index: int
    step: str
    reason: Reason
    error: BaseException | None
    attempts: int
    first: datetime | None
    last: datetime | None
    sink: Sink


def _reason(too_old: bool, retryable: bool) -> Reason:
    """Why a record that fails for good is dead-lettered."""
    if too_old:
        return "max_record_age"
    return "retries_exhausted" if retryable else "not_retryable"


@dataclass(slots=True)
class _Stop:
    """Where delivery stopped: `record_index` is the first record not done."""

    record_index: int
    step: str
    error: BaseException
    #: a stop came while waiting to retry: the record is not failed, just not done
    interrupted: bool = False


@dataclass(slots=True)
class _Work:
    """A page (or a part of it) ready to deliver.

    `records` is what the plan ran over; `done` is how many leading records are
    finished once this is delivered and its `letters` are dead-lettered.
    """

    records: list[Record]
    processed: Processed
    done: int
    caught_up: bool = False
    ended: bool = False
    stop: _Stop | None = None
    letters: list[_Letter] = field(default_factory=list)
    #: how many works the producer sent make this one (a batching window merges them)
    parts: int = 1


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
    #: When draining, the time the run started: the first record created after it ends
    #: the shard's drain (it is not processed by this run). None: not draining.
    drain_cut: datetime | None
    pipeline: str = ""
    stream: str = ""
    #: With leases: True while this worker still holds the shard's lease. Asked before
    #: each delivery, so a lease that lapsed (a paused process) sends nothing more.
    holds: Callable[[], bool] | None = None
    _polling: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    _stopping: bool = False
    # Made by the first wait to retry: an idle shard (most of 1,000) never needs one.
    _stop_requested: anyio.Event | None = None
    # The oldest record's creation time of each work handed to the consumer and not yet
    # finished (None for a work without records), oldest first: the iterator age.
    _queued: deque[datetime | None] = field(default_factory=deque)
    # The last read said nothing more was there (and its records, if any, are queued).
    _read_caught_up: bool = False
    # The creation time of a record a step is being retried on (not yet in a work).
    _holding: datetime | None = None
    # With per-key concurrency: the key lanes, and how the shard ended once a page
    # settled it (later pages are then not settled).
    _lanes: _Lanes | None = None
    _outcome: ShardState | None = None
    _waiting: anyio.CancelScope | None = None  # the wait for the next work

    @property
    def drain(self) -> bool:
        return self.drain_cut is not None

    def stop(self) -> None:
        """Stop polling; the page being delivered finishes, later ones are left for the
        next run. A sink waiting to retry gives up at once: what it has not acknowledged
        is read again by the next run."""
        self._stopping = True
        self._polling.cancel()
        if self._stop_requested is not None:
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
                if self.drain_cut is not None:
                    page = _before_cut(page, self.drain_cut)
                report = self.report
                report.read += len(page.records)
                report.last_read_at = datetime.now(UTC)
                if page.note:
                    report.notes.append(page.note)
                if page.records:
                    report.caught_up = self._read_caught_up = False
                elif page.caught_up:
                    self._read_caught_up = True
                    if not self._queued:
                        report.caught_up = True  # everything read is done
                if not (page.records or page.ended or (self.drain and page.caught_up)):
                    # An idle poll: nothing to deliver, so the consumer sleeps on (a
                    # reader that never waits must still let other tasks run).
                    await anyio.lowlevel.checkpoint()
                    continue
                if not await self._process_page(page, send):
                    return  # stopped at a record that failed for good
                self._read_caught_up = page.caught_up
                if page.ended or (self.drain and page.caught_up):
                    return
                # Not kept while the next read waits: a lazy record holds its page's body.
                del page

    async def _send(self, send: MemoryObjectSendStream[_Work], work: _Work) -> None:
        """Hand `work` to the consumer, noting its oldest record for the iterator age."""
        created = work.records[0].approximate_creation_time if work.records else None
        self._holding = None  # a record retried in a step is in a work from here on
        self._queued.append(created)
        if self.report.behind_since is None:
            self.report.behind_since = created
        await send.send(work)

    async def _process_page(self, page: Page, send: MemoryObjectSendStream[_Work]) -> bool:
        """Process a page; records over the age limit are dead-lettered unprocessed.
        Returns False when the shard stops."""
        records = page.records
        policy = self.plan.policy
        if not records or policy.max_record_age is None:
            return await self._process(records, send, page.caught_up, page.ended)
        now = datetime.now(UTC)
        old = [policy.too_old(r, now) for r in records]
        if not any(old):
            return await self._process(records, send, page.caught_up, page.ended)
        # Runs of old and young records, in order (creation times rise with sequence
        # numbers, so this is usually an old prefix and a young rest).
        start = 0
        while start < len(records):
            end = start + 1
            while end < len(records) and old[end] == old[start]:
                end += 1
            run = records[start:end]
            last = end == len(records)
            caught_up, ended = page.caught_up and last, page.ended and last
            if old[start]:
                assert policy.dead_letter is not None  # checked when the policy was built
                letters = [
                    _Letter(
                        k,
                        "max_record_age",
                        "max_record_age",
                        None,
                        0,
                        None,
                        None,
                        policy.dead_letter,
                    )
                    for k in range(len(run))
                ]
                await self._send(
                    send, _Work(run, _EMPTY, len(run), caught_up, ended, letters=letters)
                )
            elif not await self._process(run, send, caught_up, ended):
                return False
            start = end
        return True

    async def _process(
        self,
        records: list[Record],
        send: MemoryObjectSendStream[_Work],
        caught_up: bool,
        ended: bool,
    ) -> bool:
        """Run the plan over `records`, retrying a record a user function fails on and
        then dead-lettering it or stopping there. Returns False when the shard stops."""
        attempts = 0
        first: datetime | None = None
        while True:
            processed = await self.plan.process(records)
            failure = processed.failure
            if failure is None:
                await self._send(send, _Work(records, processed, len(records), caught_up, ended))
                return True
            # Deliver what came before the failing record, then retry from it.
            index = failure.record_index
            if index > 0:
                await self._send(send, _Work(records, processed, index))
                attempts, first = 0, None  # a new failing record: it gets its own retries
                records = records[index:]
            attempts += 1
            now = datetime.now(UTC)
            first = first or now
            policy = self.plan.policy_at(failure.position)
            error = failure.error
            retryable = _retryable(error)
            too_old = policy.too_old(records[0], now)
            if retryable and policy.may_retry(attempts, error) and not too_old:
                self.report.retries += 1
                # the record waits here, not in a queued work: the age counts from it
                self._holding = records[0].approximate_creation_time
                if not self._queued:
                    self.report.behind_since = self._holding
                log_limit.warn(
                    logger,
                    (self.shard.shard_id, failure.step, type(error)),
                    "shard %s: %s failed on record %s (%s: %s); retry %d of %s",
                    self.shard.shard_id,
                    failure.step,
                    records[0].sequence_number,
                    type(error).__name__,
                    error,
                    attempts,
                    policy.retry_limit(error),
                )
                await anyio.sleep(policy.delay(attempts))
                continue
            if policy.dead_letter is None:
                stop = _Stop(0, failure.step, error)
                await self._send(send, _Work(records, _EMPTY, 0, stop=stop))
                return False
            letter = _Letter(
                0,
                failure.step,
                _reason(too_old, retryable),
                error,
                attempts,
                first,
                now,
                policy.dead_letter,
            )
            rest = records[1:]
            self.report.failed += 1
            await self._send(
                send,
                _Work(
                    records[:1],
                    _EMPTY,
                    1,
                    caught_up and not rest,
                    ended and not rest,
                    letters=[letter],
                ),
            )
            if not rest:
                return True
            records, attempts, first = rest, 0, None

    # -- consumer: deliver and acknowledge ----------------------------------------------

    async def _consume(self, receive: MemoryObjectReceiveStream[_Work]) -> ShardState:
        if self.plan.concurrency.per_shard > 1:
            return await self._consume_by_key(receive)
        pending: _Work | None = None
        while True:
            work, pending = await self._next_work(receive, pending)
            if work is None or self._stopping:
                break  # left unacknowledged: the next run reads it again
            if self.holds is not None and not self.holds():
                return ShardState.LOST  # its new holder reads it again
            if work.stop is not None:
                return self._stopped(work.records, work.stop, 1)
            stop, letters = await self._deliver(work)
            state = await self._settle(work, stop, letters)
            if state is not None:
                return state
            # An idle shard waits here for its next page, possibly for hours: it must not
            # keep this one (a lazy record holds its page's whole body) alive meanwhile.
            del work, stop, letters
        return ShardState.PAUSED

    async def _consume_by_key(self, receive: MemoryObjectReceiveStream[_Work]) -> ShardState:
        """`_consume` with per-key concurrency: up to `_PAGES_IN_FLIGHT` pages are
        delivered at once, their key groups in order per key across pages (a group
        starts once the same key's group of the page before is done), and settled (dead
        letters, counts, the checkpoint) strictly in page order."""
        lanes = self._lanes = _Lanes(self.plan.concurrency.per_shard, len(self.writers))
        in_flight: deque[anyio.Event] = deque()  # each page's settled event, oldest first
        pending: _Work | None = None
        last: anyio.Event | None = None
        async with anyio.create_task_group() as tg:
            while self._outcome is None:
                # a page that ends the shard while this waits (an idle stream) ends the wait
                with anyio.CancelScope() as self._waiting:
                    work, pending = await self._next_work(receive, pending)
                self._waiting = None
                if work is None or self._stopping or self._outcome is not None:
                    break
                if self.holds is not None and not self.holds():
                    self._outcome = ShardState.LOST
                    break
                while in_flight and (in_flight[0].is_set() or len(in_flight) >= _PAGES_IN_FLIGHT):
                    await in_flight.popleft().wait()
                if self._outcome is not None:
                    break
                lanes.page += 1
                settled = anyio.Event()
                tg.start_soon(self._page_by_key, work, lanes.page, last, settled)
                in_flight.append(settled)
                last = settled
                if work.stop is not None or work.ended or (self.drain and work.caught_up):
                    break  # nothing of the shard comes after this page
                del work
        return self._outcome or ShardState.PAUSED

    async def _page_by_key(
        self, work: _Work, page: int, before: anyio.Event | None, settled: anyio.Event
    ) -> None:
        """Deliver one page's key groups, then settle it once the page before is."""
        try:
            stop: _Stop | None = None
            letters: list[_Letter] = []
            if work.stop is None:
                stop, letters = await self._deliver(work, page)
            if before is not None:
                await before.wait()
            if self._outcome is not None:
                return  # an earlier page ended the shard: this one is read again
            if work.stop is not None:
                self._outcome = self._stopped(work.records, work.stop, 1)
            else:
                self._outcome = await self._settle(work, stop, letters)
            if self._outcome is not None:
                lanes = self._lanes
                assert lanes is not None  # pages by key are delivered with lanes
                lanes.stop_all()
                if self._waiting is not None:
                    self._waiting.cancel()
        finally:
            settled.set()

    async def _next_work(
        self, receive: MemoryObjectReceiveStream[_Work], pending: _Work | None
    ) -> tuple[_Work | None, _Work | None]:
        """The next work to deliver (None at the end of the stream of works), gathered
        with those after it within a batching window; and one handed back for later."""
        if pending is not None:
            work = pending
        else:
            try:
                work = await receive.receive()
            except anyio.EndOfStream:
                return None, None
        if self.plan.batching.enabled and _gathers(work, self.drain):
            return await self._gather(work, receive)
        return work, None

    async def _settle(
        self, work: _Work, stop: _Stop | None, letters: list[_Letter]
    ) -> ShardState | None:
        """After `work` was delivered (up to `stop`): send its dead letters, count it and
        move the checkpoint; the shard's new state when it ends here."""
        letters = work.letters + letters
        if stop is not None:
            letters = [x for x in letters if x.record_index < stop.record_index]
        if letters:
            letter_stop = await self._dead_letter(work.records, letters)
            if letter_stop is not None and (
                stop is None or letter_stop.record_index < stop.record_index
            ):
                stop = letter_stop
        if stop is not None:
            # count what was settled before the stop; the rest is read again
            filtered, dropped = work.processed.counts_before(stop.record_index)
            self.report.filtered += filtered
            self.report.dropped += dropped
            if stop.interrupted:
                if stop.record_index:
                    done = work.records[stop.record_index - 1].sequence_number
                    self.checkpointer.advance(self.shard.shard_id, done, stop.record_index)
                return ShardState.PAUSED
            return self._stopped(work.records, stop, 0)
        p = work.processed
        self.report.filtered += p.filtered
        self.report.dropped += p.dropped
        if work.done:
            self.checkpointer.advance(
                self.shard.shard_id, work.records[work.done - 1].sequence_number, work.done
            )
        self._done_through(work)
        if work.ended:
            await self.checkpointer.shard_end(self.shard.shard_id)
            return ShardState.ENDED
        if self.drain and work.caught_up:
            return ShardState.CAUGHT_UP
        return None

    async def _gather(
        self, work: _Work, receive: MemoryObjectReceiveStream[_Work]
    ) -> tuple[_Work, _Work | None]:
        """Merge the works that come within the batching window (or until its record
        limit) into `work`; a work that cannot join is handed back, to deliver next."""
        batching = self.plan.batching
        deadline = anyio.current_time() + batching.max_window
        while len(work.records) < batching.max_records and not self._stopping:
            following: _Work | None = None
            with anyio.move_on_after(deadline - anyio.current_time()):
                try:
                    following = await receive.receive()
                except anyio.EndOfStream:
                    return work, None
            if following is None:
                break  # the window closed
            if not _joins(following):
                return work, following
            work = _merged(work, following)
            if not _gathers(work, self.drain):
                break  # its end, or a drain's: deliver now
        return work, None

    def _done_through(self, work: _Work) -> None:
        """Move the iterator-age marks past `work`: the oldest record still waiting is
        the next of this work, or the first of the next one the producer handed over."""
        report = self.report
        records = work.records
        queued = self._queued
        for _ in range(work.parts):
            if queued:
                queued.popleft()
        if work.done:
            report.last_record_time = records[work.done - 1].approximate_creation_time
        if work.done < len(records):
            report.behind_since = records[work.done].approximate_creation_time
        elif queued:
            report.behind_since = next((t for t in queued if t is not None), None)
        else:
            report.behind_since = self._holding
            report.caught_up = self._read_caught_up and self._holding is None

    def _stopped(self, records: list[Record], stop: _Stop, failed: int) -> ShardState:
        index = stop.record_index
        if index:
            self.checkpointer.advance(
                self.shard.shard_id, records[index - 1].sequence_number, index
            )
        record = records[index]
        report = self.report
        report.failed += failed
        report.stopped_at = record.sequence_number
        report.stopped_since = datetime.now(UTC)
        report.held = len(records) - index
        report.behind_since = record.approximate_creation_time
        report.caught_up = False
        self.report.error = f"{stop.step}: {type(stop.error).__name__}: {stop.error}"
        logger.error(
            "shard %s stopped at record %s: %s",
            self.shard.shard_id,
            record.sequence_number,
            self.report.error,
        )
        return ShardState.STOPPED

    async def _deliver(self, work: _Work, page: int = 0) -> tuple[_Stop | None, list[_Letter]]:
        """Deliver a page's outputs to their sinks, concurrently (by key, as page number
        `page`, with per-key concurrency); return the earliest stop and the records to
        dead-letter."""
        jobs = [(i, out) for i, out in enumerate(work.processed.outputs) if out[0]]
        if not jobs:
            return None, []
        records = work.records
        policy = self.plan.policy
        keys = work.processed.keys
        # Sinks of a fan-out share one origins list: look their records up once a page.
        looked_up: dict[int, list[Record]] = {}
        deliveries: list[_Delivery | _KeyedDelivery] = []
        for i, (values, origins) in jobs:
            of = looked_up.get(id(origins))
            if of is None:
                of = looked_up[id(origins)] = [records[o] for o in origins]
            batch = Batch(self.shard.shard_id, values, of)
            step = f"sink {self.sink_reports[i].name}"
            if keys is not None:
                deliveries.append(
                    _KeyedDelivery(self, i, batch, origins, policy, step, keys[i], page)
                )
            else:
                deliveries.append(_Delivery(self, i, batch, origins, policy, step))
        stop = await _run_all(deliveries)
        return stop, [x for d in deliveries for x in d.letters]

    async def _dead_letter(self, records: list[Record], letters: list[_Letter]) -> _Stop | None:
        """Send each record's dead letter (one per record, its first failure) to its
        dead-letter sink; return where that failed, if it did."""
        by_record: dict[int, _Letter] = {}
        for letter in sorted(letters, key=lambda x: x.record_index):
            by_record.setdefault(letter.record_index, letter)
        by_sink: dict[int, list[_Letter]] = {}
        for letter in by_record.values():
            by_sink.setdefault(self.plan.position_of(letter.sink), []).append(letter)
        policy = self.plan.letter_policy
        deliveries: list[_Delivery] = []
        for i, group in by_sink.items():
            values = [
                DeadLetter.of(
                    records[x.record_index],
                    pipeline=self.pipeline,
                    stream=self.stream,
                    step=x.step,
                    reason=x.reason,
                    error=x.error,
                    attempts=x.attempts,
                    first_failure=x.first,
                    last_failure=x.last,
                )
                for x in group
            ]
            origins = [x.record_index for x in group]
            batch = Batch(self.shard.shard_id, values, [records[o] for o in origins])
            step = f"dead-letter sink {self.sink_reports[i].name}"
            deliveries.append(_Delivery(self, i, batch, origins, policy, step, letters_only=True))
        stop = await _run_all(deliveries)
        sent = [x for x in by_record.values() if stop is None or x.record_index < stop.record_index]
        if sent:
            # One line per page, not per record: an outage can dead-letter a page at once.
            self.report.dead_lettered += len(sent)
            first, last = records[sent[0].record_index], records[sent[-1].record_index]
            log_limit.warn(
                logger,
                (self.shard.shard_id, "dead-letter", sent[0].reason, sent[0].step),
                "shard %s: %d record(s) dead-lettered, %s to %s (first: %s at %s)",
                self.shard.shard_id,
                len(sent),
                first.sequence_number,
                last.sequence_number,
                sent[0].reason,
                sent[0].step,
            )
        return stop

    async def wait_to_retry(self, delay: float) -> bool:
        """Wait `delay` seconds; False when a stop came first."""
        if self._stopping:
            return False
        if self._stop_requested is None:
            self._stop_requested = anyio.Event()
        with anyio.move_on_after(delay):
            await self._stop_requested.wait()
        return not self._stopping


@dataclass(slots=True)
class _Tries:
    """How an item has failed so far: the failed calls that count against its retries
    (`alone`: all but the calls made to bisect), and when it first and last failed."""

    alone: int = 0
    isolated: bool = False
    first: datetime | None = None
    last: datetime | None = None

    def fail(self, now: datetime) -> None:
        self.first = self.first or now
        self.last = now


class _Delivery:
    """Delivers one batch to one sink under a failure policy, keeping the shard's order.

    Failed items are retried before anything after them is sent, so no item reaches
    the sink ahead of an earlier item still being retried. A batch the sink fails as a
    whole (it raised, or gave every item the same error) is retried as a whole, then
    split in halves, sent in order, until the items to blame stand alone (`bisect`).
    An item that fails for good is dead-lettered (and the rest goes on), or, without a
    dead-letter sink, ends the delivery just before it (`stop`).
    """

    __slots__ = (
        "_final",
        "_given_up",
        "_tries",
        "batch",
        "letters",
        "letters_only",
        "limit",
        "origins",
        "policy",
        "runner",
        "stats",
        "step",
        "stop",
        "writer",
    )

    def __init__(
        self,
        runner: ShardRunner,
        index: int,
        batch: Batch,
        origins: list[int],
        policy: FailurePolicy,
        step: str,
        *,
        letters_only: bool = False,
    ) -> None:
        self.runner = runner
        self.writer = runner.writers[index]
        self.stats = runner.sink_reports[index]
        self.batch = batch
        self.origins = origins
        self.policy = policy
        self.step = step
        #: delivering dead letters: the shard's counts are its records', kept elsewhere
        self.letters_only = letters_only
        self.letters: list[_Letter] = []
        self.stop: _Stop | None = None
        #: items from this index on are not sent (they are behind a stop)
        self.limit = len(batch)
        self._tries: dict[int, _Tries] = {}
        self._given_up: set[int] = set()
        #: errors of a SendResult(retryable=False): none of them can be retried
        self._final: list[BaseException] = []

    async def run(self) -> None:
        await self._deliver(None, bisecting=False)
        self._count_failed()

    def _count_failed(self) -> None:
        """Count the items that failed for good: the one a stop is at, or those
        dead-lettered before any stop (what lies past a stop is read again)."""
        stop = self.stop
        if self.policy.dead_letter is None:
            failed = 1 if stop is not None and not stop.interrupted else 0
        else:
            given_up = [self.origins[k] for k in self._given_up]
            failed = len(
                given_up if stop is None else [o for o in given_up if o < stop.record_index]
            )
        self.stats.failed += failed
        if not self.letters_only:
            self.runner.report.failed += failed  # a failed letter is its record's, counted

    async def _deliver(self, items: list[int] | None, *, bisecting: bool) -> bool:
        """Deliver `items` (None: the whole batch); False when a stop interrupted."""
        pending = items
        may_retry = self.policy.may_retry
        while True:
            if pending is not None:
                pending = [k for k in pending if k < self.limit and k not in self._given_up]
                if not pending:
                    return True
            failed = await self._call(pending)
            if not failed:
                return True
            order = sorted(failed)
            real = [k for k in order if not isinstance(failed[k], NotSentError)] or order
            now = datetime.now(UTC)
            for k in real:
                self._tries.setdefault(k, _Tries()).fail(now)
            first = real[0]
            error = failed[first]
            # the run of items from the first failure on that share its error
            group = _same_error_run(order, first, failed)
            if len(group) > 1:
                # The sink could not say which items are to blame.
                held = order[: order.index(first)]
                if held:
                    # items held back before the failing run go first, in order
                    if not await self._deliver(held, bisecting=bisecting):
                        return False
                    # a held item may have stopped the delivery: nothing past it is sent
                    order = [k for k in order[len(held) :] if k < self.limit]
                    group = [k for k in group if k < self.limit]
                    if not group:
                        return True
                if not bisecting:
                    # a failed call counts against each item's retries; a call made
                    # only to find the item to blame does not
                    for k in group:
                        self._tries[k].alone += 1
                    old = [k for k in group if self._too_old(k, now)]
                    for k in old:
                        self._give_up(k, error, now)
                    if old:
                        group = [k for k in group if k not in self._given_up]
                        order = [k for k in order if k not in self._given_up]
                attempt = max((self._tries[k].alone for k in group), default=0)
                if group and not bisecting and self._retryable(error) and may_retry(attempt, error):
                    if not await self._wait(attempt, [error], len(group), order):
                        return False
                    pending = order
                    continue
                grouped = set(group)
                if len(group) > 1 and self.policy.bisect:
                    mid = len(group) // 2
                    for half in (group[:mid], group[mid:]):
                        if not await self._deliver(half, bisecting=True):
                            return False
                else:
                    for k in group:
                        self._give_up(k, error, now)
                pending = [k for k in order if k not in grouped]
                continue
            retrying: list[int] = []
            for k in real:
                tries = self._tries[k]
                if bisecting and not tries.isolated:
                    tries.isolated = True  # the call that found it: not one of its retries
                else:
                    tries.alone += 1
                if (
                    self._retryable(failed[k])
                    and may_retry(tries.alone, failed[k])
                    and not self._too_old(k, now)
                ):
                    retrying.append(k)
                else:
                    self._give_up(k, failed[k], now)
            pending = [k for k in order if k not in self._given_up and k < self.limit]
            retrying = [k for k in retrying if k < self.limit]
            if retrying:
                attempt = max(self._tries[k].alone for k in retrying)
                if not await self._wait(
                    attempt, [failed[k] for k in retrying], len(retrying), pending
                ):
                    return False

    async def _call(self, items: list[int] | None) -> dict[int, BaseException]:
        """Send `items` once; return the failed ones (batch indices) and their errors."""
        batch = self.batch if items is None else self.batch.subset(items)
        stats = self.stats
        stats.batches += 1
        began = time.perf_counter()
        try:
            result = await self.writer.send(batch)
        except Exception as exc:
            stats.observe(time.perf_counter() - began)
            failed: dict[int, BaseException] = dict.fromkeys(range(len(batch)), exc)
        else:
            stats.observe(time.perf_counter() - began)
            failed, retryable = _outcome(result, len(batch), stats.name)
            if not retryable:
                self._final.extend(failed.values())
        delivered = len(batch) - len(failed)
        stats.delivered += delivered
        if not self.letters_only:
            self.runner.report.delivered += delivered
        if items is None or not failed:
            return failed
        return {items[j]: e for j, e in failed.items()}

    def _retryable(self, error: BaseException) -> bool:
        return _retryable(error) and not any(e is error for e in self._final)

    def _too_old(self, k: int, now: datetime) -> bool:
        return self.policy.too_old(self.batch.records[k], now)

    def _give_up(self, k: int, error: BaseException, now: datetime) -> None:
        if k in self._given_up or k >= self.limit:
            return
        self._given_up.add(k)
        tries = self._tries.get(k) or _Tries()
        sink = self.policy.dead_letter
        if sink is None:
            self.limit = k
            self.stop = _Stop(self.origins[k], self.step, error)
            return
        self.letters.append(
            _Letter(
                self.origins[k],
                self.step,
                _reason(self._too_old(k, now), self._retryable(error)),
                error,
                tries.alone,
                tries.first,
                tries.last,
                sink,
            )
        )

    async def _wait(
        self, attempt: int, errors: list[BaseException], count: int, pending: list[int]
    ) -> bool:
        """Back off before retry `attempt`; False (and an interrupted stop at the first
        pending item) when a stop came first."""
        runner = self.runner
        runner.report.retries += 1
        error = errors[0]
        log_limit.warn(
            logger,
            (runner.shard.shard_id, self.step, type(error)),
            "shard %s: %s failed %d of %d item(s) (%s: %s); retry %d of %s",
            runner.shard.shard_id,
            self.step,
            count,
            len(self.batch),
            type(error).__name__,
            error,
            attempt,
            self.policy.retry_limit(error),
        )
        if await runner.wait_to_retry(_retry_delay(self.policy.delay(attempt), errors)):
            return True
        first = pending[0] if pending else 0
        stop = _Stop(self.origins[first], self.step, error, interrupted=True)
        if self.stop is None or stop.record_index < self.stop.record_index:
            self.stop = stop
        return False


#: Pages of a shard delivered at once with per-key concurrency: a slow key holds back
#: later pages only when its own next group is in them, up to this many pages ahead.
_PAGES_IN_FLIGHT = 4


class _Lanes:
    """A shard's key lanes (`Pipeline.concurrency()`): per sink, at most `per_shard`
    groups in flight, each key's groups in page order (a group waits for the same key's
    group before it), and where a stop halts what has not started."""

    __slots__ = ("halt", "limiters", "page", "tails")

    def __init__(self, per_shard: int, sinks: int) -> None:
        self.limiters = [anyio.CapacityLimiter(per_shard) for _ in range(sinks)]
        #: (sink, key) -> the done event of that key's latest group
        self.tails: dict[tuple[int, Hashable], anyio.Event] = {}
        #: (page, record index): nothing at or after it starts
        self.halt: tuple[int, int] | None = None
        self.page = 0

    def halt_at(self, page: int, record_index: int) -> None:
        if self.halt is None or (page, record_index) < self.halt:
            self.halt = (page, record_index)

    def stop_all(self) -> None:
        """Start no group of any page from now on (the shard ended, or the run stops)."""
        self.halt_at(-1, 0)

    def allows(self, page: int, record_index: int) -> bool:
        return self.halt is None or (page, record_index) < self.halt


class _KeyedDelivery:
    """Delivers one page's batch to one sink by key: each key's items are one group,
    delivered in order as a `_Delivery` of its own (retries, bisect and dead letters
    apply within it), after the same key's group of the page before, up to `per_shard`
    groups of the shard at once.

    When a group stops (an item failed for good with no dead-letter sink, or a stop came
    while it waited to retry), groups not yet started send only their items before the
    stop (and later pages' groups nothing): everything before it is settled, nothing
    after it is started. Groups already in flight finish; what they delivered past the
    stop is not checkpointed and is delivered again by the next run. A group that does
    not start because the run is stopping is an interrupted stop at its first item.
    """

    __slots__ = ("_args", "_groups", "_lanes", "_page", "_parts", "_skipped")

    def __init__(
        self,
        runner: ShardRunner,
        index: int,
        batch: Batch,
        origins: list[int],
        policy: FailurePolicy,
        step: str,
        keys: list[Hashable],
        page: int,
    ) -> None:
        self._args = (runner, index, batch, origins, policy, step)
        self._page = page
        self._parts: list[_Delivery] = []
        self._skipped: list[_Stop] = []
        assert runner._lanes is not None, "made by the keyed consumer"
        self._lanes = runner._lanes
        tails = self._lanes.tails
        # Registered now, in page order, so that each group knows the one before it.
        self._groups: list[
            tuple[list[int], tuple[int, Hashable], anyio.Event | None, anyio.Event]
        ] = []
        for group in group_by_key(keys):
            lane = (index, keys[group[0]])
            done = anyio.Event()
            self._groups.append((group, lane, tails.get(lane), done))
            tails[lane] = done

    @property
    def stop(self) -> _Stop | None:
        return _earliest([*(d.stop for d in self._parts), *self._skipped])

    @property
    def letters(self) -> list[_Letter]:
        return [x for d in self._parts for x in d.letters]

    async def run(self) -> None:
        async with anyio.create_task_group() as tg:
            for group, lane, before, done in self._groups:
                tg.start_soon(self._group, group, lane, before, done)

    async def _group(
        self,
        group: list[int],
        lane: tuple[int, Hashable],
        before: anyio.Event | None,
        done: anyio.Event,
    ) -> None:
        runner, index, batch, origins, policy, step = self._args
        lanes = self._lanes
        try:
            if before is not None:
                await before.wait()
            async with lanes.limiters[index]:
                if runner._stopping:
                    error = RuntimeError("the run stopped before this item was sent")
                    self._skipped.append(_Stop(origins[group[0]], step, error, interrupted=True))
                    lanes.halt_at(self._page, origins[group[0]])
                    return
                group = [k for k in group if lanes.allows(self._page, origins[k])]
                if not group:
                    return
                part = _Delivery(
                    runner, index, batch.subset(group), [origins[k] for k in group], policy, step
                )
                self._parts.append(part)
                await part.run()
                if part.stop is not None:
                    lanes.halt_at(self._page, part.stop.record_index)
        finally:
            done.set()
            if lanes.tails.get(lane) is done:
                del lanes.tails[lane]  # the key is idle: forget it


async def _run_all(deliveries: Sequence[_Delivery | _KeyedDelivery]) -> _Stop | None:
    """Run the deliveries (to different sinks) concurrently; the earliest stop."""
    if len(deliveries) == 1:
        await deliveries[0].run()
    else:
        async with anyio.create_task_group() as tg:
            for delivery in deliveries:
                tg.start_soon(delivery.run)
    return _earliest([d.stop for d in deliveries])


def _earliest(stops: Iterable[_Stop | None]) -> _Stop | None:
    """The stop at the earliest record, if any."""
    return min((s for s in stops if s is not None), key=lambda s: s.record_index, default=None)


def _same_error_run(order: list[int], first: int, failed: dict[int, BaseException]) -> list[int]:
    """The items of `order` from `first` on, up to the first with another error."""
    error = failed[first]
    run: list[int] = []
    for k in order[order.index(first) :]:
        if failed[k] is not error:
            break
        run.append(k)
    return run


def _retryable(error: BaseException) -> bool:
    """Whether retrying can help: unless the error says otherwise, it may."""
    return getattr(error, "retryable", True) is not False


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


def _gathers(work: _Work, drain: bool) -> bool:
    """Whether a batching window may hold `work` for more: not at a stop, a partial
    page, the shard's end, or a drain's."""
    return _joins(work) and not work.ended and not (drain and work.caught_up)


def _joins(work: _Work) -> bool:
    """Whether `work` may be merged into the one before it: whole, with no stop."""
    return work.stop is None and work.done == len(work.records)


def _merged(first: _Work, then: _Work) -> _Work:
    """One work of `first` and `then` (the next in the shard), as if one page."""
    offset = len(first.records)
    letters = first.letters + [
        replace(letter, record_index=letter.record_index + offset) for letter in then.letters
    ]
    return _Work(
        first.records + then.records,
        first.processed.merged(then.processed, offset),
        first.done + then.done,
        then.caught_up,
        then.ended,
        None,
        letters,
        first.parts + then.parts,
    )


#: Longest wait a destination's Retry-After can impose on one retry.
_MAX_RETRY_AFTER = 300.0


def _retry_delay(backoff: float, errors: Iterable[BaseException]) -> float:
    """The backoff, or longer when a destination said how long to wait."""
    asked = [getattr(e, "retry_after", None) for e in errors]
    waits = [float(a) for a in asked if isinstance(a, int | float) and a > 0]
    return max([backoff, *(min(w, _MAX_RETRY_AFTER) for w in waits)])


def _before_cut(page: Page, cut: datetime) -> Page:
    """The page up to its first record created after `cut` (the run's start), and then
    caught up: a drain reads what was in the stream when the run started. Creation times
    rise with sequence numbers, so a page whose last record is not newer has none."""
    records = page.records
    if not records or not _newer(records[-1], cut):
        return page
    first = next(i for i, record in enumerate(records) if _newer(record, cut))
    return Page(records[:first], caught_up=True, note=page.note)


def _newer(record: Record, cut: datetime) -> bool:
    created = record.approximate_creation_time
    return created is not None and created > cut
