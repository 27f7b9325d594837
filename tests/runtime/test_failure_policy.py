"""The failure policy end to end: dead letters with the full record, bisect, record age,
per-step overrides, and order under failure (nothing after a failing item is sent until
it is settled). It keeps the promises of docs/failures.md: retries are counted per item,
held-back items keep their place, and the counts say what happened."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import pytest
from support import wait_until

import flowstream as fs
from flowstream import checkpoints, sinks
from flowstream.errors import DeliveryError, NotSentError
from flowstream.sinks.base import Batch, SendResult, SimpleSink
from flowstream.testing import MemoryStream

QUICK: dict[str, Any] = {"backoff": (0.001, 0.002)}


def poisoned(
    shards: int = 16, per_shard: int = 20, poison_at: int = 11
) -> tuple[MemoryStream, str, fs.Record]:
    """`shards` shards of `per_shard` records; the second (or only) shard has a poison
    record (key "poison") after its record `poison_at`."""
    stream = MemoryStream(page_size=8)
    ids = [stream.add_shard() for _ in range(shards)]
    bad = ids[min(1, shards - 1)]
    poison: fs.Record | None = None
    for n in range(per_shard):
        for shard in ids:
            stream.put(shard, "MODIFY", {"pk": f"{shard[-4:]}#{n}"}, {"n": n}, {"n": n - 1})
            if shard == bad and n == poison_at:
                poison = stream.put(
                    shard,
                    "MODIFY",
                    {"pk": "poison"},
                    {"pk": "poison", "tags": {"a", "b"}, "blob": b"\x00\x01"},
                    {"pk": "poison", "n": 1},
                )
    assert poison is not None
    return stream, bad, poison


def explode(record: fs.Record) -> fs.Record:
    if record.keys["pk"] == "poison":
        raise ValueError("cannot handle this one")
    return record


class RecordingSink(SimpleSink):
    """Delivers everything except items whose key is in `bad`, which fail with
    `error()`; logs every call's keys."""

    def __init__(self, bad: set[str] = frozenset(), error: Any = None) -> None:  # type: ignore[assignment]
        self.bad = set(bad)
        self.error = error or (lambda key: ConnectionError(f"{key} refused"))
        self.calls: list[list[str]] = []
        self.items: list[fs.Record] = []

    def describe(self) -> str:
        return "recording"

    async def send(self, batch: Batch) -> SendResult | None:
        keys = [r.keys["pk"] for r in batch.values]
        self.calls.append(keys)
        failed: dict[int, BaseException] = {}
        for i, record in enumerate(batch.values):
            if keys[i] in self.bad:
                failed[i] = self.error(keys[i])
            else:
                self.items.append(record)
        return SendResult(failed) if failed else None


def keys_of(records: list[fs.Record], shard: str | None = None) -> list[str]:
    return [r.keys["pk"] for r in records if shard is None or r.shard_id == shard]


def assert_full_payload(letter: fs.DeadLetter, record: fs.Record) -> None:
    got = letter.record
    assert got.event_id == record.event_id
    assert got.event_name == record.event_name
    assert got.keys == record.keys
    assert got.new_image == record.new_image
    assert got.old_image == record.old_image
    assert got.sequence_number == record.sequence_number
    assert got.shard_id == record.shard_id == letter.shard_id
    assert got.approximate_creation_time == record.approximate_creation_time
    assert letter.sequence_number == record.sequence_number
    # and it survives the trip through JSON, as a queue or file holds it
    again = fs.decode_dead_letter(letter.to_json())
    assert again.record.new_image == record.new_image
    assert again.record.old_image == record.old_image


def stream_of(*keys: str, created: dict[str, datetime] | None = None) -> MemoryStream:
    stream = MemoryStream(page_size=100)
    shard = stream.add_shard()
    for key in keys:
        at = (created or {}).get(key, datetime.now(UTC))
        stream.put(shard, "INSERT", {"pk": key}, {"pk": key}, created_at=at)
    return stream


def key(value: Any) -> str:
    found = value.keys["pk"] if isinstance(value, fs.Record) else value["pk"]
    assert isinstance(found, str)
    return found


class Scripted(SimpleSink):
    """Answers each call with `script(keys, call_number)`: None (all delivered), a
    SendResult keyed by position, or an exception to raise. Logs every call and what
    was taken."""

    def __init__(self, script: Any, name: str = "scripted") -> None:
        self.script = script
        self._name = name
        self.calls: list[list[str]] = []
        self.items: list[str] = []

    def describe(self) -> str:
        return self._name

    async def send(self, batch: Batch) -> SendResult | None:
        keys = [key(v) for v in batch.values]
        self.calls.append(keys)
        outcome = self.script(keys, len(self.calls))
        if isinstance(outcome, BaseException):
            raise outcome
        failed = outcome.failed if isinstance(outcome, SendResult) else {}
        self.items.extend(k for i, k in enumerate(keys) if i not in failed)
        assert outcome is None or isinstance(outcome, SendResult)
        return outcome


class TestPoisonWithDeadLetters:
    async def test_a_failing_map_dead_letters_the_record_and_the_shard_goes_on(self) -> None:
        stream, bad_shard, poison = poisoned()
        out, dead = sinks.collect(), sinks.collect()
        store = checkpoints.memory()
        pipeline = (
            fs.Pipeline(stream, name="orders")
            .map(explode)
            .to(out)
            .on_failure(retries=2, dead_letter=dead, **QUICK)
        )
        report = await pipeline.run(checkpoints=store, drain=True)

        (letter,) = dead.items
        assert isinstance(letter, fs.DeadLetter)
        assert_full_payload(letter, poison)
        assert letter.version == 1
        assert letter.pipeline == "orders"
        assert letter.stream == stream.stream_arn
        assert letter.step == "step 1: map(explode)"
        assert letter.reason == "retries_exhausted"
        assert letter.error == fs.deadletter.FailureInfo(
            type="ValueError", message="cannot handle this one"
        )
        assert letter.attempts == 3  # the first attempt and two retries
        assert letter.first_failure is not None
        assert letter.last_failure is not None
        assert letter.first_failure <= letter.last_failure <= letter.dead_lettered_at

        # every other record of every shard, in order, the poison's shard included
        for shard in stream.shard_ids:
            expected = [r for r in stream.records(shard) if r.keys["pk"] != "poison"]
            assert keys_of(out.items, shard) == keys_of(expected)
        assert report.dead_lettered == 1
        assert report.shards[bad_shard].dead_lettered == 1
        assert report.shards[bad_shard].retries == 2
        assert not report.stopped_shards()
        # the checkpoint moved past the poison: it is settled
        async with store.open("orders", stream.stream_arn) as session:
            positions = await session.load()
        assert positions[bad_shard] == stream.records(bad_shard)[-1].sequence_number

    async def test_a_sink_item_failing_for_good_is_dead_lettered_in_place(self) -> None:
        stream, bad_shard, poison = poisoned(shards=4)
        out = RecordingSink({"poison"})
        dead = sinks.collect()
        pipeline = (
            fs.Pipeline(stream, name="p").to(out).on_failure(retries=3, dead_letter=dead, **QUICK)
        )
        report = await pipeline.run(drain=True)

        (letter,) = dead.items
        assert_full_payload(letter, poison)
        assert letter.step == "sink recording"
        assert letter.reason == "retries_exhausted"
        assert letter.attempts == 4
        assert letter.error is not None
        assert letter.error.type == "ConnectionError"
        for shard in stream.shard_ids:
            expected = [r for r in stream.records(shard) if r.keys["pk"] != "poison"]
            assert keys_of(out.items, shard) == keys_of(expected)
        assert report.sinks["recording"].failed == 1
        assert report.shards[bad_shard].dead_lettered == 1

    async def test_nothing_after_a_failing_item_is_sent_until_it_is_settled(self) -> None:
        # The poison's page holds records after it; none of them, and no later page,
        # may reach the sink before the poison's last attempt.
        stream, bad_shard, _ = poisoned(shards=1, per_shard=30, poison_at=3)
        out = RecordingSink({"poison"})
        pipeline = (
            fs.Pipeline(stream).to(out).on_failure(retries=3, dead_letter=sinks.collect(), **QUICK)
        )
        await pipeline.run(drain=True)
        with_poison = [i for i, call in enumerate(out.calls) if "poison" in call]
        assert len(with_poison) == 4
        first, last = with_poison[0], with_poison[-1]
        # the retries carry only the poison: what came after it in its first call was
        # delivered by that call (the sink took it), and nothing new is sent meanwhile
        for call in out.calls[first + 1 : last + 1]:
            assert call == ["poison"]
        sent_after = [k for call in out.calls[last + 1 :] for k in call]
        order = keys_of(stream.records(bad_shard))
        assert sent_after == order[order.index(out.calls[first][-1]) + 1 :]

    async def test_a_non_retryable_error_is_dead_lettered_at_once(self) -> None:
        stream, _, poison = poisoned(shards=2)
        out = RecordingSink({"poison"}, lambda key: DeliveryError("HTTP 400", retryable=False))
        dead = sinks.collect()
        pipeline = fs.Pipeline(stream).to(out).on_failure(retries=5, dead_letter=dead, **QUICK)
        report = await pipeline.run(drain=True)
        (letter,) = dead.items
        assert (letter.reason, letter.attempts) == ("not_retryable", 1)
        assert sum(call.count("poison") for call in out.calls) == 1
        assert report.shards[poison.shard_id].retries == 0

    async def test_without_a_dead_letter_sink_the_shard_stops_before_the_record(self) -> None:
        stream, bad_shard, poison = poisoned()
        out = RecordingSink({"poison"})
        store = checkpoints.memory()
        pipeline = fs.Pipeline(stream, name="p").to(out).on_failure(retries=1, **QUICK)
        with pytest.raises(fs.ShardStoppedError) as caught:
            await pipeline.run(checkpoints=store, drain=True)
        report = caught.value.report
        assert set(report.stopped_shards()) == {bad_shard}
        assert report.shards[bad_shard].stopped_at == poison.sequence_number
        records = stream.records(bad_shard)
        before = records[: records.index(poison)]
        assert keys_of(out.items, bad_shard)[: len(before)] == keys_of(before)
        async with store.open("p", stream.stream_arn) as session:
            positions = await session.load()
        assert positions[bad_shard] == before[-1].sequence_number
        for shard in set(stream.shard_ids) - {bad_shard}:
            assert keys_of(out.items, shard) == keys_of(stream.records(shard))


class TestDeadLetterSinkFailing:
    async def test_the_shard_stops_at_the_record_and_nothing_is_lost(self) -> None:
        stream, bad_shard, poison = poisoned(shards=3)
        broken_dlq = RecordingSink({"poison"})  # takes every letter but the poison's...
        broken_dlq.send = _fail_everything  # type: ignore[method-assign]
        store = checkpoints.memory()
        out = sinks.collect()
        pipeline = (
            fs.Pipeline(stream, name="p")
            .map(explode)
            .to(out)
            .on_failure(retries=0, dead_letter=broken_dlq, **QUICK)
        )
        with pytest.raises(fs.ShardStoppedError) as caught:
            await pipeline.run(checkpoints=store, drain=True)
        stopped = caught.value.report.shards[bad_shard]
        assert stopped.stopped_at == poison.sequence_number
        assert "dead-letter sink recording" in (stopped.error or "")
        assert stopped.dead_lettered == 0
        async with store.open("p", stream.stream_arn) as session:
            positions = await session.load()
        records = stream.records(bad_shard)
        assert positions[bad_shard] == records[records.index(poison) - 1].sequence_number


async def _fail_everything(batch: Batch) -> SendResult | None:
    raise ConnectionError("dead-letter queue unreachable")


class BatchRejecter(SimpleSink):
    """Rejects a whole batch, without saying which item, when it holds the poison."""

    def __init__(self, error: BaseException) -> None:
        self.error = error
        self.calls: list[list[str]] = []
        self.items: list[str] = []

    def describe(self) -> str:
        return "batches"

    async def send(self, batch: Batch) -> SendResult | None:
        keys = [r.keys["pk"] for r in batch.values]
        self.calls.append(keys)
        if "poison" in keys:
            raise self.error
        self.items.extend(keys)
        return None


def hundred_with_poison(at: int) -> MemoryStream:
    stream = MemoryStream(page_size=100)
    shard = stream.add_shard()
    for n in range(100):
        key = "poison" if n == at else f"k{n:03d}"
        stream.put(shard, "INSERT", {"pk": key}, {"pk": key})
    return stream


class TestBisect:
    @pytest.mark.parametrize("at", [0, 37, 60, 99])
    async def test_isolates_one_item_of_100_in_at_most_14_extra_calls(self, at: int) -> None:
        stream = hundred_with_poison(at)
        sink = BatchRejecter(DeliveryError("HTTP 400 for the batch", retryable=False))
        dead = sinks.collect()
        pipeline = fs.Pipeline(stream).to(sink).on_failure(dead_letter=dead, **QUICK)
        await pipeline.run(drain=True)
        assert len(sink.calls) - 1 <= 14
        expected = [f"k{n:03d}" for n in range(100) if n != at]
        assert sink.items == expected  # every other item, in order
        (letter,) = dead.items
        assert letter.record.keys == {"pk": "poison"}
        assert letter.reason == "not_retryable"
        assert letter.attempts == 1

    async def test_a_retryable_batch_failure_is_retried_whole_before_bisecting(self) -> None:
        stream = hundred_with_poison(42)
        sink = BatchRejecter(ConnectionError("reset"))
        dead = sinks.collect()
        pipeline = fs.Pipeline(stream).to(sink).on_failure(retries=2, dead_letter=dead, **QUICK)
        report = await pipeline.run(drain=True)
        assert [len(c) for c in sink.calls[:3]] == [100, 100, 100]
        assert len(sink.calls) - 3 <= 14
        assert sink.items == [f"k{n:03d}" for n in range(100) if n != 42]
        (letter,) = dead.items
        assert (letter.reason, letter.attempts) == ("retries_exhausted", 3)
        assert report.shards[stream.shard_ids[0]].retries == 2

    async def test_without_bisect_a_failed_batch_is_dead_lettered_whole(self) -> None:
        stream = hundred_with_poison(42)
        sink = BatchRejecter(DeliveryError("HTTP 400", retryable=False))
        dead = sinks.collect()
        pipeline = fs.Pipeline(stream).to(sink).on_failure(bisect=False, dead_letter=dead, **QUICK)
        report = await pipeline.run(drain=True)
        assert len(sink.calls) == 1
        assert len(dead.items) == 100
        assert report.dead_lettered == 100

    async def test_without_a_dead_letter_sink_bisect_stops_at_the_poison(self) -> None:
        stream = hundred_with_poison(60)
        sink = BatchRejecter(DeliveryError("HTTP 400", retryable=False))
        with pytest.raises(fs.ShardStoppedError) as caught:
            await fs.Pipeline(stream).to(sink).on_failure(**QUICK).run(drain=True)
        (stopped,) = caught.value.report.stopped_shards().values()
        assert stopped.stopped_at == stream.records()[60].sequence_number
        assert sink.items == [f"k{n:03d}" for n in range(60)]  # nothing after it


class TestMaxRecordAge:
    async def test_old_records_are_dead_lettered_without_calling_the_sink(self) -> None:
        stream = MemoryStream()
        shard = stream.add_shard()
        now = datetime.now(UTC)
        old = [
            stream.put(
                shard, "INSERT", {"pk": f"old{n}"}, {"n": n}, created_at=now - timedelta(hours=3)
            )
            for n in range(5)
        ]
        young = [
            stream.put(shard, "INSERT", {"pk": f"new{n}"}, {"n": n}, created_at=now)
            for n in range(5)
        ]
        seen: list[str] = []

        def touch(record: fs.Record) -> fs.Record:
            seen.append(record.keys["pk"])
            return record

        out = RecordingSink()
        dead = sinks.collect()
        pipeline = (
            fs.Pipeline(stream)
            .map(touch)
            .to(out)
            .on_failure(max_record_age=timedelta(hours=1), dead_letter=dead)
        )
        report = await pipeline.run(drain=True)
        assert keys_of(out.items) == keys_of(young)
        assert all(k.startswith("new") for call in out.calls for k in call)
        assert seen == keys_of(young)  # not even the steps ran for old records
        assert [letter.record.keys["pk"] for letter in dead.items] == keys_of(old)
        assert {(x.reason, x.attempts, x.error) for x in dead.items} == {
            ("max_record_age", 0, None)
        }
        assert report.dead_lettered == 5

    async def test_a_record_aging_out_while_retried_is_dead_lettered(self) -> None:
        stream = MemoryStream()
        shard = stream.add_shard()
        # old enough by the time of the first retry, not at the first attempt
        created = datetime.now(UTC) - timedelta(seconds=59.7)
        stream.put(shard, "INSERT", {"pk": "poison"}, {"n": 1}, created_at=created)
        out = RecordingSink({"poison"})
        dead = sinks.collect()
        pipeline = (
            fs.Pipeline(stream)
            .to(out)
            .on_failure(retries=1000, backoff=(0.05, 0.05), max_record_age=60, dead_letter=dead)
        )
        await pipeline.run(drain=True)
        (letter,) = dead.items
        assert letter.reason == "max_record_age"
        assert 1 <= letter.attempts < 1000
        assert letter.error is not None  # it did fail before it aged out

    def test_max_record_age_needs_a_dead_letter_sink(self) -> None:
        with pytest.raises(fs.PipelineError, match="without dead_letter="):
            fs.Pipeline(MemoryStream()).to(sinks.collect()).on_failure(max_record_age=60)


class TestPerStepPolicy:
    async def test_a_step_override_dead_letters_while_sinks_keep_the_pipeline_policy(self) -> None:
        stream, bad_shard, poison = poisoned(shards=2)
        parse_dead = sinks.collect()
        sink = RecordingSink({"p-late"})
        pipeline = (
            fs.Pipeline(stream)
            .map(explode, on_failure=fs.FailurePolicy(retries=0, dead_letter=parse_dead))
            .map(lambda r: {"pk": "p-late"} if r.keys["pk"] == f"{bad_shard[-4:]}#15" else r)
            .to(sink)
            .on_failure(retries=0)
        )
        with pytest.raises(fs.ShardStoppedError) as caught:
            await pipeline.run(drain=True)
        (letter,) = parse_dead.items
        assert letter.record == poison
        assert letter.attempts == 1
        stopped = caught.value.report.shards[bad_shard]
        assert stopped.stopped_at == next(
            r.sequence_number for r in stream.records(bad_shard) if r.keys["pk"].endswith("#15")
        )

    def test_the_override_is_shown_by_describe(self) -> None:
        dead = sinks.collect()
        pipeline = (
            fs.Pipeline(MemoryStream())
            .map(explode, on_failure=fs.FailurePolicy(retries=0, dead_letter=dead))
            .to(sinks.collect())
        )
        text = pipeline.describe()
        assert "1. map(explode)" in text
        assert "on failure: 0 retries, backoff 0.1-5s, dead-letter to collect" in text

    @pytest.mark.parametrize("method", ["map", "flat_map", "filter"])
    def test_a_bad_override_is_reported_when_built(self, method: str) -> None:
        pipeline = fs.Pipeline(MemoryStream())
        with pytest.raises(
            fs.PipelineError, match=re.escape(f".{method}() at step 1 got on_failure=3")
        ):
            getattr(pipeline, method)(explode, on_failure=3)


class TestPolicyValidation:
    @pytest.mark.parametrize(
        ("options", "problem"),
        [
            ({"dead_letter": "queue"}, "dead_letter=str"),
            ({"max_record_age": -5, "dead_letter": sinks.collect()}, "max_record_age=-5"),
            ({"max_record_age": "1h", "dead_letter": sinks.collect()}, "max_record_age='1h'"),
            ({"bisect": "yes"}, "bisect='yes'"),
        ],
    )
    def test_bad_options_name_the_field(self, options: dict[str, Any], problem: str) -> None:
        with pytest.raises(fs.PipelineError, match=re.escape(problem)):
            fs.Pipeline(MemoryStream()).on_failure(**options)

    def test_describe_shows_the_whole_policy(self) -> None:
        pipeline = (
            fs.Pipeline(MemoryStream())
            .to(sinks.collect())
            .on_failure(retries=1, bisect=False, max_record_age=300, dead_letter=sinks.stdout())
        )
        assert pipeline.describe().endswith(
            "on failure: 1 retries, backoff 0.1-5s, no bisect, max record age 300s, "
            "dead-letter to stdout"
        )


class InterleavedFailures(SimpleSink):
    """Fails items 0 and 2 of its first call with one error and item 1 with another,
    as a sink could that reports per item; delivers everything after that."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.items: list[str] = []

    def describe(self) -> str:
        return "interleaved"

    async def send(self, batch: Batch) -> SendResult | None:
        keys = [r.keys["pk"] for r in batch.values]
        self.calls.append(keys)
        if len(self.calls) == 1:
            shared = ConnectionError("shared")
            self.items.extend(keys[3:])
            return SendResult({0: shared, 1: ConnectionError("own"), 2: shared})
        self.items.extend(keys)
        return None


async def test_items_failing_with_one_error_around_another_keep_their_order() -> None:
    stream = MemoryStream()
    shard = stream.add_shard()
    for n in range(6):
        stream.put(shard, "INSERT", {"pk": f"k{n}"}, {"n": n})
    sink = InterleavedFailures()
    await fs.Pipeline(stream).to(sink).on_failure(**QUICK).run(drain=True)
    # k3..k5 went out in the first call; the retried k0, k1, k2 arrive in their order
    assert sink.items == ["k3", "k4", "k5", "k0", "k1", "k2"]
    assert sink.calls[1:] == [["k0", "k1", "k2"]]


async def test_a_shard_stopped_by_a_sink_counts_the_failed_record() -> None:
    stream = MemoryStream()
    shard = stream.add_shard()
    stream.put(shard, "INSERT", {"pk": "a"}, {"n": 1})
    with pytest.raises(fs.ShardStoppedError) as caught:
        await (
            fs.Pipeline(stream)
            .to(RecordingSink({"a"}))
            .on_failure(retries=1, **QUICK)
            .run(drain=True)
        )
    report = caught.value.report
    assert (report.failed, report.shards[shard].failed, report.sinks["recording"].failed) == (
        1,
        1,
        1,
    )
    assert "1 failed" in report.summary()


async def test_a_long_run_keeps_serving_other_shards_and_reports_the_stopped_one() -> None:
    stream, bad_shard, poison = poisoned(shards=4, per_shard=5, poison_at=2)
    out = sinks.collect()
    seen: list[dict[str, fs.ShardState]] = []
    stop = anyio.Event()

    def progress(report: fs.RunReport) -> None:
        seen.append({k: s.state for k, s in report.shards.items()})
        raise RuntimeError("a broken exporter must not stop the run")

    pipeline = fs.Pipeline(stream).map(explode).to(out).on_failure(retries=0, **QUICK)
    async with anyio.create_task_group() as tg:

        async def run() -> None:
            report = await pipeline.run(stop=stop, on_progress=progress, progress_interval=0.01)
            assert report.shards[bad_shard].stopped_at == poison.sequence_number

        tg.start_soon(run)
        await wait_until(lambda: any(s.get(bad_shard) is fs.ShardState.STOPPED for s in seen))
        # the run goes on: a record put now on another shard is delivered
        other = next(s for s in stream.shard_ids if s != bad_shard)
        late = stream.put(other, "INSERT", {"pk": "late"}, {"n": 0})
        await wait_until(lambda: late in out.items)
        stop.set()


# -- retries are counted per item ---------------------------------------------------------


async def test_an_item_is_not_retried_more_than_retries_when_its_batch_then_fails_whole() -> None:
    # "a" fails alone first (b held back behind it), then the sink raises for every
    # call that holds "a": "a" must get 1 + retries attempts, no more.
    def script(keys: list[str], n: int) -> Any:
        if "a" not in keys:
            return None
        if n == 1:
            return SendResult(
                {0: DeliveryError("a refused", retryable=True), 1: NotSentError("held")}
            )
        return ConnectionError("reset")

    sink = Scripted(script)
    dead = sinks.collect()
    stream = stream_of("a", "b")
    pipeline = fs.Pipeline(stream).to(sink).on_failure(retries=1, dead_letter=dead, **QUICK)
    report = await pipeline.run(drain=True)

    (letter,) = dead.items
    assert letter.record.keys == {"pk": "a"}
    assert sink.items == ["b"]
    assert report.shards[stream.shard_ids[0]].retries == 1  # one retry, not two
    assert letter.attempts == 2  # the first attempt and one retry
    # (plus at most the one call bisect makes to find "a", which does not count)
    assert sum("a" in call for call in sink.calls) <= 3


# -- record age ---------------------------------------------------------------------------


async def test_without_bisect_an_old_first_item_does_not_take_young_ones_with_it() -> None:
    # The sink fails every call that holds "old" as a whole. "old" ages out while it is
    # retried and goes to the dead-letter sink by age; the young records still have
    # retries left, and are delivered once "old" is out of the way.
    created = {"old": datetime.now(UTC) - timedelta(seconds=59.7)}
    stream = stream_of("old", "young1", "young2", created=created)
    sink = Scripted(lambda keys, n: ConnectionError("reset") if "old" in keys else None)
    dead = sinks.collect()
    pipeline = (
        fs.Pipeline(stream)
        .to(sink)
        .on_failure(
            retries=1000, backoff=(0.05, 0.05), bisect=False, max_record_age=60, dead_letter=dead
        )
    )
    await pipeline.run(drain=True)
    got = [(x.record.keys["pk"], x.reason) for x in dead.items]
    assert got == [("old", "max_record_age")]
    assert sink.items == ["young1", "young2"]


# -- order under failure --------------------------------------------------------------------


async def test_a_held_back_item_before_a_failing_run_is_not_overtaken_by_bisect() -> None:
    # The sink held back "a" (NotSentError) and failed "b" and "c" with one error it
    # cannot pin on either. Nothing after "a" may reach the sink before "a" does.
    shared = DeliveryError("HTTP 400 for the batch", retryable=False)

    def script(keys: list[str], n: int) -> Any:
        if n == 1:
            return SendResult({0: NotSentError("held"), 1: shared, 2: shared})
        if "c" in keys:
            return SendResult({keys.index("c"): DeliveryError("bad c", retryable=False)})
        return None

    sink = Scripted(script)
    dead = sinks.collect()
    stream = stream_of("a", "b", "c")
    await fs.Pipeline(stream).to(sink).on_failure(dead_letter=dead, **QUICK).run(drain=True)
    assert sink.items == ["a", "b"]  # in order
    assert [x.record.keys["pk"] for x in dead.items] == ["c"]


async def test_failures_listed_out_of_order_are_retried_from_the_earliest() -> None:
    # Pinned: a SendResult naming "d" before "b", with "c" held back between them:
    # the retry starts at "b" and carries only what is not yet delivered, in order;
    # only "b" and "d" count attempts (the held-back "c" does not).
    def script(keys: list[str], n: int) -> Any:
        failed: dict[int, BaseException] = {}
        if n == 1:
            failed[keys.index("d")] = DeliveryError("d refused", retryable=True)
            failed[keys.index("c")] = NotSentError("held")
        if "b" in keys and n <= 2:
            failed[keys.index("b")] = DeliveryError("b refused", retryable=True)
        return SendResult(dict(sorted(failed.items(), reverse=True))) if failed else None

    sink = Scripted(script)
    stream = stream_of("a", "b", "c", "d", "e")
    report = await fs.Pipeline(stream).to(sink).on_failure(retries=3, **QUICK).run(drain=True)
    assert sink.calls == [["a", "b", "c", "d", "e"], ["b", "c", "d"], ["b"]]
    assert sink.items == ["a", "e", "c", "d", "b"]
    shard = report.shards[stream.shard_ids[0]]
    assert (shard.retries, shard.failed) == (2, 0)


# -- report counts --------------------------------------------------------------------------


async def test_an_item_after_the_stop_is_not_counted_as_failed() -> None:
    # "b" is retried and then fails for good (the shard stops before it); "d" failed
    # for good first, but it is after the stop: it is read again next run, so it has
    # not failed for good in this one.
    def script(keys: list[str], n: int) -> Any:
        failed: dict[int, BaseException] = {}
        if "b" in keys:
            failed[keys.index("b")] = DeliveryError("b refused", retryable=True)
        if "d" in keys:
            failed[keys.index("d")] = DeliveryError("d bad", retryable=False)
        return SendResult(failed) if failed else None

    sink = Scripted(script)
    stream = stream_of("a", "b", "c", "d", "e")
    store = checkpoints.memory()
    pipeline = fs.Pipeline(stream, name="p").to(sink).on_failure(retries=1, **QUICK)
    with pytest.raises(fs.ShardStoppedError) as caught:
        await pipeline.run(checkpoints=store, drain=True)
    report = caught.value.report
    shard = report.shards[stream.shard_ids[0]]
    assert shard.stopped_at == stream.records()[1].sequence_number
    async with store.open("p", stream.stream_arn) as session:
        positions = await session.load()
    assert positions[stream.shard_ids[0]] == stream.records()[0].sequence_number
    assert shard.failed == 1
    assert report.sinks["scripted"].failed == 1
