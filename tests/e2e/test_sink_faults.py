"""Sink faults end to end, through `on_failure(...)`: a pipeline reads a MemoryStream (or
a LocalStreamsServer through `sources.dynamodb`) and delivers to a real aiohttp server on
127.0.0.1 or to SQS queues on moto's server. Each test checks what a user relies on:
what the destination accepted and in which order, what reached the dead-letter sink
with which fields, and the checkpoints and report counts afterwards.

The recording HTTP endpoint is a small copy of the one in tests/sinks/test_http_sink.py
(a test module, not importable from here): it logs every request in arrival order and
answers each as the test scripts it, per shard.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import pytest
from aiohttp import web
from moto_server import closed_port
from sink_support import new_session
from support import local_http

import flowstream as fs
from flowstream import checkpoints, sinks, sources
from flowstream.checkpoints.memory import MemoryCheckpoints
from flowstream.sinks.http import HttpSink
from flowstream.testing import LocalStreamsServer, MemoryStream

PIPELINE = "orders"
RETRIES = 3
BACKOFF = (0.01, 0.05)
#: A whole drained run; every test here takes well under a second of it.
TIMEOUT = 20.0
REGION = "us-east-1"


# -- the HTTP endpoint ----------------------------------------------------------------------


@dataclass
class Reply:
    """What the endpoint answers. `hold`: answer only when the server shuts down, so the
    client's timeout comes first."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    hold: bool = False


@dataclass
class Seen:
    """One request as the endpoint received it."""

    n: int  # arrival order, from 0
    nth: int  # arrival order among the requests of its shard, from 0
    shard: str
    items: list[dict[str, Any]]
    key: str | None  # the Idempotency-Key header
    at: float  # time.monotonic() on arrival
    status: int | None = None  # None while held
    answered_at: float = 0.0

    @property
    def pks(self) -> list[str]:
        return [i["pk"] for i in self.items]

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300


class Endpoint:
    """Logs every request and answers it with `script(seen)` (200 unless set)."""

    def __init__(self) -> None:
        self.url = ""
        self.seen: list[Seen] = []
        self.script: Callable[[Seen], Reply] = lambda seen: Reply()
        self._per_shard: Counter[str] = Counter()
        self._closing = anyio.Event()

    async def handle(self, request: web.Request) -> web.Response:
        value = json.loads(await request.read())
        items = value if isinstance(value, list) else [value]
        shard = items[0]["shard"]
        seen = Seen(
            len(self.seen),
            self._per_shard[shard],
            shard,
            items,
            request.headers.get("Idempotency-Key"),
            time.monotonic(),
        )
        self._per_shard[shard] += 1
        self.seen.append(seen)
        reply = self.script(seen)
        if reply.hold:
            with anyio.move_on_after(TIMEOUT):
                await self._closing.wait()
            reply = Reply(504)  # the client gave up long ago
        seen.status, seen.answered_at = reply.status, time.monotonic()
        return web.Response(status=reply.status, headers=reply.headers, body=reply.body)

    def requests(self, shard: str) -> list[Seen]:
        return [s for s in self.seen if s.shard == shard]

    def accepted(self, shard: str) -> list[dict[str, Any]]:
        """The items of `shard` the endpoint answered 2xx, in arrival order."""
        return [i for s in self.requests(shard) if s.ok for i in s.items]

    def attempts(self, pk: str) -> int:
        return sum(pk in s.pks for s in self.seen)

    def close(self) -> None:
        self._closing.set()


@asynccontextmanager
async def serve() -> AsyncIterator[Endpoint]:
    endpoint = Endpoint()
    async with local_http(endpoint.handle) as url:
        endpoint.url = f"{url}/hook"
        try:
            yield endpoint
        finally:
            endpoint.close()


@pytest.fixture
async def endpoint() -> AsyncIterator[Endpoint]:
    async with serve() as endpoint:
        yield endpoint


def refused() -> str:
    """The URL of an HTTP sink whose host refuses connections."""
    return f"http://127.0.0.1:{closed_port()}/hook"


# -- streams, pipelines, runs ---------------------------------------------------------------


def make_stream(shards: int = 3, per_shard: int = 8, *, page_size: int = 1000) -> MemoryStream:
    """`per_shard` MODIFYs (both images) of items ``s<shard>-k<n>`` in each shard."""
    stream = MemoryStream(table="Orders", page_size=page_size)
    ids = [stream.add_shard() for _ in range(shards)]
    for n in range(per_shard):
        for s, shard in enumerate(ids):
            pk = f"s{s}-k{n}"
            stream.put(
                shard,
                "MODIFY",
                {"pk": pk},
                {"pk": pk, "n": n, "status": "paid"},
                {"pk": pk, "n": n, "status": "open"},
            )
    return stream


def item(record: fs.Record) -> dict[str, Any]:
    return {"pk": record.keys["pk"], "shard": record.shard_id, "seq": record.sequence_number}


def items(records: list[fs.Record], *, without: fs.Record | None = None) -> list[dict[str, Any]]:
    return [item(r) for r in records if r != without]


def pk(record: fs.Record) -> str:
    return str(record.keys["pk"])


def http_pipeline(source: fs.sources.Source, sink: HttpSink, **policy: Any) -> fs.Pipeline[Any]:
    return (
        fs.Pipeline(source, name=PIPELINE)
        .map(item)
        .to(sink)
        .on_failure(retries=RETRIES, backoff=BACKOFF, **policy)
    )


async def drain(pipeline: fs.Pipeline[Any], store: MemoryCheckpoints) -> fs.RunReport:
    with anyio.fail_after(TIMEOUT):
        return await pipeline.run(drain=True, checkpoints=store)


async def drain_stopped(pipeline: fs.Pipeline[Any], store: MemoryCheckpoints) -> fs.RunReport:
    """A drained run that must end in `ShardStoppedError`; its report."""
    with anyio.fail_after(TIMEOUT), pytest.raises(fs.ShardStoppedError) as caught:
        await pipeline.run(drain=True, checkpoints=store)
    return caught.value.report


def positions(store: MemoryCheckpoints, stream_id: str) -> dict[str, str]:
    return store.positions(PIPELINE, stream_id)


def assert_whole_record(got: fs.Record, original: fs.Record) -> None:
    """`got` carries everything `original` did (records compare by position only)."""
    assert got.event_id == original.event_id
    assert got.event_name == original.event_name
    assert got.keys == original.keys
    assert got.new_image == original.new_image
    assert got.old_image == original.old_image
    assert got.sequence_number == original.sequence_number
    assert got.shard_id == original.shard_id
    assert got.approximate_creation_time == original.approximate_creation_time
    assert got.stream_view_type == original.stream_view_type


def counts(report: fs.RunReport, shard: str) -> tuple[int, int, int, int]:
    """(delivered, retries, failed, dead_lettered) of `shard`."""
    s = report.shards[shard]
    return s.delivered, s.retries, s.failed, s.dead_lettered


# -- transient faults: retried, then everything delivered ----------------------------------


class TestTransientHttpFaults:
    async def test_500s_then_healthy_deliver_everything_once_in_order(
        self, endpoint: Endpoint
    ) -> None:
        stream = make_stream(shards=3, per_shard=8)
        # each shard's first RETRIES requests get a 500: exactly what the policy absorbs
        endpoint.script = lambda s: (
            Reply(500, body=b"upstream down") if s.nth < RETRIES else Reply()
        )
        sink, dead, store = sinks.http(endpoint.url), sinks.collect("dead"), checkpoints.memory()

        report = await drain(http_pipeline(stream, sink, dead_letter=dead), store)

        for shard in stream.shard_ids:
            records = stream.records(shard)
            assert endpoint.accepted(shard) == items(records)
            # the first record is retried in place: nothing after it goes out meanwhile
            sent = [s.pks for s in endpoint.requests(shard)]
            assert sent == [[pk(records[0])]] * (RETRIES + 1) + [[pk(r)] for r in records[1:]]
            # every attempt of a record carries its one idempotency key
            first = endpoint.requests(shard)[: RETRIES + 1]
            assert {s.key for s in first} == {records[0].event_id}
            assert counts(report, shard) == (8, RETRIES, 0, 0)
            assert report.shards[shard].state is fs.ShardState.CAUGHT_UP
            assert positions(store, stream.stream_arn)[shard] == records[-1].sequence_number
        assert dead.items == []
        assert report.sinks[sink.name].delivered == 24
        assert report.sinks[sink.name].failed == 0

    async def test_timeouts_then_healthy_are_retried_and_delivered(
        self, endpoint: Endpoint
    ) -> None:
        stream = make_stream(shards=2, per_shard=5)
        timeout = 0.2
        # each shard's first two requests get no answer within the sink's timeout
        endpoint.script = lambda s: Reply(hold=True) if s.nth < 2 else Reply()
        sink, store = sinks.http(endpoint.url, timeout=timeout), checkpoints.memory()

        report = await drain(http_pipeline(stream, sink), store)

        for shard in stream.shard_ids:
            records = stream.records(shard)
            requests = endpoint.requests(shard)
            assert endpoint.accepted(shard) == items(records)
            assert [s.status for s in requests[:2]] == [None, None]  # still unanswered
            assert [s.pks for s in requests[:3]] == [[pk(records[0])]] * 3
            # the sink waited out its timeout before giving up on a request
            assert requests[1].at - requests[0].at >= 0.9 * timeout
            assert counts(report, shard) == (5, 2, 0, 0)
            assert positions(store, stream.stream_arn)[shard] == records[-1].sequence_number

    async def test_429_with_retry_after_is_retried_after_the_asked_wait(
        self, endpoint: Endpoint
    ) -> None:
        stream = make_stream(shards=2, per_shard=4)
        replies = [
            Reply(429, {"Retry-After": "0"}, b"slow down"),
            Reply(429, {"Retry-After": "0"}, b"slow down"),
            Reply(429, {"Retry-After": "1"}, b"slow down"),
        ]
        endpoint.script = lambda s: replies[s.nth] if s.nth < len(replies) else Reply()
        sink, dead, store = sinks.http(endpoint.url), sinks.collect("dead"), checkpoints.memory()

        report = await drain(http_pipeline(stream, sink, dead_letter=dead), store)

        for shard in stream.shard_ids:
            records = stream.records(shard)
            requests = endpoint.requests(shard)
            assert endpoint.accepted(shard) == items(records)
            assert [s.status for s in requests] == [429, 429, 429, 200, 200, 200, 200]
            # Retry-After: 1 outweighs a backoff of at most 0.05 s
            assert requests[3].at - requests[2].answered_at >= 0.95
            assert counts(report, shard) == (4, 3, 0, 0)
            assert positions(store, stream.stream_arn)[shard] == records[-1].sequence_number
        assert dead.items == []


# -- connection refused -------------------------------------------------------------------


class TestConnectionRefused:
    async def test_with_a_dead_letter_file_each_record_lands_there_after_retries_plus_1(
        self, tmp_path: Path
    ) -> None:
        stream = make_stream(shards=2, per_shard=3)
        path = tmp_path / "dead.jsonl"
        sink, store = sinks.http(refused()), checkpoints.memory()

        report = await drain(http_pipeline(stream, sink, dead_letter=sinks.jsonl(path)), store)

        letters = [fs.decode_dead_letter(line) for line in path.read_bytes().splitlines()]
        for shard in stream.shard_ids:
            records = stream.records(shard)
            mine = [x for x in letters if x.shard_id == shard]
            assert [x.sequence_number for x in mine] == [r.sequence_number for r in records]
            for letter, record in zip(mine, records, strict=True):
                assert letter.attempts == RETRIES + 1
                assert letter.reason == "retries_exhausted"
                assert letter.error is not None
                assert letter.error.type == "DeliveryError"
                assert "Cannot connect to host 127.0.0.1" in letter.error.message
                assert letter.step == f"sink {sink.name}"
                assert (letter.pipeline, letter.stream) == (PIPELINE, stream.stream_arn)
                assert letter.first_failure is not None
                assert letter.last_failure is not None
                assert letter.first_failure <= letter.last_failure
                assert_whole_record(letter.record, record)
            assert counts(report, shard) == (0, 3 * RETRIES, 3, 3)
            assert report.shards[shard].state is fs.ShardState.CAUGHT_UP
            # dead-lettered records are done: the checkpoint moves past them
            assert positions(store, stream.stream_arn)[shard] == records[-1].sequence_number
        assert report.sinks[sink.name].failed == 6
        assert report.sinks[f"jsonl({path})"].delivered == 6

    async def test_without_one_the_shard_stops_before_its_first_undelivered_record(
        self,
    ) -> None:
        # the real aiobotocore source path: LocalStreamsServer and sources.dynamodb
        stream = MemoryStream(table="Orders")
        ids = [stream.add_shard() for _ in range(2)]

        def put(n: int) -> None:
            for s, shard in enumerate(ids):
                stream.put(shard, "INSERT", {"pk": f"s{s}-k{n}"}, {"pk": f"s{s}-k{n}"})

        for n in range(3):
            put(n)
        store = checkpoints.memory()
        async with serve() as up, LocalStreamsServer(stream) as server:
            source = sources.dynamodb(
                stream_arn=server.stream_arn,
                endpoint_url=server.endpoint_url,
                idle_interval=0.02,
                max_polls_per_second=200.0,
            )
            await drain(http_pipeline(source, sinks.http(up.url)), store)
            for n in range(3, 6):
                put(n)

            # the endpoint is gone: no dead-letter sink, so each shard stops and waits
            down = sinks.http(refused())
            report = await drain_stopped(http_pipeline(source, down), store)

            for shard in ids:
                records = stream.records(shard)
                stats = report.shards[shard]
                assert stats.state is fs.ShardState.STOPPED
                assert stats.stopped_at == records[3].sequence_number
                assert "Cannot connect to host 127.0.0.1" in (stats.error or "")
                assert (stats.delivered, stats.retries, stats.dead_lettered) == (0, RETRIES, 0)
                assert positions(store, server.stream_arn)[shard] == records[2].sequence_number
            assert report.sinks[down.name].failed == 2
            stopped = report

            # the endpoint is back: each shard resumes at the record it stopped at
            again = await drain(http_pipeline(source, sinks.http(up.url)), store)
            for shard in ids:
                records = stream.records(shard)
                assert up.accepted(shard) == items(records)  # each once, in order
                assert again.shards[shard].delivered == 3
                assert positions(store, server.stream_arn)[shard] == records[-1].sequence_number

        # each stopped shard failed one record (as a shard stopped by a map step counts it),
        # and the run's total, which report.summary() prints, says so
        assert [stopped.shards[shard].failed for shard in ids] == [1, 1]
        assert stopped.failed == 2


# -- a poison record ------------------------------------------------------------------------


class TestPoisonRecord:
    async def test_a_400_goes_to_the_dead_letter_sink_at_once_with_the_whole_record(
        self, endpoint: Endpoint
    ) -> None:
        stream = make_stream(shards=3, per_shard=8)
        bad = stream.shard_ids[1]
        poison = stream.records(bad)[3]
        endpoint.script = lambda s: (
            Reply(400, body=b"rejected: order total is negative")
            if pk(poison) in s.pks
            else Reply()
        )
        sink, dead, store = sinks.http(endpoint.url), sinks.collect("dead"), checkpoints.memory()

        report = await drain(http_pipeline(stream, sink, dead_letter=dead), store)

        (letter,) = dead.items
        assert isinstance(letter, fs.DeadLetter)
        assert endpoint.attempts(pk(poison)) == 1
        assert (letter.reason, letter.attempts) == ("not_retryable", 1)
        assert letter.error is not None
        assert letter.error.type == "DeliveryError"
        assert "HTTP 400" in letter.error.message
        assert "rejected: order total is negative" in letter.error.message
        assert letter.step == f"sink {sink.name}"
        assert (letter.pipeline, letter.stream) == (PIPELINE, stream.stream_arn)
        assert (letter.shard_id, letter.sequence_number) == (bad, poison.sequence_number)
        assert_whole_record(letter.record, poison)
        # and so does the JSON document any serialising dead-letter sink receives
        assert_whole_record(fs.decode_dead_letter(letter.to_json()).record, poison)
        assert poison.old_image is not None  # the letter carried both images
        assert poison.new_image is not None

        for shard in stream.shard_ids:
            records = stream.records(shard)
            assert endpoint.accepted(shard) == items(records, without=poison)
            assert positions(store, stream.stream_arn)[shard] == records[-1].sequence_number
        assert counts(report, bad) == (7, 0, 1, 1)
        assert report.dead_lettered == 1
        assert report.sinks[sink.name].delivered == 23
        assert report.sinks["dead"].delivered == 1

    async def test_a_500_every_time_is_dead_lettered_after_retries_before_later_records_go(
        self, endpoint: Endpoint
    ) -> None:
        # pages of 3: the poison opens the second page, and the third page waits for it too
        stream = make_stream(shards=3, per_shard=8, page_size=3)
        bad = stream.shard_ids[1]
        records = stream.records(bad)
        poison = records[3]
        endpoint.script = lambda s: (
            Reply(500, body=b"internal error") if pk(poison) in s.pks else Reply()
        )
        sink, dead, store = sinks.http(endpoint.url), sinks.collect("dead"), checkpoints.memory()

        report = await drain(http_pipeline(stream, sink, dead_letter=dead), store)

        (letter,) = dead.items
        assert (letter.reason, letter.attempts) == ("retries_exhausted", RETRIES + 1)
        assert letter.error is not None
        assert "HTTP 500" in letter.error.message
        assert_whole_record(letter.record, poison)
        assert endpoint.attempts(pk(poison)) == RETRIES + 1

        # the shard's arrival log: the poison's attempts, then (only then) what follows it
        sent = [s.pks for s in endpoint.requests(bad)]
        assert sent == (
            [[pk(r)] for r in records[:3]]
            + [[pk(poison)]] * (RETRIES + 1)
            + [[pk(r)] for r in records[4:]]
        )
        last_attempt = max(s.n for s in endpoint.seen if pk(poison) in s.pks)
        later = {pk(r) for r in records[4:]}
        assert all(s.n > last_attempt for s in endpoint.seen if later & set(s.pks))

        for shard in stream.shard_ids:
            assert endpoint.accepted(shard) == items(stream.records(shard), without=poison)
            expected = (7, RETRIES, 1, 1) if shard == bad else (8, 0, 0, 0)
            assert counts(report, shard) == expected
            last = stream.records(shard)[-1].sequence_number
            assert positions(store, stream.stream_arn)[shard] == last


# -- a poison item in a batch -------------------------------------------------------------


class TestBisect:
    @staticmethod
    def batch_stream() -> tuple[MemoryStream, str, str, fs.Record]:
        """Two shards of 100 records each (one page, one request of 100); the 38th
        record of the first shard is the poison."""
        stream = make_stream(shards=2, per_shard=100)
        bad, good = stream.shard_ids
        return stream, bad, good, stream.records(bad)[37]

    @pytest.mark.parametrize(
        ("status", "reason", "attempts"),
        [(400, "not_retryable", 1), (500, "retries_exhausted", RETRIES + 1)],
        ids=["400-not-retried", "500-retried-first"],
    )
    async def test_a_batch_of_100_rejected_for_one_item_is_bisected_to_it(
        self, endpoint: Endpoint, status: int, reason: str, attempts: int
    ) -> None:
        """A 400 is bisected at once; a 500 is first retried as a whole (`retries`
        times), then bisected. The calls made only to find the item are not counted
        as its attempts."""
        stream, bad, good, poison = self.batch_stream()
        endpoint.script = lambda s: (
            Reply(status, body=b"batch rejected: one bad order") if pk(poison) in s.pks else Reply()
        )
        sink = sinks.http(endpoint.url, batch_size=100)
        dead, store = sinks.collect("dead"), checkpoints.memory()

        report = await drain(http_pipeline(stream, sink, dead_letter=dead), store)

        requests = endpoint.requests(bad)
        whole = attempts  # the calls of the whole batch before bisecting
        assert [s.pks for s in requests[:whole]] == [[pk(r) for r in stream.records(bad)]] * whole
        assert len(requests[whole - 1].items) == 100
        assert len(requests[whole].items) == 50
        # halving 100 items down to one takes 7 levels of two requests each
        assert len(requests) <= whole + 14
        assert sum(not s.ok for s in requests) <= whole + 7  # one failing half per level
        assert endpoint.accepted(bad) == items(stream.records(bad), without=poison)
        assert endpoint.accepted(good) == items(stream.records(good))
        assert len(endpoint.requests(good)) == 1

        (letter,) = dead.items
        assert (letter.reason, letter.attempts) == (reason, attempts)
        assert letter.error is not None
        assert f"HTTP {status}" in letter.error.message
        assert_whole_record(letter.record, poison)
        assert counts(report, bad) == (99, attempts - 1, 1, 1)
        assert counts(report, good) == (100, 0, 0, 0)
        for shard in (bad, good):
            last = stream.records(shard)[-1].sequence_number
            assert positions(store, stream.stream_arn)[shard] == last

    async def test_without_bisect_the_whole_rejected_batch_is_dead_lettered(
        self, endpoint: Endpoint
    ) -> None:
        """`bisect=False`: a batch the endpoint rejects as a whole cannot be told apart,
        so all 100 of its records go to the dead-letter sink, the 99 good ones too."""
        stream, bad, good, poison = self.batch_stream()
        endpoint.script = lambda s: (
            Reply(400, body=b"batch rejected: one bad order") if pk(poison) in s.pks else Reply()
        )
        sink = sinks.http(endpoint.url, batch_size=100)
        dead, store = sinks.collect("dead"), checkpoints.memory()

        report = await drain(http_pipeline(stream, sink, bisect=False, dead_letter=dead), store)

        assert len(endpoint.requests(bad)) == 1
        assert endpoint.accepted(bad) == []
        assert endpoint.accepted(good) == items(stream.records(good))
        letters: list[fs.DeadLetter] = dead.items
        assert [x.record for x in letters] == stream.records(bad)
        for letter, record in zip(letters, stream.records(bad), strict=True):
            assert (letter.reason, letter.attempts) == ("not_retryable", 1)
            assert letter.error is not None
            assert "HTTP 400" in letter.error.message
            assert_whole_record(letter.record, record)
        assert counts(report, bad) == (0, 0, 100, 100)
        assert counts(report, good) == (100, 0, 0, 0)
        last = stream.records(bad)[-1].sequence_number
        assert positions(store, stream.stream_arn)[bad] == last


# -- SQS: entries failed one by one ---------------------------------------------------------


async def receive_all(client: Any, queue_url: str) -> list[dict[str, Any]]:
    """Every message in the queue (each hidden for a minute once received)."""
    messages: list[dict[str, Any]] = []
    while True:
        response = await client.receive_message(
            QueueUrl=queue_url, MaxNumberOfMessages=10, VisibilityTimeout=60
        )
        got = response.get("Messages", [])
        if not got:
            return messages
        messages.extend(got)


class TestSqsPartialBatch:
    async def test_rejected_entries_go_to_an_sqs_dead_letter_queue_the_rest_arrive(
        self, moto_url: str, shared_models: None
    ) -> None:
        """Three entries of one SendMessageBatch flow fail one by one, each in its own
        way: a NUL character (which SQS refuses; the sink knows before sending), a body
        over the queue's MaximumMessageSize (1024 here, read from the queue when the sink
        opens), and one moto itself rejects in its response (a botocore hook on the sink's
        own session gives that entry DelaySeconds=1800 in the real request: moto fails
        only such entries one by one). All are the sender's fault: not retried."""
        stream = MemoryStream(table="Orders")
        ids = [stream.add_shard() for _ in range(2)]
        special = {"s0-k1": "bad \x00 byte", "s0-k3": "x" * 2000, "s1-k2": "reject-at-sqs"}
        for n in range(6):
            for s, shard in enumerate(ids):
                key = f"s{s}-k{n}"
                stream.put(
                    shard, "INSERT", {"pk": key}, {"pk": key, "text": special.get(key, "ok")}
                )

        def body(record: fs.Record) -> str:
            return f"{record.keys['pk']}|{record.new_image['text']}"  # type: ignore[index]

        sink_session = new_session()

        def reject_at_sqs(params: dict[str, Any], **_: Any) -> None:
            for entry in params["Entries"]:
                if entry["MessageBody"].endswith("|reject-at-sqs"):
                    entry["DelaySeconds"] = 1800

        sink_session.register("before-parameter-build.sqs.SendMessageBatch", reject_at_sqs)

        async with new_session().create_client(
            "sqs", endpoint_url=moto_url, region_name=REGION
        ) as client:
            created = await client.create_queue(
                QueueName="orders", Attributes={"MaximumMessageSize": "1024"}
            )
            queue_url = created["QueueUrl"]
            dead_url = (await client.create_queue(QueueName="orders-dead"))["QueueUrl"]
            sink = sinks.sqs(queue_url, endpoint_url=moto_url, session=sink_session)
            dead = sinks.sqs(dead_url, endpoint_url=moto_url)
            pipeline = (
                fs.Pipeline(stream, name=PIPELINE)
                .map(body)
                .to(sink)
                .on_failure(retries=RETRIES, backoff=BACKOFF, dead_letter=dead)
            )
            store = checkpoints.memory()

            report = await drain(pipeline, store)

            arrived = [m["Body"] for m in await receive_all(client, queue_url)]
            received = await receive_all(client, dead_url)

        records = {pk(r): r for r in stream.records()}
        good = [body(r) for key, r in records.items() if key not in special]
        assert sorted(arrived) == sorted(good)  # each once (a standard queue: no order)

        letters = {pk(x.record): x for x in (fs.decode_dead_letter(m["Body"]) for m in received)}
        assert len(received) == 3
        assert set(letters) == set(special)
        messages = {
            "s0-k1": "U+0000",
            "s0-k3": "over the SQS limit of 1024 bytes",
            "s1-k2": "InvalidParameterValue",
        }
        for key, letter in letters.items():
            assert (letter.reason, letter.attempts) == ("not_retryable", 1)
            assert letter.error is not None
            assert letter.error.type == "DeliveryError"
            assert messages[key] in letter.error.message
            assert letter.step == f"sink {sink.name}"
            assert_whole_record(letter.record, records[key])
        assert letters["s0-k1"].record.new_image == {"pk": "s0-k1", "text": "bad \x00 byte"}

        assert counts(report, ids[0]) == (4, 0, 2, 2)
        assert counts(report, ids[1]) == (5, 0, 1, 1)
        assert report.sinks[sink.name].failed == 3
        assert report.sinks[dead.name].delivered == 3
        for shard in ids:
            last = stream.records(shard)[-1].sequence_number
            assert positions(store, stream.stream_arn)[shard] == last


# -- the dead-letter sink fails too ---------------------------------------------------------


class TestDeadLetterSinkFails:
    async def test_the_shard_stops_at_the_poison_and_the_others_go_on(
        self, endpoint: Endpoint
    ) -> None:
        stream = make_stream(shards=3, per_shard=8, page_size=4)
        bad = stream.shard_ids[1]
        records = stream.records(bad)
        poison = records[5]  # in the second page
        endpoint.script = lambda s: Reply(400, body=b"rejected") if pk(poison) in s.pks else Reply()
        sink, store = sinks.http(endpoint.url), checkpoints.memory()
        broken = sinks.http(refused())

        report = await drain_stopped(http_pipeline(stream, sink, dead_letter=broken), store)

        stats = report.shards[bad]
        assert stats.state is fs.ShardState.STOPPED
        assert stats.stopped_at == poison.sequence_number
        assert f"dead-letter sink {broken.name}" in (stats.error or "")
        assert "Cannot connect to host 127.0.0.1" in (stats.error or "")
        assert (stats.retries, stats.failed, stats.dead_lettered) == (RETRIES, 1, 0)
        assert positions(store, stream.stream_arn)[bad] == records[4].sequence_number
        # what came before the poison arrived once, in order; the poison never did
        assert endpoint.accepted(bad)[:5] == items(records[:5])
        assert pk(poison) not in [i["pk"] for i in endpoint.accepted(bad)]
        for shard in stream.shard_ids:
            if shard != bad:
                assert report.shards[shard].state is fs.ShardState.CAUGHT_UP
                assert endpoint.accepted(shard) == items(stream.records(shard))
                last = stream.records(shard)[-1].sequence_number
                assert positions(store, stream.stream_arn)[shard] == last

        # nothing was lost: with a working dead-letter sink the next run resumes at the
        # poison, dead-letters it and delivers the rest of its shard (again: at least once)
        seen_before = len(endpoint.seen)
        dead = sinks.collect("dead")
        again = await drain(http_pipeline(stream, sink, dead_letter=dead), store)

        (letter,) = dead.items
        assert letter.reason == "not_retryable"
        assert_whole_record(letter.record, poison)
        resent = [i for s in endpoint.seen[seen_before:] if s.ok for i in s.items]
        assert resent == items(records[6:])
        assert counts(again, bad) == (2, 0, 1, 1)
        assert positions(store, stream.stream_arn)[bad] == records[-1].sequence_number
