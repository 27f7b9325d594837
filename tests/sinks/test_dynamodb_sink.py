"""`sinks.dynamodb()` against moto's DynamoDB: a table replicator from a real moto stream,
dicts as items, the one-write-per-key rule, UnprocessedItems and per-item failures.

What moto does with BatchWriteItem, as these tests found it: it applies every put of a
call before every delete (so a delete and a re-insert of one item in one call would
leave it deleted), it rejects only identical requests as duplicates, it never answers
with UnprocessedItems, and its item size limit is 405,000 bytes (moto/dynamodb/models/
dynamo_type.py), under DynamoDB's 409,600 (400 KB): it rejects some items DynamoDB takes,
with a ValidationException for the whole call. UnprocessedItems are made with
botocore's event hooks on the sink's session: chosen requests are taken out of the real
call and put back into the real response as unprocessed.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import Any

import boto3
import pytest
from aiobotocore.session import AioSession
from boto3.dynamodb.types import TypeSerializer
from boto3_values import image
from botocore.awsrequest import AWSResponse
from sink_support import drain, new_session, send

import flowstream as fs
from flowstream import sources
from flowstream.errors import DeliveryError, ShardStoppedError, SinkError
from flowstream.sinks import Batch
from flowstream.sinks.dynamodb import UNPROCESSED_ATTEMPTS, dynamodb, item_size
from flowstream.testing import MemoryStream

REGION = "us-east-1"

_serialize = TypeSerializer().serialize


class Tables:
    """boto3's view of moto's DynamoDB."""

    def __init__(self, endpoint_url: str) -> None:
        self.client: Any = boto3.client("dynamodb", endpoint_url=endpoint_url, region_name=REGION)

    def create(self, name: str, view_type: str | None = None) -> None:
        """A table keyed by pk (S) and sk (N), with a stream of `view_type` if given."""
        options: dict[str, Any] = {}
        if view_type is not None:
            options["StreamSpecification"] = {"StreamEnabled": True, "StreamViewType": view_type}
        self.client.create_table(
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
        )

    def put(self, table: str, item: dict[str, Any]) -> None:
        self.client.put_item(TableName=table, Item=wire(item))

    def update(self, table: str, key: dict[str, Any], values: dict[str, Any]) -> None:
        names = {f"#a{i}": name for i, name in enumerate(values)}
        self.client.update_item(
            TableName=table,
            Key=wire(key),
            UpdateExpression="SET " + ", ".join(f"#a{i} = :v{i}" for i in range(len(values))),
            ExpressionAttributeNames=names,
            ExpressionAttributeValues={
                f":v{i}": _serialize(v) for i, v in enumerate(values.values())
            },
        )

    def delete(self, table: str, key: dict[str, Any]) -> None:
        self.client.delete_item(TableName=table, Key=wire(key))

    def items(self, table: str) -> dict[tuple[str, int], dict[str, Any]]:
        items = self.client.scan(TableName=table)["Items"]
        decoded = [image(item) for item in items]
        return {(item["pk"], item["sk"]): item for item in decoded}


def wire(item: dict[str, Any]) -> dict[str, Any]:
    return {name: _serialize(value) for name, value in item.items()}


@pytest.fixture
def tables(moto_url: str) -> Tables:
    return Tables(moto_url)


def count_calls(session: AioSession) -> list[list[str]]:
    """The requests of each BatchWriteItem call: "put pk/sk" or "delete pk/sk"."""
    calls: list[list[str]] = []

    def before(params: dict[str, Any], **_: Any) -> None:
        (requests,) = params["RequestItems"].values()
        call = []
        for request in requests:
            op, item = (
                ("put", request["PutRequest"]["Item"])
                if "PutRequest" in request
                else ("delete", request["DeleteRequest"]["Key"])
            )
            call.append(f"{op} {item['pk']['S']}/{item['sk']['N']}")
        calls.append(call)

    session.register("before-parameter-build.dynamodb.BatchWriteItem", before)
    return calls


def leave_unprocessed(session: AioSession, unprocessed: Callable[[dict[str, Any]], bool]) -> None:
    """Make BatchWriteItem leave the requests for which `unprocessed(request)` holds
    unprocessed: they are taken out of the real call and returned in UnprocessedItems."""

    def before(params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        ((table, requests),) = params["RequestItems"].items()
        left: list[dict[str, Any]] = []
        kept: list[dict[str, Any]] = []
        for request in requests:
            (left if unprocessed(request) else kept).append(request)
        if kept:
            params["RequestItems"] = {table: kept}
        context["left"] = (table, left, not kept)

    def none_processed(context: dict[str, Any], **_: Any) -> Any:
        # A call cannot be empty: when every request is left, moto is not called.
        table, left, everything = context["left"]
        if everything:
            return AWSResponse("", 200, {}, None), {"UnprocessedItems": {table: left}}
        return None

    def after(parsed: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        table, left, _ = context["left"]
        if left:
            parsed["UnprocessedItems"] = {table: left}

    session.register("before-parameter-build.dynamodb.BatchWriteItem", before)
    session.register("before-call.dynamodb.BatchWriteItem", none_processed)
    session.register("after-call.dynamodb.BatchWriteItem", after)


@pytest.fixture(autouse=True)
def _shared_models(shared_models: None) -> None:
    """Every client of these tests opens fast (see sink_support.new_session)."""


def batch_of(values: list[Any]) -> Batch:
    stream = MemoryStream()
    shard = stream.add_shard()
    records = [stream.put(shard, "INSERT", {"pk": f"r{i}"}) for i in range(len(values))]
    return Batch(shard, values, records)


def moto_source(moto_url: str, table: str) -> Any:
    return sources.dynamodb(
        table=table, endpoint_url=moto_url, idle_interval=0.05, max_polls_per_second=100.0
    )


def user(n: int, **values: Any) -> dict[str, Any]:
    return {"pk": f"user#{n}", "sk": 0, **values}


KEY = {"pk": "user#1", "sk": 0}


class TestReplicator:
    async def test_b_equals_a_after_puts_updates_and_deletes(
        self, tables: Tables, moto_url: str
    ) -> None:
        tables.create("A", "NEW_AND_OLD_IMAGES")
        tables.create("B")
        for n in range(30):
            tables.put("A", user(n, visits=n, score=Decimal("1.5"), tags={"a", "b"}))
        # several changes to one item, in one page of the stream
        tables.update("A", KEY, {"visits": 100})
        tables.update("A", KEY, {"avatar": b"\x00\x01\xff", "tokens": {b"\x00", b"\x01"}})
        tables.delete("A", KEY)
        tables.put("A", user(1, visits=7, back=True))
        tables.update("A", KEY, {"visits": 8})
        for n in range(20, 30):
            tables.delete("A", user(n))
        tables.update("A", user(40), {"visits": 1})  # an update that creates the item
        tables.put(
            "A",
            user(
                2,
                big=Decimal("12345678901234567890123456789012345678"),
                profile={"address": {"zip": "10115"}, "list": [1, "x", None, True]},
                lucky={7, Decimal("2.5")},
                nothing=None,
            ),
        )
        session = new_session()
        calls = count_calls(session)

        pipeline = fs.Pipeline(moto_source(moto_url, "A")).to(
            dynamodb("B", endpoint_url=moto_url, session=session)
        )
        report = await drain(pipeline)

        assert report.failed == 0
        a, b = tables.items("A"), tables.items("B")
        assert b == a
        assert len(b) == 21
        assert b[("user#1", 0)] == {"pk": "user#1", "sk": 0, "visits": 8, "back": True}
        assert b[("user#2", 0)]["profile"]["list"] == [1, "x", None, True]
        assert all(len(call) <= 25 for call in calls)
        # user#1's changes went one per call, in the order they were made
        ones = [op for call in calls for op in call if op.endswith(" user#1/0")]
        assert ones == ["put user#1/0"] * 3 + ["delete user#1/0"] + ["put user#1/0"] * 2
        assert all(len([op for op in call if "user#1/" in op]) <= 1 for call in calls)

    async def test_binary_values_land_as_bytes_not_base64_text(
        self, tables: Tables, moto_url: str
    ) -> None:
        tables.create("A", "NEW_IMAGE")
        tables.create("B")
        tables.put("A", user(1, avatar=b"\x00\xffbinary", tokens={b"\x00", b"\x01\x02"}))
        await drain(
            fs.Pipeline(moto_source(moto_url, "A")).to(dynamodb("B", endpoint_url=moto_url))
        )
        raw = tables.client.get_item(TableName="B", Key=wire(KEY))["Item"]
        assert raw["avatar"] == {"B": b"\x00\xffbinary"}
        assert sorted(raw["tokens"]["BS"]) == [b"\x00", b"\x01\x02"]

    async def test_a_keys_only_stream_fails_inserts_with_a_clear_error(
        self, tables: Tables, moto_url: str
    ) -> None:
        tables.create("A", "KEYS_ONLY")
        tables.create("B")
        tables.put("A", user(1))
        pipeline = fs.Pipeline(moto_source(moto_url, "A")).to(dynamodb("B", endpoint_url=moto_url))
        with pytest.raises(ShardStoppedError) as caught:
            await drain(pipeline)
        (stopped,) = caught.value.report.stopped_shards().values()
        assert stopped.retries == 0
        error = stopped.error or ""
        assert "(INSERT) has no new image, so there is nothing to put" in error
        assert "its stream's view type is KEYS_ONLY" in error
        assert "set the source table's StreamViewType to NEW_IMAGE or NEW_AND_OLD_IMAGES" in error
        assert tables.items("B") == {}


class TestRecords:
    async def test_a_delete_and_a_reinsert_in_one_batch_land_in_order(
        self, tables: Tables, moto_url: str
    ) -> None:
        """In one call moto would apply the put before the delete and lose the item."""
        tables.create("B")
        tables.put("B", user(1, v=0))
        stream = MemoryStream()
        shard = stream.add_shard()
        stream.put(shard, "REMOVE", KEY, None, user(1, v=0))
        stream.put(shard, "INSERT", KEY, user(1, v=1))
        stream.put(shard, "INSERT", user(2), user(2, v=1))
        stream.put(shard, "MODIFY", KEY, user(1, v=2), user(1, v=1))
        session = new_session()
        calls = count_calls(session)

        await drain(fs.Pipeline(stream).to(dynamodb("B", endpoint_url=moto_url, session=session)))

        assert calls == [
            ["delete user#1/0"],
            ["put user#1/0", "put user#2/0"],
            ["put user#1/0"],
        ]
        assert tables.items("B") == {
            ("user#1", 0): user(1, v=2),
            ("user#2", 0): user(2, v=1),
        }

    async def test_calls_hold_at_most_25_requests(self, tables: Tables, moto_url: str) -> None:
        tables.create("B")
        session = new_session()
        calls = count_calls(session)
        result = await send(
            dynamodb("B", endpoint_url=moto_url, session=session),
            batch_of([user(n) for n in range(60)]),
        )
        assert result is None
        assert [len(call) for call in calls] == [25, 25, 10]
        assert len(tables.items("B")) == 60

    async def test_a_remove_of_a_keys_only_stream_deletes(
        self, tables: Tables, moto_url: str
    ) -> None:
        tables.create("B")
        tables.put("B", user(1))
        stream = MemoryStream(view_type="KEYS_ONLY")
        shard = stream.add_shard()
        remove = stream.put(shard, "REMOVE", KEY)
        insert = stream.put(shard, "INSERT", user(2))
        result = await send(
            dynamodb("B", endpoint_url=moto_url), Batch(shard, [remove, insert], [remove, insert])
        )
        assert result is not None
        assert list(result.failed) == [1]
        error = result.failed[1]
        assert isinstance(error, DeliveryError)
        assert not error.retryable
        assert "its stream's view type is KEYS_ONLY" in str(error)
        assert tables.items("B") == {}


class TestDicts:
    async def test_dicts_are_put_as_items(self, tables: Tables, moto_url: str) -> None:
        tables.create("B")
        stream = MemoryStream()
        shard = stream.add_shard()
        for n in range(3):
            stream.put(shard, "INSERT", {"id": n}, {"id": n, "name": f"n{n}"})
        pipeline = (
            fs.Pipeline(stream)
            .map(
                lambda r: {
                    "pk": f"copy#{r.keys['id']}",
                    "sk": r.keys["id"],
                    "name": (r.new_image or {})["name"],
                    "price": Decimal("9.99"),
                    "ratio": 0.25,
                    "blob": b"\x00\x01",
                    "tags": {"x", "y"},
                }
            )
            .to(dynamodb("B", endpoint_url=moto_url))
        )
        report = await drain(pipeline)
        assert report.delivered == 3
        items = tables.items("B")
        assert items[("copy#1", 1)] == {
            "pk": "copy#1",
            "sk": 1,
            "name": "n1",
            "price": Decimal("9.99"),
            "ratio": Decimal("0.25"),
            "blob": b"\x00\x01",
            "tags": {"x", "y"},
        }

    async def test_bad_items_fail_alone(self, tables: Tables, moto_url: str) -> None:
        tables.create("B")
        values: list[Any] = [
            user(1),
            {"pk": "user#2"},  # no sk
            user(3, big="x" * (400 * 1024)),
            user(4, bad=float("nan")),
            "not an item",
            {"pk": {"nested": 1}, "sk": 5},
            user(7),
        ]
        result = await send(dynamodb("B", endpoint_url=moto_url), batch_of(values))
        assert result is not None
        assert sorted(result.failed) == [1, 2, 3, 4, 5]
        assert all(getattr(e, "retryable", None) is False for e in result.failed.values())
        messages = {i: str(e) for i, e in result.failed.items()}
        assert "an item without 'sk', part of the key of table 'B' (pk, sk)" in messages[1]
        assert "over DynamoDB's limit of 409600 bytes (400 KB) per item" in messages[2]
        assert "bad" in messages[3]
        assert "cannot write a str value; the dynamodb sink takes records" in messages[4]
        assert "key attribute 'pk' is of type M" in messages[5]
        assert set(tables.items("B")) == {("user#1", 0), ("user#7", 0)}

    async def test_an_item_moto_rejects_fails_alone(self, tables: Tables, moto_url: str) -> None:
        """An item of 399 KB is under DynamoDB's limit, over moto's (405,000 bytes), and
        moto rejects the whole call: the sink sends the call's requests one by one, and
        only that item fails."""
        tables.create("B")
        blob = b"\x00" * (399 * 1024)
        assert item_size({"pk": {"S": "u"}, "sk": {"N": "0"}, "b": {"B": blob}}) < 400 * 1024
        session = new_session()
        calls = count_calls(session)
        values = [user(1), user(2, blob=blob), user(3)]
        result = await send(dynamodb("B", endpoint_url=moto_url, session=session), batch_of(values))
        assert result is not None
        assert list(result.failed) == [1]
        error = result.failed[1]
        assert isinstance(error, DeliveryError)
        assert (error.retryable, error.code) == (False, "ValidationException")
        assert "Item size has exceeded the maximum allowed size" in str(error)
        assert [len(call) for call in calls] == [3, 1, 1, 1]
        assert set(tables.items("B")) == {("user#1", 0), ("user#3", 0)}


class TestUnprocessedItems:
    async def test_unprocessed_items_are_sent_again_within_the_call(
        self, tables: Tables, moto_url: str
    ) -> None:
        tables.create("B")
        session = new_session()
        calls = count_calls(session)
        seen: set[str] = set()

        def once(request: dict[str, Any]) -> bool:
            pk = request["PutRequest"]["Item"]["pk"]["S"]
            if pk in ("user#1", "user#3") and pk not in seen:
                seen.add(pk)
                return True
            return False

        leave_unprocessed(session, once)
        result = await send(
            dynamodb("B", endpoint_url=moto_url, session=session),
            batch_of([user(n) for n in range(5)]),
        )
        assert result is None
        assert [len(call) for call in calls] == [5, 2]
        assert len(tables.items("B")) == 5

    async def test_items_left_unprocessed_fail_retryably_and_hold_back_their_key(
        self, tables: Tables, moto_url: str
    ) -> None:
        tables.create("B")
        session = new_session()
        calls = count_calls(session)
        leave_unprocessed(session, lambda r: r["PutRequest"]["Item"].get("v") == {"N": "1"})
        values = [user(1, v=1), user(2), user(1, v=2), user(3)]
        result = await send(dynamodb("B", endpoint_url=moto_url, session=session), batch_of(values))

        assert result is not None
        assert sorted(result.failed) == [0, 2]
        error, held = result.failed[0], result.failed[2]
        assert isinstance(error, DeliveryError)
        assert isinstance(held, DeliveryError)
        assert (error.retryable, error.code) == (True, "UnprocessedItems")
        assert f"unprocessed {UNPROCESSED_ATTEMPTS} times" in str(error)
        assert held.retryable
        assert "held back" in str(held)
        assert len(calls) == UNPROCESSED_ATTEMPTS + 1  # the first call, its retries, user#3
        assert set(tables.items("B")) == {("user#2", 0), ("user#3", 0)}

    async def test_a_run_delivers_everything_after_unprocessed_items(
        self, tables: Tables, moto_url: str
    ) -> None:
        tables.create("B")
        session = new_session()
        left: list[dict[str, Any]] = []

        def user_1_for_one_send(request: dict[str, Any]) -> bool:
            """user#1's first write stays unprocessed through all of one send()."""
            if request["PutRequest"]["Item"]["pk"] != {"S": "user#1"}:
                return False
            if len(left) < UNPROCESSED_ATTEMPTS:
                left.append(request)
                return True
            return False

        leave_unprocessed(session, user_1_for_one_send)
        stream = MemoryStream()
        shard = stream.add_shard()
        for v in range(3):
            for n in range(3):
                stream.put(shard, "MODIFY", user(n), user(n, v=v))
        report = await drain(
            fs.Pipeline(stream).to(dynamodb("B", endpoint_url=moto_url, session=session))
        )
        assert sum(s.retries for s in report.shards.values()) == 1
        assert tables.items("B") == {(f"user#{n}", 0): user(n, v=2) for n in range(3)}


class TestSetup:
    async def test_a_missing_table_stops_the_run_at_its_start(self, moto_url: str) -> None:
        stream = MemoryStream()
        stream.put(stream.add_shard(), "INSERT", KEY, KEY)
        with pytest.raises(SinkError) as caught:
            await drain(fs.Pipeline(stream).to(dynamodb("Nope", endpoint_url=moto_url)))
        message = str(caught.value)
        assert message.startswith(
            f"sink dynamodb(Nope): table 'Nope' does not exist in us-east-1 at {moto_url}"
        )
        assert "create it, or check the table name and region=" in message

    def test_an_arn_brings_its_region(self) -> None:
        sink = dynamodb("arn:aws:dynamodb:eu-west-1:123456789012:table/Users")
        assert sink.region == "eu-west-1"
        assert sink.describe() == "dynamodb(arn:aws:dynamodb:eu-west-1:123456789012:table/Users)"

    @pytest.mark.parametrize(
        ("table", "message"),
        [("", "needs a table name or ARN"), ("arn:aws:sqs:x:1:q", "is not a DynamoDB table ARN")],
        ids=["empty", "not-a-table-arn"],
    )
    def test_bad_tables(self, table: str, message: str) -> None:
        with pytest.raises(SinkError, match=message):
            dynamodb(table)


class TestItemSize:
    @pytest.mark.parametrize(
        ("item", "size"),
        [
            ({"a": {"S": "héllo"}}, 1 + 6),
            ({"ab": {"B": b"\x00" * 10}}, 2 + 10),
            ({"n": {"N": "12345"}}, 1 + 4),
            ({"n": {"N": "-0.001"}}, 1 + 3),
            ({"f": {"BOOL": True}, "z": {"NULL": True}}, 2 + 2),
            ({"l": {"L": [{"S": "ab"}, {"N": "1"}]}}, 1 + 3 + (1 + 2) + (1 + 2)),
            ({"m": {"M": {"k": {"S": "v"}}}}, 1 + 3 + 1 + 1 + 1),
            ({"s": {"SS": ["a", "bc"]}}, 1 + 3),
        ],
        ids=["S", "B", "N", "negative-N", "BOOL-NULL", "L", "M", "SS"],
    )
    def test_as_dynamodb_counts(self, item: dict[str, Any], size: int) -> None:
        assert item_size(item) == size
