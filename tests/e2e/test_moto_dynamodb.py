"""`sources.dynamodb()` end to end against moto's server: real tables written through
boto3, read by a pipeline through aiobotocore.

What moto does differently from DynamoDB (DESIGN.md §5), as these tests found it: one
shard per stream, never closed, with the same shard id in every stream and every stream
starting at the same sequence number; `awsRegion` is always us-east-1; an UpdateItem
(or a TransactWriteItems Update) that creates the item writes two INSERTs, the first
with only the key in its new image; a write that changes nothing is still a MODIFY.
As in DynamoDB, a PutItem over an existing item is one MODIFY and a DeleteItem of a
missing item writes nothing.
"""

from __future__ import annotations

import functools
import threading
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import anyio
import boto3
import msgspec
import pytest
from boto3.dynamodb.types import TypeSerializer
from boto3_values import image
from moto_server import closed_port
from support import wait_until

import flowstream as fs
from flowstream import checkpoints, sinks, sources
from flowstream.errors import FlowstreamError, SourceError, StreamNotFoundError
from flowstream.sources.dynamodb import DynamoDBSource

VIEW_TYPES = ["KEYS_ONLY", "NEW_IMAGE", "OLD_IMAGE", "NEW_AND_OLD_IMAGES"]
REGION = "us-east-1"
#: A stream ARN of the right shape whose table moto does not have.
MISSING_STREAM_ARN = (
    "arn:aws:dynamodb:us-east-1:123456789012:table/Missing/stream/2024-01-01T00:00:00.000"
)
#: Setup errors must come at once, not after a silent retry loop.
FAST = 3.0
#: A whole drained run against moto.
RUN_TIMEOUT = 20.0

_serialize = TypeSerializer().serialize


def source(table: str | None = None, **options: Any) -> DynamoDBSource:
    """A source that polls quickly: moto's shard is always open, and an idle poll
    waits up to `idle_interval` before the next."""
    options.setdefault("idle_interval", 0.05)
    options.setdefault("max_polls_per_second", 100.0)
    return sources.dynamodb(table, **options)


async def read_all(src: DynamoDBSource, **run_options: Any) -> tuple[list[fs.Record], fs.RunReport]:
    out = sinks.collect()
    with anyio.fail_after(RUN_TIMEOUT):
        report = await fs.Pipeline(src, name="e2e").to(out).run(drain=True, **run_options)
    return out.records, report


# -- the table side, through boto3 ------------------------------------------------------


class Aws:
    """boto3 clients of the moto server."""

    def __init__(self, endpoint_url: str, region: str = REGION) -> None:
        options: dict[str, Any] = {"endpoint_url": endpoint_url, "region_name": region}
        self.dynamodb: Any = boto3.client("dynamodb", **options)
        self.streams: Any = boto3.client("dynamodbstreams", **options)

    def create_table(self, name: str, view_type: str | None = "NEW_AND_OLD_IMAGES") -> str:
        """A table keyed by pk (S) and sk (N); its stream ARN, or "" without a stream."""
        options: dict[str, Any] = {}
        if view_type is not None:
            options["StreamSpecification"] = {"StreamEnabled": True, "StreamViewType": view_type}
        table = self.dynamodb.create_table(
            TableName=name,
            KeySchema=[
                {"AttributeName": "pk", "KeyType": "HASH"},
                {"AttributeName": "sk", "KeyType": "RANGE"},
            ],
            AttributeDefinitions=[
                {"AttributeName": "pk", "AttributeType": "S"},
                {"AttributeName": "sk", "AttributeType": "N"},
            ],
            BillingMode="PAY_PER_REQUEST",
            **options,
        )["TableDescription"]
        return str(table.get("LatestStreamArn", ""))

    def get_records(self, stream_arn: str) -> list[tuple[str, dict[str, Any]]]:
        """Every record in the stream as GetRecords returns it, with its shard id."""
        records: list[tuple[str, dict[str, Any]]] = []
        shards = self.streams.describe_stream(StreamArn=stream_arn)["StreamDescription"]["Shards"]
        for shard in shards:
            iterator = self.streams.get_shard_iterator(
                StreamArn=stream_arn, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
            )["ShardIterator"]
            while iterator:  # moto never closes a shard: its end is the first empty page
                page = self.streams.get_records(ShardIterator=iterator)
                if not page["Records"]:
                    break
                records.extend((shard["ShardId"], record) for record in page["Records"])
                iterator = page.get("NextShardIterator")
        return records


@pytest.fixture
def aws(moto_url: str) -> Aws:
    return Aws(moto_url)


class Change(msgspec.Struct, frozen=True):
    """A stream record as the writer expects it: event, keys, both full images."""

    event_name: str
    keys: dict[str, Any]
    new_image: dict[str, Any] | None
    old_image: dict[str, Any] | None

    def as_seen(self, view_type: str) -> tuple[str, dict[str, Any], Any, Any]:
        """What a stream of `view_type` holds of this change."""
        new = self.new_image if view_type in ("NEW_IMAGE", "NEW_AND_OLD_IMAGES") else None
        old = self.old_image if view_type in ("OLD_IMAGE", "NEW_AND_OLD_IMAGES") else None
        return (self.event_name, self.keys, new, old)


class Writer:
    """Writes to a table through every write API and keeps a model of the table, from
    which the changes the stream must show follow."""

    def __init__(self, aws: Aws, table: str) -> None:
        self.client = aws.dynamodb
        self.table = table
        self.items: dict[tuple[str, int], dict[str, Any]] = {}
        self.changes: list[Change] = []

    @staticmethod
    def _key(key: dict[str, Any]) -> tuple[str, int]:
        return (key["pk"], key["sk"])

    @staticmethod
    def _wire(item: dict[str, Any]) -> dict[str, Any]:
        return {name: _serialize(value) for name, value in item.items()}

    def _record(self, key: dict[str, Any], after: dict[str, Any] | None) -> None:
        keys = {"pk": key["pk"], "sk": key["sk"]}
        before = self.items.get(self._key(key))
        if before is None and after is None:
            return  # deleting a missing item writes no record
        if after is None:
            del self.items[self._key(key)]
            self.changes.append(Change("REMOVE", keys, None, before))
        else:
            self.items[self._key(key)] = after
            event = "INSERT" if before is None else "MODIFY"
            self.changes.append(Change(event, keys, after, before))

    def _update(self, key: dict[str, Any], values: dict[str, Any]) -> None:
        before = self.items.get(self._key(key))
        if before is not None:
            self._record(key, {**before, **values})
            return
        # moto quirk: an update that creates the item writes two INSERTs, the first of
        # the bare key, the second of the item (DynamoDB writes one INSERT).
        keys = {"pk": key["pk"], "sk": key["sk"]}
        after = {**keys, **values}
        self.items[self._key(key)] = after
        self.changes.append(Change("INSERT", keys, dict(keys), None))
        self.changes.append(Change("INSERT", keys, after, None))

    def put(self, item: dict[str, Any]) -> None:
        self.client.put_item(TableName=self.table, Item=self._wire(item))
        self._record(item, item)

    def update(self, key: dict[str, Any], values: dict[str, Any]) -> None:
        self.client.update_item(TableName=self.table, **self._update_params(key, values))
        self._update(key, values)

    def delete(self, key: dict[str, Any]) -> None:
        self.client.delete_item(TableName=self.table, Key=self._wire(key))
        self._record(key, None)

    def batch(self, puts: list[dict[str, Any]], deletes: list[dict[str, Any]]) -> None:
        requests = [{"PutRequest": {"Item": self._wire(item)}} for item in puts]
        requests += [{"DeleteRequest": {"Key": self._wire(key)}} for key in deletes]
        self.client.batch_write_item(RequestItems={self.table: requests})
        for item in puts:
            self._record(item, item)
        for key in deletes:
            self._record(key, None)

    def transact(
        self, put: dict[str, Any], update: tuple[dict[str, Any], dict[str, Any]], delete: Any
    ) -> None:
        self.client.transact_write_items(
            TransactItems=[
                {"Put": {"TableName": self.table, "Item": self._wire(put)}},
                {"Update": {"TableName": self.table, **self._update_params(*update)}},
                {"Delete": {"TableName": self.table, "Key": self._wire(delete)}},
            ]
        )
        self._record(put, put)
        self._update(*update)
        self._record(delete, None)

    def _update_params(self, key: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
        names = {f"#a{i}": name for i, name in enumerate(values)}
        return {
            "Key": self._wire(key),
            "UpdateExpression": "SET " + ", ".join(f"{n} = :{n[1:]}" for n in names),
            "ExpressionAttributeNames": names,
            "ExpressionAttributeValues": {
                f":{n[1:]}": _serialize(values[name]) for n, name in names.items()
            },
        }


def user(n: int, **values: Any) -> dict[str, Any]:
    return {"pk": f"user#{n}", "sk": 0, **values}


ALICE = user(
    1,
    name="Alice",
    score=Decimal("1.5"),
    visits=3,
    big=Decimal("12345678901234567890123456789012345678"),
    tags={"admin", "beta"},
    lucky={7, Decimal("2.5")},
    avatar=b"\x89PNG\x00\xff",
    tokens={b"\x00", b"\x01\x02"},
    active=True,
    nothing=None,
    profile={"langs": ["en", "fr"], "age": 41, "address": {"zip": "10115"}},
)


def write_every_way(writer: Writer) -> None:
    """Every write API, each kind of change, and the cases that write no record."""
    writer.put(ALICE)  # INSERT
    writer.put({"pk": "team#1", "sk": 1, "name": "Blue"})  # INSERT
    writer.put({**ALICE, "name": "Alice B."})  # an overwrite: MODIFY
    writer.update(user(1), {"visits": 4, "last_seen": Decimal("1700000000.25")})  # MODIFY
    writer.update(user(2), {"name": "Bob"})  # creates the item: two INSERTs on moto
    writer.delete(user(1))  # REMOVE
    writer.delete(user(404))  # a missing item: no record
    writer.batch(
        puts=[user(3, name="Carol", visits=1), user(2, name="Bob", visits=9)],  # INSERT, MODIFY
        deletes=[{"pk": "team#1", "sk": 1}],  # REMOVE
    )
    writer.transact(
        put=user(4, name="Dan"),  # INSERT
        update=(user(3), {"visits": 2}),  # MODIFY
        delete=user(2),  # REMOVE
    )


class TestEveryViewType:
    @pytest.mark.parametrize("view_type", VIEW_TYPES)
    async def test_delivers_what_the_stream_holds_in_order(
        self, aws: Aws, moto_url: str, view_type: str
    ) -> None:
        stream_arn = aws.create_table("Users", view_type)
        writer = Writer(aws, "Users")
        write_every_way(writer)

        records, report = await read_all(source("Users", endpoint_url=moto_url))

        # What was written, as the view type shows it.
        got = [(r.event_name, r.keys, r.new_image, r.old_image) for r in records]
        assert got == [change.as_seen(view_type) for change in writer.changes]
        assert [r.event_name for r in records] == [
            "INSERT", "INSERT", "MODIFY", "MODIFY", "INSERT", "INSERT", "REMOVE",
            "INSERT", "MODIFY", "REMOVE", "INSERT", "MODIFY", "REMOVE",
        ]  # fmt: skip

        # What GetRecords holds, record for record, in the same order.
        wire = aws.get_records(stream_arn)
        assert len(records) == len(wire)
        for record, (shard_id, raw) in zip(records, wire, strict=True):
            data = raw["dynamodb"]
            assert record.event_id == raw["eventID"]
            assert record.event_name == raw["eventName"]
            assert record.sequence_number == data["SequenceNumber"]
            assert record.shard_id == shard_id
            assert record.keys == image(data["Keys"])
            assert record.new_image == image(data.get("NewImage"))
            assert record.old_image == image(data.get("OldImage"))
            assert record.size_bytes == data["SizeBytes"]
            assert record.stream_view_type == view_type
            assert record.aws_region == raw["awsRegion"] == "us-east-1"
            assert record.event_source == "aws:dynamodb"
            assert not record.is_ttl_delete
            created = record.approximate_creation_time
            assert created is not None
            assert created.tzinfo is UTC
            assert abs(created - data["ApproximateCreationDateTime"]) < timedelta(milliseconds=1)
            assert abs(created - datetime.now(UTC)) < timedelta(minutes=5)
        sequence = [int(r.sequence_number) for r in records]
        assert sequence == sorted(sequence)
        assert len(set(sequence)) == len(sequence)

        (shard,) = report.shards.values()  # moto: one shard, never closed
        assert shard.read == shard.delivered == len(records)
        assert shard.checkpoint == records[-1].sequence_number
        assert report.stream == stream_arn

    @pytest.mark.parametrize("view_type", ["NEW_IMAGE", "NEW_AND_OLD_IMAGES"])
    async def test_values_decode_to_python_types(
        self, aws: Aws, moto_url: str, view_type: str
    ) -> None:
        aws.create_table("Users", view_type)
        Writer(aws, "Users").put(ALICE)

        (record,), _ = await read_all(source("Users", endpoint_url=moto_url))

        item = record.new_image
        assert item is not None
        assert item == ALICE
        assert record.keys == {"pk": "user#1", "sk": 0}
        assert type(record.keys["sk"]) is int
        assert type(item["visits"]) is int
        assert type(item["score"]) is Decimal
        assert item["big"] == Decimal("12345678901234567890123456789012345678")  # 38 digits
        assert type(item["big"]) is int
        assert isinstance(item["tags"], set | frozenset)
        assert item["lucky"] == {7, Decimal("2.5")}
        assert {type(v) for v in item["lucky"]} == {int, Decimal}
        assert type(item["avatar"]) is bytes
        assert item["tokens"] == {b"\x00", b"\x01\x02"}
        assert item["active"] is True
        assert item["nothing"] is None
        assert item["profile"]["address"] == {"zip": "10115"}


class TestCheckpoints:
    async def test_a_restart_with_sqlite_resumes_after_the_last_record(
        self, aws: Aws, moto_url: str, tmp_path: Path
    ) -> None:
        aws.create_table("Users")
        writer = Writer(aws, "Users")
        endpoint = moto_url
        state = tmp_path / "state.db"
        for n in range(3):
            writer.put(user(n, visits=n))

        first, report = await read_all(
            source("Users", endpoint_url=endpoint), checkpoints=checkpoints.sqlite(state)
        )
        assert [r.keys["pk"] for r in first] == ["user#0", "user#1", "user#2"]
        assert report.stop_reason == "drained"

        writer.update(user(1), {"visits": 10})
        writer.delete(user(2))

        # A new process: new source, new store object on the same file.
        second, report = await read_all(
            source("Users", endpoint_url=endpoint), checkpoints=checkpoints.sqlite(state)
        )
        assert [(r.event_name, r.keys["pk"]) for r in second] == [
            ("MODIFY", "user#1"),
            ("REMOVE", "user#2"),
        ]
        assert int(second[0].sequence_number) > int(first[-1].sequence_number)
        (shard,) = report.shards.values()
        assert shard.checkpoint == second[-1].sequence_number

        third, report = await read_all(
            source("Users", endpoint_url=endpoint), checkpoints=checkpoints.sqlite(state)
        )
        assert third == []
        assert report.read == 0


class TestDrain:
    async def test_returns_on_a_busy_table_with_everything_present_at_its_start(
        self, aws: Aws, moto_url: str
    ) -> None:
        """A writer adds an item every 3 ms; the drain processes the records there when
        it started, in order, and leaves the rest (docs/running.md, "Where a drain
        stops")."""
        aws.create_table("Users")
        stop = threading.Event()
        written: list[int] = []

        def write() -> None:
            client = Aws(moto_url).dynamodb
            n = 0
            while not stop.wait(0.003):
                client.put_item(
                    TableName="Users", Item={"pk": {"S": f"user#{n}"}, "sk": {"N": "0"}}
                )
                written.append(n)
                n += 1

        async with anyio.create_task_group() as tg:
            tg.start_soon(functools.partial(anyio.to_thread.run_sync, write))
            try:
                await wait_until(lambda: len(written) >= 50)
                present = len(written)
                got, report = await read_all(source("Users", endpoint_url=moto_url))
                await wait_until(lambda: len(written) > len(got))
            finally:
                stop.set()
        keys = [r.keys["pk"] for r in got]
        assert keys == [f"user#{n}" for n in range(len(keys))]  # in order, from the first
        assert len(keys) >= present
        assert report.started is not None
        assert all((r.approximate_creation_time or report.started) <= report.started for r in got)
        assert report.stop_reason == "drained"


class TestMotoQuirks:
    """What moto does that DynamoDB does not, read through the pipeline: the other
    tests rely on these, and flowstream must cope with them."""

    async def test_a_write_that_changes_nothing_is_still_a_modify(
        self, aws: Aws, moto_url: str
    ) -> None:
        aws.create_table("Users")
        writer = Writer(aws, "Users")
        writer.put(user(1, visits=1))
        writer.put(user(1, visits=1))  # DynamoDB writes no record for these two
        aws.dynamodb.update_item(
            TableName="Users",
            Key=Writer._wire(user(1)),
            UpdateExpression="SET visits = :v",
            ExpressionAttributeValues={":v": {"N": "1"}},
        )
        records, _ = await read_all(source("Users", endpoint_url=moto_url))
        assert [r.event_name for r in records] == ["INSERT", "MODIFY", "MODIFY"]
        assert all(r.new_image == r.old_image for r in records[1:])

    async def test_aws_region_is_always_us_east_1(self, moto_url: str) -> None:
        aws = Aws(moto_url, region="eu-west-1")
        stream_arn = aws.create_table("Users")
        Writer(aws, "Users").put(user(1))
        records, report = await read_all(source("Users", endpoint_url=moto_url, region="eu-west-1"))
        assert ":eu-west-1:" in stream_arn
        assert report.stream == stream_arn
        assert [r.aws_region for r in records] == ["us-east-1"]

    async def test_every_stream_has_the_same_shard_id_and_checkpoints_do_not_mix(
        self, aws: Aws, moto_url: str, tmp_path: Path
    ) -> None:
        """moto names the one shard of every stream alike and starts every stream at the
        same sequence number: checkpoints must be kept per stream, not per shard id."""
        aws.create_table("First")
        aws.create_table("Second")
        for n in range(3):
            Writer(aws, "First").put(user(n))
        for n in range(2):
            Writer(aws, "Second").put(user(n))
        state = tmp_path / "state.db"
        first, first_report = await read_all(
            source("First", endpoint_url=moto_url), checkpoints=checkpoints.sqlite(state)
        )
        second, second_report = await read_all(
            source("Second", endpoint_url=moto_url), checkpoints=checkpoints.sqlite(state)
        )
        assert first_report.shards.keys() == second_report.shards.keys()
        assert first[0].sequence_number == second[0].sequence_number
        assert len(first) == 3
        assert len(second) == 2


@pytest.fixture
def no_aws_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Empty credential and config files and no profile or metadata service: only what
    the test puts in the environment is configured."""
    empty = tmp_path / "empty"
    empty.write_text("")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(empty))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(empty))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    for name in (
        "AWS_PROFILE",
        "AWS_DEFAULT_PROFILE",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_ENDPOINT_URL",
        "AWS_ENDPOINT_URL_DYNAMODB",
        "AWS_ENDPOINT_URL_DYNAMODB_STREAMS",
        "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS",
    ):
        monkeypatch.delenv(name, raising=False)


async def run_error(src: DynamoDBSource) -> FlowstreamError:
    """The one error `run()` raises, quickly."""
    with anyio.fail_after(FAST), pytest.raises(FlowstreamError) as caught:
        await fs.Pipeline(src, name="e2e").to(sinks.collect()).run(drain=True)
    assert not isinstance(caught.value, BaseExceptionGroup)
    return caught.value


class TestClearErrors:
    async def test_a_table_without_a_stream(self, aws: Aws, moto_url: str) -> None:
        aws.create_table("Plain", view_type=None)
        error = await run_error(source("Plain", endpoint_url=moto_url))
        assert type(error) is SourceError
        assert "'Plain' has no enabled stream" in str(error)
        assert "StreamEnabled" in str(error)

    @pytest.mark.parametrize("region", [None, "eu-west-1"])
    async def test_an_unknown_table_names_the_table_and_region(
        self, moto_url: str, region: str | None
    ) -> None:
        error = await run_error(source("Nope", endpoint_url=moto_url, region=region))
        assert type(error) is SourceError
        message = str(error)
        assert f"table 'Nope' does not exist in {region or REGION} at {moto_url}" in message
        assert "check the table name, the region" in message

    async def test_a_table_in_another_region_is_not_found(self, aws: Aws, moto_url: str) -> None:
        aws.create_table("Users")
        error = await run_error(source("Users", endpoint_url=moto_url, region="eu-west-1"))
        assert "does not exist in eu-west-1" in str(error)

    @pytest.mark.parametrize(
        "arn",
        [
            "Users",
            "arn:aws:dynamodb:us-east-1:123456789012:table/Users",
            "arn:aws:kinesis:us-east-1:123456789012:stream/Users",
        ],
    )
    def test_a_malformed_stream_arn_fails_when_the_source_is_built(self, arn: str) -> None:
        with pytest.raises(SourceError) as caught:
            sources.dynamodb(stream_arn=arn)
        assert f"stream_arn={arn!r} is not a DynamoDB stream ARN" in str(caught.value)
        assert "pass table= instead" in str(caught.value)

    async def test_a_stream_arn_that_does_not_exist(self, moto_url: str) -> None:
        error = await run_error(source(stream_arn=MISSING_STREAM_ARN, endpoint_url=moto_url))
        assert type(error) is StreamNotFoundError
        assert str(error).startswith(f"stream {MISSING_STREAM_ARN} does not exist")
        assert "point the source at the table's current stream" in str(error)

    @pytest.mark.parametrize("by", ["table", "stream_arn"])
    async def test_an_unreachable_endpoint_fails_at_once(self, by: str) -> None:
        endpoint = f"http://127.0.0.1:{closed_port()}"
        target: dict[str, Any] = (
            {"table": "Users"} if by == "table" else {"stream_arn": MISSING_STREAM_ARN}
        )
        error = await run_error(source(**target, endpoint_url=endpoint))
        assert type(error) is SourceError
        message = str(error)
        service = "DynamoDB" if by == "table" else "DynamoDB Streams"
        assert message.startswith(f"cannot reach {service} at {endpoint}:")
        assert "AWS_ENDPOINT_URL" in message
        assert "endpoint_url=" in message

    async def test_an_unreachable_endpoint_from_the_environment(
        self, no_aws_files: None, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        port = closed_port()
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
        error = await run_error(source("Users"))
        assert type(error) is SourceError
        assert str(error).startswith("cannot reach DynamoDB")
        assert f"127.0.0.1:{port}" in str(error)
        assert "AWS_ENDPOINT_URL" in str(error)

    @pytest.mark.parametrize("by", ["table", "stream_arn"])
    async def test_missing_credentials(
        self, moto_url: str, no_aws_files: None, monkeypatch: pytest.MonkeyPatch, by: str
    ) -> None:
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
            monkeypatch.delenv(name, raising=False)
        target: dict[str, Any] = (
            {"table": "Users"} if by == "table" else {"stream_arn": MISSING_STREAM_ARN}
        )
        error = await run_error(source(**target, endpoint_url=moto_url))
        assert type(error) is SourceError
        message = str(error)
        assert message.startswith("no usable AWS credentials for DynamoDB")
        assert "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY" in message

    async def test_missing_region(
        self, moto_url: str, no_aws_files: None, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
        monkeypatch.delenv("AWS_REGION", raising=False)
        error = await run_error(source("Users", endpoint_url=moto_url))
        assert type(error) is SourceError
        assert str(error) == (
            "no AWS region for DynamoDB; set AWS_DEFAULT_REGION (or AWS_REGION), or pass region="
        )

    async def test_a_stream_arn_brings_its_own_region(
        self, aws: Aws, moto_url: str, no_aws_files: None, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        stream_arn = aws.create_table("Users")
        Writer(aws, "Users").put(user(1))
        monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
        monkeypatch.delenv("AWS_REGION", raising=False)
        records, _ = await read_all(source(stream_arn=stream_arn, endpoint_url=moto_url))
        assert [r.keys["pk"] for r in records] == ["user#1"]


class TestEndpointFromTheEnvironment:
    async def test_aws_endpoint_url(
        self, aws: Aws, moto_url: str, no_aws_files: None, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        aws.create_table("Users")
        Writer(aws, "Users").put(user(1))
        monkeypatch.setenv("AWS_ENDPOINT_URL", moto_url)
        records, _ = await read_all(source("Users"))
        assert [r.keys["pk"] for r in records] == ["user#1"]

    async def test_the_service_variables_win_over_aws_endpoint_url(
        self, aws: Aws, moto_url: str, no_aws_files: None, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        aws.create_table("Users")
        Writer(aws, "Users").put(user(1))
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{closed_port()}")
        monkeypatch.setenv("AWS_ENDPOINT_URL_DYNAMODB", moto_url)
        monkeypatch.setenv("AWS_ENDPOINT_URL_DYNAMODB_STREAMS", moto_url)
        records, _ = await read_all(source("Users"))
        assert [r.keys["pk"] for r in records] == ["user#1"]

    async def test_aws_endpoint_url_dynamodb_streams_with_a_stream_arn(
        self, aws: Aws, moto_url: str, no_aws_files: None, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        stream_arn = aws.create_table("Users")
        Writer(aws, "Users").put(user(1))
        monkeypatch.setenv("AWS_ENDPOINT_URL_DYNAMODB_STREAMS", moto_url)
        records, _ = await read_all(source(stream_arn=stream_arn))
        assert [r.keys["pk"] for r in records] == ["user#1"]
