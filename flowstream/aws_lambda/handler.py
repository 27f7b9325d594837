"""`pipeline.lambda_handler()`: the pipeline as the function of a DynamoDB stream event
source mapping.

Each invocation's records take the source's place: they run through the same shard
runner as `run()` (steps, routes, the failure policy, dead letters), as one page read to
its end. The answer follows Lambda's ReportBatchItemFailures contract: nothing, or the
first record not done, so that Lambda checkpoints before it and retries from it.

Lambda freezes the process between invocations and reuses it: the handler keeps one
event loop for the process (``asyncio.run`` per call would close it, and every pooled
connection with it) and opens the sinks once, in a task of that loop that holds them
open until the process ends.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import math
import sys
import time
import weakref
from collections.abc import Mapping, Sequence
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from typing import Any, Final, Protocol, final

import anyio

from flowstream.aws_lambda.metrics import Invocation, emf_line
from flowstream.checkpoints.base import CheckpointSession
from flowstream.errors import FlowstreamError, PipelineError
from flowstream.plan import Plan
from flowstream.record import Record, decode_records
from flowstream.report import RunReport, ShardReport, ShardState, SinkReport
from flowstream.runtime.checkpointer import Checkpointer
from flowstream.runtime.runner import ShardRunner
from flowstream.sinks.base import SinkWriter, checked_writer
from flowstream.sources.base import Page, Shard, ShardReader

__all__ = ["LambdaBatchError", "LambdaContext", "LambdaHandler"]

logger = logging.getLogger("flowstream")

#: No record is cut off for being too new: an invocation processes its whole batch.
_NO_CUT: Final = datetime.max.replace(tzinfo=UTC)


class LambdaContext(Protocol):
    """What the handler reads of the context object Lambda passes."""

    aws_request_id: str

    def get_remaining_time_in_millis(self) -> int: ...


class LambdaBatchError(FlowstreamError):
    """Raised by a handler built with ``partial_failures=False`` when a record of the
    batch could not be processed: the invocation fails and Lambda retries the whole
    batch. `sequence_number` is the first record not done."""

    def __init__(self, message: str, sequence_number: str) -> None:
        super().__init__(message)
        self.sequence_number = sequence_number


@final
class LambdaHandler:
    """A synchronous ``handler(event, context)`` for Lambda's Python runtime; build it
    with `pipeline.lambda_handler()`."""

    def __init__(
        self,
        plan: Plan,
        *,
        pipeline: str,
        margin: float,
        page_size: int,
        partial_failures: bool,
        metrics: bool,
        namespace: str,
    ) -> None:
        self._plan = plan
        self._pipeline = pipeline
        self._margin = margin
        self._page_size = page_size
        self._partial_failures = partial_failures
        self._metrics = metrics
        self._namespace = namespace
        self._sink_names = _unique_names([sink.name for sink in plan.all_sinks])
        self._loop: asyncio.AbstractEventLoop | None = None
        self._host: asyncio.Task[None] | None = None
        self._writers: asyncio.Future[list[SinkWriter]] | None = None
        self._closing: asyncio.Event | None = None
        #: what the last invocation did (for tests and for a wrapper that logs it)
        self.last: Invocation | None = None

    def __call__(self, event: Mapping[str, Any], context: LambdaContext | None) -> dict[str, Any]:
        """Process one event source mapping batch; see the module docstring."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            raise PipelineError(
                f"{self._pipeline}.lambda_handler(): handler(event, context) was called from "
                "a running event loop, but it is synchronous, as Lambda calls it (it runs "
                "its own loop); from async code call it in a thread: "
                "await anyio.to_thread.run_sync(handler, event, context)"
            )
        loop = self._loop
        if loop is None or loop.is_closed():
            loop = self._loop = asyncio.new_event_loop()
            # A local run or a test ends the process with the sinks open: close them
            # then, rather than leave a pending task for the interpreter to complain of.
            atexit.register(_close_at_exit, weakref.ref(self))
        return loop.run_until_complete(self._invoke(event, context))

    def close(self) -> None:
        """Close the sinks and the event loop (Lambda never needs this: the process just
        ends; tests and local runs do)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        if self._host is not None and self._closing is not None:
            self._closing.set()
            loop.run_until_complete(self._host)
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
        self._host = self._writers = self._closing = None

    # -- the sinks, open for the life of the process ------------------------------------

    async def _open_writers(self) -> list[SinkWriter]:
        if self._writers is None or (self._writers.done() and self._writers.exception()):
            loop = asyncio.get_running_loop()
            self._writers = loop.create_future()
            self._closing = asyncio.Event()
            self._host = loop.create_task(self._hold_sinks(self._writers, self._closing))
        return await asyncio.shield(self._writers)

    async def _hold_sinks(
        self, ready: asyncio.Future[list[SinkWriter]], closing: asyncio.Event
    ) -> None:
        try:
            async with AsyncExitStack() as stack:
                writers = [
                    checked_writer(sink, await stack.enter_async_context(sink.open()))
                    for sink in self._plan.all_sinks
                ]
                ready.set_result(writers)
                await closing.wait()
        except Exception as exc:
            if not ready.done():
                ready.set_exception(exc)  # the invocation fails; the next one opens again
            else:
                logger.warning(
                    "pipeline %r: closing the sinks failed: %s: %s",
                    self._pipeline,
                    type(exc).__name__,
                    exc,
                )
        except BaseException as exc:  # a cancellation or the loop's end: not ours to keep
            if not ready.done():
                ready.set_exception(exc)
            raise

    # -- one invocation -----------------------------------------------------------------

    async def _invoke(
        self, event: Mapping[str, Any], context: LambdaContext | None
    ) -> dict[str, Any]:
        began = time.perf_counter()
        request_id = getattr(context, "aws_request_id", "") or ""
        remaining = None if context is None else context.get_remaining_time_in_millis() / 1000
        if "window" in event or "isFinalInvokeForWindow" in event:
            raise PipelineError(
                f"{self._pipeline}.lambda_handler() got an event of a tumbling window (its "
                "event source mapping sets TumblingWindowInSeconds), which flowstream does "
                "not aggregate: remove TumblingWindowInSeconds from the mapping"
            )
        records = decode_records(event)
        done = Invocation(records=len(records))
        try:
            if records and remaining is not None and remaining <= self._margin:
                self._hand_back(
                    records,
                    0,
                    done,
                    f"the invocation had {remaining:.2f}s, not more than margin="
                    f"{self._margin:g}s; raise the function's timeout or lower "
                    "lambda_handler(margin=)",
                )
            elif records:
                await self._process(records, remaining, done)
        finally:
            done.duration_ms = (time.perf_counter() - began) * 1000
            self.last = done
            if self._metrics:
                sys.stdout.write(
                    emf_line(self._pipeline, self._namespace, done, request_id).decode()
                )
                sys.stdout.flush()
        if done.first_failure is None:
            return {"batchItemFailures": []}
        if self._partial_failures:
            return {"batchItemFailures": [{"itemIdentifier": done.first_failure}]}
        raise LambdaBatchError(
            f"{self._pipeline}: {done.failed} of {done.records} records not processed, from "
            f"sequence number {done.first_failure} ({done.stop}); Lambda retries the whole "
            "batch. With FunctionResponseTypes=['ReportBatchItemFailures'] on the event "
            "source mapping and lambda_handler(partial_failures=True), it retries from "
            "that record only",
            done.first_failure,
        )

    async def _process(
        self, records: list[Record], remaining: float | None, done: Invocation
    ) -> None:
        writers = await self._open_writers()
        stream = records[0].event_source_arn
        report = RunReport(pipeline=self._pipeline, stream=stream)
        shard = ShardReport("lambda", state=ShardState.RUNNING)
        report.shards[shard.shard_id] = shard
        sink_reports = [SinkReport(name) for name in self._sink_names]
        checkpointer = Checkpointer(_Positions(), 0.0, report)
        runner = ShardRunner(
            Shard(shard.shard_id),
            _Batch(records, self._page_size),
            self._plan,
            writers,
            sink_reports,
            shard,
            checkpointer,
            _NO_CUT,
            pipeline=self._pipeline,
            stream=stream,
        )
        # Stop (no retry waits, in-flight deliveries finish) `margin` seconds before the
        # deadline; abandon what is still in flight at half the margin.
        soft = math.inf if remaining is None else remaining - self._margin
        hard = math.inf if remaining is None else remaining - self._margin / 2
        state = ShardState.INTERRUPTED
        async with anyio.create_task_group() as tg:
            if soft < math.inf:
                tg.start_soon(_stop_after, runner, soft)
            with anyio.move_on_after(hard):
                state = await runner.run()
            tg.cancel_scope.cancel()
        await checkpointer.flush()
        done.filtered = shard.filtered + shard.dropped
        done.delivered = shard.delivered
        done.dead_lettered = shard.dead_lettered
        first = _first_not_done(records, state, shard)
        if first is not None:
            self._hand_back(
                records,
                first,
                done,
                shard.error
                or (
                    f"stopped {self._margin:g}s before the deadline (margin={self._margin:g}) "
                    "with records left"
                ),
            )
            if first == 0 and shard.error is None:
                logger.warning(
                    "pipeline %r: not one page of %d records was done before the deadline, "
                    "so Lambda will send this batch again and again; raise the function's "
                    "timeout, or lower the mapping's BatchSize or lambda_handler(page_size=)",
                    self._pipeline,
                    self._page_size,
                )

    def _hand_back(self, records: Sequence[Record], first: int, done: Invocation, why: str) -> None:
        """Answer with `records[first]`: Lambda retries the batch from it."""
        done.first_failure = records[first].sequence_number
        done.failed = len(records) - first
        done.stop = why
        logger.warning(
            "pipeline %r: %d of %d records handed back to Lambda from sequence number %s: %s",
            self._pipeline,
            done.failed,
            len(records),
            done.first_failure,
            why,
        )


def _close_at_exit(handler: weakref.ref[LambdaHandler]) -> None:
    alive = handler()
    if alive is not None:
        alive.close()


async def _stop_after(runner: ShardRunner, seconds: float) -> None:
    await anyio.sleep(max(0.0, seconds))
    runner.stop()


def _first_not_done(records: Sequence[Record], state: ShardState, shard: ShardReport) -> int | None:
    """The index of the first record the invocation did not finish; None: all done."""
    if state is ShardState.CAUGHT_UP:
        return None
    if shard.stopped_at is not None:
        return next(
            i for i, record in enumerate(records) if record.sequence_number == shard.stopped_at
        )
    if shard.checkpoint is None:
        return 0
    last = next(i for i, record in enumerate(records) if record.sequence_number == shard.checkpoint)
    return None if last + 1 == len(records) else last + 1


class _Batch(ShardReader):
    """The invocation's records, read in pages of `page_size`, the last one caught up:
    each page is delivered and done before the deadline can cut the next one short."""

    def __init__(self, records: list[Record], page_size: int) -> None:
        self._records = records
        self._page_size = page_size
        self._at = 0

    async def read(self) -> Page:
        start, self._at = self._at, self._at + self._page_size
        return Page(self._records[start : self._at], caught_up=self._at >= len(self._records))


class _Positions(CheckpointSession):
    """Where the invocation got to; Lambda keeps the real checkpoint."""

    async def load(self) -> dict[str, str]:
        return {}

    async def save(self, positions: Mapping[str, str]) -> None:
        return None


def _unique_names(names: Sequence[str]) -> list[str]:
    seen: set[str] = set()
    unique = []
    for name in names:
        candidate, n = name, 2
        while candidate in seen:
            candidate, n = f"{name}#{n}", n + 1
        seen.add(candidate)
        unique.append(candidate)
    return unique
