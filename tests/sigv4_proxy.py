"""A real HTTP server in front of a LocalStreamsServer that checks each request's SigV4
signature as AWS does (tests of the fast GetRecords)."""

from __future__ import annotations

import re
from contextlib import AsyncExitStack
from typing import Final

import aiohttp
import msgspec
from aiobotocore.session import AioSession
from aiohttp import web
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from support import local_http

import flowstream as fs
from flowstream import sinks, sources
from flowstream.report import RunReport
from flowstream.sinks.collect import CollectSink
from flowstream.testing import LocalStreamsServer

_AUTHORIZATION = re.compile(
    r"AWS4-HMAC-SHA256 Credential=(?P<key>[^/]+)/(?P<day>\d{8})/(?P<region>[^/]+)/"
    r"(?P<service>[^/]+)/aws4_request, SignedHeaders=(?P<signed>[a-z0-9;-]+), "
    r"Signature=(?P<signature>[0-9a-f]{64})"
)


class SignatureCheckingProxy:
    """A real HTTP server in front of a LocalStreamsServer that checks each request's
    signature as AWS does: it takes the headers the request says it signed, recomputes
    the signature with botocore's signer and the secret it knows for the access key, and
    refuses a mismatch with InvalidSignatureException. Passing requests are forwarded."""

    def __init__(self, upstream: str, secrets: dict[str, str], *, check: set[str]) -> None:
        self.upstream = upstream
        self.secrets = secrets
        self.check = check  # operations whose signatures are checked
        self.passed: list[tuple[str, str, str]] = []  # (operation, access key, user agent)
        self.refused: list[str] = []
        self.url = ""
        self._listening = AsyncExitStack()
        self._client: aiohttp.ClientSession | None = None

    def _signature_problem(self, request: web.BaseRequest, body: bytes) -> str | None:
        match = _AUTHORIZATION.fullmatch(request.headers.get("Authorization", ""))
        if match is None:
            return "no SigV4 Authorization header"
        amz_date = request.headers.get("X-Amz-Date", "")
        if amz_date[:8] != match["day"]:
            return "credential scope day is not the X-Amz-Date day"
        secret = self.secrets.get(match["key"])
        if secret is None:
            return f"unknown access key {match['key']}"
        signed = match["signed"].split(";")
        for required in ("host", "x-amz-date", "x-amz-target"):
            if required not in signed:
                return f"{required} is not signed"
        headers = {name: request.headers[name] for name in signed}
        rebuilt = AWSRequest(
            method=request.method, url=f"http://{request.host}/", data=body, headers=headers
        )
        rebuilt.context["timestamp"] = amz_date
        auth = SigV4Auth(
            Credentials(match["key"], secret, request.headers.get("X-Amz-Security-Token")),
            match["service"],
            match["region"],
        )
        expected = auth.signature(
            auth.string_to_sign(rebuilt, auth.canonical_request(rebuilt)), rebuilt
        )
        if expected != match["signature"]:
            return "The request signature we calculated does not match the signature you provided"
        return None

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        body = await request.read()
        target = request.headers.get("X-Amz-Target", "")
        operation = target.partition(".")[2]
        if operation in self.check:
            problem = self._signature_problem(request, body)
            if problem is not None:
                self.refused.append(operation)
                error = {"__type": "InvalidSignatureException", "message": problem}
                return web.Response(
                    status=403,
                    body=msgspec.json.encode(error),
                    content_type="application/x-amz-json-1.0",
                )
            key = _AUTHORIZATION.fullmatch(request.headers["Authorization"])
            assert key is not None
            self.passed.append((operation, key["key"], request.headers.get("User-Agent", "")))
        assert self._client is not None
        async with self._client.post(
            self.upstream,
            data=body,
            headers={"Content-Type": request.headers["Content-Type"], "X-Amz-Target": target},
        ) as answer:
            return web.Response(
                status=answer.status,
                body=await answer.read(),
                content_type="application/x-amz-json-1.0",
            )

    async def __aenter__(self) -> SignatureCheckingProxy:
        self._client = aiohttp.ClientSession()
        self.url = await self._listening.enter_async_context(local_http(self._handle))
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._client is not None
        await self._listening.aclose()
        await self._client.close()


#: The calls a pipeline over a DynamoDB stream makes.
EVERY: Final = frozenset({"DescribeStream", "GetShardIterator", "GetRecords"})


async def read_through_proxy(
    server: LocalStreamsServer,
    session: AioSession,
    secrets: dict[str, str],
    *,
    check: frozenset[str] = EVERY,
) -> tuple[SignatureCheckingProxy, CollectSink, RunReport]:
    """Drain `server`'s stream with `session`'s credentials through a proxy that checks
    the signatures of the `check` calls."""
    async with SignatureCheckingProxy(server.endpoint_url, secrets, check=set(check)) as proxy:
        source = sources.dynamodb(
            stream_arn=server.stream_arn,
            endpoint_url=proxy.url,
            session=session,
            idle_interval=0.01,
        )
        out = sinks.collect()
        report = await fs.Pipeline(source).to(out).run(drain=True)
    return proxy, out, report
