"""Tests of `sources.dead_letters()` and `fs.replay_dead_letters()`: the records of dead
letters go through a pipeline again, per original shard, in order, each once."""

from __future__ import annotations

import json
import random
import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest
from sink_support import new_session

import flowstream as fs
from flowstream import sinks, sources
from flowstream.deadletter import DEAD_LETTER_VERSION, DeadLetter
from flowstream.errors import RecordDecodeError, SourceError
from flowstream.sinks.collect import CollectSink
from flowstream.testing import MemoryStream

PIPELINE = "orders"
FAILED_AT = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def build_stream(per_shard: int = 3, shards: int = 2) -> MemoryStream:
    """A stream whose records carry every kind of value an image can hold."""
    stream = MemoryStream(table="Orders")
    for s in range(shards):
        shard_id = stream.add_shard()
        for n in range(per_shard):
            key = {"pk": f"order#{s}-{n}", "sk": n}
            stream.put(
                shard_id,
                "MODIFY",
                key,
                new_image={
                    **key,
                    "total": Decimal("12.50"),
                    "tags": {"gift", "express"},
                    "blob": b"\x00\xff",
                    "lines": [{"sku": "a", "qty": 2}, None, True],
                },
                old_image={**key, "total": Decimal("10"), "tags": {"gift"}},
            )
    return stream


def letter_of(record: fs.Record, *, pipeline: str = PIPELINE, attempts: int = 4) -> fs.DeadLetter:
    return fs.DeadLetter.of(
        record,
        pipeline=pipeline,
        stream="arn:aws:dynamodb:us-east-1:000000000000:table/Orders/stream/x",
        step="sink sqs(orders)",
        reason="retries_exhausted",
        error=fs.DeliveryError("queue is down", retryable=True),
        attempts=attempts,
        first_failure=FAILED_AT,
        last_failure=FAILED_AT,
    )


async def write_with_jsonl_sink(path: Path, letters: list[fs.DeadLetter]) -> None:
    """Write `letters` with the real `sinks.jsonl`, as a pipeline's dead-letter sink does:
    one record of a scratch stream fans out into the letters."""
    scratch = MemoryStream()
    scratch.put(scratch.add_shard(), "INSERT", {"pk": "trigger"})
    await fs.Pipeline(scratch).flat_map(lambda _: letters).to(sinks.jsonl(path)).run(drain=True)


def key_of(record: fs.Record) -> tuple[str, str]:
    return record.shard_id, record.sequence_number


def assert_same_record(replayed: fs.Record, original: fs.Record) -> None:
    assert key_of(replayed) == key_of(original)
    assert replayed.event_id == original.event_id  # idempotency keys stay the same
    assert replayed.event_name == original.event_name
    assert replayed.keys == original.keys
    assert replayed.new_image == original.new_image
    assert replayed.old_image == original.old_image
    assert replayed.approximate_creation_time == original.approximate_creation_time


async def replay_into_collect(
    letters: Any, *, only_pipeline: str | None = None
) -> tuple[fs.RunReport, CollectSink]:
    out = sinks.collect()
    pipeline = fs.Pipeline(MemoryStream(), name=PIPELINE).to(out)
    with anyio.fail_after(10):
        report = await fs.replay_dead_letters(pipeline, letters, only_pipeline=only_pipeline)
    return report, out


class TestReplayDeliversEveryLetterOnce:
    async def test_from_a_jsonl_file_written_by_the_jsonl_sink(self, tmp_path: Path) -> None:
        stream = build_stream()
        originals = stream.records()
        path = tmp_path / "dead.jsonl"
        await write_with_jsonl_sink(path, [letter_of(r) for r in originals])

        report, out = await replay_into_collect(path)

        assert len(out.items) == len(originals)
        by_key = {key_of(r): r for r in out.items}
        for original in originals:
            assert_same_record(by_key[key_of(original)], original)
        assert report.read == len(originals)
        assert report.delivered == len(originals)
        assert report.stream == f"dead-letters:{path.resolve()}"
        assert report.pipeline == PIPELINE

    async def test_from_bytes_str_dicts_and_letters(self) -> None:
        stream = build_stream(per_shard=4, shards=1)
        originals = stream.records()
        letters = [letter_of(r) for r in originals]
        items: list[Any] = [
            letters[0].to_json(),  # an SQS body as bytes
            letters[1].to_json().decode(),  # ... as str
            json.loads(letters[2].to_json()),  # parsed
            letters[3],  # decoded
        ]

        report, out = await replay_into_collect(items)

        assert [r.sequence_number for r in out.items] == [r.sequence_number for r in originals]
        for replayed, original in zip(out.items, originals, strict=True):
            assert_same_record(replayed, original)
        assert report.stream == "dead-letters:memory"

    async def test_the_file_is_left_as_it_was(self, tmp_path: Path) -> None:
        path = tmp_path / "dead.jsonl"
        await write_with_jsonl_sink(path, [letter_of(r) for r in build_stream().records()])
        before = path.read_bytes()
        await replay_into_collect(path)
        assert path.read_bytes() == before

    async def test_records_go_through_the_pipelines_steps_and_route(self) -> None:
        stream = build_stream(per_shard=3, shards=1)
        first, second, third = stream.records()
        kept, other = sinks.collect("kept"), sinks.collect("other")

        def total(record: fs.Record) -> dict[str, Any]:
            assert record.new_image is not None
            return {"pk": record.keys["pk"], "total": record.new_image["total"]}

        pipeline = (
            fs.Pipeline(MemoryStream(), name=PIPELINE)
            .filter(lambda r: r.keys["sk"] != 1)
            .map(total)
            .route(fs.when(lambda m: m["pk"].endswith("-0"), kept), otherwise=other)
        )
        report = await fs.replay_dead_letters(
            pipeline, [letter_of(r) for r in (first, second, third)]
        )
        assert kept.items == [{"pk": first.keys["pk"], "total": Decimal("12.50")}]
        assert other.items == [{"pk": third.keys["pk"], "total": Decimal("12.50")}]
        assert report.filtered == 1


class TestShardsAndOrder:
    async def test_one_finite_parentless_shard_per_original_shard(self) -> None:
        stream = build_stream(per_shard=2, shards=3)
        records = stream.records()
        # letters of the third shard come first: shards are listed as they appear
        ordered = records[4:] + records[:4]
        async with sources.dead_letters([letter_of(r) for r in ordered]).open() as session:
            shards = await session.list_shards()
            assert session.finite
            assert session.stream_id == "dead-letters:memory"
        ids = stream.shard_ids
        assert [s.shard_id for s in shards] == [ids[2], ids[0], ids[1]]
        assert all(s.parent_shard_id is None and s.closed for s in shards)

    async def test_each_shard_in_sequence_order_whatever_the_letters_order(
        self, tmp_path: Path
    ) -> None:
        stream = build_stream(per_shard=20, shards=3)
        originals = stream.records()
        shuffled = list(originals)
        random.Random(7).shuffle(shuffled)  # as an SQS standard queue may hand them back
        path = tmp_path / "dead.jsonl"
        await write_with_jsonl_sink(path, [letter_of(r) for r in shuffled])

        _, out = await replay_into_collect(path)

        by_shard = out.by_shard()
        assert set(by_shard) == set(stream.shard_ids)
        for shard_id, records in by_shard.items():
            assert [r.sequence_number for r in records] == [
                r.sequence_number for r in stream.records(shard_id)
            ]

    async def test_a_record_lettered_twice_is_replayed_once(self, tmp_path: Path) -> None:
        stream = build_stream(per_shard=3, shards=2)
        originals = stream.records()
        # a run that crashed after writing letters and before its checkpoint writes
        # them again on the next run (with other attempt counts)
        letters = [letter_of(r) for r in originals] + [
            letter_of(r, attempts=9) for r in originals[1:4]
        ]
        path = tmp_path / "dead.jsonl"
        await write_with_jsonl_sink(path, letters)

        report, out = await replay_into_collect(path)

        assert sorted(key_of(r) for r in out.items) == sorted(key_of(r) for r in originals)
        assert report.read == len(originals)

    async def test_sequence_numbers_compare_as_numbers(self) -> None:
        # 21 and 22 digits: compared as text, the longer would come first
        short, long = build_stream(per_shard=2, shards=1).records()
        long = msgspec.structs.replace(
            long, dynamodb=msgspec.structs.replace(long.dynamodb, sequence_number="1" + "0" * 21)
        )
        _, out = await replay_into_collect([letter_of(long), letter_of(short)])
        assert [r.sequence_number for r in out.items] == [
            short.sequence_number,
            long.sequence_number,
        ]


class TestOnlyPipeline:
    async def test_keeps_the_letters_of_that_pipeline(self) -> None:
        records = build_stream(per_shard=3, shards=2).records()
        letters = [
            letter_of(r, pipeline=PIPELINE if n % 2 == 0 else "billing")
            for n, r in enumerate(records)
        ]
        report, out = await replay_into_collect(letters, only_pipeline=PIPELINE)
        assert sorted(key_of(r) for r in out.items) == sorted(key_of(r) for r in records[::2])
        assert report.read == len(records[::2])

    async def test_none_left_is_an_error_naming_the_pipelines(self, tmp_path: Path) -> None:
        path = tmp_path / "dead.jsonl"
        await write_with_jsonl_sink(
            path, [letter_of(r, pipeline="billing") for r in build_stream().records()]
        )
        with pytest.raises(
            SourceError, match=r"none of pipeline 'orders' \(they are of 'billing'\)"
        ):
            await replay_into_collect(path, only_pipeline=PIPELINE)

    def test_a_blank_name_is_refused(self) -> None:
        with pytest.raises(SourceError, match="only_pipeline=''"):
            sources.dead_letters("dead.jsonl", only_pipeline="")


class TestBadInput:
    async def test_a_bad_line_is_named(self, tmp_path: Path) -> None:
        good = letter_of(build_stream(per_shard=1, shards=1).records()[0]).to_json()
        path = tmp_path / "dead.jsonl"
        path.write_bytes(good + b"\n\n" + b'{"version": 1, "pipeline": "orders"}\n')
        with pytest.raises(
            RecordDecodeError, match=rf"^{re.escape(str(path))}:3: not a flowstream dead letter"
        ):
            await replay_into_collect(path)

    async def test_a_newer_version_asks_for_an_upgrade(self, tmp_path: Path) -> None:
        document = json.loads(letter_of(build_stream(per_shard=1).records()[0]).to_json())
        document["version"] = DEAD_LETTER_VERSION + 1
        path = tmp_path / "dead.jsonl"
        path.write_text(json.dumps(document) + "\n")
        with pytest.raises(
            RecordDecodeError, match=rf"^{re.escape(str(path))}:1: .*upgrade flowstream"
        ):
            await replay_into_collect(path)

    def test_a_bad_item_is_named_by_its_index(self) -> None:
        good = letter_of(build_stream(per_shard=1, shards=1).records()[0])
        with pytest.raises(RecordDecodeError, match=r"^letters\[1\]: not a flowstream dead letter"):
            sources.dead_letters([good, b"{}"])

    @pytest.mark.parametrize("item", [42, None, ["a", "list"]], ids=["int", "none", "list"])
    def test_an_item_of_another_type_is_refused(self, item: object) -> None:
        with pytest.raises(SourceError, match=r"^letters\[0\] is a .*DeadLetter objects"):
            sources.dead_letters([item])  # type: ignore[list-item]

    def test_a_single_document_is_refused(self) -> None:
        body = letter_of(build_stream(per_shard=1, shards=1).records()[0]).to_json()
        with pytest.raises(SourceError, match=r"a single letter; pass a list"):
            sources.dead_letters(body)  # type: ignore[arg-type]

    async def test_a_missing_file(self, tmp_path: Path) -> None:
        with pytest.raises(SourceError, match=r"cannot read .*missing\.jsonl"):
            await replay_into_collect(tmp_path / "missing.jsonl")

    @pytest.mark.parametrize("content", ["", "\n  \n"], ids=["empty", "blank-lines"])
    async def test_an_empty_file(self, tmp_path: Path, content: str) -> None:
        path = tmp_path / "dead.jsonl"
        path.write_text(content)
        with pytest.raises(SourceError, match="holds no dead letters, so there is nothing"):
            await replay_into_collect(path)

    def test_no_letters_in_memory(self) -> None:
        with pytest.raises(SourceError, match="holds no dead letters"):
            sources.dead_letters([])

    async def test_not_a_pipeline(self) -> None:
        with pytest.raises(fs.PipelineError, match="replay_dead_letters\\(\\) got MemoryStream"):
            await fs.replay_dead_letters(MemoryStream(), [])  # type: ignore[arg-type]


class TestFailingAgain:
    async def test_without_a_dead_letter_sink_the_shard_stops_and_the_report_says_where(
        self,
    ) -> None:
        stream = build_stream(per_shard=3, shards=2)
        broken_shard, healthy_shard = stream.shard_ids
        delivered: list[fs.Record] = []

        def deliver(values: list[fs.Record]) -> None:
            if any(r.shard_id == broken_shard for r in values):
                raise RuntimeError("the orders service is still down")
            delivered.extend(values)

        pipeline = (
            fs.Pipeline(MemoryStream(), name=PIPELINE)
            .to(sinks.callback(deliver))
            .on_failure(retries=0)
        )
        with anyio.fail_after(5), pytest.raises(fs.ShardStoppedError) as caught:
            await fs.replay_dead_letters(pipeline, [letter_of(r) for r in stream.records()])

        stopped = caught.value.report.stopped_shards()
        assert list(stopped) == [broken_shard]
        assert stopped[broken_shard].stopped_at == stream.records(broken_shard)[0].sequence_number
        assert "the orders service is still down" in (stopped[broken_shard].error or "")
        # the other shard is replayed in full
        assert [key_of(r) for r in delivered] == [key_of(r) for r in stream.records(healthy_shard)]

    async def test_with_a_dead_letter_sink_the_record_becomes_a_new_letter(self) -> None:
        stream = build_stream(per_shard=3, shards=2)
        failing = stream.records()[1]
        delivered: list[fs.Record] = []

        def deliver(values: list[fs.Record]) -> None:
            if failing in values:
                raise RuntimeError("order 0-1 is still rejected")
            delivered.extend(values)

        dead = sinks.collect("dead")
        pipeline = (
            fs.Pipeline(MemoryStream(), name=PIPELINE)
            .to(sinks.callback(deliver))
            .on_failure(retries=0, dead_letter=dead)
        )
        with anyio.fail_after(5):
            report = await fs.replay_dead_letters(
                pipeline, [letter_of(r) for r in stream.records()]
            )

        assert sorted(key_of(r) for r in delivered) == sorted(
            key_of(r) for r in stream.records() if r != failing
        )
        (again,) = dead.items
        assert isinstance(again, fs.DeadLetter)
        assert again.pipeline == PIPELINE
        assert "order 0-1 is still rejected" in (again.error.message if again.error else "")
        assert_same_record(again.record, failing)
        assert not report.stopped_shards()

    async def test_replaying_a_file_that_is_also_the_dead_letter_sink_ends(
        self, tmp_path: Path
    ) -> None:
        # the file is read whole before the run writes to it: a letter that fails again
        # is appended, not replayed again in the same run
        records = build_stream(per_shard=2, shards=1).records()
        path = tmp_path / "dead.jsonl"
        await write_with_jsonl_sink(path, [letter_of(r) for r in records])

        def reject(values: list[fs.Record]) -> None:
            raise RuntimeError("still down")

        pipeline = (
            fs.Pipeline(MemoryStream(), name=PIPELINE)
            .to(sinks.callback(reject))
            .on_failure(retries=0, dead_letter=sinks.jsonl(path))
        )
        with anyio.fail_after(5):
            await fs.replay_dead_letters(pipeline, path)

        lines = path.read_bytes().splitlines()
        assert len(lines) == 2 * len(records)  # the old letters stay; new ones follow
        async with sources.dead_letters(path).open() as session:
            (shard,) = await session.list_shards()
            page = await session.reader(shard, sources.Position.at("0")).read()
        assert [r.sequence_number for r in page.records] == [r.sequence_number for r in records]


class TestWrittenByTheRuntime:
    async def test_letters_of_a_failed_run_replay_whole(self, tmp_path: Path) -> None:
        stream = build_stream(per_shard=4, shards=2)
        path = tmp_path / "dead.jsonl"
        down = True
        out: list[fs.Record] = []

        def deliver(values: list[fs.Record]) -> None:
            if down:
                raise RuntimeError("billing is down")
            out.extend(values)

        pipeline = (
            fs.Pipeline(stream, name=PIPELINE)
            .to(sinks.callback(deliver))
            .on_failure(retries=0, dead_letter=sinks.jsonl(path))
        )
        with anyio.fail_after(10):
            await pipeline.run(drain=True)
        letters = [fs.decode_dead_letter(line) for line in path.read_bytes().splitlines()]
        assert {letter.pipeline for letter in letters} == {PIPELINE}
        assert {key_of(letter.record) for letter in letters} == {
            key_of(r) for r in stream.records()
        }

        down = False
        with anyio.fail_after(10):
            report = await fs.replay_dead_letters(pipeline, path, only_pipeline=PIPELINE)

        assert report.read == len(stream.records())
        for shard_id in stream.shard_ids:
            replayed = [r for r in out if r.shard_id == shard_id]
            originals = stream.records(shard_id)
            assert len(replayed) == len(originals)
            for replayed_record, original in zip(replayed, originals, strict=True):
                assert_same_record(replayed_record, original)


class TestFromSqs:
    @pytest.mark.usefixtures("shared_models")
    async def test_bodies_received_with_aiobotocore(self, moto_url: str) -> None:
        stream = build_stream(per_shard=5, shards=2)
        originals = stream.records()
        async with new_session().create_client("sqs", endpoint_url=moto_url) as sqs:
            queue_url = (await sqs.create_queue(QueueName="dead-letters"))["QueueUrl"]
            # the letters go to the queue through the real SQS sink
            await (
                fs.Pipeline(stream)
                .map(letter_of)
                .to(sinks.sqs(queue_url, endpoint_url=moto_url))
                .run(drain=True)
            )
            messages: list[dict[str, Any]] = []
            while len(messages) < len(originals):
                response = await sqs.receive_message(
                    QueueUrl=queue_url, MaxNumberOfMessages=10, VisibilityTimeout=60
                )
                assert response.get("Messages"), "the queue holds fewer letters than sent"
                messages += response["Messages"]

        report, out = await replay_into_collect([m["Body"] for m in messages])

        assert sorted(key_of(r) for r in out.items) == sorted(key_of(r) for r in originals)
        by_key = {key_of(r): r for r in out.items}
        for original in originals:
            assert_same_record(by_key[key_of(original)], original)
        assert report.read == len(originals)


@pytest.mark.parametrize("where", ["pipeline", "step"])
async def test_a_replay_delivers_records_older_than_max_record_age(
    tmp_path: Path, where: str
) -> None:
    """A dead letter is old by the time it is replayed; the replay must deliver it, not
    dead-letter it again for its age, whether the age limit is the pipeline's or a
    step's own."""
    stream = MemoryStream()
    shard = stream.add_shard()
    old = datetime.now(UTC) - timedelta(days=2)
    record = stream.put(shard, "INSERT", {"pk": "a"}, {"pk": "a"}, created_at=old)
    letter = DeadLetter.of(
        record,
        pipeline="p",
        stream=stream.stream_arn,
        step="sink x",
        reason="retries_exhausted",
        error=ValueError("down"),
        attempts=4,
        first_failure=None,
        last_failure=None,
    )
    out, again = sinks.collect(), sinks.collect()
    pipeline = fs.Pipeline(stream, name="p")
    if where == "step":
        # a step's own age limit applies when the step fails: the first call fails, the
        # retry must run rather than dead-letter the old record for its age
        calls: list[str] = []

        def flaky(r: fs.Record) -> fs.Record:
            calls.append(r.sequence_number)
            if len(calls) == 1:
                raise ConnectionError("a blip")
            return r

        aged = fs.FailurePolicy(max_record_age=3600, dead_letter=again, retries=1, backoff=(0, 0))
        pipeline = pipeline.map(flaky, on_failure=aged).to(out)
    else:
        pipeline = pipeline.to(out).on_failure(max_record_age=3600, dead_letter=again, retries=0)
    report = await fs.replay_dead_letters(pipeline, [letter])
    assert [r.sequence_number for r in out.items] == [record.sequence_number]
    assert again.items == []
    assert report.dead_lettered == 0
