"""A slow webhook for the concurrency benchmark (bench_concurrency.py), in a process of its
own: every POST takes `delay` seconds to answer (``python slow_server.py DELAY``), and each
item it receives is logged in arrival order with its ``shard``, ``key`` and ``seq``, when
it arrived and when it was answered (``time.time()``, which the client's clock shares).

It prints its port on its first line and exits when its stdin closes (child.py);
`SlowServer` starts and stops it from the benchmark's side, and reads and resets the log.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import sys
import time
import urllib.request
from typing import Any

from aiohttp import web
from child import Child

STARTUP_TIMEOUT = 30.0

#: One logged item: shard, key, seq, arrived, answered (seconds since the epoch).
Entry = tuple[str, str, int, float, float]


# -- the server (its own process) ---------------------------------------------------------


async def serve(delay: float) -> None:
    log: list[list[Any]] = []
    in_flight: set[tuple[str, str]] = set()  # (shard, key) of the requests being answered
    state = {"requests": 0, "now": 0, "peak": 0, "overlaps": 0}

    async def post(request: web.Request) -> web.Response:
        body = json.loads(await request.read())
        items = body if isinstance(body, list) else [body]
        arrived = time.time()
        state["requests"] += 1
        state["now"] += 1
        state["peak"] = max(state["peak"], state["now"])
        entries = []
        lanes = []
        for item in items:
            lane = (str(item["shard"]), str(item["key"]))
            if lane in in_flight:
                state["overlaps"] += 1  # two requests of one key at once: must never happen
            in_flight.add(lane)
            lanes.append(lane)
            entry = [lane[0], lane[1], int(item["seq"]), arrived, 0.0]
            log.append(entry)
            entries.append(entry)
        try:
            await asyncio.sleep(delay)
        finally:
            answered = time.time()
            for entry in entries:
                entry[4] = answered
            in_flight.difference_update(lanes)
            state["now"] -= 1
        return web.Response(status=204)

    async def get_log(_: web.Request) -> web.Response:
        return web.json_response({"items": log, **state})

    async def reset(_: web.Request) -> web.Response:
        log.clear()
        in_flight.clear()
        state.update(requests=0, now=0, peak=0, overlaps=0)
        return web.json_response({})

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_get("/log", get_log)
    app.router.add_post("/reset", reset)
    app.router.add_post("/{tail:.*}", post)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))  # the port is ours before anyone is told about it
    # many connections open at once (up to the client's pool): a long accept queue
    await web.SockSite(runner, sock, backlog=1024).start()
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


class ServerLog:
    """What the server saw since its last reset."""

    def __init__(self, got: dict[str, Any]) -> None:
        self.entries: list[Entry] = [
            (str(s), str(k), int(q), float(a), float(d)) for s, k, q, a, d in got["items"]
        ]
        self.requests = int(got["requests"])
        #: most requests being answered at once
        self.peak = int(got["peak"])
        #: requests that arrived while another of the same key was being answered
        self.overlaps = int(got["overlaps"])


class SlowServer:
    """The slow server as a subprocess: use as a context manager."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
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
        self._child = Child(__file__, str(self.delay))
        line = self._child.first_line(STARTUP_TIMEOUT)
        if not line.strip().isdigit():
            self.stop()
            raise RuntimeError(f"the slow server did not start (it printed {line!r})")
        self.port = int(line)

    def log(self) -> ServerLog:
        with urllib.request.urlopen(f"{self.url}/log", timeout=30) as response:
            return ServerLog(json.loads(response.read()))

    def reset(self) -> None:
        request = urllib.request.Request(f"{self.url}/reset", method="POST")
        with urllib.request.urlopen(request, timeout=10):
            pass

    def stop(self) -> None:
        child, self._child = self._child, None
        if child is not None:
            child.stop()

    def __enter__(self) -> SlowServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


if __name__ == "__main__":
    asyncio.run(serve(float(sys.argv[1])))
