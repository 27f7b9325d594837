"""`eventbridge()` against moto's EventBridge: events put by a pipeline through
aiobotocore, observed through an SQS queue that a rule on the bus targets (read back with
boto3).

moto fails a single PutEvents entry for a Detail that is not JSON (MalformedDetail) or a
missing field, and never with a code that says "retry". So per-entry failures are made
real: a botocore event hook on the sink's session gives the chosen entry a malformed
Detail in the real request, and moto really rejects it; where the test needs a failure
that EventBridge would retry, the hook reports it as InternalFailure in the real response.

moto spends about a quarter of a second on every event a rule delivers (it builds a
JSONPath parser for each), so the tests keep the events a rule matches few: the sink's
own outcome (PutEvents' answer) covers the rest.
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
from flowstream.sinks.eventbridge import eventbridge
from flowstream.testing import MemoryStream

REGION = "us-east-1"
ACCOUNT = "123456789012"
SOURCE = "flowstream.test"
PROMPT = 5.0


class Aws:
    """boto3 clients of moto's EventBridge and SQS: buses whose rule feeds a queue."""

    def __init__(self, endpoint_url: str) -> None:
        options: dict[str, Any] = {"endpoint_url": endpoint_url, "region_name": REGION}
        self.events: Any = boto3.client("events", **options)
        self.sqs: Any = boto3.client("sqs", **options)

    def bus(self, name: str = "changes", *, pattern: dict[str, Any] | None = None) -> str:
        """A bus (the default one exists already) whose events from SOURCE (and
        matching `pattern`) go to a queue; the queue's URL."""
        if name != "default":
            self.events.create_event_bus(Name=name)
        url = str(self.sqs.create_queue(QueueName=f"{name}-events")["QueueUrl"])
        arn = self.sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["QueueArn"])
        self.events.put_rule(
            Name="to-queue",
            EventBusName=name,
            EventPattern=json.dumps({"source": [SOURCE], **(pattern or {})}),
        )
        self.events.put_targets(
            Rule="to-queue",
            EventBusName=name,
            Targets=[{"Id": "queue", "Arn": arn["Attributes"]["QueueArn"]}],
        )
        return url

    def events_in(self, url: str) -> list[dict[str, Any]]:
        """Every event the queue got, deleting each batch received."""
        events: list[dict[str, Any]] = []
        while True:
            got = self.sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10).get("Messages", [])
            if not got:
                return events
            events.extend(json.loads(m["Body"]) for m in got)
            self.sqs.delete_message_batch(
                QueueUrl=url,
                Entries=[
                    {"Id": str(k), "ReceiptHandle": m["ReceiptHandle"]} for k, m in enumerate(got)
                ],
            )


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
    """Makes moto really fail the PutEvents entries whose Detail `pick` selects, the
    first `times` times each is sent (a Detail that is not JSON: MalformedDetail). With
    `server_fault`, the failure is reported as EventBridge's own (InternalFailure)."""

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
        session.register("before-parameter-build.events.PutEvents", self.before)
        session.register("after-call.events.PutEvents", self.after)

    def before(self, params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        self.calls.append([dict(e) for e in params["Entries"]])
        chosen = []
        for position, entry in enumerate(params["Entries"]):
            detail = entry["Detail"]
            if self.pick(detail) and self.sent[detail] < self.times:
                self.sent[detail] += 1
                entry["Detail"] = "{not json"
                chosen.append(position)
        context["chosen"] = chosen

    def after(self, parsed: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        failed = [k for k, e in enumerate(parsed["Entries"]) if e.get("ErrorCode")]
        assert failed == context.get("chosen", [])
        if self.server_fault:
            for k in failed:
                parsed["Entries"][k]["ErrorCode"] = "InternalFailure"


class TestBuild:
    def test_describe_names_the_bus(self) -> None:
        assert eventbridge(source="s", detail_type="d").describe() == "eventbridge(default)"
        assert eventbridge("orders", source="s", detail_type="d").describe() == (
            "eventbridge(orders)"
        )

    def test_a_bus_arn_brings_its_region(self) -> None:
        arn = f"arn:aws:events:eu-west-1:{ACCOUNT}:event-bus/orders"
        assert eventbridge(arn, source="s", detail_type="d").region == "eu-west-1"
        assert eventbridge("orders", source="s", detail_type="d").region is None

    @pytest.mark.parametrize("bus", ["", "has space", "x" * 257])
    def test_a_bad_bus_name(self, bus: str) -> None:
        with pytest.raises(SinkError, match="needs an event bus name"):
            eventbridge(bus, source="s", detail_type="d")

    @pytest.mark.parametrize("option", ["source", "detail_type"])
    def test_source_and_detail_type_cannot_be_empty(self, option: str) -> None:
        options: dict[str, Any] = {"source": "s", "detail_type": "d", option: ""}
        with pytest.raises(SinkError, match=f"{option}= is empty; every event needs one"):
            eventbridge(**options)

    def test_resources_are_a_list_of_arns(self) -> None:
        with pytest.raises(SinkError, match="resources= must be a list of ARNs"):
            eventbridge(source="s", detail_type="d", resources="arn:aws:s3:::bucket")


class TestDelivery:
    async def test_events_reach_a_rules_target_once_each(self, aws: Aws, moto_url: str) -> None:
        # the rule takes two of the twelve items (four events), see the module docstring
        queue = aws.bus(pattern={"detail": {"pk": ["item#0-1", "item#2-3"]}})
        stream = changes(shards=3, items=4, versions=2, page_size=5)
        table = f"arn:aws:dynamodb:us-east-1:{ACCOUNT}:table/Items"
        sink = eventbridge(
            "changes",
            source=SOURCE,
            detail_type=lambda v, r: f"item {r.event_name.lower()}",
            resources=lambda v, r: [table],
            endpoint_url=moto_url,
        )

        def detail(record: Record) -> dict[str, Any]:
            return {"id": record.event_id, **(record.new_image or {})}

        report = await drain(fs.Pipeline(stream).map(detail).to(sink))
        assert report.delivered == 24
        assert sum(s.batches for s in report.sinks.values()) == 6  # pages of 5, 5, 2
        events = aws.events_in(queue)
        assert Counter(e["detail"]["id"] for e in events) == Counter(
            r.event_id for r in stream.records() if r.keys["pk"] in ("item#0-1", "item#2-3")
        )
        assert sorted(e["detail-type"] for e in events) == ["item insert"] * 2 + ["item modify"] * 2
        assert {e["source"] for e in events} == {SOURCE}
        assert all(e["resources"] == [table] for e in events)
        assert sorted((e["detail"]["pk"], e["detail"]["version"]) for e in events) == [
            ("item#0-1", 0),
            ("item#0-1", 1),
            ("item#2-3", 0),
            ("item#2-3", 1),
        ]

    async def test_the_default_bus_and_records_as_details(self, aws: Aws, moto_url: str) -> None:
        queue = aws.bus("default")
        stream = changes(1, 2, 1)
        sink = eventbridge(source=SOURCE, detail_type="change", endpoint_url=moto_url)
        await drain(fs.Pipeline(stream).to(sink))
        details = [e["detail"] for e in aws.events_in(queue)]
        assert sorted(d["eventID"] for d in details) == sorted(r.event_id for r in stream.records())
        assert details[0]["dynamodb"]["Keys"]["pk"]["S"].startswith("item#0-")

    async def test_json_text_passes_as_it_is(self, aws: Aws, moto_url: str) -> None:
        queue = aws.bus()
        sink = eventbridge("changes", source=SOURCE, detail_type="d", endpoint_url=moto_url)
        result = await send(sink, Batch("s", ['{"a": 1}', b' {"b": [2]}'], records(2)))
        assert result is None
        assert sorted(json.dumps(e["detail"]) for e in aws.events_in(queue)) == [
            '{"a": 1}',
            '{"b": [2]}',
        ]


class TestFailures:
    async def test_a_value_that_is_not_an_object_fails_only_that_item(
        self, aws: Aws, moto_url: str
    ) -> None:
        queue = aws.bus()
        stream = MemoryStream()
        shards = [stream.add_shard() for _ in range(2)]
        for n in range(2):
            stream.put(shards[n % 2], "INSERT", {"pk": f"k{n}"}, {"pk": f"k{n}"})
        stream.put(shards[0], "INSERT", {"pk": "list"}, {"pk": "list"})

        def detail(record: Record) -> Any:
            image = record.new_image or {}
            return [image["pk"]] if image["pk"] == "list" else image

        sink = eventbridge("changes", source=SOURCE, detail_type="d", endpoint_url=moto_url)
        with pytest.raises(ShardStoppedError) as caught:
            await drain(fs.Pipeline(stream).map(detail).to(sink))
        (stopped,) = caught.value.report.stopped_shards().values()
        assert stopped.shard_id == shards[0]
        assert retries(caught.value.report) == 0
        assert "a list value does not make a JSON object, and an event's Detail must be one" in (
            str(stopped.error)
        )
        assert sorted(e["detail"]["pk"] for e in aws.events_in(queue)) == ["k0", "k1"]

    @pytest.mark.parametrize(
        ("value", "problem"),
        [
            (7, "a int value does not make a JSON object"),
            ("plain text", "a str value does not make a JSON object"),
            ("{broken", "a str value does not make a JSON object"),
            (b'{"a": "\xff"}', "a bytes value does not make a JSON object"),
            ({"pad": "x" * 262_144}, "over the EventBridge limit of 262144 bytes (256 KiB)"),
            (object(), "cannot serialise a object value"),
        ],
        ids=["int", "text", "broken-json", "not-utf-8", "too-large", "object"],
    )
    async def test_a_value_that_cannot_be_a_detail_fails_alone(
        self, aws: Aws, moto_url: str, value: Any, problem: str
    ) -> None:
        aws.events.create_event_bus(Name="changes")  # no rule: PutEvents' answer tells
        sink = eventbridge("changes", source=SOURCE, detail_type="d", endpoint_url=moto_url)
        result = await send(sink, Batch("s", [{"n": 1}, value, {"n": 3}], records(3)))
        assert isinstance(result, SendResult)
        assert list(result.failed) == [1]
        error = result.failed[1]
        assert isinstance(error, DeliveryError)
        assert error.retryable is False
        assert problem in str(error)

    async def test_a_rejected_entry_stops_its_shard_and_the_rest_is_delivered(
        self, aws: Aws, moto_url: str
    ) -> None:
        queue = aws.bus()
        session = new_session()
        EntryFaults(session, lambda detail: '"k2"' in detail, times=10)
        stream = MemoryStream()
        shards = [stream.add_shard() for _ in range(2)]
        for n in range(3):
            stream.put(shards[n % 2], "INSERT", {"pk": f"k{n}"}, {"pk": f"k{n}"})
        sink = eventbridge(
            "changes", source=SOURCE, detail_type="d", endpoint_url=moto_url, session=session
        )
        with pytest.raises(ShardStoppedError) as caught:
            await drain(fs.Pipeline(stream).map(lambda r: r.new_image).to(sink))
        (stopped,) = caught.value.report.stopped_shards().values()
        assert stopped.shard_id == shards[0]
        assert "EventBridge did not take the event: MalformedDetail" in str(stopped.error)
        assert retries(caught.value.report) == 0
        assert sorted(e["detail"]["pk"] for e in aws.events_in(queue)) == ["k0", "k1"]

    async def test_an_internal_failure_is_retried_alone_and_delivered_once(
        self, aws: Aws, moto_url: str
    ) -> None:
        queue = aws.bus()
        session = new_session()
        poison = '{"pk":"item#1-0","version":0}'
        faults = EntryFaults(session, lambda d: d == poison, times=2, server_fault=True)
        sink = eventbridge(
            "changes", source=SOURCE, detail_type="d", endpoint_url=moto_url, session=session
        )
        report = await drain(fs.Pipeline(changes(2, 1, 1)).map(lambda r: r.new_image).to(sink))
        assert retries(report) == 2
        details = [e["detail"] for e in aws.events_in(queue)]
        assert sorted(d["pk"] for d in details) == ["item#0-0", "item#1-0"]
        assert [[e["Detail"] for e in call] for call in faults.calls[-2:]] == [[poison], [poison]]

    async def test_a_bad_source_from_a_function_fails_that_item(
        self, aws: Aws, moto_url: str
    ) -> None:
        aws.bus()
        sink = eventbridge(
            "changes",
            source=lambda v, r: v.get("source"),
            detail_type="d",
            endpoint_url=moto_url,
        )
        result = await send(sink, Batch("s", [{"source": SOURCE}, {"n": 2}], records(2)))
        assert isinstance(result, SendResult)
        assert list(result.failed) == [1]
        assert "source= returned None; it must return a non-empty str" in str(result.failed[1])


class TestSetupErrors:
    async def test_a_missing_bus_fails_the_run_at_once(self, moto_url: str) -> None:
        sink = eventbridge("missing", source=SOURCE, detail_type="d", endpoint_url=moto_url)
        with anyio.fail_after(PROMPT), pytest.raises(SinkError) as caught:
            await fs.Pipeline(changes(2, 2, 1)).to(sink).run(drain=True)
        assert type(caught.value) is SinkError
        assert str(caught.value).startswith("EventBridge bus 'missing' does not exist in us-east-1")
        assert "create it, or check the bus name, region= and endpoint_url=" in str(caught.value)
