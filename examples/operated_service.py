"""A webhook forwarder run as an operated service: metrics, probes and an outage ridden out.

The pipeline POSTs each change to a webhook with ``on_failure(retries=None)``: while the
webhook answers 503, its shards wait and retry, in order, instead of dead-lettering.
A `Monitor` serves /metrics, /ready and /healthz; this script scrapes them itself to
show what a Prometheus server and a readiness probe would see.

    python examples/operated_service.py            # an in-memory stream, a local webhook
    python examples/operated_service.py --outage 3 --port 9100

Run a real table the same way with the CLI: ``flowstream run myapp:pipeline
--metrics-port 9100`` (docs/operating.md).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

import anyio
from aiohttp import ClientSession, web

import flowstream as fs
from flowstream import sinks, sources
from flowstream.monitor import Monitor
from flowstream.testing import MemoryStream

__all__ = ["build_pipeline", "main"]


def build_pipeline(source: sources.Source, url: str) -> fs.Pipeline[dict[str, Any]]:
    """Every change POSTed to `url`; retryable failures are retried until the webhook is
    back (or a record is a day old), others go to stdout as dead letters."""
    return (
        fs.Pipeline(source, name="orders-webhook")
        .map(lambda r: {"keys": r.keys, "type": r.event_name.value, "new": r.new_image})
        .to(sinks.http(url, batch_size=10))
        .on_failure(
            retries=None,
            backoff=(0.05, 0.5),
            max_record_age=86_400,
            dead_letter=sinks.stdout(),
        )
    )


class Webhook:
    """A local webhook that is down (503) for its first `outage` seconds; `done` is set
    once `expected` changes came in."""

    def __init__(self, outage: float, expected: int) -> None:
        self.outage = outage
        self.expected = expected
        self.done = anyio.Event()
        self.received = 0
        self.refused = 0
        self.started = anyio.current_time()

    async def handle(self, request: web.Request) -> web.Response:
        if anyio.current_time() - self.started < self.outage:
            self.refused += 1
            return web.Response(status=503)
        self.received += len(await request.json())
        if self.received >= self.expected:
            self.done.set()
        return web.Response(status=204)


async def serve(args: argparse.Namespace) -> fs.RunReport:
    stream = MemoryStream(table="Orders")
    shards = [stream.add_shard() for _ in range(4)]
    for n in range(200):
        key = {"pk": f"order#{n % 50}"}
        stream.put(shards[n % 4], "MODIFY", key, {**key, "total": n})
    webhook = Webhook(args.outage, expected=200)
    app = web.Application()
    app.router.add_post("/hook", webhook.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    hook_port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    monitor = Monitor()
    try:
        async with monitor.serve(port=args.port, host="127.0.0.1") as port:
            pipeline = build_pipeline(stream, f"http://127.0.0.1:{hook_port}/hook")
            print(f"metrics at http://127.0.0.1:{port}/metrics")
            stop = anyio.Event()
            async with anyio.create_task_group() as tg:

                async def run() -> None:
                    report = await pipeline.run(monitor=monitor, stop=stop, log_interval=1.0)
                    results.append(report)

                results: list[fs.RunReport] = []
                tg.start_soon(run)
                async with ClientSession() as http:
                    base = f"http://127.0.0.1:{port}"
                    await webhook.done.wait()
                    async with http.get(f"{base}/ready") as ready:
                        print(f"/ready: {ready.status} {(await ready.text()).strip()}")
                    async with http.get(f"{base}/metrics") as metrics:
                        text = await metrics.text()
                    for line in text.splitlines():
                        if line.startswith(
                            ("flowstream_records_delivered_total", "flowstream_iterator_age_max")
                        ):
                            print(line)
                stop.set()
    finally:
        await runner.cleanup()
    print(
        f"webhook: {webhook.received} changes received after refusing "
        f"{webhook.refused} requests during a {args.outage:g}s outage"
    )
    return results[0]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--outage", type=float, default=1.0, help="seconds of 503s (1)")
    parser.add_argument("--port", type=int, default=0, help="the metrics port (any free one)")
    report = anyio.run(serve, parser.parse_args(argv))
    print(report.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
