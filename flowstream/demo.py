"""The embedded demo: a cache invalidator over a live DynamoDB stream, all on this machine.

It starts moto's DynamoDB in this process (127.0.0.1, a free port: no AWS account, no
network), creates a ``Users`` table with a NEW_AND_OLD_IMAGES stream and, for a few
seconds, writes what an application would: users sign up (INSERT), edit their profiles
(MODIFY) and leave (REMOVE), and sessions come and go. Meanwhile the pipeline of
``examples/cache_invalidator.py`` reads the stream with `sources.dynamodb()` and prints
each invalidation as it happens. When the writer stops, the demo waits until every
invalidation reached the sinks, stops the run and checks that the counts add up.
"""

from __future__ import annotations

import importlib.util
import logging
import random
import signal
import sys
import urllib.request
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Final, TextIO

import anyio
from aiobotocore.session import AioSession

import flowstream as fs
from flowstream import attrvalue, sinks, sources
from flowstream.errors import FlowstreamError
from flowstream.sinks import Sink
from flowstream.sources import Source

__all__ = ["EXAMPLE", "load_example", "local_dynamodb", "run_demo", "serve_demo"]

#: The pipeline the demo runs: a file of the repository, so the demo runs from a clone.
EXAMPLE: Final = Path(__file__).resolve().parent.parent / "examples" / "cache_invalidator.py"
TABLE: Final = "Users"
REGION: Final = "us-east-1"
#: How long the demo waits, after the writer stops, for the last invalidations.
DELIVERY_TIMEOUT: Final = 30.0

BuildPipeline = Callable[..., fs.Pipeline[Any]]

_NAMES: Final = [
    *("Ada", "Alan", "Barbara", "Donald", "Edsger", "Frances", "Grace", "Guido"),
    *("John", "Ken", "Leslie", "Margaret", "Niklaus", "Radia", "Tim", "Yukihiro"),
]
_PLANS: Final = ["free", "pro", "team"]
_CITIES: Final = ["Berlin", "Lagos", "Lima", "Osaka", "Oslo", "Pune", "Quito", "Sydney"]


def load_example(path: Path | None = None) -> BuildPipeline:
    """`build_pipeline` of the example file at `path` (the repository's
    examples/cache_invalidator.py)."""
    path = path or EXAMPLE
    if not path.is_file():
        raise FlowstreamError(
            f"flowstream demo runs the pipeline in {path}, which is missing; the demo runs "
            "from a clone of the flowstream repository: in the clone, run "
            "python3 -m pip install -e '.[local]' && python3 -m flowstream demo"
        )
    spec = importlib.util.spec_from_file_location("cache_invalidator", path)
    if spec is None or spec.loader is None:
        raise FlowstreamError(f"{path} cannot be loaded as a Python module")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    build = getattr(module, "build_pipeline", None)
    if not callable(build):
        raise FlowstreamError(
            f"{path} has no build_pipeline(source, *, out, purge, evict) function; restore "
            "the file from the repository"
        )
    return build  # type: ignore[no-any-return]


@asynccontextmanager
async def local_dynamodb(port: int = 0) -> AsyncIterator[str]:
    """moto's server in this process, on 127.0.0.1 and `port` (0: a free one), freshly
    reset; yields its endpoint URL."""
    try:
        from moto.server import ThreadedMotoServer
    except ImportError as exc:
        raise FlowstreamError(
            f"the demo runs a local DynamoDB with moto's server, which cannot be imported "
            f"({exc}); install it: python3 -m pip install -e '.[local]'"
        ) from None
    # werkzeug logs a line per request; the demo's output is the pipeline's.
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    await anyio.to_thread.run_sync(server.start)
    try:
        host, port = server.get_host_and_port()
        url = f"http://{host}:{port}"
        # moto's state is global to the process: start from nothing on every run.
        await anyio.to_thread.run_sync(_reset, url)
        yield url
    finally:
        await anyio.to_thread.run_sync(server.stop)


def _reset(url: str) -> None:
    request = urllib.request.Request(f"{url}/moto-api/reset", method="POST")
    with urllib.request.urlopen(request, timeout=10):
        pass


class _Writer:
    """Writes what an application would to the table, and counts what it wrote.

    Every write changes the item (DynamoDB writes no stream record for a write that
    changes nothing), and no write creates an item through UpdateItem (moto writes two
    INSERTs for that): one write, one stream record."""

    def __init__(self, client: Any, rng: random.Random) -> None:
        self._client = client
        self._rng = rng
        self._users: list[str] = []
        self._sessions: list[str] = []
        self._next_id = 1
        self.counts: Counter[tuple[str, str]] = Counter()  # (event, "user" | "session")

    def count(self, event: str, kind: str | None = None) -> int:
        return sum(n for (e, k), n in self.counts.items() if e == event and kind in (None, k))

    @property
    def writes(self) -> int:
        return self.counts.total()

    @property
    def invalidations(self) -> int:
        """What the pipeline must deliver: MODIFY and REMOVE of users."""
        return self.count("MODIFY", "user") + self.count("REMOVE", "user")

    async def run(self, seconds: float) -> None:
        deadline = anyio.current_time() + seconds
        while anyio.current_time() < deadline:
            await self.step()
            await anyio.sleep(self._rng.uniform(0.01, 0.05))  # an application's pace
        # The last write is a profile edit: the stream keeps order, so once its
        # invalidation reached the sinks, every change before it was read too.
        if not self._users:
            await self.sign_up()
        await self.edit_profile()

    async def step(self) -> None:
        rng = self._rng
        if len(self._users) < 3:
            await self.sign_up()
            return
        actions = [self.sign_up, self.edit_profile, self.leave]
        weights = [3, 6, 1]
        if self._sessions:
            actions += [self.touch_session, self.end_session]
            weights += [2, 1]
        actions.append(self.start_session)
        weights.append(2)
        await rng.choices(actions, weights)[0]()

    async def sign_up(self) -> None:
        user_id = f"user#{self._next_id}"
        name = self._rng.choice(_NAMES)
        await self._put(
            {
                "pk": user_id,
                "name": name,
                "email": f"{name.lower()}.{self._next_id}@example.com",
                "plan": "free",
                "city": self._rng.choice(_CITIES),
                "visits": 0,
            }
        )
        self._next_id += 1
        self._users.append(user_id)
        self.counts["INSERT", "user"] += 1

    async def edit_profile(self) -> None:
        user_id = self._rng.choice(self._users)
        field = self._rng.choice(["plan", "city", "email"])
        value = {
            "plan": self._rng.choice(_PLANS),
            "city": self._rng.choice(_CITIES),
            "email": f"{user_id[5:]}.{self._rng.randrange(10**6)}@example.org",
        }[field]
        # visits always moves: the item changes even when the new value is the old one.
        await self._update(user_id, "SET #f = :v, visits = visits + :one", field, value)
        self.counts["MODIFY", "user"] += 1

    async def leave(self) -> None:
        user_id = self._users.pop(self._rng.randrange(len(self._users)))
        await self._delete(user_id)
        self.counts["REMOVE", "user"] += 1

    async def start_session(self) -> None:
        session_id = f"session#{self._rng.randrange(16**8):08x}"
        if session_id in self._sessions:
            return
        await self._put({"pk": session_id, "user": self._rng.choice(self._users), "hits": 1})
        self._sessions.append(session_id)
        self.counts["INSERT", "session"] += 1

    async def touch_session(self) -> None:
        session_id = self._rng.choice(self._sessions)
        await self._update(session_id, "SET hits = hits + :one")
        self.counts["MODIFY", "session"] += 1

    async def end_session(self) -> None:
        session_id = self._sessions.pop(self._rng.randrange(len(self._sessions)))
        await self._delete(session_id)
        self.counts["REMOVE", "session"] += 1

    async def _put(self, item: dict[str, Any]) -> None:
        await self._client.put_item(TableName=TABLE, Item=attrvalue.encode(item, binary="bytes"))

    async def _update(
        self, pk: str, expression: str, field: str | None = None, value: Any = None
    ) -> None:
        values = {":one": {"N": "1"}}
        names = {}
        if field is not None:
            names["#f"] = field
            values[":v"] = attrvalue.encode_value(value)
        await self._client.update_item(
            TableName=TABLE,
            Key={"pk": {"S": pk}},
            UpdateExpression=expression,
            ExpressionAttributeValues=values,
            **({"ExpressionAttributeNames": names} if names else {}),
        )

    async def _delete(self, pk: str) -> None:
        await self._client.delete_item(TableName=TABLE, Key={"pk": {"S": pk}})


class _Tally:
    """Counts invalidations as the sinks acknowledge them; `reached` is set once the
    count reaches what the writer says it must be."""

    def __init__(self) -> None:
        self.count = 0
        self.target: int | None = None
        self.reached = anyio.Event()

    def delivered(self, values: list[Any]) -> None:
        self.count += len(values)
        self._check()

    def expect(self, target: int) -> None:
        self.target = target
        self._check()

    def _check(self) -> None:
        if self.target is not None and self.count >= self.target:
            self.reached.set()


async def _create_table(client: Any) -> None:
    await client.create_table(
        TableName=TABLE,
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
        StreamSpecification={"StreamEnabled": True, "StreamViewType": "NEW_AND_OLD_IMAGES"},
    )


async def run_demo(
    *,
    seconds: float = 5.0,
    out: TextIO | None = None,
    seed: int | None = 7,
    example: Path | None = None,
) -> fs.RunReport:
    """Run the demo for `seconds` of writes, printing to `out` (stdout). Returns the
    run's report; raises `FlowstreamError` when something is missing or the counts do
    not add up."""
    out = out or sys.stdout
    build_pipeline = load_example(example)
    session = AioSession()
    session.set_credentials("demo", "demo")  # moto checks nothing; no AWS account is used

    async with (
        local_dynamodb() as endpoint_url,
        session.create_client("dynamodb", region_name=REGION, endpoint_url=endpoint_url) as client,
    ):
        await _create_table(client)
        source: Source = sources.dynamodb(
            table=TABLE,
            endpoint_url=endpoint_url,
            region=REGION,
            session=session,
            idle_interval=0.2,
        )
        purged = sinks.collect("purge-queue")
        evicted = sinks.collect("evictions")
        tally = _Tally()
        counter: Sink = sinks.callback(tally.delivered, name="tally")
        pipeline = build_pipeline(
            source, out=out, purge=[purged, counter], evict=[evicted, counter]
        )
        writer = _Writer(client, random.Random(seed))
        print(
            f"flowstream demo: a local DynamoDB (moto) at {endpoint_url}, table {TABLE!r} "
            "with a NEW_AND_OLD_IMAGES stream",
            file=out,
        )
        print(pipeline.describe(), file=out)
        print(f"\nwriting changes for {seconds:g}s; invalidations as they happen:", file=out)
        out.flush()
        report, problem = await _run(pipeline, writer, tally, seconds)

    problems = [problem] if problem else []
    problems += _report_counts(out, writer, report, purged.items, evicted.items)
    print(report.summary(), file=out)
    out.flush()
    if problems:
        raise FlowstreamError("the demo went wrong: " + "; ".join(problems))
    return report


async def _run(
    pipeline: fs.Pipeline[Any], writer: _Writer, tally: _Tally, seconds: float
) -> tuple[fs.RunReport, str | None]:
    """Write for `seconds` while the pipeline runs; stop it once every invalidation
    reached the sinks (or the wait timed out, or the writer failed)."""
    stop = anyio.Event()
    problem: str | None = None

    async def write_then_stop() -> None:
        nonlocal problem
        try:
            await writer.run(seconds)
            tally.expect(writer.invalidations)
            with anyio.fail_after(DELIVERY_TIMEOUT):
                await tally.reached.wait()
        except TimeoutError:
            problem = (
                f"{tally.count} of {writer.invalidations} invalidations reached the sinks "
                f"within {DELIVERY_TIMEOUT:.0f}s after the writer stopped"
            )
        except Exception as exc:  # a write failed: stop the run and say so
            problem = f"the writer failed: {type(exc).__name__}: {exc}"
        finally:
            stop.set()

    error: FlowstreamError | None = None
    report: fs.RunReport | None = None
    async with anyio.create_task_group() as tg:
        tg.start_soon(write_then_stop)
        try:
            report = await pipeline.run(stop=stop)
        except FlowstreamError as exc:
            error = exc
            tg.cancel_scope.cancel()
    if error is not None:
        raise error
    assert report is not None
    return report, problem


def _report_counts(
    out: TextIO,
    writer: _Writer,
    report: fs.RunReport,
    purged: Sequence[Any],
    evicted: Sequence[Any],
) -> list[str]:
    """Print what was written, read and delivered; return what does not add up."""
    inserts, modifies, removes = (writer.count(e) for e in ("INSERT", "MODIFY", "REMOVE"))
    user_modifies, user_removes = writer.count("MODIFY", "user"), writer.count("REMOVE", "user")
    print(
        f"\nwrote {writer.writes} changes: {inserts} INSERT, {modifies} MODIFY, {removes} "
        f"REMOVE; of users: {user_modifies} MODIFY, {user_removes} REMOVE",
        file=out,
    )
    print(f"read {report.read} records", file=out)
    print(
        f"{len(purged) + len(evicted)} invalidations reached the sinks: {len(purged)} "
        f"purged (MODIFY), {len(evicted)} evicted (REMOVE)",
        file=out,
    )
    problems = []
    if report.read != writer.writes:
        problems.append(f"{writer.writes} changes written but {report.read} records read")
    if (len(purged), len(evicted)) != (user_modifies, user_removes):
        problems.append(
            f"{user_modifies} MODIFY and {user_removes} REMOVE of users written but "
            f"{len(purged)} purged and {len(evicted)} evicted"
        )
    if not problems:
        print(
            "counts add up: changes written == records read; invalidations == MODIFY + "
            "REMOVE of users",
            file=out,
        )
    return problems


async def serve_demo(*, port: int = 4566, out: TextIO | None = None, seed: int | None = 7) -> None:
    """Keep the demo's local endpoint up, with an application writing to `Users`, until
    interrupted: the examples in examples/ run against it from another terminal."""
    out = out or sys.stdout
    session = AioSession()
    session.set_credentials("demo", "demo")
    async with (
        local_dynamodb(port) as endpoint_url,
        session.create_client("dynamodb", region_name=REGION, endpoint_url=endpoint_url) as client,
    ):
        await _create_table(client)
        writer = _Writer(client, random.Random(seed))
        env = f"AWS_ACCESS_KEY_ID=demo AWS_SECRET_ACCESS_KEY=demo AWS_DEFAULT_REGION={REGION}"
        print(
            f"flowstream demo: a local AWS (moto: DynamoDB, SQS, SNS, EventBridge, Kinesis) at "
            f"{endpoint_url}; table {TABLE!r} (NEW_AND_OLD_IMAGES stream) is being written to.\n"
            "Run an example against it from another terminal, e.g.:\n"
            f"  {env} python3 examples/cache_invalidator.py {TABLE} --endpoint-url {endpoint_url}\n"
            f"  {env} python3 examples/sqs_fanout.py {TABLE} --create --endpoint-url "
            f"{endpoint_url}\n"
            f"  {env} python3 examples/table_replicator.py {TABLE} UsersCopy --create "
            f"--endpoint-url {endpoint_url}\n"
            "(docs/examples.md says more.)\n"
            "Ctrl-C stops it.",
            file=out,
            flush=True,
        )
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with anyio.create_task_group() as tg:

                async def write_forever() -> None:
                    while True:
                        await writer.run(10.0)
                        print(f"{writer.writes} changes written so far", file=out, flush=True)

                tg.start_soon(write_forever)
                async for _ in signals:
                    tg.cancel_scope.cancel()
                    break
        print(f"stopped after {writer.writes} changes", file=out)
