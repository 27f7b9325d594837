"""`sqs()` against moto's SQS: messages sent by a pipeline through aiobotocore, received
back through boto3.

moto fails a single entry of a SendMessageBatch call only for a DelaySeconds over 900 on
a standard queue (a FIFO queue refuses the whole call for any delay), and marks every
entry failure as the sender's fault. So per-entry failures are made real where moto can:
botocore's event hooks on the sink's session give the chosen entry DelaySeconds=1800 in
the real request, and moto really rejects it. On a FIFO queue the entry is taken out of
the real request and put back into the real response as failed. Where the test needs a
failure that SQS itself would retry (its own fault), the hook marks it SenderFault=false,
as SQS does for its internal errors. Whole-call errors that moto never answers
(throttling, 503) come from a small proxy in front of moto.
"""

from __future__ import annotations

import json
import urllib.request
from collections import Counter
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import anyio
import boto3
import pytest
from aiobotocore.session import AioSession
from aiohttp import web
from moto_server import closed_port
from sink_support import drain, new_session, send
from support import local_http

import flowstream as fs
from flowstream.errors import DeliveryError, ShardStoppedError, SinkError
from flowstream.record import Record
from flowstream.sinks import Batch, SendResult
from flowstream.sinks.base import item_key
from flowstream.sinks.sqs import AttributeValue, default_group_id, queue_region, sqs
from flowstream.testing import MemoryStream

REGION = "us-east-1"
#: Setup errors must come at once, not after a retry loop.
PROMPT = 5.0


class Sqs:
    """A boto3 client of moto's SQS: create queues, receive everything back."""

    def __init__(self, endpoint_url: str, region: str = REGION) -> None:
        self.client: Any = boto3.client("sqs", endpoint_url=endpoint_url, region_name=region)
        self.endpoint_url = endpoint_url

    def create(self, name: str = "changes", **attributes: str) -> str:
        if name.endswith(".fifo"):
            attributes.setdefault("FifoQueue", "true")
        return str(self.client.create_queue(QueueName=name, Attributes=attributes)["QueueUrl"])

    def receive(self, url: str) -> list[dict[str, Any]]:
        """Every message in the queue, in the order SQS hands them out (deleting each
        batch, so a FIFO queue hands out the next message of its group)."""
        messages: list[dict[str, Any]] = []
        while True:
            got = self.client.receive_message(
                QueueUrl=url,
                MaxNumberOfMessages=10,
                MessageAttributeNames=["All"],
                MessageSystemAttributeNames=["All"],
            ).get("Messages", [])
            if not got:
                return messages
            messages.extend(got)
            self.client.delete_message_batch(
                QueueUrl=url,
                Entries=[
                    {"Id": str(k), "ReceiptHandle": m["ReceiptHandle"]} for k, m in enumerate(got)
                ],
            )

    def bodies(self, url: str) -> list[Any]:
        return [json.loads(m["Body"]) for m in self.receive(url)]

    def stored(self) -> list[str]:
        """The body of every message moto holds, from its model dump: one request,
        where receiving costs moto a count of the queue for every message it hands out
        (10 s for 400 messages). Only for tests with one queue and no receives."""
        with urllib.request.urlopen(f"{self.endpoint_url}/moto-api/data.json") as response:
            data = json.load(response)
        return [message["body"] for message in data["sqs"]["Message"]]


@pytest.fixture(autouse=True)
def _shared_models(shared_models: None) -> None:
    """Every client of these tests opens fast (see sink_support.new_session)."""


@pytest.fixture
def aws(moto_url: str) -> Sqs:
    return Sqs(moto_url)


def retries(report: fs.RunReport) -> int:
    return sum(shard.retries for shard in report.shards.values())


def changes(shards: int, items: int, versions: int, *, page_size: int = 1000) -> MemoryStream:
    """`versions` changes of each of `items` items per shard, interleaved so that one
    page holds several changes of each item."""
    stream = MemoryStream(page_size=page_size)
    for s in range(shards):
        shard = stream.add_shard()
        for version in range(versions):
            for item in range(items):
                pk = f"item#{s}-{item}"
                event = "INSERT" if version == 0 else "MODIFY"
                stream.put(shard, event, {"pk": pk}, {"pk": pk, "version": version})
    return stream


def records(n: int, shard_id: str = "shardId-00000001700000000000-00000000") -> list[Record]:
    stream = MemoryStream()
    shard = stream.add_shard(shard_id)
    return [stream.put(shard, "INSERT", {"pk": f"k{i}"}, {"pk": f"k{i}"}) for i in range(n)]


class EntryFaults:
    """Makes the SendMessageBatch entries whose body `pick` selects fail, the first
    `times` times each is sent.

    On a standard queue moto really rejects them: they are sent with DelaySeconds=1800.
    moto cannot fail one entry of a FIFO call (it refuses the whole call for any delay),
    so there the entry is taken out of the real request and put back into the real
    response as failed (`inject`). With `server_fault`, a failure is reported as SQS's
    own fault (SenderFault=false, retryable), which moto never does.
    """

    def __init__(
        self,
        session: AioSession,
        pick: Callable[[str], bool],
        *,
        times: int = 1,
        server_fault: bool = False,
        inject: bool = False,
    ) -> None:
        self.pick = pick
        self.times = times
        self.server_fault = server_fault
        self.inject = inject
        self.sent: Counter[str] = Counter()
        self.calls: list[list[dict[str, Any]]] = []
        session.register("before-parameter-build.sqs.SendMessageBatch", self.before)
        session.register("after-call.sqs.SendMessageBatch", self.after)

    def before(self, params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        entries = params["Entries"]
        self.calls.append([dict(e) for e in entries])
        chosen = []
        for entry in entries:
            body = entry["MessageBody"]
            if self.pick(body) and self.sent[body] < self.times:
                self.sent[body] += 1
                chosen.append(entry["Id"])
                entry["DelaySeconds"] = 1800
        if self.inject:
            params["Entries"] = [e for e in entries if e["Id"] not in chosen]
            assert params["Entries"], "leave at least one entry in the call"
        context["chosen"] = chosen

    def after(self, parsed: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        chosen = context.get("chosen", [])
        failed = parsed.setdefault("Failed", [])
        if self.inject:
            failed.extend(
                {"Id": i, "SenderFault": True, "Code": "InternalError", "Message": "injected"}
                for i in chosen
            )
        assert sorted(f["Id"] for f in failed) == sorted(chosen)
        if self.server_fault:
            for failure in failed:
                failure["SenderFault"] = False


class TestBuild:
    def test_describe_names_the_queue(self) -> None:
        url = "https://sqs.eu-west-1.amazonaws.com/123456789012/changes"
        assert sqs(url).describe() == f"sqs({url})"
        assert sqs(url).name == f"sqs({url})"

    @pytest.mark.parametrize(
        ("url", "region"),
        [
            ("https://sqs.eu-west-1.amazonaws.com/123456789012/q", "eu-west-1"),
            ("https://sqs.us-gov-west-1.amazonaws.com/123456789012/q", "us-gov-west-1"),
            ("https://sqs.cn-north-1.amazonaws.com.cn/123456789012/q", "cn-north-1"),
            ("https://sqs.ap-southeast-2.api.aws/123456789012/q", "ap-southeast-2"),
            ("https://eu-central-1.queue.amazonaws.com/123456789012/q", "eu-central-1"),
            ("http://127.0.0.1:4566/000000000000/q", None),
            ("https://queue.amazonaws.com/123456789012/q", None),
        ],
        ids=["standard", "gov", "china", "dual-stack", "legacy", "local", "no-region"],
    )
    def test_the_region_comes_from_the_queue_url(self, url: str, region: str | None) -> None:
        assert queue_region(url) == region
        assert sqs(url).region == region
        assert sqs(url, region="us-west-2").region == "us-west-2"

    @pytest.mark.parametrize("url", ["changes", "arn:aws:sqs:us-east-1:123456789012:q", ""])
    def test_a_queue_name_is_not_a_url(self, url: str) -> None:
        with pytest.raises(SinkError, match=r"needs a queue URL like https://sqs\."):
            sqs(url)

    def test_a_url_without_a_queue(self) -> None:
        with pytest.raises(SinkError, match="no account and queue name"):
            sqs("https://sqs.us-east-1.amazonaws.com/123456789012")

    def test_a_fifo_queue_takes_no_per_message_delay(self) -> None:
        with pytest.raises(SinkError) as caught:
            sqs("https://sqs.us-east-1.amazonaws.com/1/q.fifo", delay=5)
        assert "delay= cannot be set per message on a FIFO queue" in str(caught.value)
        assert "set the queue's DelaySeconds attribute instead" in str(caught.value)

    @pytest.mark.parametrize("delay", [-1, 901, 1.5, True])
    def test_a_delay_out_of_range(self, delay: Any) -> None:
        with pytest.raises(SinkError, match="from 0 to 900"):
            sqs("https://sqs.us-east-1.amazonaws.com/1/q", delay=delay)

    def test_deduplication_ids_are_for_fifo_queues(self) -> None:
        with pytest.raises(SinkError, match="deduplication_id= applies to FIFO queues only"):
            sqs("https://sqs.us-east-1.amazonaws.com/1/q", deduplication_id=lambda v, r: "x")

    @pytest.mark.parametrize("group", ["has space", "", "x" * 129, "é"])
    def test_a_fixed_group_id_must_be_valid(self, group: str) -> None:
        with pytest.raises(SinkError, match="is not a valid id; an id is 1 to 128"):
            sqs("https://sqs.us-east-1.amazonaws.com/1/q.fifo", message_group_id=group)

    @pytest.mark.parametrize(
        ("attributes", "problem"),
        [
            ({"AWS.trace": "x"}, "an attribute named 'AWS.trace'"),
            ({"a b": "x"}, "an attribute named 'a b'"),
            ({"tags": ["a"]}, "attribute 'tags' as a list"),
            ({"empty": ""}, "attribute 'empty' as an empty str"),
            ({"n": float("nan")}, "a Number must be finite"),
            ({f"a{i}": i for i in range(11)}, "11 attributes; a message takes at most 10"),
        ],
        ids=["reserved", "space", "list", "empty", "nan", "too-many"],
    )
    def test_fixed_attributes_are_checked_when_built(
        self, attributes: dict[str, Any], problem: str
    ) -> None:
        with pytest.raises(SinkError, match="attributes= ") as caught:
            sqs("https://sqs.us-east-1.amazonaws.com/1/q", attributes=attributes)
        assert problem in str(caught.value)

    def test_the_default_group_id_is_the_items_keys(self) -> None:
        (record,) = records(1)
        assert default_group_id(record) == '{"pk":"k0"}'
        stream = MemoryStream()
        shard = stream.add_shard()
        long = stream.put(shard, "INSERT", {"pk": "x" * 200, "sk": 1})
        spaced = stream.put(shard, "INSERT", {"pk": "a b", "sk": 1})
        for r in (long, spaced):
            assert default_group_id(r).startswith("sha256:")
            assert len(default_group_id(r)) == 71
        assert default_group_id(spaced) == default_group_id(
            stream.put(shard, "MODIFY", {"sk": 1, "pk": "a b"})
        )

    def test_a_number_key_is_written_as_a_number(self) -> None:
        # sinks.base.item_key is every sink's ordering key (FIFO group, partition key,
        # cache key): a change of its text moves an item to another group or shard.
        stream = MemoryStream()
        shard = stream.add_shard()
        record = stream.put(shard, "INSERT", {"pk": "a", "sk": Decimal("1.5")})
        assert default_group_id(record) == '{"pk":"a","sk":1.5}'
        assert item_key(record) == default_group_id(record)


class TestDelivery:
    async def test_records_from_8_shards_arrive_once_each(self, aws: Sqs, moto_url: str) -> None:
        """Every record of 8 shards (20 pages of 12) lands once. 240 records, not
        thousands: moto counts a queue's messages for every message sent to it or
        received from it, so a queue of 5,000 takes it more than five minutes. Read
        back from moto's model dump (see `Sqs.stored()`)."""
        url = aws.create()
        stream = changes(shards=8, items=6, versions=5, page_size=12)
        report = await drain(fs.Pipeline(stream).to(sqs(url, endpoint_url=moto_url)))
        assert report.delivered == 240
        assert sum(shard.read for shard in report.shards.values()) == 240
        bodies = [json.loads(body) for body in aws.stored()]
        ids = Counter(body["eventID"] for body in bodies)
        assert len(bodies) == 240
        assert set(ids) == {r.event_id for r in stream.records()}

    async def test_bodies_are_text_as_given_or_json(self, aws: Sqs, moto_url: str) -> None:
        url = aws.create()
        values: list[Any] = ["plain text", b"utf-8 bytes \xc3\xa9", {"a": [1, 2]}, "ünïcode 🙂"]
        batch = Batch("s", values, records(len(values)))
        assert await send(sqs(url, endpoint_url=moto_url), batch) is None
        got = sorted(m["Body"] for m in aws.receive(url))
        assert got == sorted(["plain text", "utf-8 bytes é", '{"a":[1,2]}', "ünïcode 🙂"])

    async def test_encode_replaces_the_serialiser(self, aws: Sqs, moto_url: str) -> None:
        url = aws.create()
        sink = sqs(url, endpoint_url=moto_url, encode=lambda v: f"<{v['pk']}>".encode())
        await drain(fs.Pipeline(changes(1, 3, 1)).map(lambda r: r.new_image).to(sink))
        assert sorted(m["Body"] for m in aws.receive(url)) == [
            "<item#0-0>",
            "<item#0-1>",
            "<item#0-2>",
        ]

    async def test_attributes_fixed_and_per_element(self, aws: Sqs, moto_url: str) -> None:
        url, other = aws.create("fixed"), aws.create("computed")
        fixed: dict[str, AttributeValue] = {
            "origin": "flowstream",
            "n": 3,
            "ratio": 0.5,
            "flag": True,
            "blob": b"\x00\x01",
        }

        def computed(value: Any, record: Record) -> dict[str, Any]:
            return {"event": record.event_name, "pk": value["pk"], "none": None}

        pipeline = (
            fs.Pipeline(changes(1, 2, 1))
            .map(lambda r: r.new_image)
            .to(
                sqs(url, endpoint_url=moto_url, attributes=fixed),
                sqs(other, endpoint_url=moto_url, attributes=computed),
            )
        )
        await drain(pipeline)
        first = aws.receive(url)[0]["MessageAttributes"]
        assert first == {
            "origin": {"StringValue": "flowstream", "DataType": "String"},
            "n": {"StringValue": "3", "DataType": "Number"},
            "ratio": {"StringValue": "0.5", "DataType": "Number"},
            "flag": {"StringValue": "true", "DataType": "String"},
            "blob": {"BinaryValue": b"\x00\x01", "DataType": "Binary"},
        }
        got = sorted(m["MessageAttributes"]["pk"]["StringValue"] for m in aws.receive(other))
        assert got == ["item#0-0", "item#0-1"]

    async def test_delay_is_sent_with_every_message(self, aws: Sqs, moto_url: str) -> None:
        url = aws.create()
        session = new_session()
        faults = EntryFaults(session, lambda body: False)
        sink = sqs(url, endpoint_url=moto_url, session=session, delay=0)
        await drain(fs.Pipeline(changes(1, 3, 1)).to(sink))
        assert [e["DelaySeconds"] for call in faults.calls for e in call] == [0, 0, 0]

    async def test_a_queue_that_allows_larger_messages_gets_them(
        self, aws: Sqs, moto_url: str
    ) -> None:
        """moto's queues allow 1 MiB by default, as new SQS queues do; the sink reads
        the queue's MaximumMessageSize when it opens."""
        url = aws.create()
        big = "x" * 600_000
        batch = Batch("s", [big, "small", big], records(3))
        assert await send(sqs(url, endpoint_url=moto_url), batch) is None
        assert sorted(len(m["Body"]) for m in aws.receive(url)) == [5, 600_000, 600_000]

    async def test_calls_hold_at_most_10_messages_and_256_kib(
        self, aws: Sqs, moto_url: str
    ) -> None:
        url = aws.create(MaximumMessageSize="262144")
        session = new_session()
        faults = EntryFaults(session, lambda body: False)
        values = ["x" * 100_000] * 5 + ["y"] * 25
        sink = sqs(url, endpoint_url=moto_url, session=session)
        assert await send(sink, Batch("s", values, records(30))) is None
        sizes = sorted(
            (len(call), sum(len(e["MessageBody"]) for e in call)) for call in faults.calls
        )
        assert sum(n for n, _ in sizes) == 30
        assert all(n <= 10 and total <= 262_144 for n, total in sizes)
        assert len(aws.receive(url)) == 30

    async def test_the_region_from_the_url_reaches_the_queue(self, moto_url: str) -> None:
        """A queue in eu-west-1, named by its AWS URL, reached through moto."""
        west = Sqs(moto_url, region="eu-west-1")
        created = west.create()
        url = "https://sqs.eu-west-1.amazonaws.com/123456789012/changes"
        await drain(fs.Pipeline(changes(1, 2, 1)).to(sqs(url, endpoint_url=moto_url)))
        assert len(west.receive(created)) == 2


class TestFifo:
    async def test_each_items_changes_arrive_in_order_across_shards(
        self, aws: Sqs, moto_url: str
    ) -> None:
        url = aws.create("changes.fifo")
        stream = changes(shards=3, items=4, versions=4, page_size=5)
        report = await drain(
            fs.Pipeline(stream).map(lambda r: r.new_image).to(sqs(url, endpoint_url=moto_url))
        )
        assert report.delivered == 48
        messages = aws.receive(url)
        assert len(messages) == 48
        versions: dict[str, list[int]] = {}
        for message in messages:
            body = json.loads(message["Body"])
            assert message["Attributes"]["MessageGroupId"] == json.dumps(
                {"pk": body["pk"]}, separators=(",", ":")
            )
            versions.setdefault(body["pk"], []).append(body["version"])
        assert len(versions) == 12
        assert all(v == list(range(4)) for v in versions.values())

    async def test_no_call_holds_two_messages_of_one_group(self, aws: Sqs, moto_url: str) -> None:
        url = aws.create("changes.fifo")
        session = new_session()
        faults = EntryFaults(session, lambda body: False)
        await drain(
            fs.Pipeline(changes(1, 3, 4)).to(sqs(url, endpoint_url=moto_url, session=session))
        )
        assert sum(len(call) for call in faults.calls) == 12
        for call in faults.calls:
            groups = [e["MessageGroupId"] for e in call]
            assert len(groups) == len(set(groups))

    async def test_deduplication_ids_are_event_ids(self, aws: Sqs, moto_url: str) -> None:
        url = aws.create("changes.fifo")
        stream = changes(2, 3, 2)
        await drain(fs.Pipeline(stream).to(sqs(url, endpoint_url=moto_url)))
        messages = aws.receive(url)
        assert sorted(m["Attributes"]["MessageDeduplicationId"] for m in messages) == sorted(
            json.loads(m["Body"])["eventID"] for m in messages
        )

    async def test_a_replayed_record_is_deduplicated(self, aws: Sqs, moto_url: str) -> None:
        """A second run without checkpoints sends everything again; SQS drops it by the
        deduplication ids (moto only while the first copies are still in the queue)."""
        url = aws.create("changes.fifo")
        stream = changes(2, 3, 2)
        for _ in range(2):
            await drain(fs.Pipeline(stream).to(sqs(url, endpoint_url=moto_url)))
        assert len(aws.receive(url)) == 12

    async def test_several_elements_of_one_record_do_not_deduplicate_each_other(
        self, aws: Sqs, moto_url: str
    ) -> None:
        url = aws.create("changes.fifo")
        stream = changes(2, 3, 1)
        pipeline = fs.Pipeline(stream).flat_map(
            lambda r: [{"pk": r.keys["pk"], "part": p} for p in range(3)]
        )
        await drain(pipeline.to(sqs(url, endpoint_url=moto_url)))
        messages = aws.receive(url)
        assert len(messages) == 18
        ids = [m["Attributes"]["MessageDeduplicationId"] for m in messages]
        assert len(set(ids)) == 18
        assert all(i.rsplit("-", 1)[1] in {"0", "1", "2"} for i in ids)

    async def test_a_retried_element_keeps_its_deduplication_id(
        self, aws: Sqs, moto_url: str
    ) -> None:
        """The retry sends only the failed element; were its id recomputed from the
        smaller batch, it would equal a delivered sibling's, and SQS would drop it."""
        url = aws.create("changes.fifo")
        session = new_session()
        faults = EntryFaults(
            session,
            lambda body: body == '{"pk":"item#0-0","part":2}',
            server_fault=True,
            inject=True,
        )
        pipeline = fs.Pipeline(changes(1, 2, 1)).flat_map(
            lambda r: [{"pk": r.keys["pk"], "part": p} for p in range(3)]
        )
        report = await drain(pipeline.to(sqs(url, endpoint_url=moto_url, session=session)))
        assert retries(report) >= 1
        parts = sorted((b["pk"], b["part"]) for b in aws.bodies(url))
        assert parts == [(f"item#0-{i}", p) for i in range(2) for p in range(3)]
        sent = [(e["MessageBody"], e["MessageDeduplicationId"]) for c in faults.calls for e in c]
        assert len(sent) == 7  # six elements, one of them twice
        assert len(set(sent)) == 6  # with the same id both times

    async def test_group_and_deduplication_ids_from_functions(
        self, aws: Sqs, moto_url: str
    ) -> None:
        url, fixed = aws.create("a.fifo"), aws.create("b.fifo")
        pipeline = (
            fs.Pipeline(changes(1, 2, 2))
            .map(lambda r: r.new_image)
            .to(
                sqs(
                    url,
                    endpoint_url=moto_url,
                    message_group_id=lambda v, r: v["pk"].replace("#", "-"),
                    deduplication_id=lambda v, r: f"{v['pk']}@{v['version']}",
                ),
                sqs(fixed, endpoint_url=moto_url, message_group_id="all"),
            )
        )
        await drain(pipeline)
        messages = aws.receive(url)
        assert sorted(m["Attributes"]["MessageGroupId"] for m in messages) == [
            "item-0-0",
            "item-0-0",
            "item-0-1",
            "item-0-1",
        ]
        assert "item#0-1@1" in {m["Attributes"]["MessageDeduplicationId"] for m in messages}
        in_order = [json.loads(m["Body"]) for m in aws.receive(fixed)]
        assert [(b["pk"], b["version"]) for b in in_order] == [
            ("item#0-0", 0),
            ("item#0-1", 0),
            ("item#0-0", 1),
            ("item#0-1", 1),
        ]

    async def test_a_bad_group_id_from_a_function_fails_that_item(
        self, aws: Sqs, moto_url: str
    ) -> None:
        url = aws.create("changes.fifo")
        sink = sqs(url, endpoint_url=moto_url, message_group_id=lambda v, r: v)
        result = await send(sink, Batch("s", ["ok", "not ok", "fine"], records(3)))
        assert isinstance(result, SendResult)
        assert list(result.failed) == [1]
        error = result.failed[1]
        assert isinstance(error, DeliveryError)
        assert error.retryable is False
        assert "message_group_id= returned 'not ok'; an id is 1 to 128" in str(error)
        assert sorted(m["Body"] for m in aws.receive(url)) == ["fine", "ok"]

    async def test_a_failure_holds_back_later_messages_of_its_group(
        self, aws: Sqs, moto_url: str
    ) -> None:
        url = aws.create("changes.fifo")
        session = new_session()
        EntryFaults(session, lambda body: body == "a1", server_fault=True, inject=True)
        values = ["a1", "b1", "a2", "b2", "a3"]
        stream = MemoryStream()
        shard = stream.add_shard()
        recs = [stream.put(shard, "INSERT", {"pk": v[0]}) for v in values]
        async with sqs(url, endpoint_url=moto_url, session=session).open() as writer:
            result = await writer.send(Batch(shard, values, recs))
            assert isinstance(result, SendResult)
            assert sorted(result.failed) == [0, 2, 4]
            held = result.failed[2]
            assert isinstance(held, DeliveryError)
            assert held.retryable is True
            assert "held back" in str(held)
            assert [m["Body"] for m in aws.receive(url)] == ["b1", "b2"]
            # the runtime's retry: just the failed ones, in order
            assert (
                await writer.send(Batch(shard, ["a1", "a2", "a3"], [recs[0], recs[2], recs[4]]))
                is None
            )
        assert [m["Body"] for m in aws.receive(url)] == ["a1", "a2", "a3"]


class TestFailures:
    async def test_a_failed_entry_is_retried_alone_and_delivered_once(
        self, aws: Sqs, moto_url: str
    ) -> None:
        url = aws.create()
        session = new_session()
        poison = '"pk":"item#1-3","version":0'
        faults = EntryFaults(session, lambda body: poison in body, times=2, server_fault=True)
        stream = changes(shards=2, items=6, versions=2)
        pipeline = fs.Pipeline(stream).map(lambda r: r.new_image)
        report = await drain(pipeline.to(sqs(url, endpoint_url=moto_url, session=session)))
        assert retries(report) == 2
        assert report.delivered == 24
        bodies = aws.bodies(url)
        assert len(bodies) == 24
        assert len({(b["pk"], b["version"]) for b in bodies}) == 24
        # each retry sent the failed message alone
        assert [len(call) for call in faults.calls[-2:]] == [1, 1]
        assert poison in faults.calls[-1][0]["MessageBody"]

    async def test_a_rejected_entry_stops_its_shard_and_the_rest_is_delivered(
        self, aws: Sqs, moto_url: str
    ) -> None:
        url = aws.create()
        session = new_session()
        stream = MemoryStream()
        shards = [stream.add_shard() for _ in range(3)]
        for n in range(30):
            stream.put(shards[n % 3], "INSERT", {"pk": f"k{n}"}, {"pk": f"k{n}"})
        bad = "k28"  # the last record of the third shard
        EntryFaults(session, lambda body: f'"{bad}"' in body, times=10)
        pipeline = fs.Pipeline(stream).map(lambda r: r.new_image)
        with pytest.raises(ShardStoppedError) as caught:
            await drain(pipeline.to(sqs(url, endpoint_url=moto_url, session=session)))
        report = caught.value.report
        assert retries(report) == 0
        (stopped,) = report.stopped_shards().values()
        assert stopped.shard_id == shards[1]
        assert "SQS did not take the message: InvalidParameterValue" in str(stopped.error)
        assert "DelaySeconds is invalid" in str(stopped.error)
        got = sorted(b["pk"] for b in aws.bodies(url))
        assert got == sorted(f"k{n}" for n in range(30) if n != 28)

    async def test_an_oversized_value_fails_only_that_item(self, aws: Sqs, moto_url: str) -> None:
        url = aws.create(MaximumMessageSize="262144")
        stream = MemoryStream()
        shards = [stream.add_shard() for _ in range(2)]
        for n in range(10):
            stream.put(shards[n % 2], "INSERT", {"pk": f"k{n}"}, {"pk": f"k{n}", "pad": ""})
        stream.put(shards[0], "INSERT", {"pk": "big"}, {"pk": "big", "pad": "x" * 300_000})
        pipeline = fs.Pipeline(stream).map(lambda r: r.new_image)
        with pytest.raises(ShardStoppedError) as caught:
            await drain(pipeline.to(sqs(url, endpoint_url=moto_url)))
        (stopped,) = caught.value.report.stopped_shards().values()
        assert stopped.shard_id == shards[0]
        assert retries(caught.value.report) == 0
        assert "a dict value makes a message of 300021 bytes" in str(caught.value)
        assert "over the SQS limit of 262144 bytes (256 KiB)" in str(caught.value)
        assert sorted(b["pk"] for b in aws.bodies(url)) == sorted(f"k{n}" for n in range(10))

    @pytest.mark.parametrize(
        ("value", "problem"),
        [
            (b"\xff\xfe binary", "gave 9 bytes that are not UTF-8 text (byte 0xff at offset 0)"),
            ("nul \x00 inside", "holds the character U+0000 at position 4"),
            ("lone \ud800", "holds the character U+D800 at position 5"),
            ("", "an empty message"),
            (object(), "cannot serialise a object value"),
            ({1, 2}.__iter__(), "cannot serialise a set_iterator value"),
        ],
        ids=["binary", "nul", "surrogate", "empty", "object", "iterator"],
    )
    async def test_a_value_that_cannot_be_a_message_fails_alone(
        self, aws: Sqs, moto_url: str, value: Any, problem: str
    ) -> None:
        url = aws.create()
        sink = sqs(url, endpoint_url=moto_url)
        result = await send(sink, Batch("s", ["before", value, "after"], records(3)))
        assert isinstance(result, SendResult)
        assert list(result.failed) == [1]
        error = result.failed[1]
        assert isinstance(error, DeliveryError)
        assert error.retryable is False
        assert problem in str(error)
        assert sorted(m["Body"] for m in aws.receive(url)) == ["after", "before"]

    async def test_binary_can_be_sent_as_base64_with_encode(self, aws: Sqs, moto_url: str) -> None:
        import base64

        url = aws.create()
        sink = sqs(url, endpoint_url=moto_url, encode=lambda v: base64.b64encode(v))
        assert await send(sink, Batch("s", [b"\xff\x00"], records(1))) is None
        assert [m["Body"] for m in aws.receive(url)] == ["/wA="]

    async def test_bad_attributes_from_a_function_fail_that_item(
        self, aws: Sqs, moto_url: str
    ) -> None:
        url = aws.create()

        def attributes(value: Any, record: Record) -> dict[str, Any]:
            return {"AWS.bad": "x"} if value == "bad" else {"ok": value}

        sink = sqs(url, endpoint_url=moto_url, attributes=attributes)
        result = await send(sink, Batch("s", ["a", "bad", "b"], records(3)))
        assert isinstance(result, SendResult)
        assert list(result.failed) == [1]
        assert "attributes= returned an attribute named 'AWS.bad'" in str(result.failed[1])
        assert sorted(m["Body"] for m in aws.receive(url)) == ["a", "b"]

    async def test_a_queue_deleted_while_running(self, aws: Sqs, moto_url: str) -> None:
        url = aws.create()
        async with sqs(url, endpoint_url=moto_url).open() as writer:
            aws.client.delete_queue(QueueUrl=url)
            result = await writer.send(Batch("s", ["a", "b"], records(2)))
        assert isinstance(result, SendResult)
        assert set(result.failed) == {0, 1}
        error = result.failed[0]
        assert isinstance(error, DeliveryError)
        assert error.retryable is False
        assert f"SQS queue {url} does not exist in us-east-1 at {moto_url}" in str(error)
        assert "create it, or check the queue URL" in str(error)


class FaultProxy:
    """An HTTP proxy in front of moto that answers the first `times` SendMessageBatch
    calls with an error of its own (status, body, headers), as SQS does when it
    throttles or is unavailable."""

    def __init__(
        self, target: str, status: int, body: dict[str, Any], headers: dict[str, str], times: int
    ) -> None:
        self.target = target
        self.status = status
        self.body = body
        self.headers = headers
        self.times = times
        self.failed = 0
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        if (
            request.headers.get("X-Amz-Target") == "AmazonSQS.SendMessageBatch"
            and self.failed < self.times
        ):
            self.failed += 1
            return web.json_response(self.body, status=self.status, headers=self.headers)
        async with (
            aiohttp.ClientSession() as session,
            session.request(
                request.method,
                self.target + request.path_qs,
                data=await request.read(),
                headers={k: v for k, v in request.headers.items() if k.lower() != "host"},
            ) as response,
        ):
            return web.Response(
                body=await response.read(),
                status=response.status,
                headers={
                    k: v
                    for k, v in response.headers.items()
                    if k.lower() in {"content-type", "x-amzn-requestid", "x-amzn-query-error"}
                },
            )


@pytest.fixture
async def proxy(moto_url: str, request: pytest.FixtureRequest) -> AsyncIterator[FaultProxy]:
    (status, body, headers), times = request.param
    fault = FaultProxy(moto_url, status, body, headers, times=times)
    async with local_http(fault.handle) as fault.url:
        yield fault


#: (status, JSON body, headers) of a response that fails a whole call
Fault = tuple[int, dict[str, Any], dict[str, str]]

THROTTLED: Fault = (
    400,
    {"__type": "com.amazon.coral.availability#ThrottlingException", "message": "Rate exceeded"},
    {"x-amzn-query-error": "RequestThrottled;Sender"},
)
UNAVAILABLE: Fault = (503, {"__type": "ServiceUnavailable", "message": "try again"}, {})


class TestWholeCallErrors:
    @pytest.mark.parametrize(
        "proxy", [(THROTTLED, 2), (UNAVAILABLE, 2)], ids=["throttled", "503"], indirect=True
    )
    async def test_a_failed_call_is_retried_and_then_delivered(
        self, aws: Sqs, proxy: FaultProxy
    ) -> None:
        url = aws.create()
        stream = changes(shards=1, items=15, versions=1)
        report = await drain(fs.Pipeline(stream).to(sqs(url, endpoint_url=proxy.url)))
        assert proxy.failed == 2
        assert retries(report) >= 1
        assert sorted(b["eventID"] for b in aws.bodies(url)) == sorted(
            r.event_id for r in stream.records()
        )

    @pytest.mark.parametrize(
        ("proxy", "code"),
        [((THROTTLED, 100), "RequestThrottled"), ((UNAVAILABLE, 100), "ServiceUnavailable")],
        ids=["throttled", "503"],
        indirect=["proxy"],
    )
    async def test_every_item_of_the_call_fails_retryably(
        self, aws: Sqs, proxy: FaultProxy, code: str
    ) -> None:
        url = aws.create()
        sink = sqs(url, endpoint_url=proxy.url)
        result = await send(sink, Batch("s", [str(i) for i in range(25)], records(25)))
        assert isinstance(result, SendResult)
        assert sorted(result.failed) == list(range(25))
        for error in result.failed.values():
            assert isinstance(error, DeliveryError)
            assert error.retryable is True
            assert error.code == code


class TestSetupErrors:
    async def test_a_missing_queue_fails_the_run_at_once(self, aws: Sqs, moto_url: str) -> None:
        url = aws.create().replace("changes", "missing")
        with anyio.fail_after(PROMPT), pytest.raises(SinkError) as caught:
            await fs.Pipeline(changes(2, 2, 1)).to(sqs(url, endpoint_url=moto_url)).run(drain=True)
        assert type(caught.value) is SinkError
        assert str(caught.value).startswith(f"SQS queue {url} does not exist in us-east-1")
        assert "create it, or check the queue URL, region= and endpoint_url=" in str(caught.value)

    async def test_an_unreachable_endpoint(self) -> None:
        endpoint = f"http://127.0.0.1:{closed_port()}"
        url = "https://sqs.us-east-1.amazonaws.com/123456789012/changes"
        with anyio.fail_after(PROMPT), pytest.raises(SinkError) as caught:
            await fs.Pipeline(changes(1, 1, 1)).to(sqs(url, endpoint_url=endpoint)).run(drain=True)
        assert str(caught.value).startswith(f"cannot reach SQS (sqs({url})) at {endpoint}")

    async def test_no_region(
        self, moto_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        empty = tmp_path / "empty"
        empty.write_text("")
        monkeypatch.setenv("AWS_CONFIG_FILE", str(empty))
        monkeypatch.delenv("AWS_DEFAULT_REGION", raising=False)
        monkeypatch.delenv("AWS_REGION", raising=False)
        url = f"{moto_url}/123456789012/changes"
        with anyio.fail_after(PROMPT), pytest.raises(SinkError) as caught:
            await fs.Pipeline(changes(1, 1, 1)).to(sqs(url, endpoint_url=moto_url)).run(drain=True)
        assert str(caught.value) == (
            f"no AWS region for sqs({url}); set AWS_DEFAULT_REGION (or AWS_REGION), or pass region="
        )
