"""A counting HTTP endpoint for the sink benchmarks, run in a process of its own so that its
CPU is not the client's.

    python benchmarks/counting_server.py

It listens on a free 127.0.0.1 port and prints that port on its first line of output.
Any POST answers 204 at once and counts its items (a JSON array counts its length, any
other body one); ``GET /count`` answers ``{"items": n, "requests": n}`` and
``POST /reset`` sets both to 0. It exits on SIGTERM, SIGINT, or when its stdin closes,
so it does not outlive a parent that dies without stopping it.
`CountingServer` starts and stops it from the benchmark's side.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import sys
import urllib.request

import msgspec
from aiohttp import web
from child import Child

STARTUP_TIMEOUT = 30.0


# -- the server (its own process) ---------------------------------------------------------


async def serve() -> None:
    items = requests = 0
    decode = msgspec.json.Decoder(list[msgspec.Raw]).decode  # counts without building items

    async def post(request: web.Request) -> web.Response:
        nonlocal items, requests
        body = await request.read()
        requests += 1
        items += len(decode(body)) if body[:1] == b"[" else 1
        return web.Response(status=204)

    async def count(_: web.Request) -> web.Response:
        return web.json_response({"items": items, "requests": requests})

    async def reset(_: web.Request) -> web.Response:
        nonlocal items, requests
        items = requests = 0
        return web.json_response({"items": 0, "requests": 0})

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_get("/count", count)
    app.router.add_post("/reset", reset)
    app.router.add_post("/{tail:.*}", post)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))  # the port is ours before anyone is told about it
    await web.SockSite(runner, sock).start()
    print(sock.getsockname()[1], flush=True)

    loop = asyncio.get_running_loop()
    done = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, done.set)
    # stdin reaches EOF when the parent closes it or dies: then stop too.
    await loop.connect_read_pipe(lambda: _UntilEof(done), sys.stdin)
    try:
        await done.wait()
    finally:
        await runner.cleanup()


class _UntilEof(asyncio.Protocol):
    def __init__(self, done: asyncio.Event) -> None:
        self._done = done

    def connection_lost(self, exc: Exception | None) -> None:
        self._done.set()


# -- the benchmark's side ----------------------------------------------------------------


class CountingServer:
    """The counting server as a subprocess: use as a context manager."""

    def __init__(self) -> None:
        self.port = 0
        self._child: Child | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self._child is not None, "start() the server first"
        return self._child.pid

    def start(self) -> None:
        self._child = Child(__file__)
        line = self._child.first_line(STARTUP_TIMEOUT)
        if not line.strip().isdigit():
            self.stop()
            raise RuntimeError(f"the counting server did not start (it printed {line!r})")
        self.port = int(line)

    def count(self) -> tuple[int, int]:
        """Items and requests received since the last reset."""
        with urllib.request.urlopen(f"{self.url}/count", timeout=10) as response:
            got = json.loads(response.read())
        return int(got["items"]), int(got["requests"])

    def reset(self) -> None:
        request = urllib.request.Request(f"{self.url}/reset", method="POST")
        with urllib.request.urlopen(request, timeout=10):
            pass

    def stop(self) -> None:
        child, self._child = self._child, None
        if child is not None:
            child.stop()

    def __enter__(self) -> CountingServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


if __name__ == "__main__":
    asyncio.run(serve())
