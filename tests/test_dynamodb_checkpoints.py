"""`checkpoints.dynamodb(table)` against moto's DynamoDB server: the checkpoint contract of
tests/test_checkpoints.py, the table it creates or refuses, the never-backwards condition
in the database, many shards, retries, and a pipeline that resumes.

Faults (throttling, 5xx, dropped connections, a table still CREATING) come from
`DynamoProxy` (tests/dynamo_proxy.py).
"""

from __future__ import annotations

from typing import Any

import anyio
import boto3
import pytest
import test_checkpoints as contract
from dynamo_proxy import (
    ACCESS_DENIED,
    DISCONNECT,
    INTERNAL,
    PROVISIONED,
    REQUEST_LIMIT,
    THROTTLING,
    UNAVAILABLE,
    DynamoProxy,
    Fault,
    error,
    status,
)
from moto_server import closed_port
from sink_support import new_session
from support import wait_until

import flowstream as fs
from flowstream import checkpoints, sinks
from flowstream.checkpoints.base import SHARD_END, CheckpointStore
from flowstream.checkpoints.dynamodb import (
    DynamoDBCheckpoints,
    dynamodb,
    partition_key,
    position_order,
)
from flowstream.errors import CheckpointError
from flowstream.testing import MemoryStream

TABLE = "flowstream-checkpoints"
REGION = "us-east-1"
STREAM = contract.STREAM
SHARD_A = contract.SHARD_A
SHARD_B = contract.SHARD_B
SEQ_1, SEQ_2, SEQ_3 = contract.SEQ_1, contract.SEQ_2, contract.SEQ_3
LONGEST_21 = contract.LONGEST_21
SEQ_40 = contract.SEQ_40
#: Long enough for any test's wait; a hang fails the test instead of the run.
PROMPT = 10.0


#: One session for every store of these tests: a session is slow to make (its event
#: handlers), and a client of it opens in ~10 ms.
SESSION = new_session()


def store_at(endpoint_url: str, **options: Any) -> DynamoDBCheckpoints:
    return dynamodb(TABLE, endpoint_url=endpoint_url, session=SESSION, **options)


def aws(endpoint_url: str) -> Any:
    """boto3's view of moto's DynamoDB, for checking what the store wrote."""
    return boto3.client("dynamodb", endpoint_url=endpoint_url, region_name=REGION)


def create_table(endpoint_url: str, keys: list[tuple[str, str, str]]) -> None:
    """A table with the key `keys`: (name, type, HASH or RANGE)."""
    aws(endpoint_url).create_table(
        TableName=TABLE,
        KeySchema=[{"AttributeName": n, "KeyType": k} for n, _, k in keys],
        AttributeDefinitions=[{"AttributeName": n, "AttributeType": t} for n, t, _ in keys],
        BillingMode="PAY_PER_REQUEST",
    )


@pytest.fixture
def store(moto_url: str) -> CheckpointStore:
    """The store the contract tests (imported below) run against."""
    return store_at(moto_url)


# The contract every checkpoint store keeps, run against this one.
class TestLoad(contract.TestLoad):
    pass


class TestSave(contract.TestSave):
    pass


class TestNeverBackwards(contract.TestNeverBackwards):
    pass


class TestInvalidPositions(contract.TestInvalidPositions):
    pass


class TestSession(contract.TestSession):
    pass


# -- the table -------------------------------------------------------------------------------


class TestTable:
    async def test_created_on_first_use(self, moto_url: str) -> None:
        async with store_at(moto_url).open("p", STREAM) as session:
            assert await session.load() == {}
        table = aws(moto_url).describe_table(TableName=TABLE)["Table"]
        assert table["TableStatus"] == "ACTIVE"
        assert table["BillingModeSummary"]["BillingMode"] == "PAY_PER_REQUEST"
        assert sorted((k["AttributeName"], k["KeyType"]) for k in table["KeySchema"]) == [
            ("pipeline_stream", "HASH"),
            ("shard", "RANGE"),
        ]
        assert {a["AttributeName"]: a["AttributeType"] for a in table["AttributeDefinitions"]} == {
            "pipeline_stream": "S",
            "shard": "S",
        }

    async def test_two_stores_create_it_at_once(self, moto_url: str) -> None:
        # Both find no table; one CreateTable wins and the other answers
        # ResourceInUseException, which means the table is there.
        async with (
            store_at(moto_url).open("a", STREAM) as first,
            store_at(moto_url).open("b", STREAM) as second,
        ):
            await first.save({SHARD_A: SEQ_1})
            await second.save({SHARD_A: SEQ_2})
        assert await contract.load(store_at(moto_url), pipeline="a") == {SHARD_A: SEQ_1}

    async def test_waits_until_the_new_table_is_active(self, proxy: DynamoProxy) -> None:
        proxy.edit("CreateTable", status("CREATING"))
        proxy.edit("DescribeTable", status("CREATING"), status("CREATING"))
        with anyio.fail_after(PROMPT):
            await contract.save(store_at(proxy.url), {SHARD_A: SEQ_1})
        # not found, CREATING, CREATING, ACTIVE: no write before the table was ACTIVE
        assert proxy.calls["DescribeTable"] == 4
        assert proxy.calls["UpdateItem"] == 1

    async def test_an_existing_table_is_used(self, moto_url: str) -> None:
        await contract.save(store_at(moto_url), {SHARD_A: SEQ_1})
        assert await contract.load(store_at(moto_url, create=False)) == {SHARD_A: SEQ_1}

    async def test_missing_table_with_create_false(self, moto_url: str) -> None:
        with pytest.raises(CheckpointError) as caught:
            await contract.load(store_at(moto_url, create=False))
        message = str(caught.value)
        assert message.startswith(f"dynamodb({TABLE}): the checkpoint table {TABLE!r}")
        assert f"does not exist in {REGION} at {moto_url}" in message
        assert "pass create=True" in message
        assert "partition key pipeline_stream (S) and the sort key shard (S)" in message
        assert aws(moto_url).list_tables()["TableNames"] == []  # nothing created

    @pytest.mark.parametrize(
        "keys",
        [
            pytest.param([("pk", "S", "HASH")], id="another-table"),
            pytest.param([("pipeline_stream", "S", "HASH")], id="no-sort-key"),
            pytest.param(
                [("pipeline_stream", "S", "HASH"), ("shard", "N", "RANGE")], id="numeric-shard"
            ),
            pytest.param(
                [("shard", "S", "HASH"), ("pipeline_stream", "S", "RANGE")], id="keys-swapped"
            ),
        ],
    )
    async def test_wrong_key_schema(self, moto_url: str, keys: list[tuple[str, str, str]]) -> None:
        create_table(moto_url, keys)
        with pytest.raises(CheckpointError, match="is not a checkpoint table") as caught:
            await contract.load(store_at(moto_url))
        message = str(caught.value)
        assert f"table {TABLE!r} in {REGION} at {moto_url}" in message
        name, kind, role = keys[0]
        assert f"its key is {name} ({kind}, {role})" in message
        assert "partition key pipeline_stream (S) and the sort key shard (S)" in message

    async def test_unreachable_endpoint_fails_at_once(self) -> None:
        endpoint = f"http://127.0.0.1:{closed_port()}"
        with anyio.fail_after(PROMPT), pytest.raises(CheckpointError) as caught:
            await contract.load(store_at(endpoint, timeout=60))
        assert str(caught.value).startswith(f"dynamodb({TABLE}): cannot open the checkpoint table")
        assert f"cannot reach DynamoDB (checkpoint table {TABLE!r}) at {endpoint}" in str(
            caught.value
        )

    async def test_access_denied_names_the_permission(self, proxy: DynamoProxy) -> None:
        proxy.fail("CreateTable", error(400, "AccessDeniedException", "no CreateTable for you"))
        with pytest.raises(CheckpointError) as caught:
            await contract.load(store_at(proxy.url))
        assert "refused the credentials (AccessDeniedException" in str(caught.value)
        assert str(caught.value).endswith("needs dynamodb:CreateTable on the table")


# -- what is stored, and the condition that keeps it from going back --------------------------


class TestItems:
    async def test_item_layout(self, moto_url: str) -> None:
        await contract.save(store_at(moto_url), {SHARD_A: SEQ_1, SHARD_B: SHARD_END}, pipeline="p")
        items = aws(moto_url).scan(TableName=TABLE, ConsistentRead=True)["Items"]
        by_shard = {item["shard"]["S"]: item for item in items}
        assert set(by_shard) == {SHARD_A, SHARD_B}
        a = by_shard[SHARD_A]
        assert set(a) == {"pipeline_stream", "shard", "position", "position_order", "updated_at"}
        assert a["pipeline_stream"] == {"S": f"p#{STREAM}"}
        assert a["position"] == {"S": SEQ_1}
        assert a["position_order"] == {"S": f"021:{SEQ_1}"}
        assert a["updated_at"]["S"].startswith("20")
        assert a["updated_at"]["S"].endswith("Z")
        assert by_shard[SHARD_B]["position_order"] == {"S": SHARD_END}

    def test_position_order_sorts_as_positions(self) -> None:
        positions = ["0", "9", "10", SEQ_1, LONGEST_21, contract.SHORTEST_22, SEQ_40, SHARD_END]
        orders = [position_order(p) for p in positions]
        assert all(o is not None for o in orders)
        # DynamoDB compares strings by their UTF-8 bytes
        assert sorted(orders, key=lambda o: (o or "").encode()) == orders

    def test_partition_keys_do_not_collide(self) -> None:
        pairs = [("a#b", "c"), ("a", "b#c"), ("a%23b", "c"), ("a%b", "c"), ("a", "%23b#c")]
        assert len({partition_key(p, s) for p, s in pairs}) == len(pairs)
        assert partition_key("user-cache", STREAM) == f"user-cache#{STREAM}"
        assert partition_key("a#b%", "c") == "a%23b%25#c"

    async def test_pipeline_names_with_separators_keep_their_own(self, moto_url: str) -> None:
        store = store_at(moto_url)
        await contract.save(store, {SHARD_A: SEQ_1}, pipeline="a#b", stream="c")
        await contract.save(store, {SHARD_A: SEQ_2}, pipeline="a", stream="b#c")
        assert await contract.load(store, pipeline="a#b", stream="c") == {SHARD_A: SEQ_1}
        assert await contract.load(store, pipeline="a", stream="b#c") == {SHARD_A: SEQ_2}

    @pytest.mark.parametrize(
        ("stored", "new", "expected"),
        [
            pytest.param(SEQ_40, LONGEST_21, SEQ_40, id="21-digits-after-40"),
            pytest.param(LONGEST_21, SEQ_40, SEQ_40, id="40-digits-after-21"),
            pytest.param(SHARD_END, SEQ_40, SHARD_END, id="after-shard-end"),
            pytest.param(SEQ_3, SEQ_2, SEQ_3, id="lower"),
        ],
    )
    async def test_another_store_object_cannot_go_back(
        self, moto_url: str, stored: str, new: str, expected: str
    ) -> None:
        # Two processes, one after the other, as far as the table can tell: separate
        # stores and clients.
        async with store_at(moto_url).open("p", STREAM) as first:
            await first.save({SHARD_A: stored})
        async with store_at(moto_url).open("p", STREAM) as second:
            await second.save({SHARD_A: new})
            assert await second.load() == {SHARD_A: expected}

    async def test_the_table_refuses_the_backwards_write(self, proxy: DynamoProxy) -> None:
        # The store reads nothing before it writes: each write goes out, and DynamoDB's
        # condition refuses the ones that are not ahead (ConditionalCheckFailedException,
        # which save() ignores).
        async with store_at(proxy.url).open("p", STREAM) as session:
            await session.save({SHARD_A: "200000000000000000000", SHARD_B: SEQ_40})
            await session.save({SHARD_A: "100000000000000000000", SHARD_B: SHARD_END})
            await session.save({SHARD_B: SEQ_40})
            assert await session.load() == {SHARD_A: "200000000000000000000", SHARD_B: SHARD_END}
        assert proxy.calls["UpdateItem"] == 5
        # the load() is the only Query; the one GetItem reads the run's claim
        assert (proxy.calls["Query"], proxy.calls["GetItem"]) == (1, 1)
        refused = [code for operation, code in proxy.refusals if operation == "UpdateItem"]
        assert refused == ["ConditionalCheckFailedException"] * 2

    async def test_other_attributes_of_an_item_are_kept(self, moto_url: str) -> None:
        # Room for leases: an item may carry attributes of its own (an owner) before any
        # checkpoint; a save sets the position and keeps them, and load skips the item
        # until it has a position.
        async with store_at(moto_url).open("p", STREAM) as session:
            key = {"pipeline_stream": {"S": f"p#{STREAM}"}, "shard": {"S": SHARD_A}}
            aws(moto_url).put_item(TableName=TABLE, Item={**key, "owner": {"S": "worker-1"}})
            assert await session.load() == {}
            await session.save({SHARD_A: SEQ_1})
            assert await session.load() == {SHARD_A: SEQ_1}
        item = aws(moto_url).get_item(TableName=TABLE, Key=key, ConsistentRead=True)["Item"]
        assert item["owner"] == {"S": "worker-1"}
        assert item["position"] == {"S": SEQ_1}


class TestManyShards:
    async def test_hundreds_of_shards_in_pages(self, moto_url: str) -> None:
        session = new_session()
        queries: list[dict[str, Any]] = []

        def small_pages(params: dict[str, Any], **_: Any) -> None:
            params["Limit"] = 40  # DynamoDB pages at 1 MB, i.e. thousands of these items
            queries.append(params)

        session.register("provide-client-params.dynamodb.Query", small_pages)
        store = dynamodb(TABLE, endpoint_url=moto_url, session=session)
        positions = {f"shardId-{n:020d}-{n:08x}": str(10**20 + n) for n in range(180)}
        positions.update({f"shardId-{n:020d}-{n:08x}": SHARD_END for n in range(180, 200)})
        async with store.open("p", STREAM) as checkpoints_session:
            await checkpoints_session.save(positions)
            assert await checkpoints_session.load() == positions
        # 5 full pages (moto leaves out the empty sixth that DynamoDB may answer)
        assert len(queries) >= 5
        assert all(q["ConsistentRead"] is True for q in queries)

    async def test_writes_go_out_concurrently_and_bounded(self, proxy: DynamoProxy) -> None:
        proxy.gate("UpdateItem", 4)
        positions = {f"shardId-{n:020d}-{n:08x}": str(10**20 + n) for n in range(40)}
        with anyio.fail_after(PROMPT):
            await contract.save(store_at(proxy.url, max_connections=4), positions)
        assert proxy.calls["UpdateItem"] == 40
        assert proxy.most_in_flight["UpdateItem"] == 4
        assert await contract.load(store_at(proxy.url)) == positions


# -- retries -------------------------------------------------------------------------------


class TestRetries:
    @pytest.mark.parametrize(
        "fault",
        [
            pytest.param(PROVISIONED, id="provisioned-throughput"),
            pytest.param(THROTTLING, id="throttling"),
            pytest.param(REQUEST_LIMIT, id="request-limit"),
            pytest.param(INTERNAL, id="500"),
            pytest.param(UNAVAILABLE, id="503"),
            pytest.param(DISCONNECT, id="dropped-connection"),
        ],
    )
    async def test_save_retries_then_succeeds(self, proxy: DynamoProxy, fault: Fault) -> None:
        store = store_at(proxy.url)
        async with store.open("p", STREAM) as session:
            proxy.fail("UpdateItem", fault, times=3)
            with anyio.fail_after(PROMPT):
                await session.save({SHARD_A: SEQ_1, SHARD_B: SEQ_2})
            assert proxy.failed["UpdateItem"] == 3
            assert proxy.calls["UpdateItem"] == 5
            assert await session.load() == {SHARD_A: SEQ_1, SHARD_B: SEQ_2}

    @pytest.mark.parametrize(
        ("fault", "code", "fix"),
        [
            pytest.param(
                PROVISIONED,
                "ProvisionedThroughputExceededException",
                "throughput is exceeded",
                id="throttled",
            ),
            pytest.param(INTERNAL, "InternalServerError", "unavailable", id="500"),
        ],
    )
    async def test_save_gives_up_after_the_timeout(
        self, proxy: DynamoProxy, fault: Fault, code: str, fix: str
    ) -> None:
        store = store_at(proxy.url, timeout=0.3)
        async with store.open("p", STREAM) as session:
            proxy.fail("UpdateItem", fault)
            start = anyio.current_time()
            with anyio.fail_after(PROMPT), pytest.raises(CheckpointError) as caught:
                await session.save({SHARD_A: SEQ_1})
            assert anyio.current_time() - start < 2.0
            assert proxy.failed["UpdateItem"] >= 2  # retried before giving up
        message = str(caught.value)
        assert message.startswith(f"dynamodb({TABLE}): cannot save 1 checkpoint(s): {code}")
        assert fix in message
        assert message.endswith("(still failing after retrying for 0.3s)")

    async def test_save_gives_up_when_the_endpoint_is_gone(self, proxy: DynamoProxy) -> None:
        store = store_at(proxy.url, timeout=0.3)
        async with store.open("p", STREAM) as session:
            await proxy.stop_listening()
            with anyio.fail_after(PROMPT), pytest.raises(CheckpointError) as caught:
                await session.save({SHARD_A: SEQ_1})
        assert "cannot save 1 checkpoint(s)" in str(caught.value)
        assert "still failing after retrying for 0.3s" in str(caught.value)

    async def test_access_denied_is_not_retried(self, proxy: DynamoProxy) -> None:
        store = store_at(proxy.url)
        async with store.open("p", STREAM) as session:
            proxy.fail("UpdateItem", ACCESS_DENIED)
            with anyio.fail_after(PROMPT), pytest.raises(CheckpointError) as caught:
                await session.save({SHARD_A: SEQ_1, SHARD_B: SEQ_1})
        assert proxy.failed["UpdateItem"] <= 2  # one per shard at most, never again
        message = str(caught.value)
        assert message.startswith(f"dynamodb({TABLE}): cannot save the checkpoint of shard")
        assert message.endswith("needs dynamodb:UpdateItem on the table")

    async def test_load_retries_throttling(self, proxy: DynamoProxy) -> None:
        await contract.save(store_at(proxy.url), {SHARD_A: SEQ_1})
        proxy.fail("Query", THROTTLING, times=2)
        with anyio.fail_after(PROMPT):
            assert await contract.load(store_at(proxy.url)) == {SHARD_A: SEQ_1}
        assert proxy.failed["Query"] == 2

    async def test_opening_retries_throttling(self, proxy: DynamoProxy) -> None:
        proxy.fail("DescribeTable", THROTTLING, times=2)
        with anyio.fail_after(PROMPT):
            assert await contract.load(store_at(proxy.url)) == {}
        assert proxy.calls["CreateTable"] == 1


# -- the store in a pipeline ---------------------------------------------------------------


class TestPipeline:
    async def test_stopped_run_resumes_after_its_last_checkpoint(self, moto_url: str) -> None:
        stream = MemoryStream(page_size=8)
        shards = [stream.add_shard() for _ in range(3)]
        for n in range(60):
            stream.put(shards[n % 3], "INSERT", {"pk": str(n)})
        pipeline = fs.Pipeline(stream, name="resume").map(lambda r: r.keys["pk"])

        first = sinks.collect()
        stop = anyio.Event()
        with anyio.fail_after(PROMPT):
            async with anyio.create_task_group() as tg:

                async def run() -> None:
                    await pipeline.to(first).run(checkpoints=store_at(moto_url), stop=stop)

                tg.start_soon(run)
                await wait_until(lambda: len(first.items) == 60)
                stop.set()
        assert sorted(first.items, key=int) == [str(n) for n in range(60)]
        # The graceful stop wrote each shard's last sequence number.
        saved = await contract.load(store_at(moto_url), pipeline="resume", stream=stream.stream_arn)
        assert saved == {s: stream.records(s)[-1].sequence_number for s in shards}

        children = stream.split(shards[0])
        targets = [*shards[1:], *children]
        for n in range(60, 100):
            stream.put(targets[n % 4], "INSERT", {"pk": str(n)})

        # A new store object, as after a restart: only what is new is delivered.
        second = sinks.collect()
        with anyio.fail_after(PROMPT):
            report = await pipeline.to(second).run(checkpoints=store_at(moto_url), drain=True)
        assert sorted(second.items, key=int) == [str(n) for n in range(60, 100)]
        assert report.read == 40
        saved = await contract.load(store_at(moto_url), pipeline="resume", stream=stream.stream_arn)
        assert saved[shards[0]] == SHARD_END
        assert saved[children[0]] == stream.records(children[0])[-1].sequence_number

    async def test_a_store_that_cannot_save_stops_the_run(self, proxy: DynamoProxy) -> None:
        stream = MemoryStream()
        shard = stream.add_shard()
        stream.put(shard, "INSERT", {"pk": "a"})
        proxy.fail("UpdateItem", THROTTLING)
        store = store_at(proxy.url, timeout=0.2, flush_interval=0)
        pipeline = fs.Pipeline(stream, name="stuck").to(sinks.collect())
        with anyio.fail_after(PROMPT), pytest.raises(CheckpointError) as caught:
            await pipeline.run(checkpoints=store)
        assert "ThrottlingException" in str(caught.value)


# -- the factory ---------------------------------------------------------------------------


class TestFactory:
    def test_defaults_and_describe(self) -> None:
        store = checkpoints.dynamodb(TABLE)
        assert isinstance(store, DynamoDBCheckpoints)
        assert store.describe() == f"dynamodb({TABLE})"
        assert store.flush_interval == 1.0
        assert store.create is True
        assert dynamodb(TABLE, flush_interval=5).flush_interval == 5

    @pytest.mark.parametrize(
        "table",
        [
            "",
            "ab",
            "has space",
            "trailing-newline\n",
            "arn:aws:dynamodb:us-east-1:123456789012:table/x",
            "x" * 256,
        ],
    )
    def test_bad_table_names(self, table: str) -> None:
        with pytest.raises(CheckpointError, match="is not a DynamoDB table name"):
            dynamodb(table)

    @pytest.mark.parametrize(
        ("option", "value"),
        [
            ("flush_interval", -1.0),
            ("flush_interval", float("nan")),
            ("timeout", 0),
            ("timeout", float("inf")),
        ],
    )
    def test_bad_seconds(self, option: str, value: float) -> None:
        options: dict[str, Any] = {option: value}
        with pytest.raises(CheckpointError, match=rf"{option}=.* is not a number of seconds"):
            dynamodb(TABLE, **options)

    def test_bad_max_connections(self) -> None:
        with pytest.raises(CheckpointError, match="max_connections=0 must be"):
            dynamodb(TABLE, max_connections=0)

    async def test_too_long_a_key(self, moto_url: str) -> None:
        with pytest.raises(CheckpointError, match="over DynamoDB's 2048-byte limit"):
            await contract.load(store_at(moto_url), pipeline="p" * 2100)
