"""The pipeline builder: source -> filter/map/flat_map -> route or fan out to sinks.

A `Pipeline` is immutable: each method checks its arguments and returns a new pipeline,
so every mistake that can be seen while building is reported there, as a
`PipelineError` that names the step and the fix.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Coroutine, Hashable, Iterable, Mapping, Sequence
from dataclasses import replace
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Generic, Literal, NoReturn, TypeVar, final, overload

import anyio

from flowstream import patterns
from flowstream.batching import Batching
from flowstream.callables import callable_name, is_async_callable
from flowstream.concurrency import Concurrency
from flowstream.errors import PipelineError
from flowstream.patterns import Pattern, PatternError
from flowstream.plan import Filter, FlatMap, Map, Plan, Route, Step
from flowstream.policy import FailurePolicy
from flowstream.record import EventName, Record
from flowstream.sinks.base import Sink
from flowstream.sources.base import Source

if TYPE_CHECKING:
    from flowstream.aws_lambda.handler import LambdaHandler
    from flowstream.checkpoints.base import CheckpointStore
    from flowstream.leases import DynamoDBLeases
    from flowstream.monitor import Monitor
    from flowstream.report import RunReport

__all__ = ["Pipeline", "When", "when"]

T = TypeVar("T")
U = TypeVar("U")
#: A filter pattern: a mapping, JSON text, or one compiled with `flowstream.patterns`.
PatternSpec = Mapping[str, Any] | str | Pattern

_VALID_EVENTS = ", ".join(e.value for e in EventName)


@final
class When:
    """One route of `Pipeline.route()`: elements for which `predicate` is true go to
    `sinks`. Built by `fs.when()`."""

    __slots__ = ("is_async", "predicate", "sinks")

    def __init__(self, predicate: Callable[[Any], Any], sinks: tuple[Sink, ...]) -> None:
        self.predicate = predicate
        self.sinks = sinks
        self.is_async = is_async_callable(predicate)

    def __repr__(self) -> str:
        names = ", ".join(s.name for s in self.sinks)
        return f"when({callable_name(self.predicate)}, {names})"


def when(predicate: Callable[[Any], object], *sinks: Sink) -> When:
    """A route for `Pipeline.route()`: elements where `predicate(element)` is true go to
    every one of `sinks`."""
    if not callable(predicate):
        raise PipelineError(
            f"fs.when() got {type(predicate).__name__} as its predicate, which is not "
            "callable; pass a function: fs.when(lambda m: ..., sink)"
        )
    if not sinks:
        raise PipelineError(
            f"fs.when({callable_name(predicate)}) has no sinks; name where matching "
            "elements go: fs.when(predicate, sink, ...)"
        )
    for sink in sinks:
        _check_sink(sink, f"fs.when({callable_name(predicate)})")
    return When(predicate, sinks)


def _check_sink(sink: object, where: str) -> None:
    if not isinstance(sink, Sink):
        _not_a_sink(sink, where)


def _check_source(source: object, where: str) -> None:
    if not isinstance(source, Source):
        raise PipelineError(
            f"{where} got {type(source).__name__} as its source; pass a source such as "
            "sources.dynamodb(table=...), sources.jsonl(path) or a "
            "flowstream.testing.MemoryStream"
        )


def _not_a_sink(thing: object, where: str) -> NoReturn:
    raise PipelineError(
        f"{where} got {type(thing).__name__} where a sink belongs; use a sink from "
        "flowstream.sinks, e.g. sinks.collect() or sinks.callback(fn)"
    )


class Pipeline(Generic[T]):
    """A declarative stream pipeline. Build it from a source, then chain `filter`,
    `map` and `flat_map`, and end it with `route` or `to`; `run()` it."""

    __slots__ = ("_batching", "_concurrency", "_name", "_policy", "_route", "_source", "_steps")

    _source: Source
    _name: str | None
    _steps: tuple[Step, ...]
    _route: Route | None
    _policy: FailurePolicy
    _concurrency: Concurrency
    _batching: Batching

    def __init__(self: Pipeline[Record], source: Source, *, name: str | None = None) -> None:
        _check_source(source, "fs.Pipeline()")
        if name is not None and (not isinstance(name, str) or not name.strip()):
            raise PipelineError(
                f"fs.Pipeline(name={name!r}) is not a usable name; give a non-empty string "
                "that identifies this pipeline's checkpoints, e.g. name='user-cache'"
            )
        self._source = source
        self._name = name
        self._steps = ()
        self._route = None
        self._policy = FailurePolicy()
        self._concurrency = Concurrency()
        self._batching = Batching()

    # -- building ---------------------------------------------------------------------

    def _next(self, step: Step | None = None, route: Route | None = None) -> Pipeline[Any]:
        new: Pipeline[Any] = object.__new__(Pipeline)
        new._source = self._source
        new._name = self._name
        new._steps = self._steps if step is None else (*self._steps, step)
        new._route = route
        new._policy = self._policy
        new._concurrency = self._concurrency
        new._batching = self._batching
        return new

    def _where(self, method: str) -> str:
        # The end (.route()/.to()) is a step too: a call after it is one step further.
        position = len(self._steps) + (1 if self._route is None else 2)
        return f".{method}() at step {position}"

    def _label(self) -> str:
        return f"pipeline {self._name!r}" if self._name else "pipeline"

    def _check_open(self, method: str) -> None:
        if self._route is not None:
            end = self._route.describe().split("\n")[0]
            raise PipelineError(
                f"{self._where(method)} comes after the pipeline's end (step "
                f"{len(self._steps) + 1}: {end}); put filter/map/flat_map steps before "
                ".route() or .to(), and end a pipeline only once"
            )

    def _check_callable(self, fn: object, method: str) -> None:
        if not callable(fn):
            raise PipelineError(
                f"{self._where(method)} got {type(fn).__name__}, which is not callable; "
                f"pass a function, e.g. .{method}(lambda record: ...)"
            )

    def filter(
        self,
        predicate: Callable[[T], object] | None = None,
        *,
        events: Iterable[str] | str | None = None,
        pattern: PatternSpec | Sequence[PatternSpec] | None = None,
        n_as_numbers: bool = False,
        on_failure: FailurePolicy | None = None,
    ) -> Pipeline[T]:
        """Keep elements where `predicate(element)` is true (any truthy value; a sync or
        async function), and/or whose originating record's event name is in `events`
        (also after a `map`), and/or whose originating record matches the Lambda /
        EventBridge filter `pattern` (a mapping, JSON text or a compiled `Pattern`; a
        list keeps records matching any of them), matched as Lambda matches its JSON
        shape. `n_as_numbers=True` lets `numeric` compare ``N`` values, which Lambda
        cannot. All given conditions must hold. `on_failure` overrides the pipeline's
        failure policy for this step's predicate."""
        self._check_open("filter")
        if predicate is None and events is None and pattern is None:
            raise PipelineError(
                f"{self._where('filter')} has neither a predicate, events= nor pattern=; "
                "pass a function, events=['INSERT', 'MODIFY', 'REMOVE'], a filter pattern, "
                "or several of them"
            )
        compiled = None if pattern is None else self._patterns(pattern)
        if n_as_numbers and compiled is None:
            raise PipelineError(
                f"{self._where('filter')} has n_as_numbers=True but no pattern=; it applies "
                "to filter patterns only"
            )
        if predicate is not None:
            self._check_callable(predicate, "filter")
        names = None if events is None else self._event_names(events)
        step = Filter(
            predicate,
            names,
            is_async_callable(predicate) if predicate is not None else False,
            self._step_policy(on_failure, "filter"),
            compiled,
            n_as_numbers,
        )
        return self._next(step)

    def _patterns(self, spec: PatternSpec | Sequence[PatternSpec]) -> tuple[Pattern, ...]:
        specs = [spec] if isinstance(spec, Mapping | str | Pattern) else list(spec)
        if not specs:
            raise PipelineError(
                f"{self._where('filter')} got pattern=[]; pass a filter pattern or a list "
                "of at least one"
            )
        out = []
        for number, one in enumerate(specs, start=1):
            if isinstance(one, Pattern):
                out.append(one)
                continue
            try:
                out.append(patterns.compile(one))
            except PatternError as exc:
                which = f" (pattern {number})" if len(specs) > 1 else ""
                raise PatternError(f"{self._where('filter')}{which}: {exc}") from None
        return tuple(out)

    def _event_names(self, events: Iterable[str] | str) -> frozenset[EventName]:
        if isinstance(events, str):
            events = [events]
        elif not isinstance(events, Iterable) or isinstance(events, bytes | bytearray):
            raise PipelineError(
                f"{self._where('filter')} got events={events!r}; pass an event name or a "
                f"list of them, e.g. events=['MODIFY', 'REMOVE'] (from {_VALID_EVENTS})"
            )
        names: set[EventName] = set()
        for event in events:
            try:
                names.add(EventName(event))
            except ValueError:
                raise PipelineError(
                    f"{self._where('filter')} got an unknown event name {event!r}; "
                    f"DynamoDB streams have {_VALID_EVENTS} (upper case)"
                ) from None
        if not names:
            raise PipelineError(
                f"{self._where('filter')} got events=[], which keeps nothing; name "
                f"at least one of {_VALID_EVENTS}"
            )
        return frozenset(names)

    # Coroutine, not Awaitable: with Awaitable, mypy finds both overloads matching an
    # `async def` returning dict[str, Any] (the Any makes them ambiguous) and infers
    # Pipeline[Any]. A sync function returning some other awaitable gives that value.
    @overload
    def map(
        self,
        fn: Callable[[T], Coroutine[Any, Any, U]],
        *,
        on_failure: FailurePolicy | None = None,
    ) -> Pipeline[U]: ...
    @overload
    def map(
        self, fn: Callable[[T], U], *, on_failure: FailurePolicy | None = None
    ) -> Pipeline[U]: ...
    def map(
        self, fn: Callable[[T], Any], *, on_failure: FailurePolicy | None = None
    ) -> Pipeline[Any]:
        """Replace each element by `fn(element)` (a sync or async function).
        `on_failure` overrides the pipeline's failure policy for this step."""
        self._check_open("map")
        self._check_callable(fn, "map")
        return self._next(Map(fn, is_async_callable(fn), self._step_policy(on_failure, "map")))

    @overload
    def flat_map(
        self,
        fn: Callable[[T], Coroutine[Any, Any, Iterable[U]]],
        *,
        on_failure: FailurePolicy | None = None,
    ) -> Pipeline[U]: ...
    @overload
    def flat_map(
        self, fn: Callable[[T], Iterable[U]], *, on_failure: FailurePolicy | None = None
    ) -> Pipeline[U]: ...
    def flat_map(
        self, fn: Callable[[T], Any], *, on_failure: FailurePolicy | None = None
    ) -> Pipeline[Any]:
        """Replace each element by the elements of the iterable `fn(element)` returns
        (none, one or many, in order). `on_failure` overrides the pipeline's failure
        policy for this step."""
        self._check_open("flat_map")
        self._check_callable(fn, "flat_map")
        policy = self._step_policy(on_failure, "flat_map")
        return self._next(FlatMap(fn, is_async_callable(fn), policy))

    def _step_policy(self, policy: object, method: str) -> FailurePolicy | None:
        if policy is None or isinstance(policy, FailurePolicy):
            return policy
        raise PipelineError(
            f"{self._where(method)} got on_failure={policy!r}; give a policy for this "
            "step, e.g. on_failure=fs.FailurePolicy(retries=0, dead_letter=sink)"
        )

    def route(self, *whens: When, otherwise: Sink | Iterable[Sink] | None = None) -> Pipeline[T]:
        """End the pipeline: each element goes to the sinks of the first `fs.when()`
        whose predicate holds, else to `otherwise`, else it is dropped (and counted)."""
        self._check_open("route")
        where = self._where("route")
        for item in whens:
            if not isinstance(item, When):
                hint = (
                    "pass sinks that take every element as otherwise=sink"
                    if isinstance(item, Sink)
                    else "build routes with fs.when(predicate, sink, ...)"
                )
                raise PipelineError(f"{where} got {type(item).__name__}, not a route; {hint}")
        if otherwise is None:
            other: tuple[Sink, ...] = ()
        elif isinstance(otherwise, Sink):
            other = (otherwise,)
        elif not isinstance(otherwise, Iterable):
            _not_a_sink(otherwise, f"{where} otherwise=")
        else:
            other = tuple(otherwise)
            for sink in other:
                _check_sink(sink, f"{where} otherwise=")
            if not other:
                raise PipelineError(
                    f"{where} got otherwise=[] with no sinks; give a sink, or leave "
                    "otherwise=None to drop (and count) unmatched elements"
                )
        if not whens and not other:
            raise PipelineError(
                f"{where} has no routes and no otherwise=; add fs.when(predicate, sink) "
                "or otherwise=sink"
            )
        route = Route(tuple((w.predicate, w.sinks, w.is_async) for w in whens), other)
        return self._next(route=route)

    def to(self, *sinks: Sink) -> Pipeline[T]:
        """End the pipeline: every element goes to every one of `sinks`."""
        self._check_open("to")
        where = self._where("to")
        if not sinks:
            raise PipelineError(
                f"{where} has no sinks; name at least one, e.g. .to(sinks.stdout())"
            )
        for sink in sinks:
            _check_sink(sink, where)
        return self._next(route=Route((), sinks, fan_out=True))

    def on_failure(
        self,
        *,
        retries: int | None = 3,
        backoff: tuple[float, float] = (0.1, 5.0),
        max_record_age: float | timedelta | None = None,
        bisect: bool = True,
        dead_letter: Sink | None = None,
    ) -> Pipeline[T]:
        """The failure policy of every step and sink (see `fs.FailurePolicy`).

        A failing record is retried `retries` more times after exponential backoff with
        full jitter (`backoff=(base, cap)` seconds; `retries=None`: retryable failures
        are retried until they succeed or pass `max_record_age`, so a sink outage holds
        its shards back in order rather than filling the dead letters); a batch a sink
        fails as a whole is split in halves to find the items to blame (`bisect`). A
        record that still fails, or is older than `max_record_age`, goes to `dead_letter`
        with its full payload and its shard goes on; without a dead-letter sink its shard
        stops just before it and the other shards go on. May come anywhere in the chain,
        also after the end."""
        policy = FailurePolicy(
            retries,
            backoff,
            max_record_age,  # type: ignore[arg-type]  # a timedelta is converted
            bisect,
            dead_letter,
        )
        new = self._next(route=self._route)
        new._policy = policy
        return new

    def concurrency(
        self, per_shard: int, *, key: Callable[[T], Hashable] | None = None
    ) -> Pipeline[T]:
        """Deliver up to `per_shard` elements of a shard at once, never two with the same
        key at once and never out of order within a key (docs/concurrency.md). `key`
        gives an element's ordering key (default: the keys of the record it came from);
        what it raises, or an unhashable key, is a failure of that record under the
        failure policy. The checkpoint stays the contiguous frontier: a fast key never
        moves it past a slow one. `per_shard=1` is one element at a time, in shard order.
        May come anywhere in the chain, also after the end."""
        settings = Concurrency(per_shard, key)
        new = self._next(route=self._route)
        new._concurrency = settings
        return new

    def batching(self, max_window: float, *, max_records: int = 1000) -> Pipeline[T]:
        """Let each shard gather pages for up to `max_window` seconds (or `max_records`
        records) and deliver them together: on a slow trickle, sinks then send fewer,
        fuller requests, at the cost of up to `max_window` seconds of latency
        (docs/concurrency.md). May come anywhere in the chain, also after the end."""
        settings = Batching(max_window, max_records)
        new = self._next(route=self._route)
        new._batching = settings
        return new

    def with_source(self, source: Source) -> Pipeline[T]:
        """The same steps, route and failure policy over another source (a replay, a
        test stream, another table with the same items)."""
        _check_source(source, ".with_source()")
        new = self._next(route=self._route)
        new._source = source
        return new

    def _without_record_age(self) -> Pipeline[T]:
        """The same pipeline with `max_record_age` dropped from every failure policy, the
        steps' own included: for a replay, whose records are old by design."""

        def ageless(policy: FailurePolicy | None) -> FailurePolicy | None:
            if policy is None or policy.max_record_age is None:
                return policy
            return replace(policy, max_record_age=None)

        new = self._next(route=self._route)
        new._steps = tuple(replace(step, policy=ageless(step.policy)) for step in self._steps)
        new._policy = replace(self._policy, max_record_age=None)
        return new

    # -- inspecting ---------------------------------------------------------------------

    @property
    def name(self) -> str | None:
        """The pipeline's name; it keys the pipeline's checkpoints."""
        return self._name

    @property
    def source(self) -> Source:
        return self._source

    @property
    def failure_policy(self) -> FailurePolicy:
        """The pipeline's failure policy (`on_failure()`); steps may override it."""
        return self._policy

    def describe(self) -> str:
        """A readable plan: the source, each step in order, and where elements go."""
        title = f"pipeline {self._name!r}" if self._name else "pipeline"
        lines = [title, f"  source: {self._source.describe()}"]
        for n, step in enumerate(self._steps, start=1):
            lines.append(f"  {n}. {step.describe()}")
            if step.policy is not None:
                lines.append(f"       {step.policy.describe()}")
        if self._route is None:
            lines.append(f"  {len(self._steps) + 1}. (no end: add .route() or .to())")
        else:
            lines.append(f"  {len(self._steps) + 1}. {self._route.describe()}")
        if self._policy != FailurePolicy():
            lines.append(f"  {self._policy.describe()}")
        if self._concurrency != Concurrency():
            lines.append(f"  {self._concurrency.describe()}")
        if self._batching.enabled:
            lines.append(f"  {self._batching.describe()}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return self.describe()

    def compile(self) -> Plan:
        """The plan the runtime executes; raises `PipelineError` when the pipeline has
        no end."""
        if self._route is None:
            raise PipelineError(
                f"pipeline{' ' + repr(self._name) if self._name else ''} has nothing at its "
                f"end, so its elements would go nowhere; make step {len(self._steps) + 1} "
                ".to(sink, ...) or .route(fs.when(...), otherwise=...)"
            )
        return Plan(self._steps, self._route, self._policy, self._concurrency, self._batching)

    # -- running ------------------------------------------------------------------------

    async def run(
        self,
        *,
        checkpoints: CheckpointStore | None = None,
        drain: bool = False,
        grace_period: float = 10.0,
        handle_signals: bool = False,
        stop: anyio.Event | None = None,
        on_progress: Callable[[RunReport], object] | None = None,
        progress_interval: float = 10.0,
        leases: DynamoDBLeases | None = None,
        monitor: Monitor | None = None,
        on_shard_stopped: Literal["continue", "exit"] = "continue",
        log_interval: float = 30.0,
    ) -> RunReport:
        """Run the pipeline: one task per readable shard, children after parents.

        `drain=True` processes what was in the stream when the run started and returns
        once it is acknowledged (a shard stops at its end, at its first record created
        after the start, or when nothing more is there; docs/running.md); otherwise the
        run goes on until cancelled (or, with `handle_signals=True`, until SIGTERM/SIGINT,
        or until `stop` is set; these two return the report). Stopping stops polling,
        gives in-flight batches `grace_period` seconds to finish, and writes checkpoints.
        Without `checkpoints`, progress is kept in memory for this run only.
        `on_progress(report)` (sync or async) is called every `progress_interval` seconds
        with the live report, e.g. to export metrics; what it raises is logged, not fatal.
        With `leases=leases.dynamodb(table)`, every process running this pipeline with
        that lease table shares the stream, each shard processed by one worker at a time;
        the lease table holds the checkpoints (docs/scaling.md).
        `monitor=flowstream.monitor.Monitor()` exposes the run's metrics and health
        (docs/operating.md). A shard stopped at a failing record is logged again every
        `log_interval` seconds, as is each repeated warning (one line per shard and
        cause, with a count); `on_shard_stopped="exit"` ends the run instead, raising
        `ShardStoppedError` once it has stopped gracefully, so a supervisor restarts it
        or pages someone.
        """
        from flowstream.runtime.engine import run_pipeline

        plan = self.compile()
        if on_progress is not None and not callable(on_progress):
            raise PipelineError(
                f"run(on_progress=) got {type(on_progress).__name__}, which is not callable; "
                "pass a function that takes the RunReport"
            )
        if (
            isinstance(progress_interval, bool)
            or not isinstance(progress_interval, int | float)
            or not 0 < progress_interval < math.inf
        ):
            raise PipelineError(
                f"run(progress_interval={progress_interval!r}) must be a finite positive "
                "number of seconds, e.g. progress_interval=10"
            )
        if on_shard_stopped not in ("continue", "exit"):
            raise PipelineError(
                f"run(on_shard_stopped={on_shard_stopped!r}) is not a choice; give "
                "'continue' (the other shards go on) or 'exit' (the run ends with an error)"
            )
        if (
            isinstance(log_interval, bool)
            or not isinstance(log_interval, int | float)
            or not 0 < log_interval < math.inf
        ):
            raise PipelineError(
                f"run(log_interval={log_interval!r}) must be a finite positive number of "
                "seconds, e.g. log_interval=30"
            )
        if monitor is not None:
            from flowstream.monitor import Monitor as _Monitor

            if not isinstance(monitor, _Monitor):
                raise PipelineError(
                    f"run(monitor=) got {type(monitor).__name__}; give a "
                    "flowstream.monitor.Monitor()"
                )
        if leases is not None:
            _check_leases(leases, checkpoints, drain, self._source)
        if checkpoints is not None and self._name is None:
            raise PipelineError(
                f"run(checkpoints={checkpoints.describe()}) needs a pipeline name to key "
                "its checkpoints; build it as fs.Pipeline(source, name='my-pipeline')"
            )
        return await run_pipeline(
            plan,
            self._source,
            name=self._name or "pipeline",
            checkpoints=checkpoints,
            drain=drain,
            grace_period=grace_period,
            handle_signals=handle_signals,
            stop=stop,
            on_progress=on_progress,
            progress_interval=float(progress_interval),
            leases=leases,
            monitor=monitor,
            on_shard_stopped=on_shard_stopped,
            log_interval=float(log_interval),
        )

    # -- Lambda -------------------------------------------------------------------------

    def lambda_handler(
        self,
        *,
        margin: float = 1.0,
        page_size: int = 50,
        partial_failures: bool = True,
        metrics: bool = True,
        namespace: str = "flowstream",
    ) -> LambdaHandler:
        """This pipeline as the handler of a Lambda function behind a DynamoDB stream
        event source mapping (docs/lambda.md): ``handler = pipeline.lambda_handler()``
        at module level, and the function's handler setting pointing at it.

        Each batch runs through the steps, routes, failure policy and dead letters as
        `run()` would (the source is not opened). The answer names the first record not
        done, so Lambda retries from it (the mapping needs
        ``FunctionResponseTypes=["ReportBatchItemFailures"]``); with
        `partial_failures=False` the handler raises instead and Lambda retries the whole
        batch. Records go through in pages of `page_size`, each delivered before the
        next is done with, and work stops `margin` seconds before the invocation's
        deadline: what is not done by then is handed back the same way. `metrics`
        writes one line per invocation in CloudWatch's embedded metric format, under
        `namespace`."""
        from flowstream.aws_lambda.handler import LambdaHandler

        where = f"{self._label()}.lambda_handler()"
        if (
            isinstance(margin, bool)
            or not isinstance(margin, int | float)
            or not 0 <= margin < math.inf
        ):
            raise PipelineError(
                f"{where}: margin={margin!r} must be a finite number of seconds >= 0 to stop "
                "before the deadline, e.g. margin=1.0"
            )
        if isinstance(page_size, bool) or not isinstance(page_size, int) or page_size < 1:
            raise PipelineError(
                f"{where}: page_size={page_size!r} must be a whole number of records >= 1, "
                "e.g. page_size=50"
            )
        for option, value in (("partial_failures", partial_failures), ("metrics", metrics)):
            if not isinstance(value, bool):
                raise PipelineError(f"{where}: {option}={value!r} must be True or False")
        if not isinstance(namespace, str) or not namespace.strip():
            raise PipelineError(
                f"{where}: namespace={namespace!r} must be a CloudWatch namespace, e.g. "
                "namespace='orders-pipeline'"
            )
        return LambdaHandler(
            self.compile(),
            pipeline=self._name or "pipeline",
            margin=float(margin),
            page_size=page_size,
            partial_failures=partial_failures,
            metrics=metrics,
            namespace=namespace,
        )

    def lambda_filter_criteria(self) -> dict[str, Any]:
        """The event source mapping's `FilterCriteria` for this pipeline's leading
        filters (``events=``), so that Lambda drops those records before invoking the
        function at all; the handler applies the filters too. Raises `PipelineError`
        naming the step that stops it when nothing can be written as a pattern."""
        from flowstream.aws_lambda.filters import filter_criteria

        return filter_criteria(self._steps, self._label())


def _check_leases(leases: object, checkpoints: object, drain: bool, source: Source) -> None:
    from flowstream.leases import DynamoDBLeases
    from flowstream.sources.base import PositionKind

    if not isinstance(leases, DynamoDBLeases):
        raise PipelineError(
            f"run(leases=) got {type(leases).__name__}; pass leases.dynamodb(table)"
        )
    if checkpoints is not None:
        raise PipelineError(
            f"run() got both leases={leases.describe()} and checkpoints=; the lease table "
            "holds the checkpoints (as the KCL's does): pass leases= alone"
        )
    if drain:
        raise PipelineError(
            f"run(drain=True) with leases={leases.describe()}: a drain reads what one "
            "process holds, while leases share the stream among workers; run the workers "
            "without drain=, or drain with checkpoints= in one process"
        )
    if source.start.kind not in (PositionKind.TRIM_HORIZON, PositionKind.LATEST):
        raise PipelineError(
            f"run(leases={leases.describe()}): the source starts at {source.start.kind.value}, "
            "but a lease starts at TRIM_HORIZON or LATEST (the KCL's initial positions); "
            "use start='trim_horizon' or start='latest'"
        )
