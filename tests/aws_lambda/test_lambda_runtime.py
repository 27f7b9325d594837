"""`pipeline.lambda_handler()` run by the real Lambda runtime interface client
(awslambdaric), in a process of its own, against a Runtime API this test serves on
127.0.0.1: warm invocations, partial batch failures, the deadline and the metrics line,
as a deployed function would see them."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import anyio
import pytest
from aiohttp import web
from anyio.abc import Process
from support import local_http, wait_until

from flowstream.record import Record
from flowstream.testing import MemoryStream
from flowstream.testing.lambda_events import lambda_event

# awslambdaric has wheels for Linux only (as Lambda is); the dev extra installs it there
pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="awslambdaric is Linux-only")

APP_DIR = Path(__file__).resolve().parent
#: the variable tests/aws_lambda/lambda_app.py reads its sink's file name from
LOG_VARIABLE = "LAMBDA_APP_LOG"
FUNCTION_ARN = "arn:aws:lambda:us-east-1:000000000000:function:orders"
NEXT = "/2018-06-01/runtime/invocation/next"
INIT_ERROR = "/2018-06-01/runtime/init/error"
ANSWER = re.compile(r"/2018-06-01/runtime/invocation/(?P<id>[^/]+)/(?P<kind>response|error)")


@dataclass(frozen=True)
class Invoke:
    request_id: str
    deadline_ms: int
    body: bytes


@dataclass(frozen=True)
class Answer:
    """What the function posted for one invocation."""

    kind: str  # "response" or "error"
    body: Any
    at: float  # time.time() when it came


class RuntimeAPI:
    """The Lambda Runtime API as far as awslambdaric uses it: `next` hands out queued
    invocations (waiting for one when none is queued), `response`, `error` and
    `init/error` are kept."""

    def __init__(self) -> None:
        self._queue, self._pending = anyio.create_memory_object_stream[Invoke](math.inf)
        self.answers: dict[str, Answer] = {}
        self.init_errors: list[Any] = []
        self.unexpected: list[str] = []
        #: `next` requests waiting for an invocation: the function is ready for one
        self.polling = 0

    def queue(self, invoke: Invoke) -> None:
        self._queue.send_nowait(invoke)

    def close(self) -> None:
        """Answer a `next` still waiting (its client is gone) and hand out no more."""
        self._queue.close()
        self._pending.close()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if request.method == "GET" and request.path == NEXT:
            self.polling += 1
            try:
                invoke = await self._pending.receive()
            except (anyio.EndOfStream, anyio.ClosedResourceError):
                return web.Response(status=410)
            finally:
                self.polling -= 1
            return web.Response(
                body=invoke.body,
                content_type="application/json",
                headers={
                    "Lambda-Runtime-Aws-Request-Id": invoke.request_id,
                    "Lambda-Runtime-Deadline-Ms": str(invoke.deadline_ms),
                    "Lambda-Runtime-Invoked-Function-Arn": FUNCTION_ARN,
                    "Lambda-Runtime-Trace-Id": (
                        f"Root=1-{int(time.time()):08x}-{uuid.uuid4().hex[:24]};Sampled=0"
                    ),
                },
            )
        found = ANSWER.fullmatch(request.path)
        if request.method == "POST" and found:
            self.answers[found["id"]] = Answer(
                found["kind"],
                json.loads(await request.read()),
                time.time(),
            )
            return web.Response(status=202)
        if request.method == "POST" and request.path == INIT_ERROR:
            self.init_errors.append(json.loads(await request.read()))
            return web.Response(status=202)
        self.unexpected.append(f"{request.method} {request.path}")
        return web.Response(status=404)


@dataclass
class Function:
    """One function process (`python -m awslambdaric lambda_app.<handler>`) and the
    Runtime API it polls."""

    api: RuntimeAPI
    process: Process
    output: Path
    log: Path

    async def invoke(
        self, event: dict[str, Any], *, deadline_in: float = 30.0
    ) -> tuple[str, Answer]:
        """Once the function asks for work, invoke it with `event` and a deadline
        `deadline_in` seconds away; return the request id and the answer."""
        await self._until(lambda: self.api.polling > 0, "ask for an invocation", 30.0)
        request_id = str(uuid.uuid4())
        deadline_ms = int((time.time() + deadline_in) * 1000)
        self.api.queue(Invoke(request_id, deadline_ms, json.dumps(event).encode()))
        await self._until(lambda: request_id in self.api.answers, "answer", min(deadline_in, 10.0))
        return request_id, self.api.answers[request_id]

    async def _until(self, condition: Callable[[], bool], what: str, seconds: float) -> None:
        """Wait until `condition()` holds; fail with the function's output when it does
        not within `seconds` or the process exits first."""
        try:
            await wait_until(
                lambda: condition() or self.process.returncode is not None, timeout=seconds
            )
        except TimeoutError:
            raise AssertionError(
                f"the function did not {what} within {seconds:g}s; output:\n{self.text()}"
            ) from None
        if not condition():
            raise AssertionError(
                f"the function exited ({self.process.returncode}) instead: it did not {what}; "
                f"output:\n{self.text()}"
            )

    def text(self) -> str:
        return self.output.read_text(errors="replace")

    def metrics(self) -> list[dict[str, Any]]:
        """The embedded-metric-format lines of the output, in order."""
        found = []
        for line in self.text().splitlines():
            try:
                parsed = json.loads(line)
            except json.JSONDecodeError:
                continue  # a log line
            if isinstance(parsed, dict) and "_aws" in parsed:
                found.append(parsed)
        return found

    def opens(self) -> list[int]:
        """The pid of the process at each opening of the sink."""
        return [int(line.split()[1]) for line in self._log_lines() if line.startswith("open ")]

    def delivered(self) -> list[str]:
        """The sequence numbers of the elements delivered, in order."""
        return [line.split()[1] for line in self._log_lines() if line.startswith("deliver ")]

    def _log_lines(self) -> list[str]:
        return self.log.read_text().splitlines() if self.log.exists() else []


@asynccontextmanager
async def run_function(handler: str, workdir: Path) -> AsyncIterator[Function]:
    """Start `lambda_app.<handler>` under awslambdaric against a fresh Runtime API; on
    the way out kill it (the runtime's loop never ends) and check that it had nothing
    to say about its initialisation."""
    api = RuntimeAPI()
    async with local_http(api.handle) as url:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "_"))}
        env.update(
            AWS_LAMBDA_RUNTIME_API=url.removeprefix("http://"),
            _HANDLER=f"lambda_app.{handler}",
            LAMBDA_TASK_ROOT=str(APP_DIR),
            PYTHONPATH=os.pathsep.join(filter(None, [str(APP_DIR), os.environ.get("PYTHONPATH")])),
            AWS_LAMBDA_FUNCTION_NAME="orders",
            AWS_LAMBDA_FUNCTION_VERSION="$LATEST",
            AWS_LAMBDA_FUNCTION_MEMORY_SIZE="128",
            AWS_LAMBDA_LOG_GROUP_NAME="/aws/lambda/orders",
            AWS_LAMBDA_LOG_STREAM_NAME="2026/01/01/[$LATEST]local",
            AWS_REGION="us-east-1",
            AWS_DEFAULT_REGION="us-east-1",
            AWS_ACCESS_KEY_ID="test",
            AWS_SECRET_ACCESS_KEY="test",
            **{LOG_VARIABLE: str(workdir / "deliveries.log")},
        )
        output = workdir / "function.out"
        out: IO[bytes] = output.open("wb")
        try:
            process = await anyio.open_process(
                [sys.executable, "-m", "awslambdaric", f"lambda_app.{handler}"],
                cwd=APP_DIR,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
            try:
                yield Function(api, process, output, workdir / "deliveries.log")
            finally:
                with anyio.CancelScope(shield=True):
                    if process.returncode is None:
                        process.kill()
                    await process.wait()
                    await process.aclose()
        finally:
            out.close()
            api.close()
    assert api.init_errors == []
    assert api.unexpected == []


def orders(stream: MemoryStream, shard: str, *specs: dict[str, Any]) -> list[Record]:
    """Put one order per spec (``{"pk": ..., "event": "INSERT", ...image}``) and return
    the records, in order."""
    records = []
    for spec in specs:
        image = {"total": 10, **spec}
        event = image.pop("event", "INSERT")
        keys = {"pk": image["pk"]}
        new = None if event == "REMOVE" else image
        records.append(stream.put(shard, event, keys, new, keys if event == "REMOVE" else None))
    return records


def sequences(records: list[Record]) -> list[str]:
    return [r.sequence_number for r in records]


@pytest.fixture
def stream() -> MemoryStream:
    return MemoryStream(table="orders")


class TestPartialFailures:
    async def test_warm_invocations_answer_each_batch(
        self, stream: MemoryStream, tmp_path: Path
    ) -> None:
        """Four invocations of one process: a clean batch (with a REMOVE the filter drops),
        a batch with a poison order in the middle, Lambda's retry of it from that order,
        and a later clean batch. Each answer names the first record not done, nothing
        from the poison order on is delivered, the sink is opened once, and each
        invocation writes one metrics line carrying its request id."""
        shard = stream.add_shard()
        clean = orders(stream, shard, {"pk": "a"}, {"pk": "b", "event": "REMOVE"}, {"pk": "c"})
        poisoned = orders(
            stream, shard, {"pk": "d"}, {"pk": "e"}, {"pk": "f", "poison": True}, {"pk": "g"}
        )
        later = orders(stream, shard, {"pk": "h", "event": "MODIFY"}, {"pk": "i"})
        async with run_function("handler", tmp_path) as function:
            first, answer = await function.invoke(lambda_event(clean))
            assert (answer.kind, answer.body) == ("response", {"batchItemFailures": []})
            assert function.delivered() == sequences([clean[0], clean[2]])

            second, answer = await function.invoke(lambda_event(poisoned))
            poison = poisoned[2].sequence_number
            assert answer.kind == "response"
            assert answer.body == {"batchItemFailures": [{"itemIdentifier": poison}]}
            assert function.delivered() == sequences([clean[0], clean[2], *poisoned[:2]])

            # Lambda checkpoints before the poison order and sends the rest again
            third, answer = await function.invoke(lambda_event(poisoned[2:]))
            assert answer.body == {"batchItemFailures": [{"itemIdentifier": poison}]}
            assert function.delivered() == sequences([clean[0], clean[2], *poisoned[:2]])

            fourth, answer = await function.invoke(lambda_event(later))
            assert answer.body == {"batchItemFailures": []}
            assert function.delivered() == sequences([clean[0], clean[2], *poisoned[:2], *later])

            assert function.opens() == [function.process.pid]
            metrics = function.metrics()
        counts = [
            (m["requestId"], m["Records"], m["Filtered"], m["Delivered"], m["Failed"])
            for m in metrics
        ]
        assert counts == [
            (first, 3, 1, 2, 0),
            (second, 4, 0, 2, 2),
            (third, 2, 0, 0, 2),
            (fourth, 2, 0, 2, 0),
        ]
        assert [m.get("firstFailure") for m in metrics] == [None, poison, poison, None]
        assert "poison" in metrics[1]["stop"]
        for line in metrics:
            (directive,) = line["_aws"]["CloudWatchMetrics"]
            assert directive["Namespace"] == "flowstream"
            assert directive["Dimensions"] == [["pipeline"]]
            assert line["pipeline"] == "orders"

    async def test_without_partial_failures_the_invocation_fails(
        self, stream: MemoryStream, tmp_path: Path
    ) -> None:
        """With partial_failures=False a poison order fails the whole invocation (the
        runtime posts an error naming LambdaBatchError and the order's sequence number);
        the process stays up and the next batch succeeds on the same open sink."""
        shard = stream.add_shard()
        poisoned = orders(stream, shard, {"pk": "a"}, {"pk": "b", "poison": True}, {"pk": "c"})
        later = orders(stream, shard, {"pk": "d"})
        async with run_function("strict_handler", tmp_path) as function:
            _, answer = await function.invoke(lambda_event(poisoned))
            assert answer.kind == "error"
            assert answer.body["errorType"] == "LambdaBatchError"
            assert poisoned[1].sequence_number in answer.body["errorMessage"]
            assert function.delivered() == sequences(poisoned[:1])

            _, answer = await function.invoke(lambda_event(later))
            assert (answer.kind, answer.body) == ("response", {"batchItemFailures": []})
            assert function.delivered() == sequences([poisoned[0], *later])
            assert function.opens() == [function.process.pid]
            assert [(m["Failed"], m["Delivered"]) for m in function.metrics()] == [(2, 1), (0, 1)]


class TestDeadline:
    async def test_a_batch_that_would_overrun_is_handed_back_in_time(
        self, stream: MemoryStream, tmp_path: Path
    ) -> None:
        """The deadline comes from the runtime (Lambda-Runtime-Deadline-Ms through
        context.get_remaining_time_in_millis()): an order that takes longer than the
        invocation has is abandoned, and the answer, sent before the deadline, names a
        record at or before it, every record before that one delivered and none after.
        The process then answers its next batch as usual."""
        shard = stream.add_shard()
        slow = orders(stream, shard, {"pk": "a"}, {"pk": "b", "delay": 60}, {"pk": "c"})
        later = orders(stream, shard, {"pk": "d"})
        timeout = 2.5  # the handler stops margin=1.0 s before the deadline
        async with run_function("handler", tmp_path) as function:
            started = time.time()
            _, answer = await function.invoke(lambda_event(slow), deadline_in=timeout)
            assert answer.at < started + timeout
            assert answer.kind == "response"
            (failure,) = answer.body["batchItemFailures"]
            handed_back = sequences(slow).index(failure["itemIdentifier"])
            assert handed_back <= 1
            assert function.delivered() == sequences(slow[:handed_back])
            (line,) = function.metrics()
            assert line["Failed"] == len(slow) - handed_back
            assert "deadline" in line["stop"]

            _, answer = await function.invoke(lambda_event(later))
            assert answer.body == {"batchItemFailures": []}
            assert function.delivered() == sequences([*slow[:handed_back], *later])
            assert function.opens() == [function.process.pid]
