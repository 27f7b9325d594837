"""Edges of the fast GetRecords and idle pacing found in review: a session token with
whitespace end to end, odd error answers, the full error response, and poll settings at
their limits (the signer's own edges are in tests/test_sigv4.py)."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiobotocore.session import get_session
from aiohttp import web
from botocore.exceptions import ClientError
from sigv4_proxy import read_through_proxy
from support import local_http

from flowstream import sources
from flowstream.aws import client_config, is_retryable
from flowstream.errors import SourceError
from flowstream.sources.base import TRIM_HORIZON, Shard
from flowstream.sources.dynamodb import _DynamoDBSession
from flowstream.sources.get_records import fast_get_records
from flowstream.testing import LocalStreamsServer, MemoryStream

STREAM_ARN = "arn:aws:dynamodb:us-east-1:123456789012:table/T/stream/2026-11-26T00:00:00.000"


@pytest.fixture
async def stream_server() -> AsyncIterator[tuple[MemoryStream, LocalStreamsServer]]:
    stream = MemoryStream(table="Users")
    async with LocalStreamsServer(stream) as server:
        yield stream, server


async def test_a_token_with_a_double_space_passes_the_signature_check(
    stream_server: tuple[MemoryStream, LocalStreamsServer],
) -> None:
    stream, server = stream_server
    shard = stream.add_shard()
    stream.put(shard, "INSERT", {"pk": "a"}, {"pk": "a"})
    stream.close(shard)
    session = get_session()
    session.set_credentials("AKIDFLOWSTREAM", "s3cr3t", "FwoG  token")
    proxy, out, _ = await read_through_proxy(server, session, {"AKIDFLOWSTREAM": "s3cr3t"})
    # every call passes, botocore's DescribeStream and GetShardIterator, and flowstream's
    # GetRecords (which once signed the token uncollapsed and was refused)
    assert proxy.refused == []
    assert len(out.items) == 1


# --------------------------------------------------------------- fast GetRecords errors


async def test_the_error_response_has_every_field_the_clients_has(
    stream_server: tuple[MemoryStream, LocalStreamsServer],
) -> None:
    stream, server = stream_server
    shard = stream.add_shard()
    async with get_session().create_client(
        "dynamodbstreams", endpoint_url=server.endpoint_url, config=client_config(4)
    ) as client:
        fast = fast_get_records(client)
        assert fast is not None
        await client.describe_stream(StreamArn=server.stream_arn, Limit=1)
        iterator = (
            await client.get_shard_iterator(
                StreamArn=server.stream_arn, ShardId=shard, ShardIteratorType="TRIM_HORIZON"
            )
        )["ShardIterator"]
        caught: list[dict[str, Any]] = []
        for call in (
            lambda: fast(iterator, 10),
            lambda: client.get_records(ShardIterator=iterator, Limit=10),
        ):
            server.inject("expired_iterator", operation="GetRecords")
            with pytest.raises(ClientError) as raised:
                await call()
            caught.append(raised.value.response)
    ours, theirs = caught
    # botocore adds the error shape's modeled members ("message") and retry metadata.
    assert set(ours) == set(theirs)
    assert set(ours["ResponseMetadata"]) == set(theirs["ResponseMetadata"])


_ODD_ANSWERS = [
    (502, b"<html><body>Bad gateway</body></html>", "text/html"),
    (503, b"", "text/plain"),
    (500, b"oops", "text/plain"),
    (429, b"Too Many Requests", "text/plain"),
    (400, b'{"__type":"x#ThrottlingException","message":"slow"}', "application/x-amz-json-1.0"),
    (400, b'{"__type":"ThrottlingException:http://internal/"}', "application/x-amz-json-1.0"),
    (403, b'{"Message":"denied"}', "application/json"),
    (413, b"", "text/plain"),
]


async def test_odd_error_answers_raise_what_the_client_raises() -> None:
    answer: list[tuple[int, bytes, str]] = []

    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        await request.read()
        if request.headers.get("X-Amz-Target", "").endswith("DescribeStream"):
            return web.Response(
                body=b'{"StreamDescription":{}}', content_type="application/x-amz-json-1.0"
            )
        status, body, content_type = answer[-1]
        return web.Response(status=status, body=body, content_type=content_type)

    async with (
        local_http(handle) as url,
        get_session().create_client(
            "dynamodbstreams", endpoint_url=url, config=client_config(4)
        ) as client,
    ):
        fast = fast_get_records(client)
        assert fast is not None
        await client.describe_stream(
            StreamArn="arn:aws:dynamodb:us-east-1:123456789012:table/T/stream/x"
        )
        assert fast.ready
        for case in _ODD_ANSWERS:
            answer.append(case)
            seen = []
            for call in (
                lambda: fast("it", 10),
                lambda: client.get_records(ShardIterator="it", Limit=10),
            ):
                with pytest.raises(ClientError) as raised:
                    await call()
                error = raised.value
                seen.append((type(error), error.response["Error"], is_retryable(error)))
            assert seen[0] == seen[1], case


# ------------------------------------------------------------------------ idle pacing


async def _idle_waits(server: LocalStreamsServer, pages: int, **options: Any) -> list[float]:
    """The waits `_page` sets after `pages` empty pages in a row, as read() sets them."""
    source = sources.dynamodb(
        stream_arn=server.stream_arn, endpoint_url=server.endpoint_url, **options
    )
    async with get_session().create_client(
        "dynamodbstreams", endpoint_url=server.endpoint_url, config=client_config(4)
    ) as client:
        session = _DynamoDBSession(source, client, server.stream_arn)
        reader: Any = session.reader(Shard("shardId-1", None), TRIM_HORIZON)
        waits = []
        for n in range(pages):
            reader._polled_at = float(n * 1000)
            reader._next_poll = reader._polled_at + source.min_poll_gap
            reader._page(b'{"Records":[],"NextShardIterator":"it"}', None)
            waits.append(reader._next_poll - reader._polled_at)
    return waits


async def test_idle_waits_grow_to_the_interval_without_overflow(
    stream_server: tuple[MemoryStream, LocalStreamsServer],
) -> None:
    _, server = stream_server
    waits = await _idle_waits(server, 2000, idle_interval=1.0, max_polls_per_second=5)
    assert waits[:3] == pytest.approx([0.2, 0.4, 0.8])
    assert 0.2 <= waits[3] <= 1.0
    assert waits[4:] == [1.0] * (len(waits) - 4)


async def test_a_poll_gap_above_the_idle_interval_and_a_zero_interval(
    stream_server: tuple[MemoryStream, LocalStreamsServer],
) -> None:
    _, server = stream_server
    assert await _idle_waits(server, 5, idle_interval=0.1, max_polls_per_second=1) == [1.0] * 5
    assert await _idle_waits(server, 5, idle_interval=0.0, max_polls_per_second=2) == [0.5] * 5


@pytest.mark.parametrize(
    "options",
    [
        {"max_polls_per_second": math.inf},
        {"max_polls_per_second": math.nan},
        {"idle_interval": math.nan},
        {"idle_interval": math.inf},
    ],
)
def test_poll_settings_must_be_finite(options: dict[str, float]) -> None:
    # max_polls_per_second=inf once made the poll gap 0, and an idle shard's wait then
    # doubled from 0 and stayed 0: polled back to back forever.
    with pytest.raises(SourceError, match="finite"):
        sources.dynamodb(stream_arn=STREAM_ARN, **options)  # type: ignore[arg-type]
