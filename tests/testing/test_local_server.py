"""Tests of `flowstream.testing.LocalStreamsServer`, through the real aiobotocore client
(every answer goes through botocore's parser), and of the MemoryStream parts it serves:
trimming, the rollover and removed shards."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import anyio
import msgspec
import pytest
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import BotoCoreError, ClientError
from support import wait_until

from flowstream.errors import SourceError, TrimmedDataError
from flowstream.record import Record, decode_records
from flowstream.sources import Position
from flowstream.sources.base import TRIM_HORIZON, Shard
from flowstream.testing import LocalStreamsServer, MemoryStream

TIMEOUT = 10.0
SESSION = get_session()  # one session: it loads the service models once
NO_RETRIES = AioConfig(retries={"total_max_attempts": 1})
USERS_STREAM_ARN = MemoryStream(table="Users").stream_arn
OTHER_STREAM_ARN = MemoryStream(table="Other").stream_arn


def put_n(stream: MemoryStream, shard_id: str, n: int, *, start: int = 0) -> list[Record]:
    return [
        stream.put(shard_id, "INSERT", {"pk": f"k{i}"}, {"pk": f"k{i}", "n": i})
        for i in range(start, start + n)
    ]


def create_client(
    server: LocalStreamsServer, service: str = "dynamodbstreams", **options: Any
) -> Any:
    return SESSION.create_client(
        service,
        endpoint_url=server.endpoint_url,
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
        **options,
    )


@asynccontextmanager
async def serve(
    stream: MemoryStream, **options: Any
) -> AsyncIterator[tuple[LocalStreamsServer, Any]]:
    """A running server and a client of it that does not retry (errors reach the test)."""
    async with (
        LocalStreamsServer(stream, **options) as server,
        create_client(server, config=NO_RETRIES) as client,
    ):
        yield server, client


@pytest.fixture
def stream() -> MemoryStream:
    return MemoryStream(table="Users")


@pytest.fixture
async def served(stream: MemoryStream) -> AsyncIterator[tuple[LocalStreamsServer, Any]]:
    async with serve(stream) as pair:
        yield pair


@pytest.fixture
def server(served: tuple[LocalStreamsServer, Any]) -> LocalStreamsServer:
    return served[0]


@pytest.fixture
def client(served: tuple[LocalStreamsServer, Any]) -> Any:
    return served[1]


async def error_of(call: Any) -> tuple[str, int]:
    """The error code and HTTP status botocore reports for an awaited call."""
    with pytest.raises(ClientError) as info:
        await call
    response = info.value.response
    return response["Error"]["Code"], response["ResponseMetadata"]["HTTPStatusCode"]


async def iterator(
    client: Any, server: LocalStreamsServer, shard_id: str, kind: str = "TRIM_HORIZON", **more: Any
) -> str:
    response = await client.get_shard_iterator(
        StreamArn=server.stream_arn, ShardId=shard_id, ShardIteratorType=kind, **more
    )
    return response["ShardIterator"]  # type: ignore[no-any-return]


async def read_pages(client: Any, shard_iterator: str, **options: Any) -> list[dict[str, Any]]:
    """Every GetRecords response up to the one without a NextShardIterator."""
    pages: list[dict[str, Any]] = []
    next_iterator: str | None = shard_iterator
    with anyio.fail_after(TIMEOUT):
        while next_iterator is not None:
            page = await client.get_records(ShardIterator=next_iterator, **options)
            pages.append(page)
            next_iterator = page.get("NextShardIterator")
    return pages


def sequence_numbers(pages: list[dict[str, Any]]) -> list[str]:
    return [r["dynamodb"]["SequenceNumber"] for page in pages for r in page["Records"]]


def wire_size(record: Record) -> int:
    return len(msgspec.json.encode(msgspec.structs.replace(record, shard_id="")))


class TestLifecycle:
    async def test_serves_on_a_free_local_port(self, stream: MemoryStream) -> None:
        async with LocalStreamsServer(stream) as server:
            host, _, port = server.endpoint_url.removeprefix("http://").partition(":")
            assert host == "127.0.0.1"
            assert int(port) > 0
            assert server.stream_arn == stream.stream_arn

    async def test_endpoint_url_before_start_says_how_to_start(self, stream: MemoryStream) -> None:
        with pytest.raises(RuntimeError, match=r"async with LocalStreamsServer"):
            _ = LocalStreamsServer(stream).endpoint_url

    async def test_cannot_start_twice(self, server: LocalStreamsServer) -> None:
        with pytest.raises(RuntimeError, match=r"already running"):
            await server.__aenter__()

    async def test_stops_listening_on_exit(self, stream: MemoryStream) -> None:
        async with LocalStreamsServer(stream) as server:
            port = int(server.endpoint_url.rpartition(":")[2])
        with pytest.raises(OSError, match=r"connect"):
            await anyio.connect_tcp("127.0.0.1", port)

    async def test_exit_cuts_off_calls_in_flight(self, stream: MemoryStream) -> None:
        server = LocalStreamsServer(stream)
        await server.__aenter__()
        failures: list[Exception] = []
        async with create_client(server, config=NO_RETRIES) as client:
            server.inject("latency", delay=60.0)

            async def call() -> None:
                try:
                    await client.list_streams()
                except BotoCoreError as error:
                    failures.append(error)

            with anyio.fail_after(TIMEOUT):
                async with anyio.create_task_group() as tasks:
                    tasks.start_soon(call)
                    await wait_until(lambda: server.calls["ListStreams"] == 1)
                    await server.__aexit__(None, None, None)
        assert len(failures) == 1, failures

    def test_negative_ttl_is_rejected(self, stream: MemoryStream) -> None:
        with pytest.raises(ValueError, match=r"iterator_ttl=-1"):
            LocalStreamsServer(stream, iterator_ttl=-1)

    async def test_unknown_operation(self, server: LocalStreamsServer) -> None:
        async with create_client(server, "dynamodb", config=NO_RETRIES) as dynamodb:
            assert await error_of(dynamodb.list_tables()) == ("UnknownOperationException", 400)
        assert server.calls["ListTables"] == 1


class TestListStreams:
    async def test_lists_the_stream(self, server: LocalStreamsServer, client: Any) -> None:
        response = await client.list_streams()
        assert response["Streams"] == [
            {
                "StreamArn": server.stream_arn,
                "TableName": "Users",
                "StreamLabel": "2026-01-01T00:00:00.000",
            }
        ]
        assert "LastEvaluatedStreamArn" not in response
        assert server.calls["ListStreams"] == 1

    @pytest.mark.parametrize(
        ("options", "listed"),
        [
            ({"TableName": "Users"}, True),
            ({"TableName": "Orders"}, False),
            ({"Limit": 1}, True),
            (
                {"ExclusiveStartStreamArn": USERS_STREAM_ARN},
                False,
            ),
        ],
        ids=["own-table", "other-table", "limit", "after-the-stream"],
    )
    async def test_options(self, client: Any, options: dict[str, Any], listed: bool) -> None:
        response = await client.list_streams(**options)
        assert len(response["Streams"]) == int(listed)

    async def test_limit_over_100_is_a_validation_error(self, client: Any) -> None:
        assert await error_of(client.list_streams(Limit=101)) == ("ValidationException", 400)


class TestDescribeStream:
    async def test_shapes(
        self, stream: MemoryStream, server: LocalStreamsServer, client: Any
    ) -> None:
        parent = stream.add_shard()
        put_n(stream, parent, 3)
        left, right = stream.split(parent)
        first = put_n(stream, left, 1)[0]
        response = await client.describe_stream(StreamArn=server.stream_arn)
        description = response["StreamDescription"]
        shards = description.pop("Shards")
        assert description == {
            "StreamArn": server.stream_arn,
            "StreamLabel": "2026-01-01T00:00:00.000",
            "StreamStatus": "ENABLED",
            "StreamViewType": "NEW_AND_OLD_IMAGES",
            "CreationRequestDateTime": datetime(2026, 1, 1, tzinfo=UTC),
            "TableName": "Users",
            "KeySchema": [{"AttributeName": "pk", "KeyType": "HASH"}],
        }
        records = stream.records(parent)
        assert shards[0] == {
            "ShardId": parent,
            "SequenceNumberRange": {
                "StartingSequenceNumber": records[0].sequence_number,
                "EndingSequenceNumber": records[-1].sequence_number,
            },
        }
        assert [s["ShardId"] for s in shards] == [parent, left, right]
        for child in shards[1:]:
            assert child["ParentShardId"] == parent
            assert "EndingSequenceNumber" not in child["SequenceNumberRange"]
            starting = int(child["SequenceNumberRange"]["StartingSequenceNumber"])
            assert int(records[-1].sequence_number) < starting <= int(first.sequence_number)

    async def test_empty_closed_shard_has_a_range(
        self, stream: MemoryStream, server: LocalStreamsServer, client: Any
    ) -> None:
        shard_id = stream.add_shard()
        stream.close(shard_id)
        response = await client.describe_stream(StreamArn=server.stream_arn)
        (shard,) = response["StreamDescription"]["Shards"]
        numbers = shard["SequenceNumberRange"]
        assert len(numbers["StartingSequenceNumber"]) >= 21
        assert numbers["EndingSequenceNumber"] == numbers["StartingSequenceNumber"]

    async def test_pages_through_250_shards(
        self, stream: MemoryStream, server: LocalStreamsServer, client: Any
    ) -> None:
        ids = [stream.add_shard() for _ in range(250)]
        seen: list[str] = []
        pages = 0
        options: dict[str, Any] = {}
        while True:
            description = (await client.describe_stream(StreamArn=server.stream_arn, **options))[
                "StreamDescription"
            ]
            pages += 1
            seen += [s["ShardId"] for s in description["Shards"]]
            if "LastEvaluatedShardId" not in description:
                break
            assert description["LastEvaluatedShardId"] == seen[-1]
            options = {"ExclusiveStartShardId": description["LastEvaluatedShardId"]}
        assert seen == ids
        assert pages == 3  # 100, 100, 50: the default page is the maximum, 100

    async def test_limit(
        self, stream: MemoryStream, server: LocalStreamsServer, client: Any
    ) -> None:
        ids = [stream.add_shard() for _ in range(5)]
        description = (await client.describe_stream(StreamArn=server.stream_arn, Limit=2))[
            "StreamDescription"
        ]
        assert [s["ShardId"] for s in description["Shards"]] == ids[:2]
        assert description["LastEvaluatedShardId"] == ids[1]
        description = (
            await client.describe_stream(
                StreamArn=server.stream_arn, Limit=3, ExclusiveStartShardId=ids[1]
            )
        )["StreamDescription"]
        assert [s["ShardId"] for s in description["Shards"]] == ids[2:]
        assert "LastEvaluatedShardId" not in description

    async def test_limit_over_100_is_a_validation_error(
        self, server: LocalStreamsServer, client: Any
    ) -> None:
        call = client.describe_stream(StreamArn=server.stream_arn, Limit=101)
        assert await error_of(call) == ("ValidationException", 400)

    async def test_unknown_exclusive_start_is_a_validation_error(
        self, server: LocalStreamsServer, client: Any
    ) -> None:
        call = client.describe_stream(
            StreamArn=server.stream_arn,
            ExclusiveStartShardId="shardId-00000000000000000000-ffffffff",
        )
        assert await error_of(call) == ("ValidationException", 400)

    async def test_child_shards_filter(
        self, stream: MemoryStream, server: LocalStreamsServer, client: Any
    ) -> None:
        a, b = stream.add_shard(), stream.add_shard()
        a1, a2 = stream.split(a)
        children = stream.rollover()
        assert set(children) == {a1, a2, b}

        async def children_of(parent: str) -> list[str]:
            response = await client.describe_stream(
                StreamArn=server.stream_arn,
                ShardFilter={"Type": "CHILD_SHARDS", "ShardId": parent},
            )
            return [s["ShardId"] for s in response["StreamDescription"]["Shards"]]

        assert await children_of(a) == [a1, a2]
        assert await children_of(a1) == [children[a1]]
        assert await children_of(b) == [children[b]]
        assert await children_of(children[b]) == []

    async def test_unknown_stream(self, client: Any) -> None:
        call = client.describe_stream(StreamArn=OTHER_STREAM_ARN)
        assert await error_of(call) == ("ResourceNotFoundException", 400)

    async def test_removed_shards_are_not_listed(
        self, stream: MemoryStream, server: LocalStreamsServer, client: Any
    ) -> None:
        old = stream.add_shard()
        put_n(stream, old, 3)
        (new,) = stream.rollover().values()
        stream.trim(old, 3)  # trimmed, closed, but still listed until it expires as a whole
        response = await client.describe_stream(StreamArn=server.stream_arn)
        assert [s["ShardId"] for s in response["StreamDescription"]["Shards"]] == [old, new]
        stream.remove_shard(old)
        response = await client.describe_stream(StreamArn=server.stream_arn)
        (shard,) = response["StreamDescription"]["Shards"]
        assert shard["ShardId"] == new
        assert shard["ParentShardId"] == old  # as in DynamoDB, the parent is gone


class TestGetShardIterator:
    @pytest.mark.parametrize(
        ("kind", "at", "expected"),
        [
            ("TRIM_HORIZON", None, [0, 1, 2, 3, 4, 5]),
            ("LATEST", None, [5]),
            ("AT_SEQUENCE_NUMBER", 2, [2, 3, 4, 5]),
            ("AFTER_SEQUENCE_NUMBER", 2, [3, 4, 5]),
        ],
    )
    async def test_kinds(
        self,
        stream: MemoryStream,
        server: LocalStreamsServer,
        client: Any,
        kind: str,
        at: int | None,
        expected: list[int],
    ) -> None:
        shard_id = stream.add_shard()
        records = put_n(stream, shard_id, 5)
        more = {} if at is None else {"SequenceNumber": records[at].sequence_number}
        shard_iterator = await iterator(client, server, shard_id, kind, **more)
        assert 1 <= len(shard_iterator) <= 2048
        records += put_n(stream, shard_id, 1, start=5)
        stream.close(shard_id)
        pages = await read_pages(client, shard_iterator)
        assert sequence_numbers(pages) == [records[i].sequence_number for i in expected]
        assert server.calls["GetShardIterator", shard_id] == 1

    async def test_at_timestamp(
        self, stream: MemoryStream, server: LocalStreamsServer, client: Any
    ) -> None:
        shard_id = stream.add_shard()
        hour_ago = datetime.now(UTC) - timedelta(hours=1)
        # a second apart (puts in one second share their time, as in DynamoDB)
        records = [
            stream.put(
                shard_id, "INSERT", {"pk": str(i)}, created_at=hour_ago + timedelta(seconds=i)
            )
            for i in range(5)
        ]
        stream.close(shard_id)
        when = records[2].approximate_creation_time
        assert when is not None

        # Sent as it is on the wire (epoch seconds): botocore knows Timestamp only from
        # 1.43.114, above the lowest version flowstream supports.
        async def at_timestamp(at: datetime) -> tuple[int, dict[str, Any]]:
            params = {
                "StreamArn": server.stream_arn,
                "ShardId": shard_id,
                "ShardIteratorType": "AT_TIMESTAMP",
                "Timestamp": at.timestamp(),
            }
            headers = {
                "X-Amz-Target": "DynamoDBStreams_20120810.GetShardIterator",
                "Content-Type": "application/x-amz-json-1.0",
            }
            async with (
                aiohttp.ClientSession() as http,
                http.post(server.endpoint_url, json=params, headers=headers) as response,
            ):
                return response.status, json.loads(await response.read())

        status, body = await at_timestamp(when)
        assert status == 200
        pages = await read_pages(client, body["ShardIterator"])
        assert sequence_numbers(pages) == [r.sequence_number for r in records[2:]]
        status, body = await at_timestamp(datetime.now(UTC) + timedelta(hours=1))
        assert (status, body["__type"].rpartition("#")[2]) == (400, "ValidationException")

    async def test_sequence_number_is_required_for_at(
        self, stream: MemoryStream, server: LocalStreamsServer, client: Any
    ) -> None:
        shard_id = stream.add_shard()
        call = iterator(client, server, shard_id, "AT_SEQUENCE_NUMBER")
        assert await error_of(call) == ("ValidationException", 400)

    async def test_unknown_shard(self, server: LocalStreamsServer, client: Any) -> None:
        call = iterator(client, server, "shardId-00000000000000000000-ffffffff")
        assert await error_of(call) == ("ResourceNotFoundException", 400)

    async def test_unknown_stream(self, stream: MemoryStream, client: Any) -> None:
        shard_id = stream.add_shard()
        call = client.get_shard_iterator(
            StreamArn=OTHER_STREAM_ARN,
            ShardId=shard_id,
            ShardIteratorType="LATEST",
        )
        assert await error_of(call) == ("ResourceNotFoundException", 400)

    async def test_trimmed_positions(
        self, stream: MemoryStream, server: LocalStreamsServer, client: Any
    ) -> None:
        shard_id = stream.add_shard()
        records = put_n(stream, shard_id, 6)
        stream.close(shard_id)
        stream.trim(shard_id, 3)
        for kind, record in [
            ("AT_SEQUENCE_NUMBER", records[0]),
            ("AT_SEQUENCE_NUMBER", records[2]),
            ("AFTER_SEQUENCE_NUMBER", records[1]),
        ]:
            call = iterator(client, server, shard_id, kind, SequenceNumber=record.sequence_number)
            assert await error_of(call) == ("TrimmedDataAccessException", 400), (kind, record)
        # Nothing is lost after the last trimmed record, nor from the trim horizon.
        expected = [r.sequence_number for r in records[3:]]
        after_last = await iterator(
            client,
            server,
            shard_id,
            "AFTER_SEQUENCE_NUMBER",
            SequenceNumber=records[2].sequence_number,
        )
        assert sequence_numbers(await read_pages(client, after_last)) == expected
        horizon = await iterator(client, server, shard_id)
        assert sequence_numbers(await read_pages(client, horizon)) == expected


class TestGetRecords:
    async def test_records_parse_through_botocore(
        self, stream: MemoryStream, server: LocalStreamsServer, client: Any
    ) -> None:
        shard_id = stream.add_shard()
        put = [
            stream.put(shard_id, "INSERT", {"pk": "a"}, {"pk": "a", "n": 1, "tags": {"x", "y"}}),
            stream.put(shard_id, "MODIFY", {"pk": "a"}, {"pk": "a", "n": 2.5}, {"pk": "a", "n": 1}),
            stream.put(
                shard_id,
                "REMOVE",
                {"pk": "a"},
                old_image={"pk": "a", "b": b"\x00\xff"},
                ttl_delete=True,
            ),
        ]
        page = await client.get_records(ShardIterator=await iterator(client, server, shard_id))
        first = page["Records"][0]
        assert first["eventName"] == "INSERT"
        assert first["dynamodb"]["Keys"] == {"pk": {"S": "a"}}
        assert first["dynamodb"]["NewImage"]["tags"]["SS"] == ["x", "y"]
        assert first["dynamodb"]["SequenceNumber"] == put[0].sequence_number
        assert first["dynamodb"]["SizeBytes"] == put[0].size_bytes
        assert first["dynamodb"]["ApproximateCreationDateTime"] == put[0].approximate_creation_time
        assert "shardId" not in first  # the service's records do not name their shard
        assert page["Records"][2]["userIdentity"] == {
            "PrincipalId": "dynamodb.amazonaws.com",
            "Type": "Service",
        }
        assert page["Records"][2]["dynamodb"]["OldImage"]["b"] == {"B": b"\x00\xff"}
        got = decode_records(page, shard_id=shard_id)
        assert got == put
        assert [(r.keys, r.new_image, r.old_image) for r in got] == [
            (r.keys, r.new_image, r.old_image) for r in put
        ]
        assert page["NextShardIterator"]

    async def test_reads_a_closed_shard_to_its_end_across_pages(
        self, stream: MemoryStream, server: LocalStreamsServer, client: Any
    ) -> None:
        shard_id = stream.add_shard()
        records = put_n(stream, shard_id, 35)
        stream.close(shard_id)
        pages = await read_pages(client, await iterator(client, server, shard_id), Limit=10)
        assert [len(p["Records"]) for p in pages] == [10, 10, 10, 5]
        assert sequence_numbers(pages) == [r.sequence_number for r in records]
        assert all("NextShardIterator" in p for p in pages[:-1])

    async def test_the_page_that_reaches_the_end_has_no_next_iterator(
        self, stream: MemoryStream, server: LocalStreamsServer, client: Any
    ) -> None:
        shard_id = stream.add_shard()
        put_n(stream, shard_id, 20)
        stream.close(shard_id)
        pages = await read_pages(client, await iterator(client, server, shard_id), Limit=10)
        assert [len(p["Records"]) for p in pages] == [10, 10]

    async def test_open_shard(
        self, stream: MemoryStream, server: LocalStreamsServer, client: Any
    ) -> None:
        shard_id = stream.add_shard()
        page = await client.get_records(ShardIterator=await iterator(client, server, shard_id))
        assert page["Records"] == []
        assert page["NextShardIterator"]
        (record,) = put_n(stream, shard_id, 1)
        page = await client.get_records(ShardIterator=page["NextShardIterator"])
        assert sequence_numbers([page]) == [record.sequence_number]
        stream.close(shard_id)
        page = await client.get_records(ShardIterator=page["NextShardIterator"])
        assert page["Records"] == []
        assert "NextShardIterator" not in page

    async def test_limit_over_1000_is_a_validation_error(
        self, stream: MemoryStream, server: LocalStreamsServer, client: Any
    ) -> None:
        shard_id = stream.add_shard()
        call = client.get_records(
            ShardIterator=await iterator(client, server, shard_id), Limit=1001
        )
        assert await error_of(call) == ("ValidationException", 400)

    async def test_default_limit_is_1000(
        self, stream: MemoryStream, server: LocalStreamsServer, client: Any
    ) -> None:
        shard_id = stream.add_shard()
        put_n(stream, shard_id, 1001)
        page = await client.get_records(ShardIterator=await iterator(client, server, shard_id))
        assert len(page["Records"]) == 1000

    async def test_pages_are_at_most_1_mb(
        self, stream: MemoryStream, server: LocalStreamsServer, client: Any
    ) -> None:
        shard_id = stream.add_shard()
        for i in range(25):  # ~100 KB each, 2.5 MB in all
            stream.put(
                shard_id,
                "INSERT",
                {"pk": f"k{i}"},
                {"pk": f"k{i}", "blob": "x" * (100_000 + i * 1000)},
            )
        stream.close(shard_id)
        records = stream.records(shard_id)
        pages = await read_pages(client, await iterator(client, server, shard_id))
        assert sequence_numbers(pages) == [r.sequence_number for r in records]
        assert len(pages) > 2
        done = 0
        for page in pages:
            count = len(page["Records"])
            size = sum(wire_size(r) + 1 for r in records[done : done + count])
            assert size <= 1024 * 1024
            if done + count < len(records):  # full: the next record would not have fit
                assert size + wire_size(records[done + count]) + 1 > 1024 * 1024
            done += count

    async def test_iterator_at_trimmed_records(
        self, stream: MemoryStream, server: LocalStreamsServer, client: Any
    ) -> None:
        shard_id = stream.add_shard()
        records = put_n(stream, shard_id, 4)
        from_start = await iterator(client, server, shard_id)
        after_two = await iterator(
            client,
            server,
            shard_id,
            "AFTER_SEQUENCE_NUMBER",
            SequenceNumber=records[1].sequence_number,
        )
        stream.trim(shard_id, 2)
        call = client.get_records(ShardIterator=from_start)
        assert await error_of(call) == ("TrimmedDataAccessException", 400)
        page = await client.get_records(ShardIterator=after_two)
        assert sequence_numbers([page]) == [r.sequence_number for r in records[2:]]

    async def test_iterators_expire_after_their_ttl(self, stream: MemoryStream) -> None:
        shard_id = stream.add_shard()
        put_n(stream, shard_id, 1)
        async with serve(stream, iterator_ttl=0.0) as (server, client):
            call = client.get_records(ShardIterator=await iterator(client, server, shard_id))
            assert await error_of(call) == ("ExpiredIteratorException", 400)
        async with serve(stream, iterator_ttl=0.05) as (server, client):
            shard_iterator = await iterator(client, server, shard_id)

            async def code_of_a_read() -> str | None:
                try:
                    await client.get_records(ShardIterator=shard_iterator)
                except ClientError as error:
                    return error.response["Error"]["Code"]  # type: ignore[no-any-return]
                return None

            with anyio.fail_after(TIMEOUT):
                # A live iterator can be used again and again, until it expires.
                while (code := await code_of_a_read()) is None:
                    pass
            assert code == "ExpiredIteratorException"

    async def test_next_iterators_live_on(
        self, stream: MemoryStream, server: LocalStreamsServer, client: Any
    ) -> None:
        shard_id = stream.add_shard()
        records = put_n(stream, shard_id, 50)
        stream.close(shard_id)
        pages = await read_pages(client, await iterator(client, server, shard_id), Limit=1)
        assert sequence_numbers(pages) == [r.sequence_number for r in records]

    @pytest.mark.parametrize(
        "bad",
        [
            "x",
            USERS_STREAM_ARN + "|1|!!",
            USERS_STREAM_ARN + "|1|bm9wZQ==",
        ],
        ids=["not-an-iterator", "not-base64", "bad-payload"],
    )
    async def test_malformed_iterator(self, client: Any, bad: str) -> None:
        assert await error_of(client.get_records(ShardIterator=bad)) == ("ValidationException", 400)

    async def test_iterator_of_another_stream(self, stream: MemoryStream, client: Any) -> None:
        other = MemoryStream(table="Orders")
        shard_id = other.add_shard()
        async with serve(other) as (other_server, other_client):
            foreign = await iterator(other_client, other_server, shard_id)
        assert await error_of(client.get_records(ShardIterator=foreign)) == (
            "ResourceNotFoundException",
            400,
        )

    async def test_removed_shard(
        self, stream: MemoryStream, server: LocalStreamsServer, client: Any
    ) -> None:
        shard_id = stream.add_shard()
        put_n(stream, shard_id, 3)
        stream.close(shard_id)
        from_start = await iterator(client, server, shard_id)
        at_end = await iterator(client, server, shard_id, "LATEST")
        stream.remove_shard(shard_id)
        assert await error_of(client.get_records(ShardIterator=from_start)) == (
            "TrimmedDataAccessException",
            400,
        )
        page = await client.get_records(ShardIterator=at_end)
        assert page["Records"] == []
        assert "NextShardIterator" not in page
        assert await error_of(iterator(client, server, shard_id)) == (
            "ResourceNotFoundException",
            400,
        )


def wire_page(*records: bytes) -> bytes:
    """A GetRecords body of already-encoded records."""
    return b'{"Records":[' + b",".join(records) + b'],"NextShardIterator":"ignored"}'


def wire_record(sequence: int, *, event: str = "MODIFY", pk: str = "a") -> bytes:
    # Spelled as no encoder of ours would (spaces, members out of order): served as is.
    return (
        f'{{ "eventName": "{event}", "eventID": "e{sequence}", "eventVersion": "1.1", '
        f'"eventSource": "aws:dynamodb", "awsRegion": "us-east-1", "dynamodb": {{ '
        f'"SequenceNumber": "{sequence}", "Keys": {{"pk": {{"S": "{pk}"}}}}, '
        f'"NewImage": {{"pk": {{"S": "{pk}"}}, "n": {{"N": "{sequence % 100}"}}}}, '
        f'"ApproximateCreationDateTime": 1764500000, "SizeBytes": 20, '
        f'"StreamViewType": "NEW_AND_OLD_IMAGES" }} }}'
    ).encode()


class TestLoadPages:
    async def test_serves_the_records_as_they_came(
        self, stream: MemoryStream, server: LocalStreamsServer, client: Any
    ) -> None:
        shard_id = stream.add_shard()
        first = 10**20 + 5
        raw = [wire_record(first + n) for n in range(5)]
        assert server.load_pages(shard_id, [wire_page(*raw[:3]), wire_page(*raw[3:])]) == 5
        stream.close(shard_id)
        bodies: list[bytes] = []

        def keep_body(response_dict: dict[str, Any], **_: Any) -> None:
            bodies.append(response_dict["body"])

        client.meta.events.register("before-parse.dynamodb-streams.GetRecords", keep_body)
        pages = await read_pages(client, await iterator(client, server, shard_id), Limit=2)
        assert [len(p["Records"]) for p in pages] == [2, 2, 1]
        assert sequence_numbers(pages) == [str(first + n) for n in range(5)]
        assert pages[0]["Records"][0]["dynamodb"]["NewImage"] == {
            "pk": {"S": "a"},
            "n": {"N": "5"},
        }
        assert bodies[0].startswith(b'{"Records":[' + raw[0] + b"," + raw[1] + b"]")

    async def test_loaded_records_are_the_streams(
        self, stream: MemoryStream, server: LocalStreamsServer, client: Any
    ) -> None:
        shard_id = stream.add_shard()
        server.load_pages(shard_id, [wire_page(wire_record(10**20 + 7, pk="b"))])
        later = stream.put(shard_id, "INSERT", {"pk": "c"})
        (loaded, put) = stream.records(shard_id)
        assert (loaded.shard_id, loaded.sequence_number, loaded.keys) == (
            shard_id,
            str(10**20 + 7),
            {"pk": "b"},
        )
        assert put == later
        assert int(later.sequence_number) > 10**20 + 7  # puts are numbered after them
        after = await iterator(
            client, server, shard_id, "AFTER_SEQUENCE_NUMBER", SequenceNumber=str(10**20 + 7)
        )
        page = await client.get_records(ShardIterator=after)
        assert sequence_numbers([page]) == [later.sequence_number]

    @pytest.mark.parametrize(
        ("sequences", "problem"),
        [
            pytest.param([10**20 + 2, 10**20 + 1], "not above", id="falling"),
            pytest.param([10**20 + 1, 10**20 + 1], "not above", id="repeated"),
            pytest.param([12345], "21 to 40 digits", id="too-short"),
        ],
    )
    def test_sequence_numbers_must_rise(
        self, stream: MemoryStream, server: LocalStreamsServer, sequences: list[int], problem: str
    ) -> None:
        shard_id = stream.add_shard()
        with pytest.raises(SourceError, match=problem):
            server.load_pages(shard_id, [wire_page(*(wire_record(n) for n in sequences))])
        assert stream.records(shard_id) == []  # nothing of a bad load is kept

    def test_a_closed_shard_takes_no_pages(
        self, stream: MemoryStream, server: LocalStreamsServer
    ) -> None:
        shard_id = stream.add_shard()
        stream.close(shard_id)
        with pytest.raises(SourceError, match="closed"):
            server.load_pages(shard_id, [wire_page(wire_record(10**20 + 1))])


class TestFaults:
    @pytest.mark.parametrize(
        ("kind", "operation", "code", "status"),
        [
            ("expired_iterator", "GetRecords", "ExpiredIteratorException", 400),
            ("trimmed", "GetRecords", "TrimmedDataAccessException", 400),
            ("trimmed", "GetShardIterator", "TrimmedDataAccessException", 400),
            ("throttle", "GetRecords", "LimitExceededException", 400),
            ("throttle", "GetShardIterator", "LimitExceededException", 400),
            ("throttle", "DescribeStream", "LimitExceededException", 400),
            ("throttle", "ListStreams", "LimitExceededException", 400),
            ("internal_error", "GetRecords", "InternalServerError", 500),
            ("internal_error", "DescribeStream", "InternalServerError", 500),
        ],
    )
    async def test_kinds(
        self,
        stream: MemoryStream,
        server: LocalStreamsServer,
        client: Any,
        kind: Any,
        operation: Any,
        code: str,
        status: int,
    ) -> None:
        shard_id = stream.add_shard()
        shard_iterator = await iterator(client, server, shard_id)
        calls: dict[str, Callable[[], Awaitable[Any]]] = {
            "GetRecords": lambda: client.get_records(ShardIterator=shard_iterator),
            "GetShardIterator": lambda: iterator(client, server, shard_id),
            "DescribeStream": lambda: client.describe_stream(StreamArn=server.stream_arn),
            "ListStreams": lambda: client.list_streams(),
        }
        server.inject(kind, operation=operation)
        assert await error_of(calls[operation]()) == (code, status)
        await calls[operation]()  # times=1: the next call is answered

    async def test_a_kind_hits_only_its_operations(
        self, stream: MemoryStream, server: LocalStreamsServer, client: Any
    ) -> None:
        shard_id = stream.add_shard()
        server.inject("expired_iterator")
        shard_iterator = await iterator(client, server, shard_id)  # not GetShardIterator's error
        await client.describe_stream(StreamArn=server.stream_arn)
        call = client.get_records(ShardIterator=shard_iterator)
        assert await error_of(call) == ("ExpiredIteratorException", 400)

    async def test_times(
        self, stream: MemoryStream, server: LocalStreamsServer, client: Any
    ) -> None:
        server.inject("throttle", operation="DescribeStream", times=3)
        for _ in range(3):
            call = client.describe_stream(StreamArn=server.stream_arn)
            assert await error_of(call) == ("LimitExceededException", 400)
        await client.describe_stream(StreamArn=server.stream_arn)
        await client.list_streams()  # never hit: another operation
        assert server.calls["DescribeStream"] == 4

    async def test_times_none_until_cleared(self, server: LocalStreamsServer, client: Any) -> None:
        server.inject("internal_error", operation="ListStreams", times=None)
        for _ in range(5):
            assert await error_of(client.list_streams()) == ("InternalServerError", 500)
        server.clear_faults()
        await client.list_streams()

    async def test_shard_targeting(
        self, stream: MemoryStream, server: LocalStreamsServer, client: Any
    ) -> None:
        a, b = stream.add_shard(), stream.add_shard()
        server.inject("trimmed", shard_id=b, times=None)
        server.inject("throttle", operation="GetRecords", shard_id=a)
        iterator_a = await iterator(client, server, a)
        assert await error_of(iterator(client, server, b)) == ("TrimmedDataAccessException", 400)
        assert await error_of(client.get_records(ShardIterator=iterator_a)) == (
            "LimitExceededException",
            400,
        )
        await client.get_records(ShardIterator=iterator_a)
        await client.describe_stream(StreamArn=server.stream_arn)  # not about a shard
        assert server.calls["GetRecords", a] == 2
        assert server.calls["GetShardIterator", b] == 1

    async def test_latency(
        self, stream: MemoryStream, server: LocalStreamsServer, client: Any
    ) -> None:
        slow, fast = stream.add_shard(), stream.add_shard()
        (record,) = put_n(stream, slow, 1)
        slow_iterator = await iterator(client, server, slow)
        fast_iterator = await iterator(client, server, fast)
        server.inject("latency", shard_id=slow, delay=0.3)
        done: list[str] = []
        slow_page: dict[str, Any] = {}

        async def read_slow() -> None:
            slow_page.update(await client.get_records(ShardIterator=slow_iterator))
            done.append("slow")

        started = anyio.current_time()
        with anyio.fail_after(TIMEOUT):
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(read_slow)
                await client.get_records(ShardIterator=fast_iterator)
                done.append("fast")
        assert done == ["fast", "slow"]  # one slow call holds up no other
        assert anyio.current_time() - started >= 0.3
        assert sequence_numbers([slow_page]) == [record.sequence_number]

    async def test_botocore_retries_a_500(self, server: LocalStreamsServer) -> None:
        server.inject("internal_error", operation="ListStreams")
        async with create_client(server) as retrying:
            response = await retrying.list_streams()
        assert len(response["Streams"]) == 1
        assert response["ResponseMetadata"]["RetryAttempts"] == 1
        assert server.calls["ListStreams"] == 2

    @pytest.mark.parametrize(
        ("kind", "options", "match"),
        [
            ("boom", {}, r"unknown fault; use one of expired_iterator"),
            ("throttle", {"operation": "PutItem"}, r"not an operation this server answers"),
            ("expired_iterator", {"operation": "DescribeStream"}, r"only hits GetRecords"),
            ("trimmed", {"operation": "ListStreams"}, r"only hits GetRecords and GetShardIterator"),
            ("throttle", {"times": 0}, r"times=0\) must be at least 1"),
            ("latency", {"delay": -1.0}, r"delay=-1.0\) must be at least 0"),
        ],
        ids=["kind", "operation", "expired-elsewhere", "trimmed-elsewhere", "times", "delay"],
    )
    def test_bad_faults_are_rejected(
        self, stream: MemoryStream, kind: Any, options: dict[str, Any], match: str
    ) -> None:
        with pytest.raises(ValueError, match=match):
            LocalStreamsServer(stream).inject(kind, **options)


class TestDeleteStream:
    async def test_every_call_about_the_stream_fails(
        self, stream: MemoryStream, server: LocalStreamsServer, client: Any
    ) -> None:
        shard_id = stream.add_shard()
        shard_iterator = await iterator(client, server, shard_id)
        server.delete_stream()
        not_found = ("ResourceNotFoundException", 400)
        assert await error_of(client.describe_stream(StreamArn=server.stream_arn)) == not_found
        assert await error_of(iterator(client, server, shard_id)) == not_found
        assert await error_of(client.get_records(ShardIterator=shard_iterator)) == not_found
        assert (await client.list_streams())["Streams"] == []
        async with create_client(server, "dynamodb", config=NO_RETRIES) as dynamodb:
            assert await error_of(dynamodb.describe_table(TableName="Users")) == not_found


class TestDescribeTable:
    async def test_resolves_the_table_to_its_stream(self, stream: MemoryStream) -> None:
        async with (
            LocalStreamsServer(stream, key_schema={"pk": "HASH", "sk": "RANGE"}) as server,
            create_client(server, "dynamodb", config=NO_RETRIES) as dynamodb,
        ):
            table = (await dynamodb.describe_table(TableName="Users"))["Table"]
            assert table == {
                "TableName": "Users",
                "TableArn": "arn:aws:dynamodb:us-east-1:000000000000:table/Users",
                "TableStatus": "ACTIVE",
                "CreationDateTime": datetime(2026, 1, 1, tzinfo=UTC),
                "KeySchema": [
                    {"AttributeName": "pk", "KeyType": "HASH"},
                    {"AttributeName": "sk", "KeyType": "RANGE"},
                ],
                "StreamSpecification": {
                    "StreamEnabled": True,
                    "StreamViewType": "NEW_AND_OLD_IMAGES",
                },
                "LatestStreamArn": server.stream_arn,
                "LatestStreamLabel": "2026-01-01T00:00:00.000",
            }
            call = dynamodb.describe_table(TableName="Orders")
            assert await error_of(call) == ("ResourceNotFoundException", 400)
            assert server.calls["DescribeTable"] == 2


class TestLineage:
    async def test_reads_parents_then_children_through_splits_and_rollover(
        self, stream: MemoryStream, server: LocalStreamsServer, client: Any
    ) -> None:
        root = stream.add_shard()
        expected = {root: put_n(stream, root, 5)}
        left, right = stream.split(root)
        expected[left] = put_n(stream, left, 3, start=100)
        expected[right] = put_n(stream, right, 4, start=200)
        children = stream.rollover()
        for child in children.values():
            expected[child] = put_n(stream, child, 2, start=300 + len(expected))
            stream.close(child)
        shards = (await client.describe_stream(StreamArn=server.stream_arn))["StreamDescription"][
            "Shards"
        ]
        parents = {s["ShardId"]: s.get("ParentShardId") for s in shards}
        assert parents == {
            root: None,
            left: root,
            right: root,
            children[left]: left,
            children[right]: right,
        }
        for shard in shards:
            assert "EndingSequenceNumber" in shard["SequenceNumberRange"]  # all closed now
            pages = await read_pages(client, await iterator(client, server, shard["ShardId"]))
            assert sequence_numbers(pages) == [
                r.sequence_number for r in expected[shard["ShardId"]]
            ]


class TestConcurrency:
    async def test_many_readers_at_once(
        self, stream: MemoryStream, server: LocalStreamsServer, client: Any
    ) -> None:
        shard_ids = [stream.add_shard() for _ in range(16)]
        expected = {s: put_n(stream, s, 150) for s in shard_ids}
        for shard_id in shard_ids:
            stream.close(shard_id)
        got: dict[str, list[str]] = {}

        async def read(shard_id: str) -> None:
            pages = await read_pages(client, await iterator(client, server, shard_id), Limit=17)
            got[shard_id] = sequence_numbers(pages)

        with anyio.fail_after(TIMEOUT):
            async with anyio.create_task_group() as tasks:
                for shard_id in shard_ids:
                    tasks.start_soon(read, shard_id)
        assert got == {s: [r.sequence_number for r in records] for s, records in expected.items()}

    async def test_readers_follow_live_writes(
        self, stream: MemoryStream, server: LocalStreamsServer, client: Any
    ) -> None:
        shard_ids = [stream.add_shard() for _ in range(4)]
        written: dict[str, list[str]] = {s: [] for s in shard_ids}
        got: dict[str, list[str]] = {}

        async def write() -> None:
            for i in range(40):
                for shard_id in shard_ids:
                    written[shard_id].append(
                        stream.put(shard_id, "INSERT", {"pk": f"k{i}"}).sequence_number
                    )
                await anyio.lowlevel.checkpoint()
            for shard_id in shard_ids:
                stream.close(shard_id)

        async def read(shard_id: str) -> None:
            pages = await read_pages(client, await iterator(client, server, shard_id), Limit=7)
            got[shard_id] = sequence_numbers(pages)

        with anyio.fail_after(TIMEOUT):
            async with anyio.create_task_group() as tasks:
                for shard_id in shard_ids:
                    tasks.start_soon(read, shard_id)
                tasks.start_soon(write)
        assert got == written


class TestMemoryStreamTrim:
    def test_trimmed_records_are_gone(self, stream: MemoryStream) -> None:
        shard_id = stream.add_shard()
        records = put_n(stream, shard_id, 5)
        stream.trim(shard_id, 2)
        assert stream.records(shard_id) == records[2:]
        assert stream.records() == records[2:]
        stream.trim(shard_id, 1)  # counts from the first record ever: nothing comes back
        assert stream.records(shard_id) == records[2:]
        stream.trim(shard_id, 5)
        assert stream.records(shard_id) == []

    @pytest.mark.parametrize("count", [-1, 4])
    def test_count_must_be_within_the_shard(self, stream: MemoryStream, count: int) -> None:
        shard_id = stream.add_shard()
        put_n(stream, shard_id, 3)
        with pytest.raises(SourceError, match=r"pass a count from 0 to 3"):
            stream.trim(shard_id, count)

    async def test_readers_before_the_horizon_raise(self, stream: MemoryStream) -> None:
        shard_id = stream.add_shard()
        records = put_n(stream, shard_id, 5)
        async with stream.open() as session:
            shard = Shard(shard_id)
            early = session.reader(shard, TRIM_HORIZON)
            after_last_trimmed = session.reader(shard, Position.after(records[1].sequence_number))
            stream.trim(shard_id, 2)
            with pytest.raises(TrimmedDataError, match=r"were trimmed from the stream"):
                await early.read()
            page = await after_last_trimmed.read()
            assert page.records == records[2:]
            page = await session.reader(shard, TRIM_HORIZON).read()
            assert page.records == records[2:]
            with pytest.raises(TrimmedDataError):
                await session.reader(shard, Position.at(records[1].sequence_number)).read()


class TestMemoryStreamRollover:
    async def test_every_open_shard_gets_one_child(self, stream: MemoryStream) -> None:
        a, b = stream.add_shard(), stream.add_shard()
        b1, b2 = stream.split(b)
        children = stream.rollover()
        assert list(children) == [a, b1, b2]
        for parent, child in children.items():
            assert stream.parent_of(child) == parent
        async with stream.open() as session:
            listed = {s.shard_id: s for s in await session.list_shards()}
        assert all(listed[s].closed for s in [a, b, b1, b2])
        assert not any(listed[c].closed for c in children.values())
        assert stream.rollover().keys() == set(children.values())

    def test_add_shard_uses_no_sequence_number(self, stream: MemoryStream) -> None:
        a = stream.add_shard()
        (first,) = put_n(stream, a, 1)
        stream.add_shard()
        (second,) = put_n(stream, a, 1)
        assert int(second.sequence_number) == int(first.sequence_number) + 1


class TestMemoryStreamRemoveShard:
    async def test_a_removed_shard_is_not_listed(self, stream: MemoryStream) -> None:
        old = stream.add_shard()
        records = put_n(stream, old, 2)
        (new,) = stream.rollover().values()
        async with stream.open() as session:
            reader = session.reader(Shard(old, None, True), TRIM_HORIZON)
            stream.remove_shard(old)
            assert stream.shard_ids == [new]
            assert [s.shard_id for s in await session.list_shards()] == [new]
            assert stream.parent_of(new) == old
            assert stream.records(old) == []
            with pytest.raises(TrimmedDataError):
                await reader.read()
            ended = await session.reader(
                Shard(old, None, True), Position.after(records[-1].sequence_number)
            ).read()
            assert ended.ended

    def test_only_closed_shards_expire(self, stream: MemoryStream) -> None:
        shard_id = stream.add_shard()
        with pytest.raises(SourceError, match=r"is open; only closed shards expire"):
            stream.remove_shard(shard_id)
