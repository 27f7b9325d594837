"""`sns()` against moto's SNS: messages published by a pipeline through aiobotocore,
observed through SQS queues subscribed to the topic (read back with boto3).

moto fails a single entry of a PublishBatch call for a bad MessageStructure, and marks
every entry failure as the sender's fault. So per-entry failures are made real: a
botocore event hook on the sink's session gives the chosen entry MessageStructure="xml"
in the real request, and moto really rejects it; where the test needs a failure that SNS
would retry (its own fault), the hook marks it SenderFault=false in the real response.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from typing import Any

import anyio
import boto3
import pytest
from aiobotocore.session import AioSession
from sink_support import drain, new_session, send

import flowstream as fs
from flowstream.errors import DeliveryError, ShardStoppedError, SinkError
from flowstream.record import Record
from flowstream.sinks import Batch, SendResult
from flowstream.sinks.sns import sns
from flowstream.testing import MemoryStream

REGION = "us-east-1"
ACCOUNT = "123456789012"
PROMPT = 5.0


class Aws:
    """boto3 clients of moto's SNS and SQS: topics with queues subscribed to them."""

    def __init__(self, endpoint_url: str) -> None:
        options: dict[str, Any] = {"endpoint_url": endpoint_url, "region_name": REGION}
        self.sns: Any = boto3.client("sns", **options)
        self.sqs: Any = boto3.client("sqs", **options)

    def topic(self, name: str = "changes") -> str:
        attributes = {"FifoTopic": "true"} if name.endswith(".fifo") else {}
        return str(self.sns.create_topic(Name=name, Attributes=attributes)["TopicArn"])

    def subscribe(self, topic_arn: str, name: str = "subscriber", *, raw: bool = True) -> str:
        """A queue subscribed to the topic (FIFO for a FIFO topic); its URL."""
        fifo = topic_arn.endswith(".fifo")
        queue = f"{name}.fifo" if fifo else name
        url = str(
            self.sqs.create_queue(
                QueueName=queue, Attributes={"FifoQueue": "true"} if fifo else {}
            )["QueueUrl"]
        )
        arn = self.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])
        self.sns.subscribe(
            TopicArn=topic_arn,
            Protocol="sqs",
            Endpoint=arn["Attributes"]["QueueArn"],
            Attributes={"RawMessageDelivery": "true" if raw else "false"},
        )
        return url

    def receive(self, url: str) -> list[dict[str, Any]]:
        """Every message in the queue, deleting each batch received."""
        messages: list[dict[str, Any]] = []
        while True:
            got = self.sqs.receive_message(
                QueueUrl=url,
                MaxNumberOfMessages=10,
                MessageAttributeNames=["All"],
                MessageSystemAttributeNames=["All"],
            ).get("Messages", [])
            if not got:
                return messages
            messages.extend(got)
            self.sqs.delete_message_batch(
                QueueUrl=url,
                Entries=[
                    {"Id": str(k), "ReceiptHandle": m["ReceiptHandle"]} for k, m in enumerate(got)
                ],
            )

    def bodies(self, url: str) -> list[Any]:
        return [json.loads(m["Body"]) for m in self.receive(url)]


@pytest.fixture(autouse=True)
def _shared_models(shared_models: None) -> None:
    """Every client of these tests opens fast (see sink_support.new_session)."""


@pytest.fixture
def aws(moto_url: str) -> Aws:
    return Aws(moto_url)


def retries(report: fs.RunReport) -> int:
    return sum(shard.retries for shard in report.shards.values())


def changes(shards: int, items: int, versions: int, *, page_size: int = 1000) -> MemoryStream:
    """`versions` changes of each of `items` items per shard, interleaved."""
    stream = MemoryStream(page_size=page_size)
    for s in range(shards):
        shard = stream.add_shard()
        for version in range(versions):
            for item in range(items):
                pk = f"item#{s}-{item}"
                event = "INSERT" if version == 0 else "MODIFY"
                stream.put(shard, event, {"pk": pk}, {"pk": pk, "version": version})
    return stream


def records(n: int) -> list[Record]:
    stream = MemoryStream()
    shard = stream.add_shard()
    return [stream.put(shard, "INSERT", {"pk": f"k{i}"}) for i in range(n)]


class EntryFaults:
    """Makes moto really fail the PublishBatch entries whose message `pick` selects, the
    first `times` times each is sent (MessageStructure="xml", which moto rejects per
    entry). With `server_fault`, the failure is reported as SNS's own (retryable)."""

    def __init__(
        self,
        session: AioSession,
        pick: Callable[[str], bool],
        *,
        times: int = 1,
        server_fault: bool = False,
    ) -> None:
        self.pick = pick
        self.times = times
        self.server_fault = server_fault
        self.sent: Counter[str] = Counter()
        self.calls: list[list[dict[str, Any]]] = []
        session.register("before-parameter-build.sns.PublishBatch", self.before)
        session.register("after-call.sns.PublishBatch", self.after)

    def before(self, params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        entries = params["PublishBatchRequestEntries"]
        self.calls.append([dict(e) for e in entries])
        chosen = []
        for entry in entries:
            message = entry["Message"]
            if self.pick(message) and self.sent[message] < self.times:
                self.sent[message] += 1
                entry["MessageStructure"] = "xml"
                chosen.append(entry["Id"])
        context["chosen"] = chosen

    def after(self, parsed: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        failed = parsed.get("Failed", [])
        assert sorted(f["Id"] for f in failed) == sorted(context.get("chosen", []))
        if self.server_fault:
            for failure in failed:
                failure["SenderFault"] = False


TOPIC = f"arn:aws:sns:eu-west-1:{ACCOUNT}:changes"


class TestBuild:
    def test_describe_names_the_topic(self) -> None:
        assert sns(TOPIC).describe() == f"sns({TOPIC})"

    def test_the_region_comes_from_the_arn(self) -> None:
        assert sns(TOPIC).region == "eu-west-1"
        assert sns(TOPIC, region="us-west-2").region == "us-west-2"

    @pytest.mark.parametrize(
        "arn", ["changes", f"arn:aws:sqs:us-east-1:{ACCOUNT}:changes", "arn:aws:sns:us-east-1:1:x"]
    )
    def test_a_topic_arn_is_needed(self, arn: str) -> None:
        with pytest.raises(SinkError, match=r"needs a topic ARN like arn:aws:sns:"):
            sns(arn)

    @pytest.mark.parametrize(
        "options",
        [{"message_group_id": "all"}, {"deduplication_id": lambda v, r: "x"}],
        ids=["group", "dedup"],
    )
    def test_fifo_options_on_a_standard_topic(self, options: dict[str, Any]) -> None:
        with pytest.raises(SinkError, match="applies to FIFO topics only"):
            sns(TOPIC, **options)

    @pytest.mark.parametrize("subject", ["", "x" * 100, "two\nlines", " leading space", "é"])
    def test_a_fixed_subject_must_be_sendable(self, subject: str) -> None:
        with pytest.raises(SinkError, match="a subject is 1 to 99 ASCII characters"):
            sns(TOPIC, subject=subject)


class TestDelivery:
    async def test_messages_reach_a_subscribed_queue_once_each(
        self, aws: Aws, moto_url: str
    ) -> None:
        topic = aws.topic()
        queue = aws.subscribe(topic)
        stream = changes(shards=4, items=5, versions=2, page_size=7)
        report = await drain(fs.Pipeline(stream).to(sns(topic, endpoint_url=moto_url)))
        assert report.delivered == 40
        ids = Counter(body["eventID"] for body in aws.bodies(queue))
        assert ids == Counter(r.event_id for r in stream.records())

    async def test_attributes_and_subject(self, aws: Aws, moto_url: str) -> None:
        topic = aws.topic()
        raw = aws.subscribe(topic, "raw")
        wrapped = aws.subscribe(topic, "wrapped", raw=False)

        def attributes(value: Any, record: Record) -> dict[str, Any]:
            return {"event": record.event_name, "version": value["version"]}

        sink = sns(
            topic,
            endpoint_url=moto_url,
            attributes=attributes,
            subject=lambda v, r: f"change to {v['pk']}",
        )
        await drain(fs.Pipeline(changes(1, 2, 1)).map(lambda r: r.new_image).to(sink))
        got = aws.receive(raw)
        assert sorted(m["MessageAttributes"]["event"]["StringValue"] for m in got) == [
            "INSERT",
            "INSERT",
        ]
        assert got[0]["MessageAttributes"]["version"] == {"StringValue": "0", "DataType": "Number"}
        envelopes = [json.loads(m["Body"]) for m in aws.receive(wrapped)]
        assert sorted(e["Subject"] for e in envelopes) == [
            "change to item#0-0",
            "change to item#0-1",
        ]
        assert json.loads(envelopes[0]["Message"])["version"] == 0

    async def test_a_fifo_topic_keeps_each_items_changes_in_order(
        self, aws: Aws, moto_url: str
    ) -> None:
        topic = aws.topic("changes.fifo")
        queue = aws.subscribe(topic)
        stream = changes(shards=3, items=3, versions=4, page_size=5)
        pipeline = fs.Pipeline(stream).map(lambda r: r.new_image)
        report = await drain(pipeline.to(sns(topic, endpoint_url=moto_url)))
        assert report.delivered == 36
        versions: dict[str, list[int]] = {}
        for body in aws.bodies(queue):
            versions.setdefault(body["pk"], []).append(body["version"])
        assert len(versions) == 9
        assert all(v == [0, 1, 2, 3] for v in versions.values())

    async def test_fifo_entries_carry_group_and_deduplication_ids(
        self, aws: Aws, moto_url: str
    ) -> None:
        topic = aws.topic("changes.fifo")
        aws.subscribe(topic)
        session = new_session()
        faults = EntryFaults(session, lambda message: False)
        stream = changes(1, 2, 2)
        await drain(fs.Pipeline(stream).to(sns(topic, endpoint_url=moto_url, session=session)))
        entries = [e for call in faults.calls for e in call]
        assert sorted(e["MessageDeduplicationId"] for e in entries) == sorted(
            r.event_id for r in stream.records()
        )
        assert sorted({e["MessageGroupId"] for e in entries}) == [
            '{"pk":"item#0-0"}',
            '{"pk":"item#0-1"}',
        ]
        for call in faults.calls:
            assert len({e["MessageGroupId"] for e in call}) == len(call)


class TestFailures:
    async def test_a_rejected_entry_stops_its_shard_and_the_rest_is_delivered(
        self, aws: Aws, moto_url: str
    ) -> None:
        topic = aws.topic()
        queue = aws.subscribe(topic)
        session = new_session()
        stream = MemoryStream()
        shards = [stream.add_shard() for _ in range(2)]
        for n in range(10):
            stream.put(shards[n % 2], "INSERT", {"pk": f"k{n}"}, {"pk": f"k{n}"})
        EntryFaults(session, lambda message: '"k9"' in message, times=10)
        pipeline = fs.Pipeline(stream).map(lambda r: r.new_image)
        with pytest.raises(ShardStoppedError) as caught:
            await drain(pipeline.to(sns(topic, endpoint_url=moto_url, session=session)))
        report = caught.value.report
        assert retries(report) == 0
        (stopped,) = report.stopped_shards().values()
        assert stopped.shard_id == shards[1]
        assert "SNS did not take the message: InvalidParameter:" in str(stopped.error)
        assert "MessageStructure must be 'json'" in str(stopped.error)
        assert sorted(b["pk"] for b in aws.bodies(queue)) == [f"k{n}" for n in range(9)]

    async def test_a_failed_entry_is_retried_alone_and_delivered_once(
        self, aws: Aws, moto_url: str
    ) -> None:
        topic = aws.topic()
        queue = aws.subscribe(topic)
        session = new_session()
        poison = '{"pk":"item#0-2","version":0}'
        faults = EntryFaults(session, lambda m: m == poison, times=2, server_fault=True)
        pipeline = fs.Pipeline(changes(2, 4, 2)).map(lambda r: r.new_image)
        report = await drain(pipeline.to(sns(topic, endpoint_url=moto_url, session=session)))
        assert retries(report) == 2
        bodies = aws.bodies(queue)
        assert len(bodies) == 16
        assert len({(b["pk"], b["version"]) for b in bodies}) == 16
        assert [[e["Message"] for e in call] for call in faults.calls[-2:]] == [[poison], [poison]]

    @pytest.mark.parametrize(
        ("value", "problem"),
        [
            ("x" * 262_145, "makes a message of 262145 bytes, over the SNS limit of 262144"),
            (b"\xc3", "gave 1 bytes that are not UTF-8 text"),
            ("bell \x07", "holds the character U+0007 at position 5"),
        ],
        ids=["too-large", "binary", "control"],
    )
    async def test_a_value_that_cannot_be_a_message_fails_alone(
        self, aws: Aws, moto_url: str, value: Any, problem: str
    ) -> None:
        topic = aws.topic()
        queue = aws.subscribe(topic)
        result = await send(
            sns(topic, endpoint_url=moto_url), Batch("s", ["before", value, "after"], records(3))
        )
        assert isinstance(result, SendResult)
        assert list(result.failed) == [1]
        error = result.failed[1]
        assert isinstance(error, DeliveryError)
        assert error.retryable is False
        assert problem in str(error)
        assert sorted(m["Body"] for m in aws.receive(queue)) == ["after", "before"]

    async def test_a_bad_subject_from_a_function_fails_that_item(
        self, aws: Aws, moto_url: str
    ) -> None:
        topic = aws.topic()
        sink = sns(topic, endpoint_url=moto_url, subject=lambda v, r: v)
        result = await send(sink, Batch("s", ["fine", "two\nlines"], records(2)))
        assert isinstance(result, SendResult)
        assert list(result.failed) == [1]
        assert "subject= returned 'two\\nlines'; a subject is 1 to 99" in str(result.failed[1])

    async def test_a_topic_deleted_while_running(self, aws: Aws, moto_url: str) -> None:
        topic = aws.topic()
        async with sns(topic, endpoint_url=moto_url).open() as writer:
            aws.sns.delete_topic(TopicArn=topic)
            result = await writer.send(Batch("s", ["a", "b"], records(2)))
        assert isinstance(result, SendResult)
        assert set(result.failed) == {0, 1}
        error = result.failed[0]
        assert isinstance(error, DeliveryError)
        assert error.retryable is False
        assert f"SNS topic {topic} does not exist in us-east-1 at {moto_url}" in str(error)


class TestSetupErrors:
    async def test_a_missing_topic_fails_the_run_at_once(self, moto_url: str) -> None:
        topic = f"arn:aws:sns:us-east-1:{ACCOUNT}:missing"
        with anyio.fail_after(PROMPT), pytest.raises(SinkError) as caught:
            await (
                fs.Pipeline(changes(2, 2, 1)).to(sns(topic, endpoint_url=moto_url)).run(drain=True)
            )
        assert type(caught.value) is SinkError
        assert str(caught.value).startswith(f"SNS topic {topic} does not exist in us-east-1")
        assert "create it, or check the topic ARN, region= and endpoint_url=" in str(caught.value)
