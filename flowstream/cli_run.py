"""`flowstream run TARGET`: run a pipeline as a service until SIGTERM or SIGINT.

On a terminal it shows a live view (rich) refreshed every second; otherwise it writes
plain log lines (text or JSON), with a progress line every `--progress-interval`.
`--metrics-port` serves /metrics, /ready and /healthz (`flowstream.monitor`).

Exit status: 0 after a clean stop (a signal, or a drain with no shard stopped), 1 on
an error (the pipeline cannot be built or run), 3 when a shard stopped and the run was
asked to end for it (`--drain`, or `--on-shard-stopped exit`).
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

import anyio
import msgspec

from flowstream.errors import FlowstreamError, ShardStoppedError

if TYPE_CHECKING:
    from rich.console import Console, RenderableType

    from flowstream.monitor import Monitor
    from flowstream.pipeline import Pipeline
    from flowstream.report import RunReport

__all__ = ["EXIT_SHARD_STOPPED", "add_arguments", "main"]

#: The exit status when a shard stopped and the run ended for it.
EXIT_SHARD_STOPPED: Final = 3

#: Shard rows the live view shows (stopped ones first, then the most behind).
_LIVE_ROWS: Final = 20

logger = logging.getLogger("flowstream")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add `run`'s own arguments (TARGET and its options) to its subparser."""
    from flowstream.cli_options import CHECKPOINTS_HELP

    parser.add_argument(
        "target",
        metavar="TARGET",
        help="MODULE:NAME or path/to/file.py:NAME: a Pipeline or a function returning one",
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--checkpoints", metavar="SPEC", help=f"{CHECKPOINTS_HELP} (default: memory)"
    )
    where.add_argument(
        "--leases",
        metavar="TABLE",
        help="share the stream with every worker run with this lease table (created if "
        "missing); it holds the checkpoints",
    )
    parser.add_argument(
        "--worker-id", metavar="ID", help="this worker's name in the lease table (--leases)"
    )
    parser.add_argument(
        "--drain",
        action="store_true",
        help="process what is in the stream now, then exit (3 if a shard stopped)",
    )
    parser.add_argument(
        "--grace-period",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="how long in-flight batches may finish after SIGTERM/SIGINT (10)",
    )
    parser.add_argument(
        "--on-shard-stopped",
        choices=("continue", "exit"),
        default="continue",
        help="what a shard stopped at a failing record does: the others go on (continue, "
        "the default; /ready answers 503), or the run ends with status 3 (exit)",
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        metavar="PORT",
        help="serve /metrics, /ready and /healthz on PORT",
    )
    parser.add_argument(
        "--metrics-host",
        default="0.0.0.0",
        metavar="HOST",
        help="the address /metrics listens on (0.0.0.0)",
    )
    parser.add_argument(
        "--log-format",
        choices=("text", "json"),
        default="text",
        help="log lines as text, or one JSON object per line (json)",
    )
    parser.add_argument(
        "--log-level",
        choices=("debug", "info", "warning", "error"),
        default="info",
        help="the least severe log lines written (info)",
    )
    parser.add_argument(
        "--log-interval",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="repeated warnings (per shard and cause) and stopped shards are logged at "
        "most once per interval (30)",
    )
    parser.add_argument(
        "--view",
        choices=("auto", "live", "plain"),
        default="auto",
        help="the live view on a terminal, plain log lines otherwise (auto)",
    )
    parser.add_argument(
        "--progress-interval",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="seconds between progress lines in the plain view (60)",
    )


def main(args: argparse.Namespace) -> int:
    """Run the pipeline the parsed `args` name; the process's exit status."""
    from flowstream.cli import load_pipeline
    from flowstream.cli_options import checkpoint_store, fail

    for option in ("grace_period", "log_interval", "progress_interval"):
        value = getattr(args, option)
        zero = option == "grace_period"
        if not (value >= 0 if zero else value > 0) or value == float("inf"):
            flag = f"--{option.replace('_', '-')}"
            wanted = "0 or more" if zero else "more than 0"
            return fail("run", ValueError(f"{flag} {value:g}: give a number of seconds, {wanted}"))
    if args.metrics_port is not None and not 0 <= args.metrics_port <= 65535:
        return fail(
            "run", ValueError(f"--metrics-port {args.metrics_port} is not a port: give 0 to 65535")
        )
    live = args.view == "live" or (args.view == "auto" and sys.stdout.isatty())
    console = _console() if live else None
    _configure_logging(args.log_format, args.log_level, console)
    try:
        pipeline = load_pipeline(args.target, option="TARGET")
        options: dict[str, Any] = {}
        if args.leases is not None:
            from flowstream import leases

            options["leases"] = leases.dynamodb(args.leases, worker_id=args.worker_id)
        elif args.checkpoints is not None:
            options["checkpoints"] = checkpoint_store(args.checkpoints)
        if args.worker_id is not None and args.leases is None:
            raise FlowstreamError("--worker-id names a worker in a lease table; add --leases")
    except FlowstreamError as exc:
        return fail("run", exc)
    except Exception as exc:  # the user's module raised while being imported or built
        return fail("run", RuntimeError(f"{args.target}: {type(exc).__name__}: {exc}"))
    try:
        report = anyio.run(_run, pipeline, args, options, console)
    except ShardStoppedError as exc:
        print(exc.report.summary(), file=sys.stderr)
        fail("run", exc)
        return EXIT_SHARD_STOPPED
    except FlowstreamError as exc:
        return fail("run", exc)
    print(report.summary(), file=sys.stderr)
    return 0


async def _run(
    pipeline: Pipeline[Any],
    args: argparse.Namespace,
    options: dict[str, Any],
    console: Console | None,
) -> RunReport:
    from flowstream.monitor import Monitor

    monitor = Monitor()
    progress: Callable[[RunReport], object]
    async with AsyncExitStack() as stack:
        where = ""
        if args.metrics_port is not None:
            port = await stack.enter_async_context(
                monitor.serve(args.metrics_port, args.metrics_host)
            )
            where = f"http://{args.metrics_host}:{port}/metrics"
        if console is not None:
            from rich.live import Live

            view = _LiveView(monitor, where)
            live = stack.enter_context(
                Live(view.render(), console=console, refresh_per_second=1, transient=False)
            )

            def progress(report: RunReport) -> None:
                live.update(view.render(report))

            interval = 1.0
        else:
            progress, interval = _ProgressLines(), args.progress_interval
        return await pipeline.run(
            drain=args.drain,
            grace_period=args.grace_period,
            handle_signals=True,
            on_progress=progress,
            progress_interval=interval,
            monitor=monitor,
            on_shard_stopped=args.on_shard_stopped,
            log_interval=args.log_interval,
            **options,
        )


# -- logging ------------------------------------------------------------------------------


class _JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message (and the exception)."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return msgspec.json.encode(line).decode()


def _configure_logging(fmt: str, level: str, console: Console | None) -> None:
    handler: logging.Handler
    if console is not None and fmt == "text":
        from rich.logging import RichHandler

        # printed above the live view, which stays at the bottom of the terminal
        handler = RichHandler(console=console, show_path=False, rich_tracebacks=False)
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(
            _JsonFormatter()
            if fmt == "json"
            else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
        )
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    logging.getLogger("flowstream").setLevel(level.upper())


def _console() -> Console:
    from rich.console import Console

    return Console()


# -- the plain view -----------------------------------------------------------------------


class _ProgressLines:
    """A progress line per interval: totals, rates since the last line, the worst
    iterator age and the shards by state."""

    def __init__(self) -> None:
        self._last: tuple[float, int, int] | None = None

    def __call__(self, report: RunReport) -> None:
        now = time.monotonic()
        read, delivered = report.read, report.delivered
        rates = ""
        if self._last is not None:
            seconds = max(now - self._last[0], 1e-9)
            rates = (
                f" ({(read - self._last[1]) / seconds:.1f}/s read, "
                f"{(delivered - self._last[2]) / seconds:.1f}/s delivered)"
            )
        self._last = (now, read, delivered)
        ages = report.iterator_ages()
        logger.info(
            "pipeline %r: %d read, %d delivered%s; %d failed, %d dead-lettered; max "
            "iterator age %.1fs; shards: %s",
            report.pipeline,
            read,
            delivered,
            rates,
            report.failed,
            report.dead_lettered,
            max(ages.values(), default=0.0),
            report.states_text() or "none yet",
        )


# -- the live view ------------------------------------------------------------------------


class _LiveView:
    """The table the live view redraws: the run, its shards (stopped ones first, in
    red), and its sinks with their rates."""

    def __init__(self, monitor: Monitor, metrics: str) -> None:
        self._monitor = monitor
        self._metrics = metrics
        self._sinks: dict[str, tuple[float, int]] = {}

    def render(self, report: RunReport | None = None) -> RenderableType:
        from rich.console import Group
        from rich.table import Table
        from rich.text import Text

        from flowstream.report import ShardState

        if report is None:
            return Text("starting…")
        now = datetime.now(UTC)
        ready = self._monitor.ready()
        head = Text()
        head.append(f"pipeline {report.pipeline}", style="bold")
        head.append(f"  {report.stream or 'opening the stream'}  up {report.duration:.0f}s  ")
        head.append("ready" if ready.ok else "NOT READY", style="green" if ready.ok else "bold red")
        if self._metrics:
            head.append(f"  metrics {self._metrics}", style="dim")
        shards = Table(expand=False, title=None, box=None, pad_edge=False)
        for column in ("shard", "state", "read", "delivered", "iterator age", "checkpoint"):
            shards.add_column(
                column, justify="right" if column in ("read", "delivered") else "left"
            )
        rows = sorted(
            report.shards.values(),
            key=lambda s: (s.state is not ShardState.STOPPED, -(s.iterator_age(now) or 0.0)),
        )
        for shard in rows[:_LIVE_ROWS]:
            age = shard.iterator_age(now)
            stopped = shard.state is ShardState.STOPPED
            shards.add_row(
                shard.shard_id,
                Text(shard.state.value.upper() if stopped else shard.state.value),
                str(shard.read),
                str(shard.delivered),
                "-" if age is None else f"{age:.1f}s",
                _short(shard.checkpoint),
                style="bold red" if stopped else None,
            )
        parts: list[RenderableType] = [head, shards]
        if len(rows) > _LIVE_ROWS:
            parts.append(Text(f"… and {len(rows) - _LIVE_ROWS} more shards", style="dim"))
        for shard in report.stopped_shards().values():
            parts.append(
                Text(
                    f"stopped {shard.shard_id} at {shard.stopped_at}: {shard.error} "
                    f"({shard.held} record(s) held up)",
                    style="red",
                )
            )
        sinks = Table(box=None, pad_edge=False)
        for column in ("sink", "delivered", "rate", "failed", "batches", "mean send"):
            sinks.add_column(column, justify="left" if column == "sink" else "right")
        clock = time.monotonic()
        for name, sink in report.sinks.items():
            before = self._sinks.get(name)
            rate = (
                (sink.delivered - before[1]) / max(clock - before[0], 1e-9)
                if before is not None
                else 0.0
            )
            self._sinks[name] = (clock, sink.delivered)
            mean = sink.send_seconds / sink.batches if sink.batches else 0.0
            sinks.add_row(
                name,
                str(sink.delivered),
                f"{rate:.1f}/s",
                Text(str(sink.failed), style="red" if sink.failed else ""),
                str(sink.batches),
                f"{mean * 1000:.1f}ms",
            )
        parts.append(sinks)
        return Group(*parts)


def _short(checkpoint: str | None) -> str:
    if checkpoint is None:
        return "-"
    return checkpoint if len(checkpoint) <= 14 else f"…{checkpoint[-12:]}"
