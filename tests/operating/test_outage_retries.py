"""`on_failure(retries=None)` rides out an outage of a real HTTP endpoint on 127.0.0.1
(answering 503, or refusing connections) with `sinks.http`: nothing is dead-lettered,
and the endpoint sees every record once, in each shard's order, when it is back; an HTTP
400 in the same run is still dead-lettered at once, and `max_record_age` still bounds
the wait. One test holds a 30 s outage (the issue's) and checks that the retry warnings
stay at one line per shard and cause per `log_interval`, with counts."""

from __future__ import annotations

import logging
import math
import re
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import anyio
import pytest
from aiohttp import web
from support import local_http, wait_until

import flowstream as fs
from flowstream import sinks
from flowstream.report import RunReport
from flowstream.testing import MemoryStream

TIMEOUT = 10.0


@dataclass
class Endpoint:
    """An HTTP endpoint that is down (503) while `down` is set; items whose key starts
    with "bad" get a 400 whatever the state. Records what it accepted, per shard."""

    down: bool = False
    accepted: dict[str, list[str]] = field(default_factory=dict)
    unavailable: int = 0  # 503 answers
    refused: list[tuple[str, bool]] = field(default_factory=list)  # (key, while down)
    answers: Counter[int] = field(default_factory=Counter)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        item = await request.json()
        if item["pk"].startswith("bad"):
            self.refused.append((item["pk"], self.down))
            status = 400
        elif self.down:
            self.unavailable += 1
            status = 503
        else:
            self.accepted.setdefault(item["shard"], []).append(item["pk"])
            status = 200
        self.answers[status] += 1
        return web.Response(status=status, text="" if status == 200 else "try later")

    def has_all(self, stream: MemoryStream) -> bool:
        return all(self.accepted.get(s, []) == expected(stream, s) for s in stream.shard_ids)


def retries(report: RunReport) -> int:
    return sum(shard.retries for shard in report.shards.values())


def item(record: fs.Record) -> dict[str, Any]:
    return {"pk": record.keys["pk"], "shard": record.shard_id}


def expected(stream: MemoryStream, shard: str) -> list[str]:
    """The keys of `shard` the endpoint should accept, in order (not the "bad" ones)."""
    keys = [str(r.keys["pk"]) for r in stream.records(shard)]
    return [k for k in keys if not k.startswith("bad")]


def make_stream(shards: int = 4, per_shard: int = 8, *, bad: bool = True) -> MemoryStream:
    """Shards of `per_shard` records; with `bad`, the first shard's first record is one
    the endpoint answers 400 (it is sent during the outage: nothing is before it)."""
    stream = MemoryStream(page_size=5)
    ids = [stream.add_shard() for _ in range(shards)]
    for n in range(per_shard):
        for s, shard in enumerate(ids):
            pk = "bad-0" if bad and s == 0 and n == 0 else f"s{s}-{n:03d}"
            stream.put(shard, "INSERT", {"pk": pk}, {"pk": pk})
    return stream


@asynccontextmanager
async def running(
    pipeline: fs.Pipeline[Any], **options: Any
) -> AsyncIterator[tuple[list[RunReport], list[RunReport]]]:
    """Runs `pipeline` until the block ends; yields (the live report once known, the
    report run() returned once it did)."""
    stop = anyio.Event()
    live: list[RunReport] = []
    final: list[RunReport] = []

    def progress(report: RunReport) -> None:
        if not live:
            live.append(report)

    async def run() -> None:
        final.append(
            await pipeline.run(stop=stop, on_progress=progress, progress_interval=0.01, **options)
        )

    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
        try:
            await wait_until(lambda: bool(live), TIMEOUT)
            yield live, final
        finally:
            stop.set()


def outage_pipeline(
    stream: MemoryStream, url: str, dead: Any, **policy: Any
) -> fs.Pipeline[dict[str, Any]]:
    options: dict[str, Any] = {"retries": None, "backoff": (0.001, 0.01)} | policy
    return (
        fs.Pipeline(stream, name="outage")
        .map(item)
        .to(sinks.http(url, timeout=5.0))
        .on_failure(dead_letter=dead, **options)
    )


def assert_bad_dead_lettered_at_once(dead: Any, endpoint: Endpoint) -> None:
    (letter,) = dead.items
    assert letter.record.keys == {"pk": "bad-0"}
    assert (letter.reason, letter.attempts) == ("not_retryable", 1)
    assert letter.error is not None
    assert "HTTP 400" in letter.error.message
    # sent once, and answered while the endpoint was down for everything else
    assert endpoint.refused == [("bad-0", True)]


class TestRetriesUntilSuccess:
    async def test_a_503_outage_loses_nothing_and_keeps_order(self) -> None:
        stream = make_stream()
        endpoint = Endpoint(down=True)
        dead = sinks.collect()
        async with local_http(endpoint.handle) as url:
            pipeline = outage_pipeline(stream, url, dead)
            async with running(pipeline) as (live, final):
                report = live[0]
                # well past what a retry count of 3 would have allowed, for every shard
                await wait_until(
                    lambda: (
                        len(report.shards) == 4
                        and all(s.retries >= 10 for s in report.shards.values())
                    ),
                    TIMEOUT,
                )
                assert endpoint.refused  # the 400 came while the rest was failing
                # changes made during the outage queue up behind the held records
                for n, shard in enumerate(stream.shard_ids):
                    stream.put(shard, "MODIFY", {"pk": f"late-{n}"}, {"pk": f"late-{n}"})
                assert not endpoint.accepted
                endpoint.down = False
                await wait_until(lambda: endpoint.has_all(stream), TIMEOUT)
        (report,) = final
        assert_bad_dead_lettered_at_once(dead, endpoint)
        for shard in stream.shard_ids:
            assert endpoint.accepted[shard] == expected(stream, shard)  # once each, in order
        assert report.dead_lettered == 1
        assert not report.stopped_shards()
        assert retries(report) >= endpoint.unavailable  # every 503 was retried

    async def test_refused_connections_until_the_endpoint_starts(self) -> None:
        stream = make_stream(shards=2, bad=False)
        endpoint = Endpoint()
        dead = sinks.collect()
        port = free_port()
        pipeline = outage_pipeline(stream, f"http://127.0.0.1:{port}/hook", dead)
        async with running(pipeline) as (live, _):
            report = live[0]
            await wait_until(lambda: all(s.retries >= 10 for s in report.shards.values()))
            async with serve_on(port, endpoint.handle):
                await wait_until(lambda: endpoint.has_all(stream), TIMEOUT)
        assert dead.items == []
        assert report.dead_lettered == 0
        assert endpoint.answers == {200: 16}  # nothing sent twice

    async def test_with_a_retry_count_the_same_outage_fills_the_dead_letters(self) -> None:
        # what retries=None is for: with a count, an outage dead-letters records, whose
        # later replay would land behind newer changes of the same keys
        stream = make_stream(bad=False)
        endpoint = Endpoint(down=True)
        dead = sinks.collect()
        async with local_http(endpoint.handle) as url:
            pipeline = outage_pipeline(stream, url, dead, retries=2)
            async with running(pipeline):
                await wait_until(lambda: len(dead.items) >= 8, TIMEOUT)
                endpoint.down = False
                await wait_until(
                    lambda: sum(map(len, endpoint.accepted.values())) + len(dead.items) == 32,
                    TIMEOUT,
                )
        assert {letter.reason for letter in dead.items} == {"retries_exhausted"}
        assert {letter.attempts for letter in dead.items} == {3}

    async def test_max_record_age_still_ends_the_wait(self) -> None:
        stream = MemoryStream()
        old, fresh = stream.add_shard(), stream.add_shard()
        long_ago = datetime.now(UTC) - timedelta(minutes=10)
        for n in range(3):
            stream.put(old, "INSERT", {"pk": f"old-{n}"}, {"pk": f"old-{n}"}, created_at=long_ago)
            stream.put(fresh, "INSERT", {"pk": f"new-{n}"}, {"pk": f"new-{n}"})
        endpoint = Endpoint(down=True)
        dead = sinks.collect()
        async with local_http(endpoint.handle) as url:
            pipeline = outage_pipeline(stream, url, dead, max_record_age=300)
            async with running(pipeline) as (live, _):
                report = live[0]
                await wait_until(lambda: len(dead.items) == 3, TIMEOUT)
                await wait_until(lambda: report.shards[fresh].retries >= 10, TIMEOUT)
                assert len(dead.items) == 3  # the fresh shard's records wait, not go
                endpoint.down = False
                await wait_until(lambda: endpoint.accepted.get(fresh) == expected(stream, fresh))
        assert [letter.record.keys["pk"] for letter in dead.items] == ["old-0", "old-1", "old-2"]
        assert {letter.reason for letter in dead.items} == {"max_record_age"}
        assert old not in endpoint.accepted


OUTAGE = 30.0
LOG_INTERVAL = 5.0
RETRY_LINE = re.compile(r"^shard (\S+): (.+?) failed .*\((\w+): .*; retry \d+ of unlimited")


@pytest.mark.long
class TestLongOutage:
    async def test_a_30s_outage_with_few_warning_lines(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.WARNING, logger="flowstream")
        stream = make_stream(shards=4, per_shard=10)
        endpoint = Endpoint(down=True)
        dead = sinks.collect()
        with anyio.fail_after(OUTAGE + 30):
            async with local_http(endpoint.handle) as url:
                pipeline = outage_pipeline(stream, url, dead, backoff=(0.01, 0.2))
                async with running(pipeline, log_interval=LOG_INTERVAL) as (_, final):
                    began = time.monotonic()
                    await anyio.sleep(OUTAGE)  # the outage itself, as long as the issue asks
                    endpoint.down = False
                    assert time.monotonic() - began < OUTAGE + 1
                    await wait_until(lambda: endpoint.has_all(stream), TIMEOUT)
        (report,) = final
        assert_bad_dead_lettered_at_once(dead, endpoint)
        for shard in stream.shard_ids:
            assert endpoint.accepted[shard] == expected(stream, shard)
        assert report.dead_lettered == 1
        assert not report.stopped_shards()

        lines: Counter[tuple[str, str, str]] = Counter()
        suffixed = 0
        for record in caplog.records:
            found = RETRY_LINE.match(record.getMessage())
            if found:
                lines[found.group(1), found.group(2), found.group(3)] += 1
                suffixed += "more like this in the last" in record.getMessage()
        assert {shard for shard, _, _ in lines} == set(stream.shard_ids)
        bound = math.ceil(OUTAGE / LOG_INTERVAL) + 2  # 8
        assert max(lines.values()) <= bound, lines
        for shard in stream.shard_ids:
            written = sum(n for (s, _, _), n in lines.items() if s == shard)
            # many retries, few lines
            assert report.shards[shard].retries >= 10 * written, (shard, written)
        assert suffixed >= len(stream.shard_ids)  # each shard's later lines carry counts
        assert retries(report) >= endpoint.unavailable
        # every other warning of the outage is rate-limited too: the whole log is short
        warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(warnings) <= len(stream.shard_ids) * bound + 2


def free_port() -> int:
    """A port nothing listens on (yet): connecting to it is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@asynccontextmanager
async def serve_on(port: int, handler: Callable[[web.Request], Any]) -> AsyncIterator[None]:
    """A real HTTP server on 127.0.0.1:`port` that answers with `handler`."""
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", port).start()
        yield
    finally:
        await runner.cleanup()
