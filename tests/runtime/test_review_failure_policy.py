"""Review: the failure policy keeps the promises of docs/failures.md: retries are
counted per item, held-back items keep their place, and the counts say what happened."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

import flowstream as fs
from flowstream import checkpoints, sinks
from flowstream.errors import DeliveryError, NotSentError
from flowstream.sinks.base import Batch, SendResult, SimpleSink
from flowstream.testing import MemoryStream

QUICK: dict[str, Any] = {"backoff": (0.001, 0.002)}


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
