"""Helpers for tests: wait on a condition with a deadline instead of sleeping, and serve
HTTP on 127.0.0.1 with a handler of the test's own."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import anyio
from aiohttp import web


async def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Return once `condition()` holds; fail the test after `timeout` seconds."""
    with anyio.fail_after(timeout):
        while not condition():
            await anyio.sleep(0.002)


async def eventually(condition: Callable[[], Awaitable[bool]], timeout: float = 20.0) -> None:
    """Return once the async `condition()` holds (asked every 50 ms: it makes a call);
    fail the test after `timeout` seconds."""
    with anyio.fail_after(timeout):
        while not await condition():
            await anyio.sleep(0.05)


@asynccontextmanager
async def local_http(
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    *,
    tls: ssl.SSLContext | None = None,
) -> AsyncIterator[str]:
    """A real HTTP(S) server on a free 127.0.0.1 port that answers every request with
    `handler`; yields its base URL (no trailing slash). On exit the port closes and open
    connections are dropped (handlers still running get a second to finish)."""
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls)
        await site.start()
        yield f"{'https' if tls else 'http'}://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()
