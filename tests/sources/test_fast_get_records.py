"""GetRecords signed by flowstream and sent through aiobotocore's HTTP session: what goes
on the wire passes a SigV4 check made the way AWS makes it, errors are the client's own
exceptions, and clients this path cannot serve fall back to `client.get_records()`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
import pytest
from aiobotocore.config import AioConfig
from aiobotocore.credentials import AioRefreshableCredentials
from aiobotocore.session import AioSession, get_session
from botocore import UNSIGNED
from botocore.exceptions import ClientError
from sigv4_proxy import EVERY, SignatureCheckingProxy, read_through_proxy

import flowstream as fs
from flowstream import sinks, sources
from flowstream.aws import client_config
from flowstream.errors import ShardStoppedError
from flowstream.sources.get_records import FastGetRecords, fast_get_records
from flowstream.testing import LocalStreamsServer, MemoryStream


def session_with(key: str, secret: str, token: str | None = None) -> AioSession:
    session = get_session()
    session.set_credentials(key, secret, token)
    return session


@pytest.fixture
async def stream_server() -> AsyncIterator[tuple[MemoryStream, LocalStreamsServer]]:
    stream = MemoryStream(table="Users")
    async with LocalStreamsServer(stream) as server:
        yield stream, server


def fill(stream: MemoryStream, shards: int, records: int) -> list[str]:
    ids = [stream.add_shard() for _ in range(shards)]
    for shard in ids:
        for n in range(records):
            stream.put(shard, "INSERT", {"pk": f"{shard}#{n}"}, {"pk": f"{shard}#{n}", "n": n})
        stream.close(shard)
    return ids


async def test_fast_get_records_pass_a_signature_check_made_as_aws_makes_it(
    stream_server: tuple[MemoryStream, LocalStreamsServer],
) -> None:
    stream, server = stream_server
    fill(stream, shards=4, records=25)
    session = session_with("AKIDFLOWSTREAM", "s3cr3t/+key", "FwoGZXIvYXdz+token==")
    proxy, out, report = await read_through_proxy(
        server, session, {"AKIDFLOWSTREAM": "s3cr3t/+key"}
    )
    assert report.delivered == len(out.items) == 100
    assert proxy.refused == []
    agents = {op: {agent.split()[0] for o, _, agent in proxy.passed if o == op} for op in EVERY}
    # GetRecords went the fast way; the other calls (the control) through botocore.
    assert agents["GetRecords"] == {"flowstream"}
    assert all(agent.startswith("aiobotocore/") for agent in agents["DescribeStream"])
    assert sum(op == "GetRecords" for op, _, _ in proxy.passed) >= 4


class RotatingCredentials:
    """A credential provider whose keys expire within botocore's mandatory refresh
    window: every use refreshes them, and each refresh hands out a new key pair."""

    METHOD = "flowstream-test-rotating"
    CANONICAL_NAME = "FlowstreamTestRotating"

    def __init__(self) -> None:
        self.issued = 0

    async def _next(self) -> dict[str, str]:
        self.issued += 1
        expiry = datetime.now(UTC) + timedelta(minutes=1)
        return {
            "access_key": f"AKIDROTATE{self.issued:06d}",
            "secret_key": f"secret-{self.issued}",
            "token": f"token-{self.issued}",
            "expiry_time": expiry.strftime("%Y-%m-%dT%H:%M:%SZ"),
        }

    async def load(self) -> AioRefreshableCredentials:
        return AioRefreshableCredentials.create_from_metadata(
            await self._next(), refresh_using=self._next, method=self.METHOD
        )


async def test_refreshed_credentials_sign_the_next_get_records(
    stream_server: tuple[MemoryStream, LocalStreamsServer],
) -> None:
    stream, server = stream_server
    fill(stream, shards=2, records=10)
    provider = RotatingCredentials()
    session = get_session()
    session.get_component("credential_provider").insert_before("env", provider)
    secrets = {f"AKIDROTATE{n:06d}": f"secret-{n}" for n in range(1, 5000)}
    proxy, out, _ = await read_through_proxy(server, session, secrets)
    assert len(out.items) == 20
    assert proxy.refused == []
    keys = [key for op, key, _ in proxy.passed if op == "GetRecords"]
    assert len(keys) >= 2
    assert len(set(keys)) == len(keys)  # each poll signed with the key pair of its moment


async def test_a_refused_signature_stops_the_run_with_a_clear_error(
    stream_server: tuple[MemoryStream, LocalStreamsServer],
) -> None:
    stream, server = stream_server
    fill(stream, shards=1, records=3)
    async with SignatureCheckingProxy(
        server.endpoint_url, {"AKIDFLOWSTREAM": "the-right-secret"}, check={"GetRecords"}
    ) as proxy:
        source = sources.dynamodb(
            stream_arn=server.stream_arn,
            endpoint_url=proxy.url,
            session=session_with("AKIDFLOWSTREAM", "a-wrong-secret"),
        )
        # A reader's error stops its shard (the others would go on) and names the fix.
        with pytest.raises(ShardStoppedError, match=r"refused the credentials.*InvalidSignature"):
            await fs.Pipeline(source).to(sinks.collect()).run(drain=True)
    assert proxy.refused == ["GetRecords"]


@asynccontextmanager
async def both_calls(
    server: LocalStreamsServer, shard: str
) -> AsyncIterator[tuple[Any, FastGetRecords, str]]:
    """A DynamoDB Streams client, its fast GetRecords, and an iterator at `shard`'s start."""
    async with get_session().create_client(
        "dynamodbstreams", endpoint_url=server.endpoint_url, config=client_config(4)
    ) as client:
        fast = fast_get_records(client)
        assert fast is not None
        assert not fast.ready  # until botocore has shown where and how it signs
        await client.describe_stream(StreamArn=server.stream_arn, Limit=1)
        assert fast.endpoint == (server.endpoint_url + "/", "us-east-1", "dynamodb")
        answer = await client.get_shard_iterator(
            StreamArn=server.stream_arn, ShardId=shard, ShardIteratorType="TRIM_HORIZON"
        )
        yield client, fast, answer["ShardIterator"]


@pytest.mark.parametrize(
    "fault", ["expired_iterator", "trimmed", "throttle", "internal_error", "bad_iterator"]
)
async def test_errors_are_the_exceptions_the_client_raises(
    stream_server: tuple[MemoryStream, LocalStreamsServer], fault: str
) -> None:
    stream, server = stream_server
    (shard,) = fill(stream, shards=1, records=1)
    async with both_calls(server, shard) as (client, fast, first):
        iterator = "not-an-iterator" if fault == "bad_iterator" else first
        caught: list[Exception] = []
        for call in (
            lambda: fast(iterator, 100),
            lambda: client.get_records(ShardIterator=iterator, Limit=100),
        ):
            if fault != "bad_iterator":
                server.inject(fault, operation="GetRecords")  # type: ignore[arg-type]
            with pytest.raises(ClientError) as raised:
                await call()
            caught.append(raised.value)
    ours, theirs = caught
    assert type(ours) is type(theirs)
    assert str(ours) == str(theirs)
    assert ours.response["Error"] == theirs.response["Error"]  # type: ignore[attr-defined]
    status = ours.response["ResponseMetadata"]["HTTPStatusCode"]  # type: ignore[attr-defined]
    assert status == theirs.response["ResponseMetadata"]["HTTPStatusCode"]  # type: ignore[attr-defined]


async def test_the_fast_call_answers_what_the_client_answers(
    stream_server: tuple[MemoryStream, LocalStreamsServer],
) -> None:
    stream, server = stream_server
    (shard,) = fill(stream, shards=1, records=7)
    async with both_calls(server, shard) as (client, fast, first):
        body = msgspec.json.decode(await fast(first, 5))
        parsed = await client.get_records(ShardIterator=first, Limit=5)
    assert [r["dynamodb"]["SequenceNumber"] for r in body["Records"]] == [
        r["dynamodb"]["SequenceNumber"] for r in parsed["Records"]
    ]
    assert len(body["Records"]) == 5
    assert body["NextShardIterator"]  # each call issues its own
    assert parsed["NextShardIterator"]


async def test_clients_it_cannot_serve_make_the_call_themselves(
    stream_server: tuple[MemoryStream, LocalStreamsServer],
) -> None:
    _, server = stream_server
    unsigned = AioConfig(signature_version=UNSIGNED)
    async with get_session().create_client(
        "dynamodbstreams", endpoint_url=server.endpoint_url, config=unsigned
    ) as client:
        assert fast_get_records(client) is None
    async with get_session().create_client(
        "dynamodbstreams", endpoint_url=server.endpoint_url + "/behind/a/path"
    ) as client:
        fast = fast_get_records(client)
        assert fast is not None
        await client.describe_stream(StreamArn=server.stream_arn, Limit=1)
        assert not fast.ready  # a path in the endpoint: GetRecords stays with the client


class _Stop(Exception):
    """Raised by a before-send handler so that a request is built and signed, not sent."""


async def test_it_goes_where_botocores_endpoint_rules_send_the_call() -> None:
    # With dual-stack endpoints the rules may send DynamoDB Streams calls to a host other
    # than the client's endpoint_url (botocore >= 1.40: streams-dynamodb.REGION.api.aws,
    # not streams.dynamodb.REGION.api.aws): the fast path must go where the client's own
    # calls go, whatever this botocore's rules say.
    config = AioConfig(use_dualstack_endpoint=True)
    sent: list[str] = []
    async with get_session().create_client(
        "dynamodbstreams", region_name="eu-central-2", config=config
    ) as client:
        fast = fast_get_records(client)
        assert fast is not None

        def stop(request: Any, **_: Any) -> None:
            sent.append(request.url)
            raise _Stop

        client.meta.events.register("before-send.dynamodb-streams.DescribeStream", stop)
        arn = "arn:aws:dynamodb:eu-central-2:123456789012:table/T/stream/2026-11-26T00:00:00.000"
        with pytest.raises(_Stop):
            await client.describe_stream(StreamArn=arn)
    assert client.meta.endpoint_url == "https://streams.dynamodb.eu-central-2.api.aws"
    (url,) = sent
    assert url.endswith(".eu-central-2.api.aws/")
    assert fast.endpoint == (url, "eu-central-2", "dynamodb")


async def test_with_the_fast_path_off_the_client_reads_the_same_records(
    stream_server: tuple[MemoryStream, LocalStreamsServer],
) -> None:
    stream, server = stream_server
    fill(stream, shards=3, records=20)
    delivered: list[list[Any]] = []
    for fast in (True, False):
        source = sources.dynamodb(
            stream_arn=server.stream_arn, endpoint_url=server.endpoint_url, idle_interval=0.01
        )
        source.fast_get_records = fast
        out = sinks.collect()
        await fs.Pipeline(source).to(out).run(drain=True)
        delivered.append(sorted((r.shard_id, r.sequence_number, r.new_image) for r in out.items))
    assert delivered[0] == delivered[1]
    assert len(delivered[0]) == 60
