"""Lambda: the cold start and a warm 100-record invocation of `pipeline.lambda_handler()`,
against a hand-written loop over `fs.decode_records(event)` and aws-lambda-powertools'
`BatchProcessor`, all three doing the same work per record (lambda_apps/).

    python3 benchmarks/bench_lambda.py [--quick] [--runs N] [--rounds N]

Cold start: a fresh Python process imports the function's module and runs its first
invocation; the time is from just before the process is started to its answer (read
by the parent), median over N processes per function, the functions taking turns.
Warm: one process calls each handler with the same 100-record event (parsed, as the
runtime hands it over) many times; the functions take turns round after round, and each
ratio is the median over the rounds of the two medians taken in the same round.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import gc
import importlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench_decode import one_core
from bench_latency import percentile
from pages import make_pages, stats
from report import Section, text_table

import flowstream as fs
from flowstream.testing.lambda_events import lambda_context, lambda_event

COMMAND = "python3 benchmarks/bench_lambda.py"
HERE = Path(__file__).resolve().parent
RECORDS = 100
STREAM_ARN = "arn:aws:dynamodb:us-east-1:000000000000:table/users/stream/2026-01-01T00:00:00.000"


@dataclass(frozen=True)
class Function:
    """One benchmarked Lambda function: `module.attribute` under lambda_apps/."""

    key: str
    label: str
    module: str
    attribute: str = "handler"

    def load(self) -> Callable[[dict[str, Any], Any], Any]:
        handler: Callable[[dict[str, Any], Any], Any] = getattr(
            importlib.import_module(self.module), self.attribute
        )
        return handler

    def delivered(self) -> list[Any]:
        found: list[Any] = importlib.import_module(self.module).delivered
        return found


FLOWSTREAM = Function(
    "flowstream", "flowstream pipeline.lambda_handler()", "lambda_apps.flowstream_app"
)
QUIET = Function(
    "quiet", "  (same, metrics=False: no EMF line)", "lambda_apps.flowstream_app", "quiet_handler"
)
LOOP = Function("loop", "hand-written loop over fs.decode_records", "lambda_apps.loop_app")
POWERTOOLS = Function(
    "powertools",
    "powertools BatchProcessor + process_partial_response",
    "lambda_apps.powertools_app",
)
EMPTY = Function("empty", "(floor: a handler that imports nothing)", "lambda_apps.empty_app")

WARM = [FLOWSTREAM, QUIET, LOOP, POWERTOOLS]
COLD = [FLOWSTREAM, LOOP, POWERTOOLS, EMPTY]


def make_event() -> dict[str, Any]:
    """A 100-record event as the event source mapping sends it (bench_decode's records:
    INSERT/MODIFY/REMOVE, NEW_AND_OLD_IMAGES, ~1 KB images), parsed as the runtime
    parses it."""
    (page,) = make_pages(1, max_records=RECORDS)
    event = lambda_event(fs.decode_records(page), stream_arn=STREAM_ARN)
    parsed: dict[str, Any] = json.loads(json.dumps(event))
    return parsed


# ------------------------------------------------------------------------- cold start

#: The child: import the function (the runtime's init), parse the event (the runtime's
#: work, the same for every function), invoke once, print the answer and its timings.
_CHILD = """
import importlib, json, sys, time
started = time.perf_counter()
module, attribute, event_path = sys.argv[1:4]
handler = getattr(importlib.import_module(module), attribute)
imported = time.perf_counter()
with open(event_path, "rb") as file:
    event = json.loads(file.read())
class Context:
    aws_request_id = "cold-start"
    def get_remaining_time_in_millis(self):
        return 60_000
invoked = time.perf_counter()
answer = handler(event, Context())
answered = time.perf_counter()
sys.stdout.write("ANSWER " + json.dumps({
    "answer": answer, "import": imported - started, "invoke": answered - invoked,
}) + "\\n")
sys.stdout.flush()
"""


@dataclass
class ColdRun:
    total: float  # seconds from starting the process to reading its answer
    imported: float  # seconds importing the function's module, in the child
    invoked: float  # seconds of the first invocation, in the child


def cold_start(function: Function, event_path: Path, env: dict[str, str]) -> ColdRun:
    """Start a fresh interpreter that imports `function` and invokes it once."""
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-c", _CHILD, function.module, function.attribute, str(event_path)],
        cwd=HERE,  # lambda_apps/ imports from here, as from a function's task root
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdout is not None
    found: dict[str, Any] | None = None
    for line in process.stdout:  # the flowstream function's metrics line comes first
        if line.startswith(b"ANSWER "):
            total = time.perf_counter() - started
            found = json.loads(line[len(b"ANSWER ") :])
            break
    _, stderr = process.communicate(timeout=60)
    if found is None or process.returncode != 0:
        raise RuntimeError(
            f"{function.module}.{function.attribute} did not answer (exit "
            f"{process.returncode}): {stderr.decode(errors='replace')[-2000:]}"
        )
    if found["answer"] != {"batchItemFailures": []}:
        raise RuntimeError(f"{function.key} answered {found['answer']!r}")
    return ColdRun(total, found["import"], found["invoke"])


def measure_cold(runs: int, event: dict[str, Any]) -> dict[str, list[ColdRun]]:
    """`runs` cold starts of every function in `COLD`, taking turns (forwards, then
    backwards), after one start each that is not counted: it compiles every module the
    function imports, into a bytecode cache of the run's own (PYTHONPYCACHEPREFIX; also
    where PYTHONDONTWRITEBYTECODE is set, and an editable install has no .pyc files), as
    a deployment package carries them."""
    found: dict[str, list[ColdRun]] = {f.key: [] for f in COLD}
    with tempfile.TemporaryDirectory() as workdir:
        event_path = Path(workdir) / "event.json"
        event_path.write_text(json.dumps(event))
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        env["PYTHONPYCACHEPREFIX"] = str(Path(workdir) / "pycache")
        for function in COLD:
            cold_start(function, event_path, env)
        for number in range(runs):
            for function in COLD if number % 2 == 0 else COLD[::-1]:
                found[function.key].append(cold_start(function, event_path, env))
    return found


# ------------------------------------------------------------------------- warm


@contextlib.contextmanager
def quiet_stdout() -> Iterator[None]:
    """Send stdout (the metrics lines) to /dev/null, as a real write, while measuring."""
    with open(os.devnull, "w") as null, contextlib.redirect_stdout(null):
        yield


def check_same_work(event: dict[str, Any]) -> None:
    """Every function delivers the same messages for `event` (a benchmark of different
    work would be no comparison)."""
    context = lambda_context(timeout=900)
    seen = {}
    for function in WARM:
        delivered = function.delivered()
        delivered.clear()
        with quiet_stdout():
            function.load()(event, context)
        seen[function.key] = [
            (m["pk"], m["sk"], m["op"], None if m["version"] is None else int(m["version"]))
            for m in delivered
        ]
        delivered.clear()
    expected = seen[LOOP.key]
    if len(expected) != RECORDS:
        raise RuntimeError(f"the hand-written loop delivered {len(expected)} of {RECORDS}")
    for key, messages in seen.items():
        if messages != expected:
            raise RuntimeError(f"{key} delivered other messages than the hand-written loop")


#: The row for what the runtime does before any handler runs: parse the event's body.
PARSE = "parse"


def runtime_parse(body: bytes) -> tuple[str, Callable[[], object]]:
    """What the Lambda runtime runs on the event's body before calling the handler
    (awslambdaric's unmarshal: simplejson.loads), or json.loads where awslambdaric is not
    installed (it has wheels for Linux only)."""
    try:
        marshaller = importlib.import_module("awslambdaric.lambda_runtime_marshaller")
    except ImportError:
        return "json.loads", functools.partial(json.loads, body)
    unmarshal = marshaller.LambdaMarshaller().unmarshal_request
    return "awslambdaric, simplejson", functools.partial(unmarshal, body, "application/json")


def measure_warm(
    rounds: int, per_round: int, event: dict[str, Any]
) -> tuple[dict[str, list[list[float]]], str]:
    """Seconds per invocation of every function in `WARM`, and per parse of the event's
    body by the runtime (`PARSE`): `rounds` rounds of `per_round` calls each, taking
    turns (forwards, then backwards), each round after a full collection. Also says
    what parsed the body."""
    context = lambda_context(timeout=900)
    parser, parse = runtime_parse(json.dumps(event).encode())
    calls: dict[str, Callable[[], object]] = {
        f.key: functools.partial(f.load(), event, context) for f in WARM
    }
    calls[PARSE] = parse
    sinks = {f.key: f.delivered() for f in WARM}
    sinks[PARSE] = []
    found: dict[str, list[list[float]]] = {key: [] for key in calls}
    keys = list(calls)
    clock = time.perf_counter
    with one_core(), quiet_stdout():
        for key in keys:  # warm-up: first-call caches, the sinks opened
            for _ in range(20):
                calls[key]()
            sinks[key].clear()
        for number in range(rounds):
            for key in keys if number % 2 == 0 else keys[::-1]:
                call, delivered = calls[key], sinks[key]
                times = []
                gc.collect()
                for _ in range(per_round):
                    started = clock()
                    answer = call()
                    times.append(clock() - started)
                    delivered.clear()
                if key != PARSE and answer != {"batchItemFailures": []}:
                    raise RuntimeError(f"{key} answered {answer!r}")
                found[key].append(times)
    return found, parser


# ------------------------------------------------------------------------- the tables


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:,.0f}" if seconds >= 0.1 else f"{seconds * 1000:,.1f}"


def _us(seconds: float) -> str:
    return f"{seconds * 1e6:,.0f}"


def _ratio(value: float) -> str:
    return f"{value:.2f}x"


def cold_section(found: dict[str, list[ColdRun]], runs: int) -> Section:
    loop = found[LOOP.key]
    rows: list[tuple[str, ...]] = []
    for function in COLD:
        measured = found[function.key]
        totals = [run.total for run in measured]
        ratio = statistics.median(
            run.total / base.total for run, base in zip(measured, loop, strict=True)
        )
        rows.append(
            (
                function.label,
                _ms(min(totals)),
                _ms(statistics.median(totals)),
                _ms(max(totals)),
                _ms(statistics.median(run.imported for run in measured)),
                _ms(statistics.median(run.invoked for run in measured)),
                _ratio(ratio),
            )
        )
    return Section(
        "Lambda: cold start",
        (
            "function",
            "min ms",
            "median ms",
            "max ms",
            "import ms",
            "1st invocation ms",
            "time x loop",
        ),
        rows,
        COMMAND,
        [
            f"A fresh `python -c` process per start ({runs} per function, taking turns): it "
            f"imports the function's module and invokes it once with a {RECORDS}-record "
            "event. The first three columns are from just before the process is started "
            "to its answer, read by the parent (interpreter start-up included); import and "
            "first invocation are the child's own clocks, medians. No awslambdaric: what it "
            "adds is the same for every function. Each ratio is the median over the runs of "
            "the two totals taken one after the other. Every module is imported from "
            "bytecode compiled by one start of each function before measuring, as from a "
            "deployment package that carries its .pyc files (without them, each cold start "
            "compiles what it imports).",
            "Same work in every function: for each record, the keys, the event name and two "
            "attributes of the new image as a message, into an in-memory list (lambda_apps/).",
        ],
    )


def warm_section(
    found: dict[str, list[list[float]]], parser: str, rounds: int, per_round: int
) -> Section:
    loop = found[LOOP.key]
    rows: list[tuple[str, ...]] = []
    labels = {f.key: f.label for f in WARM}
    labels[PARSE] = f"(the runtime's parse of the event: {parser})"
    for key, label in labels.items():
        measured = found[key]
        every = [t for times in measured for t in times]
        median = statistics.median(every)
        ratio = statistics.median(
            statistics.median(times) / statistics.median(base)
            for times, base in zip(measured, loop, strict=True)
        )
        rows.append(
            (
                label,
                _us(median),
                _us(percentile(every, 0.9)),
                f"{median * 1e6 / RECORDS:.1f}",
                f"{RECORDS / median:,.0f}",
                _ratio(ratio),
            )
        )
    return Section(
        f"Lambda: warm invocation, {RECORDS} records",
        ("function", "median µs", "p90 µs", "µs/record", "records/s", "time x loop"),
        rows,
        COMMAND,
        [
            f"One process, one CPU, the same {RECORDS}-record event (parsed, as the runtime "
            f"hands it to the handler), {rounds} rounds of {per_round} invocations per "
            "function, the functions taking turns; wall time per `handler(event, context)` "
            "call, garbage collector on. Each ratio is the median over the rounds of the two "
            "medians taken in the same round.",
            "The last row is not a handler: it is the parse of the event's body that the "
            "runtime runs in the function's process, on the invocation's clock, before it "
            "calls any of them (the same for all three, and in none of their figures).",
            "The event: " + stats(make_pages(1, max_records=RECORDS)).describe() + ".",
            "flowstream's handler runs the pipeline (steps, failure policy, the sink's "
            "batch) on its own event loop, kept across invocations, and by default writes "
            "one CloudWatch EMF line per invocation to stdout (here /dev/null, a real "
            "write); the hand-written loop and powertools write nothing. flowstream and the "
            "loop read two attributes with `record.new_value()`, which decodes only those; "
            "powertools deserializes the whole new image (its API has no other way).",
        ],
    )


def sections(*, quick: bool = False) -> list[Section]:
    """The cold-start and warm-invocation tables."""
    return measured_sections(
        runs=5 if quick else 21,
        rounds=5 if quick else 9,
        per_round=50 if quick else 300,
    )


def measured_sections(*, runs: int, rounds: int, per_round: int) -> list[Section]:
    """`sections()` with `runs` cold starts per function and `rounds` x `per_round`
    warm invocations."""
    event = make_event()
    try:
        check_same_work(event)
        warm, parser = measure_warm(rounds, per_round, event)
    finally:
        from lambda_apps import flowstream_app

        flowstream_app.handler.close()
        flowstream_app.quiet_handler.close()
    cold = measure_cold(runs, event)
    return [cold_section(cold, runs), warm_section(warm, parser, rounds, per_round)]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="5 cold starts, 5x50 warm calls")
    parser.add_argument("--runs", type=int, help="cold starts per function (default 21)")
    parser.add_argument("--rounds", type=int, help="rounds of warm calls (default 9)")
    parser.add_argument("--per-round", type=int, help="warm calls per round (default 300)")
    args = parser.parse_args()
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "test")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "test")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    found = measured_sections(
        runs=args.runs or (5 if args.quick else 21),
        rounds=args.rounds or (5 if args.quick else 9),
        per_round=args.per_round or (50 if args.quick else 300),
    )
    for section in found:
        print(section.title, text_table(section.header, section.rows), "", sep="\n")
        for note in section.notes:
            print(f"- {note}")
        print()


if __name__ == "__main__":
    main()
