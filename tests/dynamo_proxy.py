"""A real HTTP server on 127.0.0.1 in front of moto's DynamoDB that injects faults: it
answers chosen operations itself (throttling, 5xx, dropped connections, refusals) or
edits moto's answers; everything else goes through to moto. The `proxy` fixture (loaded
by tests/conftest.py) gives each test its own, in front of a freshly reset moto."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from typing import Any, Self

import aiohttp
import pytest
from aiohttp import web
from support import local_http, wait_until

__all__ = [
    "ACCESS_DENIED",
    "CONDITION_FAILED",
    "DISCONNECT",
    "INTERNAL",
    "PROVISIONED",
    "REQUEST_LIMIT",
    "THROTTLING",
    "UNAVAILABLE",
    "DynamoProxy",
    "Fault",
    "error",
    "proxy",
    "status",
]

#: (HTTP status, JSON body) of a DynamoDB error response
Fault = tuple[int, dict[str, Any]]


def error(status: int, code: str, message: str = "injected by the test") -> Fault:
    return status, {"__type": f"com.amazonaws.dynamodb.v20120810#{code}", "message": message}


PROVISIONED = error(400, "ProvisionedThroughputExceededException")
THROTTLING = error(400, "ThrottlingException")
REQUEST_LIMIT = error(400, "RequestLimitExceeded")
INTERNAL = error(500, "InternalServerError")
UNAVAILABLE = error(503, "ServiceUnavailable")
ACCESS_DENIED = error(400, "AccessDeniedException", "not authorized to perform UpdateItem")
CONDITION_FAILED = error(400, "ConditionalCheckFailedException", "The conditional request failed")
#: Not an HTTP answer: the proxy closes the connection without one.
DISCONNECT: Fault = (0, {})


class DynamoProxy:
    """Forwards DynamoDB JSON-protocol requests to moto, except that it answers the next
    `times` calls of an operation with a fault, or edits moto's successful answers."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.url = ""
        self.calls: Counter[str] = Counter()
        self.failed: Counter[str] = Counter()
        self.in_flight: Counter[str] = Counter()
        self.most_in_flight: Counter[str] = Counter()
        #: (operation, error code) of every error moto answered
        self.refusals: list[tuple[str, str]] = []
        self._faults: dict[str, tuple[Fault, float]] = {}
        self._edits: dict[str, list[Callable[[dict[str, Any]], None]]] = {}
        self._listening = AsyncExitStack()
        self._gates: dict[str, int] = {}
        self._client: aiohttp.ClientSession | None = None

    def fail(self, operation: str, fault: Fault, times: float = float("inf")) -> None:
        self._faults[operation] = (fault, times)

    def edit(self, operation: str, *edits: Callable[[dict[str, Any]], None]) -> None:
        """Apply one edit to each of the next successful answers, in order."""
        self._edits.setdefault(operation, []).extend(edits)

    def gate(self, operation: str, count: int) -> None:
        """Hold calls of `operation` until `count` of them are in flight at once (for
        the first `count` calls only): a test can then see that they run concurrently."""
        self._gates[operation] = count

    async def handle(self, request: web.Request) -> web.StreamResponse:
        operation = request.headers.get("X-Amz-Target", "").rpartition(".")[2]
        self.calls[operation] += 1
        body = await request.read()
        fault, times = self._faults.get(operation, (None, 0))
        if fault is not None and times > 0:
            self._faults[operation] = (fault, times - 1)
            self.failed[operation] += 1
            status, payload = fault
            if status == 0:
                assert request.transport is not None
                request.transport.close()
                return web.Response()
            return web.json_response(
                payload, status=status, content_type="application/x-amz-json-1.0"
            )
        self.in_flight[operation] += 1
        self.most_in_flight[operation] = max(
            self.most_in_flight[operation], self.in_flight[operation]
        )
        try:
            gate = self._gates.get(operation)
            if gate is not None and self.calls[operation] <= gate:
                await wait_until(lambda: self.in_flight[operation] >= gate)
            return await self._forward(request, operation, body)
        finally:
            self.in_flight[operation] -= 1

    async def _forward(self, request: web.Request, operation: str, body: bytes) -> web.Response:
        assert self._client is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() != "host"}
        async with self._client.post(
            self.target + request.path_qs, data=body, headers=headers
        ) as r:
            answer = await r.read()
            status = r.status
        if status != 200:
            self.refusals.append((operation, json.loads(answer)["__type"].rpartition("#")[2]))
        edits = self._edits.get(operation)
        if status == 200 and edits:
            document = json.loads(answer)
            edits.pop(0)(document)
            answer = json.dumps(document).encode()
        # No x-amz-crc32: an edited body would not match moto's checksum.
        return web.Response(body=answer, status=status, content_type="application/x-amz-json-1.0")

    async def __aenter__(self) -> Self:
        self._client = aiohttp.ClientSession()
        self.url = await self._listening.enter_async_context(local_http(self.handle))
        return self

    async def stop_listening(self) -> None:
        """Close the port and every open connection: the endpoint is gone."""
        await self._listening.aclose()

    async def __aexit__(self, *exc_info: object) -> None:
        await self._listening.aclose()
        assert self._client is not None
        await self._client.close()


@pytest.fixture
async def proxy(moto_url: str) -> AsyncIterator[DynamoProxy]:
    async with DynamoProxy(moto_url) as server:
        yield server


def status(value: str) -> Callable[[dict[str, Any]], None]:
    """An edit that gives a CreateTable or DescribeTable answer the table status `value`."""

    def edit(document: dict[str, Any]) -> None:
        (document.get("Table") or document["TableDescription"])["TableStatus"] = value

    return edit
