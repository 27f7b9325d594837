"""`sinks.lambda_function()` against moto's Lambda.

What moto's server does with Invoke when Docker is not there (read in moto 5's
awslambda/models.py and awslambda_simple/models.py, and seen in these tests):

- By default (``{"lambda": {"use_docker": true}}``) an unknown function gets a real
  ResourceNotFoundException, and a known one answers with ``FunctionError: Handled`` and
  the payload ``error running docker: ...``, for RequestResponse and Event alike (real
  Lambda never sets FunctionError on an Event invocation).
- With ``POST /moto-api/config {"lambda": {"use_docker": false}}`` Invoke runs no code:
  it answers 200 (RequestResponse) or 202 (Event) and echoes the payload, and it does
  not check that the function exists. The setting outlives `/moto-api/reset`, so the
  fixture that turns it on restores it.

- Invoke with a payload that is valid JSON but not an object (an array, a string, a
  number) fails inside moto with HTTP 500: its request handler reads the ``qualifier``
  parameter with ``json.loads(body)[name]`` (moto/core/responses.py, `_get_param`), a
  TypeError for a list. Real Lambda takes any JSON, so batched (array) payloads and JSON
  strings cannot be sent to moto: for them, `StandIn` answers 200/202 in moto's place.

So the payloads, invocation types, batching and size limits are checked on the requests
the sink really sends (captured with botocore's ``before-send`` hook) and moto's status
codes; a missing function and a function error are moto's own answers. moto cannot
throttle: a 429 TooManyRequestsException is returned from the ``before-send`` hook in
place of moto's answer and goes through botocore's real error parsing.
"""

from __future__ import annotations

import io
import json
import os
import urllib.request
import zipfile
from collections.abc import Iterator
from typing import Any

import boto3
import pytest
from aiobotocore.awsrequest import AioAWSResponse
from aiobotocore.session import AioSession
from sink_support import drain, new_session, send

import flowstream as fs
from flowstream.errors import DeliveryError, ShardStoppedError, SinkError
from flowstream.policy import FailurePolicy
from flowstream.sinks import Batch
from flowstream.sinks.lambda_function import MAX_PAYLOAD, lambda_function
from flowstream.testing import MemoryStream

REGION = "us-east-1"
FUNCTION = "on-change"
NEEDS_NO_DOCKER = pytest.mark.skipif(
    os.path.exists("/var/run/docker.sock") or "DOCKER_HOST" in os.environ,
    reason="moto answers with a FunctionError only when it cannot run Docker",
)


def moto_config(moto_url: str, config: dict[str, Any] | None = None) -> dict[str, Any]:
    """moto's configuration, after setting `config` when given."""
    data = json.dumps(config).encode() if config is not None else None
    request = urllib.request.Request(
        f"{moto_url}/moto-api/config", data=data, method="POST" if data else "GET"
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())  # type: ignore[no-any-return]


def lambda_results(moto_url: str, results: list[str]) -> None:
    """What moto's Docker-less Invoke answers next (instead of echoing the payload)."""
    body = json.dumps({"results": results, "region": REGION}).encode()
    request = urllib.request.Request(
        f"{moto_url}/moto-api/static/lambda-simple/response", data=body, method="POST"
    )
    with urllib.request.urlopen(request, timeout=10):
        pass


def create_function(moto_url: str, name: str = FUNCTION) -> str:
    """A Python function (moto needs its role to exist); its ARN."""
    iam: Any = boto3.client("iam", endpoint_url=moto_url, region_name=REGION)
    trust = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"Service": "lambda.amazonaws.com"},
                "Action": "sts:AssumeRole",
            }
        ],
    }
    role = iam.create_role(RoleName=f"{name}-role", AssumeRolePolicyDocument=json.dumps(trust))
    code = io.BytesIO()
    with zipfile.ZipFile(code, "w") as archive:
        archive.writestr("handler.py", "def handle(event, context):\n    return event\n")
    client: Any = boto3.client("lambda", endpoint_url=moto_url, region_name=REGION)
    function = client.create_function(
        FunctionName=name,
        Runtime="python3.12",
        Role=role["Role"]["Arn"],
        Handler="handler.handle",
        Code={"ZipFile": code.getvalue()},
    )
    return str(function["FunctionArn"])


@pytest.fixture
def no_docker_lambda(moto_url: str) -> Iterator[str]:
    """moto's Lambda without Docker (Invoke echoes the payload), and a function."""
    before = moto_config(moto_url)["lambda"]
    moto_config(moto_url, {"lambda": {"use_docker": False}})
    try:
        create_function(moto_url)
        yield moto_url
    finally:
        moto_config(moto_url, {"lambda": before})


class Invocations:
    """The Invoke requests a session's clients send, and moto's status codes."""

    def __init__(self, session: AioSession) -> None:
        self.requests: list[tuple[str, str, bytes]] = []
        self.statuses: list[int] = []
        session.register("before-send.lambda.Invoke", self._request)
        session.register("after-call.lambda.Invoke", self._response)

    def _request(self, request: Any, **_: Any) -> None:
        body = request.body
        data = body.getvalue() if isinstance(body, io.BytesIO) else bytes(body)
        invocation = request.headers["X-Amz-Invocation-Type"]
        if isinstance(invocation, bytes):
            invocation = invocation.decode()
        self.requests.append((request.url.rsplit("/", 2)[-2], invocation, data))

    def _response(self, parsed: dict[str, Any], **_: Any) -> None:
        self.statuses.append(parsed["ResponseMetadata"]["HTTPStatusCode"])

    @property
    def payloads(self) -> list[Any]:
        return [json.loads(data) for _, _, data in self.requests]


class _Body:
    """A response body, as much of aiohttp's as aiobotocore reads (`read()` for an
    error, `content.read()` for a streamed payload)."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.content = self
        self.url = ""

    async def read(self, *_: Any) -> bytes:
        data, self.data = self.data, b""
        return data

    def close(self) -> None:
        pass


class StandIn:
    """Answers Invoke requests whose payload is not a JSON object in moto's place (moto
    fails them with HTTP 500, see the module docstring), as Lambda does: 200 with the
    function's result (here null) for RequestResponse, 202 for Event."""

    def __init__(self, session: AioSession) -> None:
        session.register("before-send.lambda.Invoke", self._answer)

    def _answer(self, request: Any, **_: Any) -> AioAWSResponse | None:
        body = request.body
        data = body.getvalue() if isinstance(body, io.BytesIO) else bytes(body)
        if data.startswith(b"{"):
            return None
        invocation = request.headers["X-Amz-Invocation-Type"]
        status = 202 if invocation in ("Event", b"Event") else 200
        headers = {"content-length": "4"}
        return AioAWSResponse(request.url, status, headers, _Body(b"null"))


def throttle_first_call(session: AioSession, retry_after: str = "0.01") -> list[int]:
    """Answer the first Invoke with Lambda's 429 TooManyRequestsException instead of
    sending it; returns the list of calls made (1 per call)."""
    calls: list[int] = []

    def before_send(request: Any, **_: Any) -> AioAWSResponse | None:
        calls.append(1)
        if len(calls) > 1:
            return None
        body = json.dumps({"message": "Rate exceeded", "Type": "User"}).encode()
        headers = {
            "x-amzn-errortype": "TooManyRequestsException",
            "Retry-After": retry_after,
            "content-type": "application/json",
        }
        return AioAWSResponse(request.url, 429, headers, _Body(body))

    session.register("before-send.lambda.Invoke", before_send)
    return calls


@pytest.fixture(autouse=True)
def _shared_models(shared_models: None) -> None:
    """Every client of these tests opens fast (see sink_support.new_session)."""


def stream_of(count: int) -> MemoryStream:
    stream = MemoryStream()
    shard = stream.add_shard()
    for n in range(count):
        stream.put(shard, "INSERT", {"pk": f"k{n}"}, {"pk": f"k{n}", "n": n})
    return stream


def as_dict(record: fs.Record) -> dict[str, Any]:
    image = record.new_image or {}
    return {"pk": record.keys["pk"], "n": image["n"]}


def batch_of(values: list[Any]) -> Batch:
    stream = MemoryStream()
    shard = stream.add_shard()
    records = [stream.put(shard, "INSERT", {"pk": f"k{i}"}) for i in range(len(values))]
    return Batch(shard, values, records)


class TestInvocations:
    async def test_event_invocations_carry_one_element_each_in_order(
        self, no_docker_lambda: str
    ) -> None:
        session = new_session()
        seen = Invocations(session)
        sink = lambda_function(FUNCTION, endpoint_url=no_docker_lambda, session=session)
        report = await drain(fs.Pipeline(stream_of(5)).map(as_dict).to(sink))

        assert report.delivered == 5
        assert [(f, i) for f, i, _ in seen.requests] == [(FUNCTION, "Event")] * 5
        assert seen.payloads == [{"pk": f"k{n}", "n": n} for n in range(5)]
        assert seen.statuses == [202] * 5  # moto took them as asynchronous invocations

    async def test_request_response_in_json_arrays_of_up_to_batch_size(
        self, no_docker_lambda: str
    ) -> None:
        session = new_session()
        seen = Invocations(session)
        StandIn(session)
        sink = lambda_function(
            FUNCTION,
            invocation="RequestResponse",
            batch_size=3,
            endpoint_url=no_docker_lambda,
            session=session,
        )
        report = await drain(fs.Pipeline(stream_of(7)).map(as_dict).to(sink))

        assert report.delivered == 7
        assert {i for _, i, _ in seen.requests} == {"RequestResponse"}
        assert [[e["n"] for e in p] for p in seen.payloads] == [[0, 1, 2], [3, 4, 5], [6]]
        assert seen.statuses == [200] * 3

    async def test_records_are_sent_in_the_streams_json_shape(self, no_docker_lambda: str) -> None:
        session = new_session()
        seen = Invocations(session)
        sink = lambda_function(FUNCTION, endpoint_url=no_docker_lambda, session=session)
        await drain(fs.Pipeline(stream_of(1)).to(sink))
        (payload,) = seen.payloads
        assert payload["eventName"] == "INSERT"
        assert payload["dynamodb"]["Keys"] == {"pk": {"S": "k0"}}

    async def test_a_str_is_a_json_string_and_bytes_must_be_json(
        self, no_docker_lambda: str
    ) -> None:
        session = new_session()
        seen = Invocations(session)
        StandIn(session)
        sink = lambda_function(FUNCTION, endpoint_url=no_docker_lambda, session=session)
        result = await send(sink, batch_of(["hello", b'{"b": 2}', b"\xff", {"a": 1}]))

        assert result is not None
        assert list(result.failed) == [2]
        error = result.failed[2]
        assert isinstance(error, DeliveryError)
        assert not error.retryable
        assert "a bytes value is not JSON" in str(error)
        assert "and a Lambda payload must be" in str(error)
        assert seen.payloads == ["hello", {"b": 2}, {"a": 1}]
        assert seen.statuses == [202, 202, 202]

    async def test_encode_must_give_json(self, no_docker_lambda: str) -> None:
        session = new_session()
        seen = Invocations(session)
        sink = lambda_function(
            FUNCTION,
            endpoint_url=no_docker_lambda,
            session=session,
            encode=lambda v: json.dumps(v).encode() if v else b"nope",
        )
        result = await send(sink, batch_of([{"a": 1}, {}]))
        assert result is not None
        assert "encode= returned not JSON" in str(result.failed[1])
        assert seen.payloads == [{"a": 1}]

    @pytest.mark.parametrize("invocation", ["Event", "RequestResponse"])
    async def test_a_payload_over_the_limit_fails_only_its_element(
        self, no_docker_lambda: str, invocation: Any
    ) -> None:
        limit = MAX_PAYLOAD[invocation]
        # moto's function echoes its payload, and a response over 6,000,000 bytes is a
        # FunctionError (Function.ResponseSizeTooLarge): give it small results instead.
        lambda_results(no_docker_lambda, ["null", "null"])
        session = new_session()
        seen = Invocations(session)
        sink = lambda_function(
            FUNCTION, invocation=invocation, endpoint_url=no_docker_lambda, session=session
        )
        # {"x":"..."} is the text and 8 bytes
        just_fits, too_big = {"x": "x" * (limit - 8)}, {"x": "x" * (limit - 7)}
        result = await send(sink, batch_of([{"n": 1}, too_big, just_fits]))

        assert result is not None
        assert list(result.failed) == [1]
        error = result.failed[1]
        assert isinstance(error, DeliveryError)
        assert not error.retryable
        assert f"a dict value of {limit + 1} bytes of JSON is over Lambda's limit" in str(error)
        assert f"{limit} bytes per {invocation} payload" in str(error)
        assert [len(data) for _, _, data in seen.requests] == [7, limit]

    async def test_event_payloads_are_limited_to_1_mib_and_request_response_to_6(self) -> None:
        assert MAX_PAYLOAD == {"Event": 1024 * 1024, "RequestResponse": 6 * 1024 * 1024}


class TestFailures:
    async def test_a_missing_function_stops_the_shard_at_once_with_a_clear_error(
        self, moto_url: str
    ) -> None:
        sink = lambda_function("nope", endpoint_url=moto_url)
        with pytest.raises(ShardStoppedError) as caught:
            await drain(fs.Pipeline(stream_of(2)).map(as_dict).to(sink))

        (stopped,) = caught.value.report.stopped_shards().values()
        assert stopped.retries == 0
        error = stopped.error or ""
        assert "Lambda function 'nope' does not exist in us-east-1 at" in error
        assert "Function not found: arn:aws:lambda:us-east-1:123456789012:function:nope" in error
        assert "deploy it, or check the function name (or alias) and region=" in error

    async def test_a_missing_function_fails_the_rest_of_the_batch_without_sending_it(
        self, moto_url: str
    ) -> None:
        session = new_session()
        seen = Invocations(session)
        sink = lambda_function("nope", endpoint_url=moto_url, session=session)
        result = await send(sink, batch_of([{"n": 1}, {"n": 2}, {"n": 3}]))
        assert result is not None
        assert sorted(result.failed) == [0, 1, 2]
        assert all(getattr(e, "retryable", None) is False for e in result.failed.values())
        assert len(seen.requests) == 1

    @NEEDS_NO_DOCKER
    async def test_a_function_error_is_retried_then_stops_the_shard(self, moto_url: str) -> None:
        create_function(moto_url)
        sink = lambda_function(FUNCTION, invocation="RequestResponse", endpoint_url=moto_url)
        policy = FailurePolicy(retries=2, backoff=(0.01, 0.02))
        with pytest.raises(ShardStoppedError) as caught:
            await drain(fs.Pipeline(stream_of(1)).map(as_dict).to(sink), policy)

        (stopped,) = caught.value.report.stopped_shards().values()
        assert stopped.retries == 2  # a function error is retryable
        error = stopped.error or ""
        assert "sink lambda(on-change): the function failed (Handled): error running docker" in (
            error
        )

    @NEEDS_NO_DOCKER
    async def test_a_function_error_fails_its_payload_retryably(self, moto_url: str) -> None:
        create_function(moto_url)
        session = new_session()
        seen = Invocations(session)
        sink = lambda_function(
            FUNCTION, invocation="RequestResponse", endpoint_url=moto_url, session=session
        )
        result = await send(sink, batch_of([{"n": 1}, {"n": 2}]))
        assert result is not None
        assert sorted(result.failed) == [0, 1]
        error = result.failed[0]
        assert isinstance(error, DeliveryError)
        assert (error.retryable, error.code) == (True, "Handled")
        assert len(seen.requests) == 2  # a function error stops only its payload

    async def test_throttling_is_retried_after_the_wait_lambda_asks_for(
        self, no_docker_lambda: str
    ) -> None:
        session = new_session()
        calls = throttle_first_call(session, retry_after="0.05")
        seen = Invocations(session)
        sink = lambda_function(FUNCTION, endpoint_url=no_docker_lambda, session=session)

        result = await send(sink, batch_of([{"n": 1}, {"n": 2}]))
        assert result is not None
        assert sorted(result.failed) == [0, 1]  # the second was not sent after a 429
        error = result.failed[0]
        assert isinstance(error, DeliveryError)
        assert (error.retryable, error.code, error.retry_after) == (
            True,
            "TooManyRequestsException",
            0.05,
        )
        assert len(calls) == 1
        assert seen.payloads == [{"n": 1}]

    async def test_a_throttled_run_retries_and_delivers_everything(
        self, no_docker_lambda: str
    ) -> None:
        session = new_session()
        throttle_first_call(session)
        seen = Invocations(session)
        sink = lambda_function(FUNCTION, endpoint_url=no_docker_lambda, session=session)

        report = await drain(fs.Pipeline(stream_of(3)).map(as_dict).to(sink))

        assert report.delivered == 3
        assert sum(s.retries for s in report.shards.values()) == 1
        assert [p["n"] for p in seen.payloads] == [0, 0, 1, 2]  # the throttled one first
        assert seen.statuses == [429, 202, 202, 202]


class TestFactory:
    def test_an_arn_brings_its_region(self) -> None:
        sink = lambda_function("arn:aws:lambda:eu-west-1:123456789012:function:f:live")
        assert sink.region == "eu-west-1"
        assert sink.describe() == "lambda(arn:aws:lambda:eu-west-1:123456789012:function:f:live)"

    @pytest.mark.parametrize(
        ("kwargs", "message"),
        [
            ({"name": ""}, "needs a function name or ARN"),
            ({"name": "f", "invocation": "DryRun"}, "is not an invocation type"),
            ({"name": "f", "batch_size": 0}, "must be a whole number of at least 1"),
            ({"name": "arn:aws:sqs:us-east-1:1:q"}, "is not a Lambda function ARN"),
        ],
        ids=["no-name", "invocation", "batch-size", "arn"],
    )
    def test_bad_options(self, kwargs: dict[str, Any], message: str) -> None:
        with pytest.raises(SinkError, match=message):
            lambda_function(**kwargs)
