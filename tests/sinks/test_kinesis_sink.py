"""`kinesis()` against moto's Kinesis: records put by a pipeline through aiobotocore,
read back with GetShardIterator/GetRecords through boto3.

moto never fails a single record of a PutRecords call (it fails whole calls only, e.g.
for a record over 1 MiB), so per-record failures are made with botocore's own event
hooks on the sink's session: the chosen entry is taken out of the real request and put
back into the real response as Kinesis reports a throttled record.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import boto3
import pytest
from aiobotocore.session import AioSession
from sink_support import drain, new_session, send

import flowstream as fs
from flowstream.errors import DeliveryError, ShardStoppedError, SinkError
from flowstream.serialize import SerializationError
from flowstream.sinks import Batch
from flowstream.sinks.kinesis import MAX_RECORD_BYTES, default_partition_key, kinesis
from flowstream.testing import MemoryStream

REGION = "us-east-1"
STREAM = "changes"


class Kinesis:
    """A boto3 client of moto's Kinesis: create streams, read everything back."""

    def __init__(self, endpoint_url: str) -> None:
        self.client: Any = boto3.client("kinesis", endpoint_url=endpoint_url, region_name=REGION)

    def create_stream(self, name: str = STREAM, shards: int = 4) -> str:
        self.client.create_stream(StreamName=name, ShardCount=shards)
        summary = self.client.describe_stream_summary(StreamName=name)
        return str(summary["StreamDescriptionSummary"]["StreamARN"])

    def read(self, name: str = STREAM) -> dict[str, list[tuple[str, bytes]]]:
        """(partition key, data) of every record, per Kinesis shard, in shard order."""
        out: dict[str, list[tuple[str, bytes]]] = {}
        for shard in self.client.list_shards(StreamName=name)["Shards"]:
            iterator = self.client.get_shard_iterator(
                StreamName=name, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
            )["ShardIterator"]
            records: list[tuple[str, bytes]] = []
            while True:
                page = self.client.get_records(ShardIterator=iterator, Limit=10_000)
                if not page["Records"]:
                    break
                records.extend((r["PartitionKey"], r["Data"]) for r in page["Records"])
                iterator = page["NextShardIterator"]
            out[shard["ShardId"]] = records
        return out

    def values(self, name: str = STREAM) -> list[Any]:
        return [json.loads(data) for rs in self.read(name).values() for _, data in rs]


@pytest.fixture
def aws(moto_url: str) -> Kinesis:
    return Kinesis(moto_url)


def fail_records(session: AioSession, code: Callable[[dict[str, Any]], str | None]) -> None:
    """Make PutRecords fail the entries for which `code(entry)` gives an error code: they
    are taken out of the real request and put back into the real response, failed."""

    def before(params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        kept, failed = [], []
        for position, entry in enumerate(params["Records"]):
            error = code(entry)
            if error is None:
                kept.append(entry)
            else:
                failed.append((position, error))
        assert kept, "leave at least one record in the call"
        params["Records"] = kept
        context["failed_records"] = failed

    def after(parsed: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        for position, error in context.get("failed_records", []):
            parsed["Records"].insert(position, {"ErrorCode": error, "ErrorMessage": "injected"})
            parsed["FailedRecordCount"] += 1

    session.register("before-parameter-build.kinesis.PutRecords", before)
    session.register("after-call.kinesis.PutRecords", after)


def count_calls(session: AioSession) -> list[int]:
    """The number of records in each PutRecords call the sink makes."""
    calls: list[int] = []

    def before(params: dict[str, Any], **_: Any) -> None:
        calls.append(len(params["Records"]))

    session.register("before-parameter-build.kinesis.PutRecords", before)
    return calls


def changes(shards: int, items: int, versions: int) -> MemoryStream:
    """`versions` changes of each of `items` items per shard, interleaved so that one
    page holds several changes of each item."""
    stream = MemoryStream()
    for s in range(shards):
        shard = stream.add_shard()
        for version in range(versions):
            for item in range(items):
                pk = f"item#{s}-{item}"
                event = "INSERT" if version == 0 else "MODIFY"
                stream.put(shard, event, {"pk": pk}, {"pk": pk, "version": version})
    return stream


def as_change(record: fs.Record) -> dict[str, Any]:
    image = record.new_image or {}
    return {"pk": record.keys["pk"], "version": image.get("version")}


@pytest.fixture(autouse=True)
def _shared_models(shared_models: None) -> None:
    """Every client of these tests opens fast (see sink_support.new_session)."""


def batch_of(values: list[Any], keys: list[str] | None = None) -> Batch:
    """A batch of `values`, each from its own record (item `keys[i]`, default k<i>)."""
    stream = MemoryStream()
    shard = stream.add_shard()
    names = keys or [f"k{i}" for i in range(len(values))]
    records = [stream.put(shard, "INSERT", {"pk": pk}, {"pk": pk}) for pk in names]
    return Batch(shard, values, records)


class TestDelivery:
    async def test_2000_records_from_8_shards_arrive_once_each_and_in_order_per_item(
        self, aws: Kinesis, moto_url: str
    ) -> None:
        aws.create_stream(shards=4)
        session = new_session()
        calls = count_calls(session)
        stream = changes(shards=8, items=50, versions=5)
        # One connection: moto's Kinesis loses records when PutRecords calls for one
        # shard run at once (moto.kinesis.models.Shard.put_record is "not safe for
        # concurrency"). The 8 shards still send concurrently; their calls queue.
        sink = kinesis(STREAM, endpoint_url=moto_url, session=session, max_connections=1)
        pipeline = fs.Pipeline(stream).map(as_change).to(sink)

        report = await drain(pipeline)

        assert report.delivered == 2000
        assert sum(s.retries for s in report.shards.values()) == 0
        by_shard = aws.read()
        arrived = [json.loads(data) for rs in by_shard.values() for _, data in rs]
        assert len(arrived) == 2000
        expected = {(f"item#{s}-{i}", v) for s in range(8) for i in range(50) for v in range(5)}
        assert {(a["pk"], a["version"]) for a in arrived} == expected  # each once
        for records in by_shard.values():
            versions: dict[str, list[int]] = {}
            for partition_key, data in records:
                change = json.loads(data)
                assert partition_key == json.dumps({"pk": change["pk"]}, separators=(",", ":"))
                versions.setdefault(change["pk"], []).append(change["version"])
            for pk, seen in versions.items():
                assert seen == [0, 1, 2, 3, 4], pk
        # one item's changes are all in one Kinesis shard
        shard_of = {json.loads(d)["pk"]: s for s, rs in by_shard.items() for _, d in rs}
        assert sum(len(rs) for rs in by_shard.values()) == 2000
        assert len(set(shard_of.values())) > 1  # and items spread over the stream's shards
        # a call holds one record per partition key: a page of 250 is 5 calls of 50
        assert len(calls) == 8 * 5
        assert set(calls) == {50}

    async def test_calls_hold_at_most_500_records(self, aws: Kinesis, moto_url: str) -> None:
        aws.create_stream(shards=1)
        session = new_session()
        calls = count_calls(session)
        values = [{"n": n} for n in range(1200)]
        result = await send(
            kinesis(STREAM, endpoint_url=moto_url, session=session), batch_of(values)
        )
        assert result is None
        assert calls == [500, 500, 200]
        assert sorted(v["n"] for v in aws.values()) == list(range(1200))

    async def test_calls_hold_at_most_5_mib(self, aws: Kinesis, moto_url: str) -> None:
        aws.create_stream(shards=1)
        session = new_session()
        calls = count_calls(session)
        values = [b"x" * (900 * 1024) for _ in range(7)]  # 6.2 MiB in all
        result = await send(
            kinesis(STREAM, endpoint_url=moto_url, session=session), batch_of(values)
        )
        assert result is None
        assert calls == [5, 2]
        assert sum(len(rs) for rs in aws.read().values()) == 7

    async def test_data_is_to_bytes_or_encode(self, aws: Kinesis, moto_url: str) -> None:
        aws.create_stream(shards=1)
        values: list[Any] = ["text", b"\x00\x01", {"a": 1}]
        await send(kinesis(STREAM, endpoint_url=moto_url), batch_of(values))
        await send(
            kinesis(STREAM, endpoint_url=moto_url, encode=lambda v: repr(v).encode()),
            batch_of([{"a": 1}], ["k9"]),
        )
        (records,) = aws.read().values()
        assert [data for _, data in records] == [b"text", b"\x00\x01", b'{"a":1}', b"{'a': 1}"]

    @pytest.mark.parametrize(
        ("encode", "message"),
        [
            (lambda v: 1 / 0, "encode= failed on a dict value: ZeroDivisionError"),
            (lambda v: 5, "encode= returned a int for a dict value; it must return bytes"),
        ],
        ids=["raises", "not-bytes"],
    )
    async def test_a_failing_encode_fails_only_its_item(
        self, aws: Kinesis, moto_url: str, encode: Any, message: str
    ) -> None:
        aws.create_stream(shards=1)
        sink = kinesis(
            STREAM,
            endpoint_url=moto_url,
            encode=lambda v: encode(v) if v.get("bad") else "ok",
        )
        result = await send(sink, batch_of([{"bad": False}, {"bad": True}]))
        assert result is not None
        error = result.failed[1]
        assert isinstance(error, SerializationError)
        assert message in str(error)
        (records,) = aws.read().values()
        assert [data for _, data in records] == [b"ok"]

    async def test_a_stream_arn(self, aws: Kinesis, moto_url: str) -> None:
        arn = aws.create_stream(shards=2)
        sink = kinesis(arn, endpoint_url=moto_url)
        assert sink.describe() == f"kinesis({arn})"
        assert await send(sink, batch_of([{"n": 1}, {"n": 2}])) is None
        assert sorted(v["n"] for v in aws.values()) == [1, 2]


class TestPartitionKeys:
    def test_the_default_is_the_items_keys_sorted(self) -> None:
        stream = MemoryStream()
        shard = stream.add_shard()
        record = stream.put(shard, "INSERT", {"sk": 5, "pk": "user#1"}, {"pk": "user#1"})
        assert default_partition_key(record) == '{"pk":"user#1","sk":5}'

    def test_a_long_key_is_hashed_to_fit(self) -> None:
        stream = MemoryStream()
        shard = stream.add_shard()
        record = stream.put(shard, "INSERT", {"pk": "x" * 300}, {"pk": "x" * 300})
        key = default_partition_key(record)
        assert key.startswith("sha256:")
        assert len(key) == 71
        assert key == default_partition_key(record)

    async def test_a_fixed_key_and_a_function(self, aws: Kinesis, moto_url: str) -> None:
        aws.create_stream(shards=4)
        await send(
            kinesis(STREAM, endpoint_url=moto_url, partition_key="all"),
            batch_of([{"n": 1}, {"n": 2}]),
        )
        await send(
            kinesis(
                STREAM,
                endpoint_url=moto_url,
                partition_key=lambda value, record: f"{record.keys['pk']}/{value['n']}",
            ),
            batch_of([{"n": 3}]),
        )
        keys = [(key, json.loads(d)["n"]) for rs in aws.read().values() for key, d in rs]
        assert sorted(keys, key=lambda kv: kv[1]) == [("all", 1), ("all", 2), ("k0/3", 3)]

    async def test_a_function_that_returns_a_bad_key_fails_that_item(
        self, aws: Kinesis, moto_url: str
    ) -> None:
        aws.create_stream(shards=1)
        sink = kinesis(STREAM, endpoint_url=moto_url, partition_key=lambda v, r: "x" * v["len"])
        result = await send(sink, batch_of([{"len": 3}, {"len": 0}, {"len": 257}]))
        assert result is not None
        assert sorted(result.failed) == [1, 2]
        error = result.failed[2]
        assert isinstance(error, DeliveryError)
        assert not error.retryable
        assert "returned a str of 257 characters" in str(error)
        assert "1 to 256" in str(error)
        assert [v["len"] for v in aws.values()] == [3]


class TestFailures:
    async def test_a_throttled_record_is_retried_and_its_items_changes_stay_in_order(
        self, aws: Kinesis, moto_url: str
    ) -> None:
        aws.create_stream(shards=2)
        session = new_session()
        throttled: list[bytes] = []

        def throttle_once(entry: dict[str, Any]) -> str | None:
            change = json.loads(entry["Data"])
            if change == {"pk": "item#0-3", "version": 1} and not throttled:
                throttled.append(entry["Data"])
                return "ProvisionedThroughputExceededException"
            return None

        fail_records(session, throttle_once)
        stream = changes(shards=2, items=10, versions=4)
        sink = kinesis(STREAM, endpoint_url=moto_url, session=session, max_connections=1)
        pipeline = fs.Pipeline(stream).map(as_change).to(sink)

        report = await drain(pipeline)

        assert throttled
        assert sum(s.retries for s in report.shards.values()) == 1
        assert report.delivered == 80
        by_shard = aws.read()
        arrived = [
            (json.loads(d)["pk"], json.loads(d)["version"])
            for rs in by_shard.values()
            for _, d in rs
        ]
        assert sorted(arrived) == sorted(
            (f"item#{s}-{i}", v) for s in range(2) for i in range(10) for v in range(4)
        )
        for records in by_shard.values():
            seen = [
                json.loads(d)["version"] for _, d in records if json.loads(d)["pk"] == "item#0-3"
            ]
            assert seen in ([], [0, 1, 2, 3])

    async def test_a_failed_record_holds_back_later_records_of_its_key(
        self, aws: Kinesis, moto_url: str
    ) -> None:
        aws.create_stream(shards=1)
        session = new_session()
        fail_records(
            session,
            lambda entry: "KMSAccessDeniedException" if entry["Data"] == b"a1" else None,
        )
        sink = kinesis(STREAM, endpoint_url=moto_url, session=session)
        batch = batch_of(["a1", "b1", "a2", "b2", "c1"], ["a", "b", "a", "b", "c"])

        result = await send(sink, batch)

        assert result is not None
        assert sorted(result.failed) == [0, 2]
        first, held = result.failed[0], result.failed[2]
        assert isinstance(first, DeliveryError)
        assert isinstance(held, DeliveryError)
        assert (first.retryable, first.code) == (False, "KMSAccessDeniedException")
        assert held.retryable
        assert "held back because an earlier item of the same key failed" in str(held)
        (records,) = aws.read().values()
        assert [data for _, data in records] == [b"b1", b"b2", b"c1"]

    async def test_a_value_over_1_mib_fails_only_that_item(
        self, aws: Kinesis, moto_url: str
    ) -> None:
        aws.create_stream(shards=1)
        big = b"x" * MAX_RECORD_BYTES  # with its partition key, over the limit
        result = await send(
            kinesis(STREAM, endpoint_url=moto_url), batch_of([b"small", big, b"after"])
        )
        assert result is not None
        assert list(result.failed) == [1]
        error = result.failed[1]
        assert isinstance(error, DeliveryError)
        assert not error.retryable
        message = str(error)
        assert f"a bytes value makes a record of {MAX_RECORD_BYTES + 11} bytes" in message
        assert "over Kinesis' limit of 1048576 bytes (1 MiB) per record" in message
        (records,) = aws.read().values()
        assert [data for _, data in records] == [b"small", b"after"]

    async def test_an_oversized_value_stops_its_shard_without_retries(
        self, aws: Kinesis, moto_url: str
    ) -> None:
        aws.create_stream(shards=1)
        stream = MemoryStream()
        shard = stream.add_shard()
        for n in range(3):
            stream.put(shard, "INSERT", {"pk": f"k{n}"}, {"pk": f"k{n}", "n": n})
        pipeline = (
            fs.Pipeline(stream)
            .map(lambda r: "x" * (2 * MAX_RECORD_BYTES) if r.keys["pk"] == "k1" else r.keys["pk"])
            .to(kinesis(STREAM, endpoint_url=moto_url))
        )
        with pytest.raises(ShardStoppedError) as caught:
            await drain(pipeline)
        (stopped,) = caught.value.report.stopped_shards().values()
        assert stopped.retries == 0
        assert "over Kinesis' limit" in (stopped.error or "")
        (records,) = aws.read().values()
        assert [data for _, data in records] == [b"k0", b"k2"]

    async def test_a_value_that_cannot_be_serialised_fails_only_that_item(
        self, aws: Kinesis, moto_url: str
    ) -> None:
        aws.create_stream(shards=1)
        result = await send(kinesis(STREAM, endpoint_url=moto_url), batch_of(["a", object(), "b"]))
        assert result is not None
        error = result.failed[1]
        assert isinstance(error, SerializationError)
        assert not error.retryable
        assert "cannot serialise a object value" in str(error)
        (records,) = aws.read().values()
        assert [data for _, data in records] == [b"a", b"b"]

    async def test_a_missing_stream_fails_every_item_with_a_clear_error(
        self, moto_url: str
    ) -> None:
        result = await send(kinesis("nope", endpoint_url=moto_url), batch_of(["a", "b"]))
        assert result is not None
        assert sorted(result.failed) == [0, 1]
        error = result.failed[0]
        assert isinstance(error, DeliveryError)
        assert not error.retryable
        assert str(error).startswith(
            f"sink kinesis(nope): Kinesis stream 'nope' does not exist in us-east-1 at {moto_url}"
        )
        assert "create it, or check the stream name and region=" in str(error)


class TestFactory:
    def test_an_arn_brings_its_region(self) -> None:
        sink = kinesis("arn:aws:kinesis:eu-west-1:123456789012:stream/changes")
        assert sink.region == "eu-west-1"

    @pytest.mark.parametrize(
        ("args", "message"),
        [
            (("",), "needs a stream name or ARN"),
            (("arn:aws:sqs:us-east-1:123456789012:q",), "is not a Kinesis stream ARN"),
        ],
    )
    def test_bad_streams(self, args: tuple[Any, ...], message: str) -> None:
        with pytest.raises(SinkError, match=message):
            kinesis(*args)

    @pytest.mark.parametrize("key", ["", "x" * 257])
    def test_a_fixed_key_must_fit(self, key: str) -> None:
        with pytest.raises(SinkError, match="Kinesis takes 1 to 256"):
            kinesis("s", partition_key=key)

    def test_a_key_of_the_wrong_type(self) -> None:
        with pytest.raises(SinkError, match="must be None, a str or a function"):
            kinesis("s", partition_key=5)  # type: ignore[arg-type]
