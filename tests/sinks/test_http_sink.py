"""Tests of `sinks.http()` against a real aiohttp server on 127.0.0.1: batching, order per
shard (also under failure), retries and what is permanent, idempotency keys, auth, TLS and
values that cannot be serialised. Through the real runtime where order and retries matter,
through the writer where one call says it more clearly."""

from __future__ import annotations

import hashlib
import ipaddress
import itertools
import json
import re
import socket
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import anyio
import pytest
from aiobotocore.session import get_session
from aiohttp import web
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import ReadOnlyCredentials
from support import local_http

import flowstream as fs
from flowstream.errors import DeliveryError, SinkError
from flowstream.policy import FailurePolicy
from flowstream.report import RunReport
from flowstream.runtime.engine import run_pipeline
from flowstream.serialize import SerializationError
from flowstream.sinks import Batch, SendResult
from flowstream.sinks.http import HttpSink, http, retry_after_seconds
from flowstream.testing import MemoryStream

TIMEOUT = 10.0
FAST_RETRIES = FailurePolicy(retries=3, backoff=(0.01, 0.05))

# -- the endpoint --------------------------------------------------------------------------


@dataclass
class Reply:
    """What the endpoint answers; with `hold`, only once that event is set."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    hold: anyio.Event | None = None


@dataclass
class Seen:
    """One request as the endpoint received it."""

    n: int  # arrival order, from 0
    method: str
    path: str
    headers: dict[str, str]  # names in lower case
    body: bytes
    peer: int  # the client's port: one per connection
    at: float  # time.monotonic() on arrival
    answered_at: float = 0.0

    def json(self) -> Any:
        return json.loads(self.body)

    def items(self) -> list[Any]:
        """The elements this request carried (one, or the items of an array body)."""
        value = self.json()
        return value if isinstance(value, list) else [value]


class Endpoint:
    """A recording HTTP endpoint: every request, in arrival order, and scripted answers."""

    def __init__(self) -> None:
        self.url = ""
        self.seen: list[Seen] = []
        self.in_flight = 0
        self.max_in_flight = 0
        #: called for each request before the scripted answers; may wait, may answer
        self.hook: Callable[[Seen], Awaitable[Reply | None]] | None = None
        self._next: deque[Reply] = deque()
        self._rules: list[tuple[Callable[[Seen], bool], Reply, list[int]]] = []
        self._holds: list[anyio.Event] = []

    def answer_next(self, *replies: Reply) -> None:
        """Answer the next requests with these, one each."""
        self._next.extend(replies)
        self._holds.extend(r.hold for r in replies if r.hold)

    def answer_when(self, predicate: Callable[[Seen], bool], reply: Reply, times: int = 1) -> None:
        """Answer the first `times` requests for which `predicate` holds with `reply`."""
        self._rules.append((predicate, reply, [times]))
        if reply.hold:
            self._holds.append(reply.hold)

    def release(self) -> None:
        for hold in self._holds:
            hold.set()

    def items(self) -> list[Any]:
        return [item for seen in self.seen for item in seen.items()]

    def keys(self) -> list[str | None]:
        return [seen.headers.get("idempotency-key") for seen in self.seen]

    async def handle(self, request: web.Request) -> web.StreamResponse:
        peer = request.transport.get_extra_info("peername") if request.transport else None
        seen = Seen(
            len(self.seen),
            request.method,
            request.path_qs,
            {k.lower(): v for k, v in request.headers.items()},
            await request.read(),
            peer[1] if peer else 0,
            time.monotonic(),
        )
        self.seen.append(seen)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            reply = (await self.hook(seen) if self.hook else None) or self._scripted(seen)
            if reply.hold is not None:
                with anyio.move_on_after(TIMEOUT):
                    await reply.hold.wait()
            return web.Response(status=reply.status, headers=reply.headers, body=reply.body)
        finally:
            seen.answered_at = time.monotonic()
            self.in_flight -= 1

    def _scripted(self, seen: Seen) -> Reply:
        for predicate, reply, left in self._rules:
            if left[0] > 0 and predicate(seen):
                left[0] -= 1
                return reply
        return self._next.popleft() if self._next else Reply()


@asynccontextmanager
async def serve(tls: ssl.SSLContext | None = None) -> AsyncIterator[Endpoint]:
    endpoint = Endpoint()
    async with local_http(endpoint.handle, tls=tls) as url:
        endpoint.url = url
        try:
            yield endpoint
        finally:
            endpoint.release()


@pytest.fixture
async def endpoint() -> AsyncIterator[Endpoint]:
    async with serve() as endpoint:
        yield endpoint


# -- helpers --------------------------------------------------------------------------------


def make_stream(shards: int = 1, per_shard: int = 10, *, page_size: int = 1000) -> MemoryStream:
    stream = MemoryStream(page_size=page_size)
    ids = [stream.add_shard() for _ in range(shards)]
    for n in range(per_shard):
        for s, shard in enumerate(ids):
            pk = f"k{n}" if shards == 1 else f"s{s}-k{n}"
            stream.put(shard, "INSERT", {"pk": pk}, {"pk": pk, "n": n})
    return stream


def item(record: fs.Record) -> dict[str, Any]:
    return {"pk": record.keys["pk"], "shard": record.shard_id, "seq": int(record.sequence_number)}


def has_pk(pk: str) -> Callable[[Seen], bool]:
    return lambda seen: any(i["pk"] == pk for i in seen.items())


async def drain(
    stream: MemoryStream, sink: HttpSink, *, policy: FailurePolicy = FAST_RETRIES
) -> RunReport:
    pipeline = fs.Pipeline(stream).map(item).to(sink)
    with anyio.fail_after(TIMEOUT):
        return await run_pipeline(
            pipeline.compile(),
            stream,
            name="http-test",
            checkpoints=None,
            drain=True,
            grace_period=5.0,
            handle_signals=False,
            policy=policy,
        )


def batch_of(values: list[Any], records: list[fs.Record] | None = None) -> Batch:
    if records is None:
        stream = make_stream(per_shard=len(values))
        records = stream.records()
    return Batch(records[0].shard_id, values, records)


async def send(sink: HttpSink, *batches: Batch) -> list[SendResult | None]:
    async with sink.open() as writer:
        with anyio.fail_after(TIMEOUT):
            return [await writer.send(b) for b in batches]


def failures(result: SendResult | None) -> dict[int, DeliveryError]:
    assert result is not None
    errors = dict(result.failed)
    assert all(isinstance(e, DeliveryError) for e in errors.values())
    return errors  # type: ignore[return-value]


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# -- options --------------------------------------------------------------------------------


class TestOptions:
    def test_describe_leaves_credentials_and_query_out(self) -> None:
        sink = http("https://user:pw@api.example.com:8443/hook?api_key=s3cret", method="put")
        assert sink.describe() == "http(PUT https://api.example.com:8443/hook?…)"
        assert sink.name == sink.describe()

    def test_auth_objects_show_no_secret(self) -> None:
        sink = http("https://api.example.com/hook", auth=http.bearer("t0ken"))
        assert "t0ken" not in f"{sink.describe()} {sink.auth!r}"
        assert "pw" not in repr(http.basic("me", "pw"))
        assert repr(http.sigv4(region="eu-west-1")) == "sigv4(execute-api, eu-west-1)"

    @pytest.mark.parametrize(
        ("options", "message"),
        [
            ({"url": "ftp://example.com/x"}, "http:// or https://"),
            ({"url": "/relative/path"}, "http:// or https://"),
            ({"method": "NO SPACES"}, "method="),
            ({"batch_size": 0}, "batch_size=0"),
            ({"timeout": 0}, "timeout=0"),
            ({"retry_on": [200]}, "retry_on="),
            ({"auth": "t0ken"}, "sinks.http.bearer(token)"),
            ({"verify": "yes"}, "verify="),
            ({"headers": {"Idempotency-Key": "x"}}, "idempotency_header=None"),
            ({"headers": {"Authorization": "x"}, "auth": http.bearer("t")}, "keep only one"),
            ({"headers": {"Content-Length": "3"}}, "cannot set Content-Length"),
            ({"encode": "json"}, "encode="),
        ],
        ids=lambda v: next(iter(v)) if isinstance(v, dict) else None,
    )
    def test_bad_options_fail_when_built(self, options: dict[str, Any], message: str) -> None:
        url = options.pop("url", "https://api.example.com/hook")
        with pytest.raises(SinkError, match=re.escape(message)):
            http(url, **options)

    def test_headers_override_the_defaults_case_insensitively(self) -> None:
        sink = http("https://x.example/h", headers={"content-type": "text/plain", "X-A": "1"})
        assert sink.headers["content-type"] == "text/plain"
        assert "Content-Type" not in sink.headers
        assert sink.headers["X-A"] == "1"


class TestRetryAfter:
    NOW = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)

    @pytest.mark.parametrize(
        ("value", "seconds"),
        [
            ("3", 3.0),
            (" 1.5 ", 1.5),
            ("0", 0.0),
            ("Wed, 01 May 2024 12:02:00 GMT", 120.0),
            ("Wed, 01 May 2024 11:00:00 GMT", 0.0),
            ("-1", None),
            ("soon", None),
            ("", None),
            (None, None),
        ],
        ids=[
            "delta",
            "decimal",
            "zero",
            "http-date",
            "past-date",
            "negative",
            "word",
            "empty",
            "none",
        ],
    )
    def test_delta_seconds_or_http_date(self, value: str | None, seconds: float | None) -> None:
        assert retry_after_seconds(value, now=self.NOW) == seconds


# -- batching -------------------------------------------------------------------------------


class TestBatching:
    async def test_batch_size_1_sends_one_request_per_element(self, endpoint: Endpoint) -> None:
        stream = make_stream(per_shard=30)
        report = await drain(stream, http(f"{endpoint.url}/hook?v=1"))

        assert report.sinks[f"http(POST {endpoint.url}/hook?…)"].delivered == 30
        assert [s.json()["pk"] for s in endpoint.seen] == [f"k{n}" for n in range(30)]
        first = endpoint.seen[0]
        assert (first.method, first.path) == ("POST", "/hook?v=1")
        assert first.headers["content-type"] == "application/json"
        assert first.headers["user-agent"].startswith("flowstream")

    async def test_batch_size_25_sends_json_arrays(self, endpoint: Endpoint) -> None:
        stream = make_stream(per_shard=60)
        await drain(stream, http(endpoint.url, batch_size=25))

        assert [len(s.json()) for s in endpoint.seen] == [25, 25, 10]
        assert [i["pk"] for i in endpoint.items()] == [f"k{n}" for n in range(60)]
        assert all(s.headers["content-type"] == "application/json" for s in endpoint.seen)

    async def test_str_and_bytes_go_as_they_are_one_by_one(self, endpoint: Endpoint) -> None:
        await send(http(endpoint.url), batch_of(["plain text", b"\x00\x01", {"a": 1}]))
        assert [s.body for s in endpoint.seen] == [b"plain text", b"\x00\x01", b'{"a":1}']

    async def test_in_an_array_str_is_a_json_string_and_bytes_must_be_json(
        self, endpoint: Endpoint
    ) -> None:
        values = ["text", b'{"pre":"encoded"}', {"a": 1}, 2]
        assert await send(http(endpoint.url, batch_size=4), batch_of(values)) == [None]
        assert endpoint.seen[0].body == b'["text",{"pre":"encoded"},{"a":1},2]'

    async def test_method_headers_and_encode(self, endpoint: Endpoint) -> None:
        sink = http(
            f"{endpoint.url}/things",
            method="PUT",
            headers={"Content-Type": "text/csv", "X-Team": "cache"},
            encode=lambda v: f"{v['a']},{v['b']}".encode(),
        )
        await send(sink, batch_of([{"a": 1, "b": 2}]))
        (seen,) = endpoint.seen
        assert (seen.method, seen.path, seen.body) == ("PUT", "/things", b"1,2")
        assert (seen.headers["content-type"], seen.headers["x-team"]) == ("text/csv", "cache")

    async def test_one_pool_per_open_sink_bounded_by_max_connections(
        self, endpoint: Endpoint
    ) -> None:
        stream = make_stream(shards=8, per_shard=10, page_size=2)
        await drain(stream, http(endpoint.url, max_connections=2))

        assert len(endpoint.seen) == 80
        assert len({s.peer for s in endpoint.seen}) <= 2  # connections are reused
        assert endpoint.max_in_flight <= 2

    async def test_the_session_is_closed_after_the_run(self, endpoint: Endpoint) -> None:
        async with http(endpoint.url).open() as writer:
            await writer.send(batch_of([{"a": 1}]))
        assert writer._session.closed  # type: ignore[attr-defined]


# -- order ----------------------------------------------------------------------------------


class TestOrder:
    @pytest.mark.parametrize("batch_size", [1, 3], ids=["single", "arrays"])
    async def test_each_shard_in_sequence_order_shards_concurrently(
        self, endpoint: Endpoint, batch_size: int
    ) -> None:
        shards = 8
        stream = make_stream(shards=shards, per_shard=30, page_size=7)
        everyone_in = anyio.Event()

        async def first_wave(seen: Seen) -> Reply | None:
            # hold the first requests until every shard has one in flight: only shards
            # sending concurrently get there
            if endpoint.in_flight >= shards:
                everyone_in.set()
            with anyio.move_on_after(TIMEOUT):
                await everyone_in.wait()
            return None

        endpoint.hook = first_wave
        await drain(stream, http(endpoint.url, batch_size=batch_size))

        assert endpoint.max_in_flight == shards
        by_shard: dict[str, list[Seen]] = {}
        for seen in endpoint.seen:
            by_shard.setdefault(seen.items()[0]["shard"], []).append(seen)
        assert len(by_shard) == shards
        for shard_id, requests in by_shard.items():
            items = [i for s in requests for i in s.items()]
            assert {i["shard"] for i in items} == {shard_id}
            expected = [int(r.sequence_number) for r in stream.records(shard_id)]
            assert [i["seq"] for i in items] == expected
            # one request of a shard at a time: each was answered before the next arrived
            assert all(a.answered_at <= b.at for a, b in itertools.pairwise(requests))


# -- retries and failures ------------------------------------------------------------------


class TestRetries:
    @pytest.mark.parametrize("status", [500, 502, 503, 504, 408, 429])
    async def test_retryable_status_is_retried_in_order(
        self, endpoint: Endpoint, status: int
    ) -> None:
        stream = make_stream(per_shard=6)
        endpoint.answer_when(has_pk("k2"), Reply(status, body=b"busy"), times=2)
        report = await drain(stream, http(endpoint.url))

        # nothing went out ahead of k2 while it was being retried
        assert [s.json()["pk"] for s in endpoint.seen] == [
            "k0",
            "k1",
            "k2",
            "k2",
            "k2",
            "k3",
            "k4",
            "k5",
        ]
        attempts = [s for s in endpoint.seen if s.json()["pk"] == "k2"]
        assert len({s.headers["idempotency-key"] for s in attempts}) == 1
        assert report.shards[stream.shard_ids[0]].retries == 2
        assert next(iter(report.sinks.values())).delivered == 6

    async def test_retry_after_is_honoured(self, endpoint: Endpoint) -> None:
        stream = make_stream(per_shard=3)
        endpoint.answer_when(has_pk("k1"), Reply(429, headers={"Retry-After": "1"}))
        await drain(stream, http(endpoint.url))

        first, retry = [s for s in endpoint.seen if s.json()["pk"] == "k1"]
        assert retry.at - first.at >= 1.0  # a lower bound only: the wait may be longer

    async def test_a_failing_chunk_stops_its_batch_and_is_retried_whole(
        self, endpoint: Endpoint
    ) -> None:
        stream = make_stream(per_shard=10)
        endpoint.answer_next(Reply(503))
        await drain(stream, http(endpoint.url, batch_size=4))

        sizes = [len(s.json()) for s in endpoint.seen]
        assert sizes == [4, 4, 4, 2]  # the first chunk twice, then the rest
        assert endpoint.seen[0].body == endpoint.seen[1].body
        assert endpoint.keys()[0] == endpoint.keys()[1]
        assert [i["pk"] for s in endpoint.seen[1:] for i in s.items()] == [
            f"k{n}" for n in range(10)
        ]

    async def test_a_400_is_permanent_and_stops_the_shard(self, endpoint: Endpoint) -> None:
        stream = make_stream(per_shard=5)
        endpoint.answer_when(has_pk("k2"), Reply(400, body=b'{"error": "field n is bad"}'))
        with pytest.raises(fs.ShardStoppedError) as caught:
            await drain(stream, http(endpoint.url))

        assert [s.json()["pk"] for s in endpoint.seen] == ["k0", "k1", "k2"]  # one attempt
        report = caught.value.report
        (shard,) = report.shards.values()
        assert shard.stopped_at == stream.records()[2].sequence_number
        assert shard.retries == 0
        assert "HTTP 400 Bad Request" in (shard.error or "")
        assert "field n is bad" in (shard.error or "")
        stats = next(iter(report.sinks.values()))
        # k2 failed; k3 and k4 were not sent behind it, and are counted with it
        assert (stats.delivered, stats.failed) == (2, 1)  # k3, k4 were never sent

    async def test_a_timeout_is_retried_then_delivered(self, endpoint: Endpoint) -> None:
        stream = make_stream(per_shard=3)
        endpoint.answer_when(has_pk("k1"), Reply(hold=anyio.Event()))
        report = await drain(stream, http(endpoint.url, timeout=0.2))

        attempts = [s for s in endpoint.seen if s.json()["pk"] == "k1"]
        assert len(attempts) == 2
        assert attempts[0].headers["idempotency-key"] == attempts[1].headers["idempotency-key"]
        assert next(iter(report.sinks.values())).delivered == 3

    async def test_the_timeout_error_says_so(self, endpoint: Endpoint) -> None:
        endpoint.answer_next(Reply(hold=anyio.Event()))
        (result,) = await send(http(endpoint.url, timeout=0.2), batch_of([1, 2]))
        errors = failures(result)
        assert errors[0].retryable
        assert "no complete answer within timeout=0.2s" in str(errors[0])
        assert "not sent" in str(errors[1])

    async def test_connection_refused_is_retryable(self) -> None:
        url = f"http://127.0.0.1:{closed_port()}/hook"
        (result,) = await send(http(url), batch_of([1, 2, 3]))
        errors = failures(result)
        assert sorted(errors) == [0, 1, 2]
        assert all(e.retryable for e in errors.values())
        assert errors[0].status is None
        assert "127.0.0.1" in str(errors[0])

    async def test_redirects_are_not_followed(self, endpoint: Endpoint) -> None:
        endpoint.answer_next(Reply(307, headers={"Location": "https://elsewhere.example/"}))
        (result,) = await send(http(endpoint.url), batch_of([1]))
        (error,) = failures(result).values()
        assert (error.retryable, error.status) == (False, 307)
        assert "https://elsewhere.example/" in str(error)
        assert len(endpoint.seen) == 1

    async def test_retry_on_decides_what_is_retried(self, endpoint: Endpoint) -> None:
        sink = http(endpoint.url, retry_on=[409])
        endpoint.answer_next(Reply(409), Reply(500))
        first, second = await send(sink, batch_of([1]), batch_of([2]))
        assert failures(first)[0].retryable
        assert not failures(second)[0].retryable
        assert "add 500 to retry_on=" in str(failures(second)[0])


# -- idempotency keys -----------------------------------------------------------------------


class TestIdempotencyKeys:
    @pytest.mark.parametrize("batch_size", [1, 25], ids=["single", "arrays"])
    async def test_present_on_every_request_and_the_same_on_a_replay(
        self, endpoint: Endpoint, batch_size: int
    ) -> None:
        stream = make_stream(shards=3, per_shard=40, page_size=30)
        sink = http(endpoint.url, batch_size=batch_size)
        await drain(stream, sink)
        first = endpoint.keys()
        endpoint.seen.clear()
        await drain(stream, sink)  # no checkpoints: the same records again

        assert all(first)
        assert len(set(first)) == len(first)
        assert sorted(map(str, endpoint.keys())) == sorted(map(str, first))
        if batch_size == 1:
            assert set(first) == {r.event_id for r in stream.records()}
        else:
            assert all(re.fullmatch(r"[0-9a-f]{64}", str(k)) for k in first)

    async def test_values_of_one_record_get_distinct_keys_stable_on_retry(
        self, endpoint: Endpoint
    ) -> None:
        r1, r2 = make_stream(per_shard=2).records()
        batch = Batch(r1.shard_id, ["a", "b", "c", "d"], [r1, r1, r1, r2])
        endpoint.answer_when(lambda s: s.body == b"b", Reply(500))
        async with http(endpoint.url).open() as writer:
            result = await writer.send(batch)
            assert sorted(failures(result)) == [1, 2, 3]
            assert await writer.send(batch.subset([1, 2, 3])) is None  # as the runtime retries

        keys: dict[bytes, set[str | None]] = {s.body: set() for s in endpoint.seen}
        for seen in endpoint.seen:
            keys[seen.body].add(seen.headers.get("idempotency-key"))
        assert keys == {
            b"a": {f"{r1.event_id}.2"},
            b"b": {f"{r1.event_id}.1"},
            b"c": {r1.event_id},
            b"d": {r2.event_id},
        }

    async def test_an_array_key_is_the_sha256_of_its_items_keys(self, endpoint: Endpoint) -> None:
        batch = batch_of([1, 2, 3])
        await send(http(endpoint.url, batch_size=3), batch)
        ids = "\n".join(r.event_id for r in batch.records)
        assert endpoint.keys() == [hashlib.sha256(ids.encode()).hexdigest()]

    async def test_the_header_can_be_renamed_or_left_out(self, endpoint: Endpoint) -> None:
        await send(http(endpoint.url, idempotency_header="X-Request-Id"), batch_of([1]))
        await send(http(endpoint.url, idempotency_header=None), batch_of([2]))
        renamed, none = endpoint.seen
        assert "x-request-id" in renamed.headers
        assert "idempotency-key" not in renamed.headers
        assert not {"x-request-id", "idempotency-key"} & set(none.headers)


# -- auth -----------------------------------------------------------------------------------

AUTHORIZATION = re.compile(
    r"AWS4-HMAC-SHA256 Credential=(?P<key>[^/]+)/(?P<date>\d{8})/(?P<region>[a-z0-9-]+)/"
    r"execute-api/aws4_request, SignedHeaders=(?P<signed>[a-z0-9;-]+), "
    r"Signature=(?P<signature>[0-9a-f]{64})"
)


def expected_signature(seen: Seen, url: str, secret: str, region: str, signed: str) -> str:
    """The signature of the request as the endpoint received it, computed by botocore."""
    headers = {name: seen.headers[name] for name in signed.split(";")}
    request = AWSRequest(method=seen.method, url=url + seen.path, data=seen.body, headers=headers)
    request.context["timestamp"] = seen.headers["x-amz-date"]
    signer = SigV4Auth(ReadOnlyCredentials("unused", secret, None), "execute-api", region)
    canonical = signer.canonical_request(request)
    signature: str = signer.signature(signer.string_to_sign(request, canonical), request)
    return signature


class TestAuth:
    async def test_bearer(self, endpoint: Endpoint) -> None:
        await send(http(endpoint.url, auth=http.bearer("t0ken")), batch_of([1]))
        assert endpoint.seen[0].headers["authorization"] == "Bearer t0ken"

    async def test_basic(self, endpoint: Endpoint) -> None:
        await send(http(endpoint.url, auth=http.basic("me", "pw")), batch_of([1]))
        assert endpoint.seen[0].headers["authorization"] == "Basic bWU6cHc="

    async def test_sigv4_from_the_environment(self, endpoint: Endpoint) -> None:
        # conftest: AWS_ACCESS_KEY_ID=test, AWS_SECRET_ACCESS_KEY=test, us-east-1
        sink = http(f"{endpoint.url}/prod/hook?b=2&a=1", auth=http.sigv4(), batch_size=2)
        await send(sink, batch_of([{"n": 1}, {"n": 2}]))

        (seen,) = endpoint.seen
        match = AUTHORIZATION.fullmatch(seen.headers["authorization"])
        assert match is not None, seen.headers["authorization"]
        assert (match["key"], match["region"]) == ("test", "us-east-1")
        assert re.fullmatch(r"\d{8}T\d{6}Z", seen.headers["x-amz-date"])
        assert seen.headers["x-amz-date"].startswith(match["date"])
        signed = match["signed"].split(";")
        assert {"host", "x-amz-date", "content-type", "idempotency-key"} <= set(signed)
        assert match["signature"] == expected_signature(
            seen, endpoint.url, "test", "us-east-1", match["signed"]
        )

    async def test_sigv4_with_a_session_and_region(self, endpoint: Endpoint) -> None:
        session = get_session()
        session.set_credentials("AKIDEXAMPLE", "s3cret", "session-token")
        auth = http.sigv4(region="eu-west-1", session=session)
        await send(http(endpoint.url, auth=auth), batch_of([{"n": 1}]))

        (seen,) = endpoint.seen
        match = AUTHORIZATION.fullmatch(seen.headers["authorization"])
        assert match is not None
        assert (match["key"], match["region"]) == ("AKIDEXAMPLE", "eu-west-1")
        assert seen.headers["x-amz-security-token"] == "session-token"
        assert "x-amz-security-token" in match["signed"].split(";")
        assert match["signature"] == expected_signature(
            seen, endpoint.url, "s3cret", "eu-west-1", match["signed"]
        )

    async def test_sigv4_without_credentials_fails_when_opened(
        self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
    ) -> None:
        for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"):
            monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
        monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
        monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
        sink = http("https://abc.execute-api.us-east-1.amazonaws.com/prod", auth=http.sigv4())
        with pytest.raises(SinkError, match="no AWS credentials for SigV4 signing"):
            async with sink.open():
                pass


# -- TLS ------------------------------------------------------------------------------------


def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 signed by itself, and its key, as PEM files."""
    x509 = pytest.importorskip("cryptography.x509")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "flowstream test")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_file, key_file


class TestTls:
    async def test_certificates_are_verified_by_default(self, tmp_path: Path) -> None:
        cert, key = self_signed(tmp_path)
        server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        server_tls.load_cert_chain(cert, key)
        trusting = ssl.create_default_context(cafile=str(cert))
        async with serve(server_tls) as endpoint:
            (refused,) = await send(http(endpoint.url), batch_of([1]))
            trusted, unchecked = (
                await send(http(endpoint.url, verify=trusting), batch_of([2])),
                await send(http(endpoint.url, verify=False), batch_of([3])),
            )

        (error,) = failures(refused).values()
        assert not error.retryable  # retrying cannot fix a certificate
        assert "TLS certificate did not verify" in str(error)
        assert "self-signed certificate" in str(error)
        assert trusted == unchecked == [None]
        assert [s.body for s in endpoint.seen] == [b"2", b"3"]


# -- values that cannot be serialised --------------------------------------------------------


class TestSerialisation:
    async def test_only_that_item_fails_and_nothing_after_it_is_sent(
        self, endpoint: Endpoint
    ) -> None:
        (result,) = await send(http(endpoint.url), batch_of([{"a": 1}, object(), {"c": 3}]))
        errors = failures(result)
        assert isinstance(errors[1], SerializationError)
        assert not errors[1].retryable
        assert "cannot serialise a object value" in str(errors[1])
        assert errors[2].retryable  # not sent: it waits behind the bad one
        assert sorted(errors) == [1, 2]
        assert [s.body for s in endpoint.seen] == [b'{"a":1}']

    async def test_in_arrays_the_items_before_it_still_go(self, endpoint: Endpoint) -> None:
        values: list[Any] = [{"n": n} for n in range(30)]
        values[12] = {"bad": {1, object()}}
        (result,) = await send(http(endpoint.url, batch_size=25), batch_of(values))
        errors = failures(result)
        assert sorted(errors) == list(range(12, 30))
        assert isinstance(errors[12], SerializationError)
        assert [len(s.json()) for s in endpoint.seen] == [12]

    async def test_bytes_that_are_not_json_cannot_go_in_an_array(self, endpoint: Endpoint) -> None:
        (result,) = await send(http(endpoint.url, batch_size=2), batch_of([b"{", 1]))
        errors = failures(result)
        assert isinstance(errors[0], SerializationError)
        assert "use batch_size=1" in str(errors[0])
        assert endpoint.seen == []

    async def test_a_failing_encode_fails_its_item(self, endpoint: Endpoint) -> None:
        def encode(value: Any) -> bytes:
            return b"%d" % (10 // value)

        (result,) = await send(http(endpoint.url, encode=encode), batch_of([5, 0, 2]))
        errors = failures(result)
        assert isinstance(errors[1], SerializationError)
        assert "ZeroDivisionError" in str(errors[1])
        assert [s.body for s in endpoint.seen] == [b"2"]

    async def test_through_the_runtime_the_shard_stops_at_it(self, endpoint: Endpoint) -> None:
        stream = make_stream(per_shard=5)
        pipeline = (
            fs.Pipeline(stream)
            .map(lambda r: {"pk": r.keys["pk"], "x": object() if r.keys["pk"] == "k2" else 0})
            .to(http(endpoint.url))
        )
        with anyio.fail_after(TIMEOUT), pytest.raises(fs.ShardStoppedError) as caught:
            await pipeline.run(drain=True)

        (shard,) = caught.value.report.shards.values()
        assert shard.stopped_at == stream.records()[2].sequence_number
        assert "SerializationError" in (shard.error or "")
        assert [s.json()["pk"] for s in endpoint.seen] == ["k0", "k1"]


async def test_pipeline_run_end_to_end(endpoint: Endpoint) -> None:
    """The plain `run(drain=True)` path with default retries: a webhook forwarder."""
    stream = make_stream(shards=4, per_shard=25, page_size=10)
    endpoint.answer_next(Reply(503, headers={"Retry-After": "0"}))
    pipeline = (
        fs.Pipeline(stream, name="forwarder")
        .filter(events=["INSERT"])
        .map(lambda r: {"id": r.keys["pk"], "n": r.new_image["n"] if r.new_image else None})
        .to(http(f"{endpoint.url}/events", batch_size=10, auth=http.bearer("t")))
    )
    with anyio.fail_after(TIMEOUT):
        report = await pipeline.run(drain=True)

    assert report.sinks[f"http(POST {endpoint.url}/events)"].delivered == 100
    ids = [i["id"] for i in endpoint.items()]
    assert len(ids) == 110  # one array of 10 twice
    assert set(ids) == {r.keys["pk"] for r in stream.records()}
    assert {s.headers["authorization"] for s in endpoint.seen} == {"Bearer t"}
