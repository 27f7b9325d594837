"""`pipeline.lambda_handler()`: a batch from Lambda's DynamoDB event source mapping runs
through the pipeline as `run()` would, and the answer follows the ReportBatchItemFailures
contract: nothing, or the first record not done, with nothing after it sent anywhere.
The handler is called as Lambda's runtime calls it: a plain function, from a thread with
no event loop, many times in one process."""

from __future__ import annotations

import asyncio
import http.server
import json
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar

import anyio
import pytest

import flowstream as fs
from flowstream import sinks
from flowstream.aws_lambda import LambdaBatchError, LambdaHandler
from flowstream.errors import DeliveryError, PipelineError
from flowstream.record import Record
from flowstream.sinks.base import Batch, SendResult, Sink, SinkWriter
from flowstream.testing import MemoryStream
from flowstream.testing.lambda_events import lambda_context, lambda_event

EVENTS = Path(__file__).resolve().parent.parent / "events"


def stream_of(count: int, *, created_at: datetime | None = None) -> MemoryStream:
    stream = MemoryStream(table="orders")
    shard = stream.add_shard()
    for n in range(count):
        stream.put(shard, "INSERT", {"pk": f"k{n}"}, {"pk": f"k{n}", "n": n}, created_at=created_at)
    return stream


def numbers(stream: MemoryStream) -> list[int]:
    return [record.new_value("n") for record in stream.records()]


@pytest.fixture
def closing() -> Iterator[list[LambdaHandler]]:
    """Handlers to close after the test (their sinks and loop)."""
    handlers: list[LambdaHandler] = []
    yield handlers
    for handler in handlers:
        handler.close()


class CountingSink(Sink):
    """Counts its opens and notes the event loop of every send: a warm environment
    opens it once and sends from one loop."""

    def __init__(self) -> None:
        self.opens = 0
        self.closes = 0
        self.loops: set[int] = set()
        self.items: list[Any] = []

    def describe(self) -> str:
        return "counting"

    def open(self) -> AbstractAsyncContextManager[SinkWriter]:
        return self._open()

    @asynccontextmanager
    async def _open(self) -> AsyncIterator[SinkWriter]:
        self.opens += 1
        try:
            yield _CountingWriter(self)
        finally:
            self.closes += 1


class _CountingWriter(SinkWriter):
    def __init__(self, sink: CountingSink) -> None:
        self.sink = sink

    async def send(self, batch: Batch) -> SendResult | None:
        self.sink.loops.add(id(asyncio.get_running_loop()))
        self.sink.items.extend(batch.values)
        return None


class TestBatches:
    def test_a_clean_batch_is_delivered_in_order(self, closing: list[Any]) -> None:
        stream = stream_of(10)
        out = sinks.collect()
        pipeline = fs.Pipeline(stream, name="orders").map(lambda r: r.new_value("n")).to(out)
        handler = pipeline.lambda_handler(metrics=False)
        closing.append(handler)
        answer = handler(lambda_event(stream.records()), lambda_context())
        assert answer == {"batchItemFailures": []}
        assert out.items == numbers(stream)

    def test_a_failing_record_is_answered_and_nothing_after_it_is_sent(
        self, closing: list[Any]
    ) -> None:
        stream = stream_of(10)
        first, second = sinks.collect("first"), sinks.collect("second")

        def value(record: Record) -> int:
            n: int = record.new_value("n")
            if n == 6:
                raise ValueError("no sixes")
            return n

        pipeline = (
            fs.Pipeline(stream, name="orders")
            .map(value)
            .route(fs.when(lambda n: n % 2 == 0, first), otherwise=second)
            .on_failure(retries=1, backoff=(0.01, 0.01))
        )
        handler = pipeline.lambda_handler(metrics=False)
        closing.append(handler)
        records = stream.records()
        answer = handler(lambda_event(records), lambda_context())
        assert answer == {"batchItemFailures": [{"itemIdentifier": records[6].sequence_number}]}
        assert first.items == [0, 2, 4]
        assert second.items == [1, 3, 5]
        assert handler.last is not None
        assert (handler.last.failed, handler.last.first_failure) == (4, records[6].sequence_number)
        assert "no sixes" in handler.last.stop

    def test_a_sink_that_refuses_an_item_for_good_stops_there(self, closing: list[Any]) -> None:
        stream = stream_of(6)
        delivered: list[int] = []

        async def send(values: list[int]) -> None:
            for n in values:
                if n == 3:
                    raise DeliveryError("item 3 is refused", retryable=False)
                delivered.append(n)

        pipeline = (
            fs.Pipeline(stream, name="orders")
            .map(lambda r: r.new_value("n"))
            .to(sinks.callback(send, name="api"))
        )
        handler = pipeline.lambda_handler(metrics=False)
        closing.append(handler)
        records = stream.records()
        answer = handler(lambda_event(records), lambda_context())
        assert answer == {"batchItemFailures": [{"itemIdentifier": records[3].sequence_number}]}
        assert delivered[-1] < 3
        assert 4 not in delivered
        assert 5 not in delivered

    def test_a_dead_lettered_record_carries_the_record_and_the_batch_succeeds(
        self, closing: list[Any]
    ) -> None:
        stream = stream_of(5)
        out, letters = sinks.collect("out"), sinks.collect("letters")

        def value(record: Record) -> int:
            n: int = record.new_value("n")
            if n == 2:
                raise ValueError("bad two")
            return n

        pipeline = (
            fs.Pipeline(stream, name="orders")
            .map(value)
            .to(out)
            .on_failure(retries=0, dead_letter=letters)
        )
        handler = pipeline.lambda_handler(metrics=False)
        closing.append(handler)
        records = stream.records()
        assert handler(lambda_event(records), lambda_context()) == {"batchItemFailures": []}
        assert out.items == [0, 1, 3, 4]
        (letter,) = letters.items
        assert isinstance(letter, fs.DeadLetter)
        assert letter.sequence_number == records[2].sequence_number
        assert letter.record.new_value("n") == 2
        assert letter.error is not None
        assert "bad two" in letter.error.message
        assert handler.last is not None
        assert handler.last.dead_lettered == 1

    def test_a_record_older_than_max_record_age_is_dead_lettered(self, closing: list[Any]) -> None:
        old = stream_of(3, created_at=datetime.now(UTC) - timedelta(hours=2))
        out, letters = sinks.collect("out"), sinks.collect("letters")
        pipeline = (
            fs.Pipeline(old, name="orders")
            .map(lambda r: r.new_value("n"))
            .to(out)
            .on_failure(max_record_age=timedelta(hours=1), dead_letter=letters)
        )
        handler = pipeline.lambda_handler(metrics=False)
        closing.append(handler)
        assert handler(lambda_event(old.records()), lambda_context()) == {"batchItemFailures": []}
        assert out.items == []
        assert [letter.reason for letter in letters.items] == ["max_record_age"] * 3

    def test_a_retryable_sink_failure_recovers_within_the_invocation(
        self, closing: list[Any]
    ) -> None:
        stream = stream_of(8)
        calls: list[list[int]] = []

        async def flaky(values: list[int]) -> None:
            calls.append(values)
            if len(calls) <= 2:
                raise DeliveryError("503 from the API", retryable=True)

        pipeline = (
            fs.Pipeline(stream, name="orders")
            .map(lambda r: r.new_value("n"))
            .to(sinks.callback(flaky, name="api"))
            .on_failure(retries=3, backoff=(0.01, 0.02))
        )
        handler = pipeline.lambda_handler(metrics=False)
        closing.append(handler)
        assert handler(lambda_event(stream.records()), lambda_context()) == {
            "batchItemFailures": []
        }
        assert calls[-1] == numbers(stream)
        assert len(calls) == 3

    def test_an_empty_batch_is_a_success(self, closing: list[Any]) -> None:
        handler = fs.Pipeline(stream_of(0)).to(sinks.collect()).lambda_handler(metrics=False)
        closing.append(handler)
        assert handler({"Records": []}, lambda_context()) == {"batchItemFailures": []}

    def test_partial_failures_off_raises_so_lambda_retries_the_batch(
        self, closing: list[Any]
    ) -> None:
        stream = stream_of(3)

        def value(record: Record) -> int:
            raise ValueError("always")

        pipeline = fs.Pipeline(stream, name="orders").map(value).to(sinks.collect())
        handler = pipeline.on_failure(retries=0).lambda_handler(
            partial_failures=False, metrics=False
        )
        closing.append(handler)
        records = stream.records()
        with pytest.raises(LambdaBatchError, match="ReportBatchItemFailures") as raised:
            handler(lambda_event(records), lambda_context())
        assert raised.value.sequence_number == records[0].sequence_number


class TestDeadline:
    def test_the_deadline_mid_batch_hands_back_the_rest(self, closing: list[Any]) -> None:
        stream = stream_of(6)
        out = sinks.collect()

        async def value(record: Record) -> int:
            n: int = record.new_value("n")
            if n == 4:
                await anyio.sleep_forever()  # a call that hangs
            return n

        handler = (
            fs.Pipeline(stream, name="orders")
            .map(value)
            .to(out)
            .lambda_handler(margin=0.5, page_size=2, metrics=False)
        )
        closing.append(handler)
        records = stream.records()
        context = lambda_context(timeout=1.5)
        answer = handler(lambda_event(records), context)
        assert context.get_remaining_time_in_millis() > 0
        # the pages before the hang were delivered; the rest goes back to Lambda
        assert answer == {"batchItemFailures": [{"itemIdentifier": records[4].sequence_number}]}
        assert out.items == [0, 1, 2, 3]
        assert handler.last is not None
        assert handler.last.stop == (
            "stopped 0.5s before the deadline (margin=0.5) with records left"
        )

    def test_an_invocation_with_no_more_time_than_the_margin_says_so(
        self, closing: list[Any]
    ) -> None:
        stream = stream_of(3)
        out = sinks.collect()
        handler = fs.Pipeline(stream).to(out).lambda_handler(margin=2.0, metrics=False)
        closing.append(handler)
        records = stream.records()
        answer = handler(lambda_event(records), lambda_context(timeout=1.0))
        assert answer == {"batchItemFailures": [{"itemIdentifier": records[0].sequence_number}]}
        assert out.items == []
        assert handler.last is not None
        assert "not more than margin=2s" in handler.last.stop
        assert "raise the function's timeout or lower lambda_handler(margin=)" in handler.last.stop

    def test_a_retry_backoff_never_sleeps_past_the_deadline(self, closing: list[Any]) -> None:
        stream = stream_of(3)

        async def down(values: list[int]) -> None:
            raise DeliveryError("503 from the API", retryable=True)

        handler = (
            fs.Pipeline(stream, name="orders")
            .map(lambda r: r.new_value("n"))
            .to(sinks.callback(down, name="api"))
            .on_failure(retries=10, backoff=(60.0, 60.0))
            .lambda_handler(margin=0.5, metrics=False)
        )
        closing.append(handler)
        records = stream.records()
        context = lambda_context(timeout=1.5)
        answer = handler(lambda_event(records), context)
        assert context.get_remaining_time_in_millis() > 0
        assert answer == {"batchItemFailures": [{"itemIdentifier": records[0].sequence_number}]}

    def test_a_hung_sink_is_abandoned_before_the_deadline(self, closing: list[Any]) -> None:
        stream = stream_of(3)

        async def hangs(values: list[int]) -> None:
            await anyio.sleep_forever()

        handler = (
            fs.Pipeline(stream, name="orders")
            .map(lambda r: r.new_value("n"))
            .to(sinks.callback(hangs, name="api"))
            .lambda_handler(margin=0.6, metrics=False)
        )
        closing.append(handler)
        records = stream.records()
        context = lambda_context(timeout=1.5)
        answer = handler(lambda_event(records), context)
        assert context.get_remaining_time_in_millis() > 0
        assert answer == {"batchItemFailures": [{"itemIdentifier": records[0].sequence_number}]}


class _ConnectionCounter(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: a pooled client reuses its connection
    connections = 0
    bodies: ClassVar[list[Any]] = []

    def setup(self) -> None:
        type(self).connections += 1
        super().setup()

    def do_POST(self) -> None:
        length = int(self.headers["Content-Length"])
        type(self).bodies.append(json.loads(self.rfile.read(length)))
        self.send_response(204)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def counting_http() -> Iterator[tuple[str, type[_ConnectionCounter]]]:
    handler = type("Counter", (_ConnectionCounter,), {"connections": 0, "bodies": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook", handler
    finally:
        server.shutdown()
        server.server_close()


class TestWarmEnvironment:
    def test_many_invocations_share_the_sinks_the_loop_and_the_connections(
        self,
        closing: list[Any],
        counting_http: tuple[str, type[_ConnectionCounter]],
    ) -> None:
        url, server = counting_http
        counting = CountingSink()
        stream = stream_of(50)
        pipeline = (
            fs.Pipeline(stream, name="orders")
            .map(lambda r: r.new_value("n"))
            .to(counting, sinks.http(url, batch_size=100))
        )
        handler = pipeline.lambda_handler(metrics=False)
        closing.append(handler)
        records = stream.records()
        for start in range(0, 50, 5):
            event = lambda_event(records[start : start + 5])
            assert handler(event, lambda_context()) == {"batchItemFailures": []}
        assert counting.opens == 1
        assert counting.closes == 0
        assert len(counting.loops) == 1
        assert counting.items == numbers(stream)
        assert [n for body in server.bodies for n in body] == numbers(stream)
        assert server.connections == 1  # the pool's connection, kept across invocations
        handler.close()
        assert counting.closes == 1

    def test_a_sink_that_fails_to_open_fails_the_invocation_and_the_next_opens_again(
        self, closing: list[Any]
    ) -> None:
        attempts: list[int] = []

        class Flaky(CountingSink):
            @asynccontextmanager
            async def _open(self) -> AsyncIterator[SinkWriter]:
                attempts.append(1)
                if len(attempts) == 1:
                    raise ConnectionError("the endpoint is not up yet")
                async with super()._open() as writer:
                    yield writer

        sink = Flaky()
        stream = stream_of(2)
        handler = fs.Pipeline(stream).to(sink).lambda_handler(metrics=False)
        closing.append(handler)
        event = lambda_event(stream.records())
        with pytest.raises(ConnectionError, match="not up yet"):
            handler(event, lambda_context())
        assert handler(event, lambda_context()) == {"batchItemFailures": []}
        assert len(sink.items) == 2

    async def test_calling_it_from_a_running_loop_says_how_to_call_it(self) -> None:
        handler = fs.Pipeline(stream_of(1)).to(sinks.collect()).lambda_handler(metrics=False)
        with pytest.raises(PipelineError, match=r"to_thread\.run_sync"):
            handler({"Records": []}, lambda_context())
        answer = await anyio.to_thread.run_sync(handler, {"Records": []}, lambda_context())
        assert answer == {"batchItemFailures": []}
        await anyio.to_thread.run_sync(handler.close)


class TestEvents:
    """Events in exactly the shape Lambda sends, from AWS's documented example
    (tests/events/README.md): eventVersion 1.1, a float ApproximateCreationDateTime,
    the four view types and a TTL delete."""

    def test_lambda_event_files_run_through(self, closing: list[Any]) -> None:
        event = json.loads((EVENTS / "lambda-dynamodb-event.json").read_text())
        seen: list[tuple[str, str, Any, Any, bool]] = []

        def note(record: Record) -> Record:
            seen.append(
                (
                    record.event_name,
                    record.stream_view_type or "",
                    record.new_image,
                    record.old_image,
                    record.is_ttl_delete,
                )
            )
            return record

        handler = (
            fs.Pipeline(stream_of(0)).map(note).to(sinks.collect()).lambda_handler(metrics=False)
        )
        closing.append(handler)
        assert handler(event, lambda_context()) == {"batchItemFailures": []}
        assert [s[:2] for s in seen] == [
            ("INSERT", "NEW_AND_OLD_IMAGES"),
            ("MODIFY", "NEW_AND_OLD_IMAGES"),
            ("REMOVE", "NEW_AND_OLD_IMAGES"),
            ("INSERT", "NEW_IMAGE"),
            ("MODIFY", "OLD_IMAGE"),
            ("MODIFY", "KEYS_ONLY"),
            ("REMOVE", "OLD_IMAGE"),
        ]
        assert seen[0][2] == {"Message": "New item!", "Id": 101}
        assert seen[5][2] is None
        assert seen[5][3] is None
        assert [s[4] for s in seen] == [False] * 6 + [True]

    def test_lambda_event_builds_what_lambda_sends(self) -> None:
        stream = stream_of(2)
        arn = "arn:aws:dynamodb:eu-west-1:1:table/t/stream/x"
        event = lambda_event(stream.records(), stream_arn=arn)
        for wire, record in zip(event["Records"], stream.records(), strict=True):
            assert wire["eventVersion"] == "1.1"
            assert wire["eventSource"] == "aws:dynamodb"
            assert wire["eventSourceARN"] == arn
            assert isinstance(wire["dynamodb"]["ApproximateCreationDateTime"], float)
            assert "shardId" not in wire
            assert fs.decode_records({"Records": [wire]})[0].new_image == record.new_image


class TestMetricsLine:
    def test_one_embedded_metric_format_line_per_invocation(
        self, closing: list[Any], capsys: pytest.CaptureFixture[str]
    ) -> None:
        stream = stream_of(4)

        def value(record: Record) -> int | None:
            n: int = record.new_value("n")
            if n == 3:
                raise ValueError("three")
            return n

        handler = (
            fs.Pipeline(stream, name="orders")
            .filter(lambda r: r.new_value("n") != 0)
            .map(value)
            .to(sinks.collect())
            .on_failure(retries=0)
            .lambda_handler(namespace="shop")
        )
        closing.append(handler)
        records = stream.records()
        handler(lambda_event(records), lambda_context(request_id="req-1"))
        (line,) = capsys.readouterr().out.splitlines()
        metrics = json.loads(line)
        (directive,) = metrics["_aws"]["CloudWatchMetrics"]
        assert directive["Namespace"] == "shop"
        assert directive["Dimensions"] == [["pipeline"]]
        names = {m["Name"] for m in directive["Metrics"]}
        assert names == {"Records", "Filtered", "Delivered", "DeadLettered", "Failed", "Duration"}
        assert isinstance(metrics["_aws"]["Timestamp"], int)
        assert {k: metrics[k] for k in ("pipeline", "Records", "Filtered", "Delivered")} == {
            "pipeline": "orders",
            "Records": 4,
            "Filtered": 1,
            "Delivered": 2,
        }
        assert (metrics["DeadLettered"], metrics["Failed"]) == (0, 1)
        assert metrics["firstFailure"] == records[3].sequence_number
        assert metrics["requestId"] == "req-1"
        assert metrics["Duration"] > 0


class TestFilterCriteria:
    def test_leading_event_filters_become_a_pattern(self) -> None:
        pipeline = (
            fs.Pipeline(stream_of(0))
            .filter(events=["INSERT", "MODIFY"])
            .filter(events=["MODIFY", "REMOVE"])
            .map(lambda r: r)
            .filter(events="INSERT")
            .to(sinks.collect())
        )
        (only,) = pipeline.lambda_filter_criteria()["Filters"]
        assert json.loads(only["Pattern"]) == {"eventName": ["MODIFY"]}

    def test_a_filter_with_a_predicate_keeps_its_events_and_ends_the_pattern(self) -> None:
        pipeline = (
            fs.Pipeline(stream_of(0))
            .filter(lambda r: True, events=["REMOVE"])
            .filter(events=["INSERT"])
            .to(sinks.collect())
        )
        (only,) = pipeline.lambda_filter_criteria()["Filters"]
        assert json.loads(only["Pattern"]) == {"eventName": ["REMOVE"]}

    @pytest.mark.parametrize(
        ("build", "names"),
        [
            (lambda p: p.filter(lambda r: True), "step 1, filter(<lambda>), is a Python predicate"),
            (lambda p: p.map(lambda r: r), "step 1, map(<lambda>), changes the elements"),
            (lambda p: p, "the pipeline has no filter"),
        ],
    )
    def test_what_cannot_be_a_pattern_is_named(self, build: Any, names: str) -> None:
        pipeline = build(fs.Pipeline(stream_of(0), name="orders")).to(sinks.collect())
        with pytest.raises(PipelineError, match="pipeline 'orders'") as raised:
            pipeline.lambda_filter_criteria()
        assert names in str(raised.value)

    def test_pattern_filters_become_the_mapping_filters_narrowed_to_the_events(self) -> None:
        active = {"dynamodb": {"NewImage": {"status": {"S": ["active"]}}}}
        big = '{"dynamodb": {"NewImage": {"total": {"N": [{"anything-but": "0"}]}}}}'
        pipeline = (
            fs.Pipeline(stream_of(0))
            .filter(events=["INSERT", "MODIFY"])
            .filter(pattern=[active, big])
            .filter(pattern={"eventName": ["REMOVE"]})  # a second pattern filter: not merged
            .to(sinks.collect())
        )
        filters = pipeline.lambda_filter_criteria()["Filters"]
        assert [json.loads(f["Pattern"]) for f in filters] == [
            {**active, "eventName": ["INSERT", "MODIFY"]},
            {**json.loads(big), "eventName": ["INSERT", "MODIFY"]},
        ]

    def test_a_pattern_keeps_numbers_as_written(self) -> None:
        pipeline = (
            fs.Pipeline(stream_of(0))
            .filter(pattern='{"dynamodb": {"SizeBytes": [3.0e2]}}')
            .to(sinks.collect())
        )
        (only,) = pipeline.lambda_filter_criteria()["Filters"]
        assert only["Pattern"] == '{"dynamodb":{"SizeBytes":[3.0e2]}}'

    def test_n_as_numbers_cannot_be_a_lambda_filter(self) -> None:
        pipeline = (
            fs.Pipeline(stream_of(0), name="orders")
            .filter(pattern={"dynamodb": {"Keys": {"n": {"N": [1]}}}}, n_as_numbers=True)
            .to(sinks.collect())
        )
        with pytest.raises(PipelineError, match="compares N values as numbers"):
            pipeline.lambda_filter_criteria()

    def test_filters_that_keep_nothing_are_refused(self) -> None:
        pipeline = (
            fs.Pipeline(stream_of(0))
            .filter(events="INSERT")
            .filter(events="REMOVE")
            .to(sinks.collect())
        )
        with pytest.raises(PipelineError, match="keep no event name"):
            pipeline.lambda_filter_criteria()

    def test_the_handler_applies_the_filters_too(self, closing: list[Any]) -> None:
        stream = MemoryStream()
        shard = stream.add_shard()
        stream.put(shard, "INSERT", {"pk": "a"}, {"pk": "a"})
        stream.put(shard, "REMOVE", {"pk": "a"}, None, {"pk": "a"})
        out = sinks.collect()
        handler = fs.Pipeline(stream).filter(events="INSERT").to(out).lambda_handler(metrics=False)
        closing.append(handler)
        assert handler(lambda_event(stream.records()), lambda_context()) == {
            "batchItemFailures": []
        }
        assert [r.event_name for r in out.items] == ["INSERT"]


class TestOptions:
    @pytest.mark.parametrize(
        ("options", "message"),
        [
            ({"margin": -1}, "margin=-1"),
            ({"margin": float("inf")}, "margin=inf"),
            ({"partial_failures": "yes"}, "partial_failures='yes'"),
            ({"namespace": ""}, "namespace=''"),
            ({"page_size": 0}, "page_size=0"),
        ],
    )
    def test_bad_options_are_named(self, options: dict[str, Any], message: str) -> None:
        pipeline = fs.Pipeline(stream_of(0)).to(sinks.collect())
        with pytest.raises(PipelineError, match="lambda_handler") as raised:
            pipeline.lambda_handler(**options)
        assert message in str(raised.value)

    def test_a_pipeline_with_no_end_is_refused_when_the_handler_is_built(self) -> None:
        with pytest.raises(PipelineError, match="nothing at its end"):
            fs.Pipeline(stream_of(0)).lambda_handler()

    def test_a_tumbling_window_event_is_refused_with_the_setting_named(
        self, closing: list[Any]
    ) -> None:
        stream = stream_of(1)
        handler = fs.Pipeline(stream).to(sinks.collect()).lambda_handler(metrics=False)
        closing.append(handler)
        event = lambda_event(stream.records())
        # what Lambda adds to the event of a mapping with TumblingWindowInSeconds
        event |= {
            "window": {"start": "2026-12-05T05:00:00Z", "end": "2026-12-05T05:01:00Z"},
            "state": {},
            "shardId": "shardId-00000000000000000000-00000000",
            "eventSourceARN": stream.records()[0].event_source_arn,
            "isFinalInvokeForWindow": False,
            "isWindowTerminatedEarly": False,
        }
        with pytest.raises(PipelineError, match="remove TumblingWindowInSeconds"):
            handler(event, lambda_context())

    def test_an_event_that_is_not_a_stream_event_fails_with_a_clear_error(
        self, closing: list[Any]
    ) -> None:
        handler = fs.Pipeline(stream_of(0)).to(sinks.collect()).lambda_handler(metrics=False)
        closing.append(handler)
        sqs_event = {"Records": [{"messageId": "1", "body": "hi", "eventSource": "aws:sqs"}]}
        with pytest.raises(fs.RecordDecodeError):
            handler(sqs_event, lambda_context())
