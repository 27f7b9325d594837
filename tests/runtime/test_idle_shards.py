"""Idle shards are cheap: one keeps nothing of what it delivered, and its empty polls never
reach the consumer (a reader that never waits does not take the event loop either)."""

from __future__ import annotations

import gc
import weakref
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import anyio
from support import wait_until

import flowstream as fs
from flowstream import sinks
from flowstream.sources.base import Page, Position, Shard, ShardReader, Source, StreamSession
from flowstream.testing import MemoryStream


class Payload:
    """A mapped element that can be watched with a weak reference."""


class TestIdleShard:
    async def test_keeps_nothing_of_what_it_delivered(self) -> None:
        # A lazy record holds its whole GetRecords body: an idle shard that kept its last
        # page would hold up to 1 MB, for as long as it stays idle.
        stream = MemoryStream()
        shard = stream.add_shard()
        delivered: list[weakref.ref[Payload]] = []

        def watch(values: list[Payload]) -> None:
            delivered.extend(weakref.ref(v) for v in values)

        stop = anyio.Event()
        async with anyio.create_task_group() as tg:

            async def run() -> None:
                pipeline = fs.Pipeline(stream).map(lambda r: Payload()).to(sinks.callback(watch))
                await pipeline.run(stop=stop)

            tg.start_soon(run)
            for n in range(3):
                stream.put(shard, "INSERT", {"pk": f"k{n}"})
            await wait_until(lambda: len(delivered) == 3)
            await wait_until(lambda: _collected(delivered))
            stop.set()

    async def test_a_reader_that_never_waits_does_not_take_the_event_loop(self) -> None:
        source = _BusySource()
        stop = anyio.Event()
        async with anyio.create_task_group() as tg:

            async def run() -> None:
                await fs.Pipeline(source).to(sinks.collect()).run(stop=stop)

            tg.start_soon(run)
            await wait_until(lambda: source.reads > 100)
            stop.set()
        assert source.reads > 100


def _collected(refs: list[weakref.ref[Payload]]) -> bool:
    gc.collect()
    return all(ref() is None for ref in refs)


class _BusySource(Source):
    """One shard whose reads return an empty page at once, forever."""

    def __init__(self) -> None:
        self.reads = 0

    def describe(self) -> str:
        return "busy"

    def open(self) -> AbstractAsyncContextManager[StreamSession]:
        return self._open()

    @asynccontextmanager
    async def _open(self) -> AsyncIterator[StreamSession]:
        yield _BusySession(self)


class _BusySession(StreamSession):
    stream_id = "busy"

    def __init__(self, source: _BusySource) -> None:
        self.source = source

    async def list_shards(self) -> Sequence[Shard]:
        return [Shard("shard-0")]

    def reader(self, shard: Shard, start: Position) -> ShardReader:
        return _BusyReader(self.source)


class _BusyReader(ShardReader):
    def __init__(self, source: _BusySource) -> None:
        self.source = source

    async def read(self) -> Page:
        self.source.reads += 1
        return Page([], caught_up=True)
