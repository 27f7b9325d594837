"""`Pipeline.concurrency(per_shard, key=)`: up to `per_shard` key groups of a shard in
flight at once, never two of one key, in order within a key; the checkpoint stays the
contiguous frontier; the failure policy applies within a key; the key function's
mistakes are failures of their records."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import anyio
import pytest
from support import wait_until

import flowstream as fs
from flowstream import checkpoints, sinks
from flowstream.errors import DeliveryError, NotSentError, PipelineError
from flowstream.sinks.base import Batch, SendResult, SimpleSink
from flowstream.testing import MemoryStream

TIMEOUT = 10.0


def keyed_stream(shards: int, records: int, keys: int, **options: Any) -> MemoryStream:
    stream = MemoryStream(**options)
    ids = [stream.add_shard() for _ in range(shards)]
    for n in range(records):
        for shard in ids:
            key = f"k{n % keys}"
            stream.put(shard, "INSERT", {"pk": key}, {"pk": key, "n": n, "shard": shard})
    return stream


class Watch(SimpleSink):
    """Records what it is sent, per (shard, key), and checks that no key has two calls
    in flight; `latency(values)` is awaited inside each call; `fail(value)` may return
    an error for an item."""

    def __init__(
        self,
        latency: Callable[[list[Any]], float] = lambda values: 0.0,
        fail: Callable[[Any], BaseException | None] = lambda value: None,
    ) -> None:
        self.latency = latency
        self.fail = fail
        self.seen: dict[tuple[str, str], list[int]] = {}
        self.in_flight: dict[str, set[str]] = {}  # per shard: the keys being sent
        self.most: dict[str, int] = {}  # per shard: the most keys in flight at once
        self.overlaps: list[tuple[str, str]] = []
        self.calls = 0
        self.active = 0
        self.most_calls = 0  # the most send() calls in flight at once

    @property
    def name(self) -> str:
        return "watch"

    def describe(self) -> str:
        return "watch"

    async def send(self, batch: Batch) -> SendResult | None:
        self.calls += 1
        self.active += 1
        self.most_calls = max(self.most_calls, self.active)
        shard = batch.shard_id
        keys = {v["pk"] for v in batch.values}
        flying = self.in_flight.setdefault(shard, set())
        for key in keys & flying:
            self.overlaps.append((shard, key))
        flying |= keys
        self.most[shard] = max(self.most.get(shard, 0), len(flying))
        try:
            await anyio.sleep(self.latency(batch.values))
            for i, value in enumerate(batch.values):
                error = self.fail(value)
                if error is not None:
                    # as real sinks do: what comes after a failed item is not sent
                    failed: dict[int, BaseException] = {
                        j: NotSentError("after a failed item") for j in range(i + 1, len(batch))
                    }
                    failed[i] = error
                    return SendResult(failed)
                self.seen.setdefault((shard, value["pk"]), []).append(value["n"])
            return None
        finally:
            flying -= keys
            self.active -= 1


def image(record: fs.Record) -> dict[str, Any]:
    return record.new_image or {}


def in_order_per_key(watch: Watch) -> bool:
    return all(ns == sorted(ns) for ns in watch.seen.values())


class TestOrderAndParallelism:
    async def test_random_latencies_keep_every_key_in_order_with_many_keys_in_flight(
        self,
    ) -> None:
        rng = random.Random(1515)
        stream = keyed_stream(shards=3, records=240, keys=17, page_size=60)
        watch = Watch(latency=lambda values: rng.uniform(0.001, 0.004))
        report = await (
            fs.Pipeline(stream, name="p").map(image).to(watch).concurrency(8).run(drain=True)
        )
        assert report.delivered == 3 * 240
        assert watch.overlaps == []  # never two calls of one key at once
        assert in_order_per_key(watch)
        assert sum(len(ns) for ns in watch.seen.values()) == 3 * 240  # each once
        assert all(most <= 8 for most in watch.most.values()), watch.most
        assert max(watch.most.values()) > 1, watch.most  # keys did go in parallel

    async def test_per_shard_1_is_one_call_at_a_time_in_shard_order(self) -> None:
        stream = keyed_stream(shards=1, records=50, keys=5)
        watch = Watch()
        await fs.Pipeline(stream).map(image).to(watch).run(drain=True)
        assert watch.calls == 1  # the whole page in one call, as without concurrency
        assert in_order_per_key(watch)

    async def test_a_key_function_orders_by_what_it_returns(self) -> None:
        stream = keyed_stream(shards=1, records=60, keys=12)
        watch = Watch(latency=lambda values: 0.001)
        # keys k0..k11 fall into 3 ordering groups by their number modulo 3
        pipeline = (
            fs.Pipeline(stream)
            .map(image)
            .to(watch)
            .concurrency(10, key=lambda m: int(m["pk"][1:]) % 3)
        )
        await pipeline.run(drain=True)
        assert watch.calls == 3  # one call per ordering key
        assert watch.most_calls == 3
        assert in_order_per_key(watch)


class TestFrontier:
    async def test_a_slow_key_holds_the_checkpoint_while_fast_keys_are_delivered(self) -> None:
        stream = MemoryStream()
        shard = stream.add_shard()
        for n in range(10):
            key = "slow" if n == 3 else f"fast{n}"
            stream.put(shard, "INSERT", {"pk": key}, {"pk": key, "n": n})
        gate = anyio.Event()

        class Gated(Watch):
            async def send(self, batch: Batch) -> SendResult | None:
                if batch.values[0]["pk"] == "slow":
                    await gate.wait()
                return await super().send(batch)

        watch = Gated()
        store = checkpoints.memory()
        stop = anyio.Event()
        live: list[fs.RunReport] = []
        pipeline = fs.Pipeline(stream, name="p").map(image).to(watch)
        async with anyio.create_task_group() as tg:

            async def run() -> None:
                await pipeline.concurrency(4).run(
                    checkpoints=store, stop=stop, on_progress=live.append, progress_interval=0.01
                )

            tg.start_soon(run)
            # everything but the slow key is delivered, and reported
            await wait_until(lambda: len(watch.seen) == 9 and bool(live), TIMEOUT)
            await wait_until(lambda: live[0].shards[shard].delivered == 9, TIMEOUT)
            assert live[0].shards[shard].checkpoint is None  # not past the slow record
            gate.set()
            last = stream.records(shard)[-1].sequence_number
            await wait_until(lambda: live[0].shards[shard].checkpoint == last, TIMEOUT)
            stop.set()


class TestAcrossPages:
    async def test_a_held_key_holds_back_only_its_own_later_items_in_later_pages(self) -> None:
        stream = keyed_stream(shards=1, records=16, keys=4, page_size=4)  # a key a record
        gate = anyio.Event()

        class HoldsK1(Watch):
            async def send(self, batch: Batch) -> SendResult | None:
                if batch.values[0]["n"] == 1:
                    await gate.wait()  # k1's first item: a slow call (or a long retry)
                return await super().send(batch)

        watch = HoldsK1()
        shard = stream.shard_ids[0]
        stop = anyio.Event()
        live: list[fs.RunReport] = []
        pipeline = fs.Pipeline(stream, name="p").map(image).to(watch).concurrency(4)
        async with anyio.create_task_group() as tg:

            async def run() -> None:
                await pipeline.run(stop=stop, on_progress=live.append, progress_interval=0.01)

            tg.start_soon(run)
            # the other keys go on into the pages after it (up to 4 pages in flight)
            others = [(shard, k) for k in ("k0", "k2", "k3")]
            await wait_until(
                lambda: all(len(watch.seen.get(key, [])) == 4 for key in others), TIMEOUT
            )
            assert (shard, "k1") not in watch.seen  # k1's later items wait behind it
            await wait_until(lambda: bool(live), TIMEOUT)
            assert live[0].shards[shard].checkpoint is None  # the frontier waits too
            gate.set()
            await wait_until(lambda: len(watch.seen.get((shard, "k1"), [])) == 4, TIMEOUT)
            last = stream.records(shard)[-1].sequence_number
            await wait_until(lambda: live[0].shards[shard].checkpoint == last, TIMEOUT)
            stop.set()
        assert in_order_per_key(watch)
        assert watch.overlaps == []


class TestFailures:
    async def test_a_retried_item_holds_only_its_own_key_in_its_page(self) -> None:
        stream = keyed_stream(shards=1, records=40, keys=4)
        failures = {"k1": 2}  # k1's first item fails twice, then goes through

        def fail(value: Any) -> BaseException | None:
            if value["pk"] == "k1" and value["n"] == 1 and failures["k1"]:
                failures["k1"] -= 1
                return DeliveryError("busy", retryable=True)
            return None

        watch = Watch(latency=lambda values: 0.001, fail=fail)
        report = await (
            fs.Pipeline(stream)
            .map(image)
            .to(watch)
            .concurrency(4)
            .on_failure(retries=3, backoff=(0.001, 0.002))
            .run(drain=True)
        )
        assert report.delivered == 40
        assert report.retries == 2
        assert in_order_per_key(watch)
        assert watch.seen[(stream.shard_ids[0], "k1")] == list(range(1, 40, 4))

    async def test_an_item_that_fails_for_good_is_dead_lettered_and_its_key_goes_on(
        self,
    ) -> None:
        stream = keyed_stream(shards=1, records=20, keys=4)
        dead = sinks.collect()
        watch = Watch(
            fail=lambda v: DeliveryError("rejected", retryable=False) if v["n"] == 6 else None
        )
        report = await (
            fs.Pipeline(stream, name="p")
            .map(image)
            .to(watch)
            .concurrency(4)
            .on_failure(dead_letter=dead)
            .run(drain=True)
        )
        assert [letter.record.new_image["n"] for letter in dead.items] == [6]
        assert report.delivered == 19
        shard = stream.shard_ids[0]
        assert watch.seen[(shard, "k2")] == [2, 10, 14, 18]
        assert report.shards[shard].checkpoint == stream.records(shard)[-1].sequence_number

    async def test_a_stop_settles_everything_before_it_and_starts_nothing_after(self) -> None:
        stream = keyed_stream(shards=1, records=40, keys=8)
        # one group at a time, in the order keys first appear: k5's group fails at n=5
        watch = Watch(fail=lambda v: DeliveryError("no", retryable=False) if v["n"] == 5 else None)
        with pytest.raises(fs.ShardStoppedError) as stopped:
            await (
                fs.Pipeline(stream, name="p")
                .map(image)
                .to(watch)
                .concurrency(2)
                .on_failure(retries=0)
                .run(drain=True)
            )
        shard = stream.shard_ids[0]
        report = stopped.value.report
        records = stream.records(shard)
        assert report.shards[shard].stopped_at == records[5].sequence_number
        assert report.shards[shard].checkpoint == records[4].sequence_number
        delivered = {n for ns in watch.seen.values() for n in ns}
        assert set(range(5)) <= delivered  # everything before the stop was delivered
        # keys are delivered two groups at a time in the order they first come (k0, k1,
        # ...): k7's group can only start once k5's has stopped, and then sends nothing
        # (its items all come after the stop); what k0..k6 delivered past it (their
        # groups were in flight or done) is read again by the next run
        assert (shard, "k7") not in watch.seen

    async def test_a_shard_stopped_by_a_key_is_reported_stopped_while_the_stream_is_idle(
        self,
    ) -> None:
        stream = keyed_stream(shards=1, records=8, keys=4)
        watch = Watch(fail=lambda v: DeliveryError("no", retryable=False) if v["n"] == 2 else None)
        shard = stream.shard_ids[0]
        stop = anyio.Event()
        live: list[fs.RunReport] = []
        pipeline = fs.Pipeline(stream, name="p").map(image).to(watch).concurrency(4)
        async with anyio.create_task_group() as tg:

            async def run() -> None:
                await pipeline.on_failure(retries=0).run(
                    stop=stop, on_progress=live.append, progress_interval=0.01
                )

            tg.start_soon(run)
            await wait_until(lambda: bool(live), TIMEOUT)
            # nothing more comes to the stream: the stop must not wait for a next page
            await wait_until(lambda: live[0].shards[shard].state is fs.ShardState.STOPPED, TIMEOUT)
            assert live[0].shards[shard].checkpoint == stream.records(shard)[1].sequence_number
            stop.set()

    async def test_bisect_finds_the_item_a_key_group_fails_as_a_whole(self) -> None:
        stream = keyed_stream(shards=1, records=24, keys=3)
        dead = sinks.collect()

        class Whole(Watch):
            async def send(self, batch: Batch) -> SendResult | None:
                if any(v["n"] == 7 for v in batch.values):
                    raise DeliveryError("the whole request failed", retryable=True)
                return await super().send(batch)

        watch = Whole()
        report = await (
            fs.Pipeline(stream, name="p")
            .map(image)
            .to(watch)
            .concurrency(3)
            .on_failure(retries=1, backoff=(0.001, 0.002), dead_letter=dead)
            .run(drain=True)
        )
        assert [letter.record.new_image["n"] for letter in dead.items] == [7]
        assert report.delivered == 23
        assert watch.seen[(stream.shard_ids[0], "k1")] == [1, 4, 10, 13, 16, 19, 22]


class TestKeyFunction:
    async def test_a_key_function_that_raises_fails_that_record_under_the_policy(self) -> None:
        stream = keyed_stream(shards=1, records=10, keys=3)
        dead = sinks.collect()

        def key(m: Any) -> str:
            if m["n"] == 4:
                raise LookupError("no tenant")
            return str(m["pk"])

        watch = Watch()
        report = await (
            fs.Pipeline(stream, name="p")
            .map(image)
            .to(watch)
            .concurrency(3, key=key)
            .on_failure(retries=1, backoff=(0.001, 0.002), dead_letter=dead)
            .run(drain=True)
        )
        (letter,) = dead.items
        assert letter.record.new_image["n"] == 4
        assert "concurrency(key=key)" in letter.step
        assert "raised LookupError: no tenant" in letter.error.message
        assert letter.attempts == 2  # retried like any step failure
        assert report.delivered == 9

    async def test_an_unhashable_key_is_a_clear_error_and_not_retried(self) -> None:
        stream = keyed_stream(shards=1, records=3, keys=3)
        dead = sinks.collect()
        report = await (
            fs.Pipeline(stream, name="p")
            .map(image)
            .to(Watch())
            .concurrency(2, key=lambda m: [m["pk"]])  # type: ignore[arg-type,return-value]
            .on_failure(retries=3, backoff=(0.001, 0.002), dead_letter=dead)
            .run(drain=True)
        )
        assert len(dead.items) == 3
        letter = dead.items[0]
        assert letter.attempts == 1
        assert letter.reason == "not_retryable"
        assert "returned list, which is not hashable" in letter.error.message
        assert report.delivered == 0

    @pytest.mark.parametrize("per_shard", [0, -1, 1.5, True, "4", 1001])
    def test_a_bad_per_shard_is_refused_when_building(self, per_shard: Any) -> None:
        with pytest.raises(PipelineError, match=r"\.concurrency\(\) got per_shard="):
            fs.Pipeline(MemoryStream()).to(sinks.collect()).concurrency(per_shard)

    def test_a_key_that_is_not_callable_is_refused_and_the_plan_says_it(self) -> None:
        with pytest.raises(PipelineError, match="key=str, which is not callable"):
            fs.Pipeline(MemoryStream()).to(sinks.collect()).concurrency(4, key="pk")  # type: ignore[arg-type]
        pipeline = fs.Pipeline(MemoryStream()).to(sinks.collect()).concurrency(4)
        assert "concurrency: up to 4 per shard, in order per key (the record's keys)" in (
            pipeline.describe()
        )
