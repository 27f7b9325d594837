"""Tests of the pipeline builder: `fs.Pipeline`, `fs.when`, their validation, describe(),
compile() and the checks run() makes before reading anything."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterator
from contextlib import AbstractAsyncContextManager
from typing import Any, assert_type

import anyio
import pytest

import flowstream as fs
from flowstream import checkpoints, sinks
from flowstream.plan import Map, Plan
from flowstream.sources.base import Source, StreamSession
from flowstream.testing import MemoryStream

# -- helpers ----------------------------------------------------------------------------


def is_user(record: fs.Record) -> bool:
    return str(record.keys["pk"]).startswith("user#")


def to_message(record: fs.Record) -> dict[str, Any]:
    return {"key": record.keys["pk"], "op": str(record.event_name)}


def explode(message: dict[str, Any]) -> list[dict[str, Any]]:
    return [message, message]


def is_remove(message: dict[str, Any]) -> bool:
    return bool(message["op"] == "REMOVE")


def is_vip(message: dict[str, Any]) -> bool:
    return bool(message["key"] == "user#1")


class Enricher:
    """A callable object, and a class with a method, as users write them."""

    def __call__(self, record: fs.Record) -> dict[str, Any]:
        return to_message(record)

    def enrich(self, record: fs.Record) -> dict[str, Any]:
        return to_message(record)


class AsyncEnricher:
    async def __call__(self, record: fs.Record) -> dict[str, Any]:
        return to_message(record)


def scale(factor: int, message: dict[str, Any]) -> int:
    return factor * len(message)


class UnreadSource(Source):
    """A source that fails the test if a run opens it."""

    def describe(self) -> str:
        return "unread"

    def open(self) -> AbstractAsyncContextManager[StreamSession]:
        raise AssertionError("the run opened the source before checking the pipeline")


def users() -> MemoryStream:
    return MemoryStream(table="Users")


QUEUE = sinks.collect("queue")
AUDIT = sinks.collect("audit")
PURGE = sinks.collect("purge")


def base() -> fs.Pipeline[fs.Record]:
    return fs.Pipeline(users())


def assert_pipeline_error(build: Callable[[], object], fragments: list[str]) -> None:
    with pytest.raises(fs.PipelineError) as info:
        build()
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


# -- immutability -----------------------------------------------------------------------

Builder = Callable[[fs.Pipeline[Any]], fs.Pipeline[Any]]

OPEN_STEPS: dict[str, Builder] = {
    "filter-events": lambda p: p.filter(events=["MODIFY", "REMOVE"]),
    "filter-predicate": lambda p: p.filter(is_user),
    "map": lambda p: p.map(to_message),
    "flat_map": lambda p: p.flat_map(explode),
}
ENDS: dict[str, Builder] = {
    "route": lambda p: p.route(fs.when(is_remove, QUEUE), otherwise=PURGE),
    "route-drop": lambda p: p.route(fs.when(is_remove, QUEUE)),
    "to": lambda p: p.to(QUEUE, PURGE),
}
BASES: dict[str, Callable[[], fs.Pipeline[Any]]] = {
    "empty": base,
    "named": lambda: fs.Pipeline(users(), name="user-cache"),
    "with-steps": lambda: base().filter(events="MODIFY").map(to_message),
}


class TestImmutability:
    @pytest.mark.parametrize("base_name", sorted(BASES))
    @pytest.mark.parametrize("method", sorted(OPEN_STEPS.keys() | ENDS.keys()))
    def test_each_method_returns_a_new_pipeline_and_leaves_the_original(
        self, method: str, base_name: str
    ) -> None:
        original = BASES[base_name]()
        before = original.describe()
        built = {**OPEN_STEPS, **ENDS}[method](original)
        assert built is not original
        assert original.describe() == before
        assert built.describe() != before
        assert built.source is original.source
        assert built.name == original.name

    @pytest.mark.parametrize("end", sorted(ENDS))
    def test_an_ended_pipeline_leaves_its_base_open(self, end: str) -> None:
        original = base().map(to_message)
        ENDS[end](original)
        assert "no end" in original.describe()
        assert "3. to(audit)" in original.filter(is_remove).to(AUDIT).describe()
        with pytest.raises(fs.PipelineError):
            original.compile()

    def test_branches_from_one_base_do_not_see_each_other(self) -> None:
        common = base().filter(events="INSERT")
        left = common.map(to_message).to(QUEUE)
        right = common.filter(is_user).to(PURGE)
        assert [s.describe() for s in left.compile().steps] == [
            "filter(events=[INSERT])",
            "map(to_message)",
        ]
        assert [s.describe() for s in right.compile().steps] == [
            "filter(events=[INSERT])",
            "filter(is_user)",
        ]
        assert left.compile().sinks == [QUEUE]
        assert right.compile().sinks == [PURGE]

    def test_changing_an_argument_afterwards_changes_nothing(self) -> None:
        events = ["MODIFY"]
        otherwise = [PURGE]
        pipeline = base().filter(events=events).route(otherwise=otherwise)
        before = pipeline.describe()
        events.append("REMOVE")
        otherwise.append(QUEUE)
        assert pipeline.describe() == before
        assert pipeline.compile().sinks == [PURGE]


# -- errors -----------------------------------------------------------------------------

Case = tuple[Callable[[], object], list[str]]


def cases(table: dict[str, Case]) -> pytest.MarkDecorator:
    return pytest.mark.parametrize(
        ("build", "fragments"), list(table.values()), ids=list(table.keys())
    )


class TestSourceAndNameErrors:
    @cases(
        {
            "source-is-a-table-name": (
                lambda: fs.Pipeline("Users"),  # type: ignore[arg-type]
                ["fs.Pipeline() got str as its source", "sources.dynamodb(table=...)"],
            ),
            "source-is-a-sink": (
                lambda: fs.Pipeline(QUEUE),  # type: ignore[arg-type]
                ["fs.Pipeline() got CollectSink", "MemoryStream"],
            ),
            "with-source-not-a-source": (
                lambda: fs.Pipeline(users()).with_source("Users"),  # type: ignore[arg-type]
                [".with_source() got str as its source", "sources.dynamodb(table=...)"],
            ),
            "name-empty": (
                lambda: fs.Pipeline(users(), name=""),
                ["fs.Pipeline(name='')", "non-empty string", "name='user-cache'"],
            ),
            "name-blank": (
                lambda: fs.Pipeline(users(), name="  "),
                ["fs.Pipeline(name='  ')", "name='user-cache'"],
            ),
            "name-not-a-string": (
                lambda: fs.Pipeline(users(), name=5),  # type: ignore[arg-type]
                ["fs.Pipeline(name=5)", "name='user-cache'"],
            ),
        }
    )
    def test_rejected(self, build: Callable[[], object], fragments: list[str]) -> None:
        assert_pipeline_error(build, fragments)

    def test_a_pipeline_error_is_a_flowstream_error(self) -> None:
        assert issubclass(fs.PipelineError, fs.FlowstreamError)


class TestFilterErrors:
    @cases(
        {
            "neither-predicate-nor-events": (
                lambda: base().filter(),
                [
                    ".filter() at step 1 has neither a predicate, events= nor pattern=",
                    "events=['INSERT', 'MODIFY', 'REMOVE']",
                ],
            ),
            "neither-at-step-3": (
                lambda: base().map(to_message).flat_map(explode).filter(),
                [".filter() at step 3 has neither"],
            ),
            "unknown-event-DELETE": (
                lambda: base().filter(events="DELETE"),
                [".filter() at step 1", "unknown event name 'DELETE'", "INSERT, MODIFY, REMOVE"],
            ),
            "lower-case-insert": (
                lambda: base().filter(events=["insert"]),
                [".filter() at step 1", "'insert'", "(upper case)"],
            ),
            "one-unknown-among-good": (
                lambda: base().map(to_message).filter(events=["INSERT", "UPSERT"]),
                [".filter() at step 2", "'UPSERT'", "INSERT, MODIFY, REMOVE"],
            ),
            "not-a-string-in-the-list": (
                lambda: base().filter(events=[None]),  # type: ignore[list-item]
                [".filter() at step 1", "unknown event name None"],
            ),
            "empty-list": (
                lambda: base().filter(events=[]),
                [".filter() at step 1", "events=[]", "keeps nothing", "at least one of"],
            ),
            "empty-set": (
                lambda: base().filter(events=set()),
                [".filter() at step 1", "keeps nothing"],
            ),
            "events-not-iterable": (
                lambda: base().filter(events=5),  # type: ignore[arg-type]
                [".filter() at step 1 got events=5", "events=['MODIFY', 'REMOVE']"],
            ),
            "events-as-bytes": (
                lambda: base().filter(events=b"REMOVE"),  # type: ignore[arg-type]
                [".filter() at step 1 got events=b'REMOVE'", "events=['MODIFY', 'REMOVE']"],
            ),
            "predicate-not-callable": (
                lambda: base().filter("pk"),  # type: ignore[arg-type]
                [".filter() at step 1 got str, which is not callable", "pass a function"],
            ),
            "predicate-not-callable-with-events": (
                lambda: base().map(to_message).filter(True, events="INSERT"),  # type: ignore[arg-type]
                [".filter() at step 2 got bool, which is not callable", ".filter(lambda"],
            ),
        }
    )
    def test_rejected(self, build: Callable[[], object], fragments: list[str]) -> None:
        assert_pipeline_error(build, fragments)

    @pytest.mark.parametrize(
        ("events", "shown"),
        [
            ("REMOVE", "REMOVE"),
            (fs.EventName.MODIFY, "MODIFY"),
            (("INSERT",), "INSERT"),
            ((name for name in ["REMOVE", "MODIFY"]), "MODIFY, REMOVE"),
            (["REMOVE", "REMOVE"], "REMOVE"),
        ],
        ids=["one-string", "enum-member", "tuple", "generator", "repeated"],
    )
    def test_accepted_events(self, events: Any, shown: str) -> None:
        pipeline = base().filter(events=events)
        assert f"1. filter(events=[{shown}])" in pipeline.describe()


class TestMapAndFlatMapErrors:
    @cases(
        {
            "map-of-a-string": (
                lambda: base().filter(events="INSERT").map("upper"),  # type: ignore[call-overload]
                [".map() at step 2 got str, which is not callable", ".map(lambda record: ...)"],
            ),
            "map-of-none": (
                lambda: base().map(None),  # type: ignore[call-overload]
                [".map() at step 1 got NoneType", "pass a function"],
            ),
            "flat_map-of-a-list": (
                lambda: base().map(to_message).flat_map([1, 2]),  # type: ignore[call-overload]
                [".flat_map() at step 2 got list", ".flat_map(lambda record: ...)"],
            ),
        }
    )
    def test_rejected(self, build: Callable[[], object], fragments: list[str]) -> None:
        assert_pipeline_error(build, fragments)


class TestWhenErrors:
    @cases(
        {
            "predicate-not-callable": (
                lambda: fs.when(True, QUEUE),  # type: ignore[arg-type]
                ["fs.when() got bool as its predicate", "fs.when(lambda m: ..., sink)"],
            ),
            "no-sinks": (
                lambda: fs.when(is_remove),
                ["fs.when(is_remove) has no sinks", "fs.when(predicate, sink, ...)"],
            ),
            "a-queue-url-as-sink": (
                lambda: fs.when(is_remove, "https://sqs/queue"),  # type: ignore[arg-type]
                ["fs.when(is_remove) got str where a sink belongs", "sinks.collect()"],
            ),
            "a-function-among-sinks": (
                lambda: fs.when(is_remove, QUEUE, print),  # type: ignore[arg-type]
                ["fs.when(is_remove) got builtin_function_or_method", "sinks.callback(fn)"],
            ),
        }
    )
    def test_rejected(self, build: Callable[[], object], fragments: list[str]) -> None:
        assert_pipeline_error(build, fragments)


class TestRouteErrors:
    @cases(
        {
            "nothing": (
                lambda: base().route(),
                [
                    ".route() at step 1 has no routes and no otherwise=",
                    "add fs.when(predicate, sink) or otherwise=sink",
                ],
            ),
            "a-sink-positionally": (
                lambda: base().map(to_message).route(QUEUE),  # type: ignore[arg-type]
                [".route() at step 2 got CollectSink, not a route", "as otherwise=sink"],
            ),
            "a-function-positionally": (
                lambda: base().route(is_remove),  # type: ignore[arg-type]
                [".route() at step 1 got function, not a route", "fs.when(predicate, sink"],
            ),
            "a-list-of-whens": (
                lambda: base().route([fs.when(is_remove, QUEUE)]),  # type: ignore[arg-type]
                [".route() at step 1 got list, not a route", "fs.when("],
            ),
            "otherwise-empty-list": (
                lambda: base().route(fs.when(is_remove, QUEUE), otherwise=[]),
                [".route() at step 1 got otherwise=[]", "otherwise=None to drop"],
            ),
            "otherwise-a-string": (
                lambda: base().route(otherwise="purge"),  # type: ignore[arg-type]
                [".route() at step 1 otherwise= got str where a sink belongs", "sinks.collect()"],
            ),
            "otherwise-not-iterable": (
                lambda: base().route(fs.when(is_remove, QUEUE), otherwise=5),  # type: ignore[arg-type]
                [".route() at step 1 otherwise= got int where a sink belongs", "sinks.collect()"],
            ),
            "otherwise-a-function": (
                lambda: base().route(otherwise=is_remove),  # type: ignore[arg-type]
                [".route() at step 1 otherwise= got function", "sinks.callback(fn)"],
            ),
            "otherwise-list-with-a-non-sink": (
                lambda: base().map(to_message).route(otherwise=[PURGE, None]),  # type: ignore[list-item]
                [".route() at step 2 otherwise= got NoneType", "sinks.collect()"],
            ),
        }
    )
    def test_rejected(self, build: Callable[[], object], fragments: list[str]) -> None:
        assert_pipeline_error(build, fragments)


class TestToErrors:
    @cases(
        {
            "no-sinks": (
                lambda: base().to(),
                [".to() at step 1 has no sinks", ".to(sinks.stdout())"],
            ),
            "a-string": (
                lambda: base().map(to_message).to("stdout"),  # type: ignore[arg-type]
                [".to() at step 2 got str where a sink belongs", "sinks.collect()"],
            ),
            "none-among-sinks": (
                lambda: base().to(QUEUE, None),  # type: ignore[arg-type]
                [".to() at step 1 got NoneType where a sink belongs"],
            ),
        }
    )
    def test_rejected(self, build: Callable[[], object], fragments: list[str]) -> None:
        assert_pipeline_error(build, fragments)


class TestStepsAfterTheEnd:
    @cases(
        {
            "map-after-to": (
                lambda: base().to(QUEUE).map(to_message),
                [
                    ".map() at step 2 comes after the pipeline's end (step 1: to(queue))",
                    "before .route() or .to()",
                ],
            ),
            "filter-after-route": (
                lambda: base().map(to_message).route(otherwise=PURGE).filter(is_remove),
                [".filter() at step 3 comes after the pipeline's end (step 2: route)"],
            ),
            "flat_map-after-route": (
                lambda: base().route(fs.when(is_remove, QUEUE)).flat_map(lambda r: [r]),
                [".flat_map() at step 2 comes after", "(step 1: route)"],
            ),
            "to-after-to": (
                lambda: base().to(QUEUE).to(PURGE),
                [".to() at step 2 comes after the pipeline's end", "end a pipeline only once"],
            ),
            "route-after-to": (
                lambda: base().filter(is_user).to(QUEUE).route(otherwise=PURGE),
                [".route() at step 3 comes after the pipeline's end (step 2: to(queue))"],
            ),
            # The end is reported before any problem with the arguments.
            "bad-filter-after-to": (
                lambda: base().to(QUEUE).filter(),
                [".filter() at step 2 comes after the pipeline's end"],
            ),
        }
    )
    def test_rejected(self, build: Callable[[], object], fragments: list[str]) -> None:
        assert_pipeline_error(build, fragments)


class TestNoEnd:
    @cases(
        {
            "empty": (
                lambda: base().compile(),
                ["pipeline has nothing at its end", "make step 1 .to(sink, ...) or .route("],
            ),
            "named-with-steps": (
                lambda: fs.Pipeline(users(), name="user-cache").map(to_message).compile(),
                ["pipeline 'user-cache' has nothing at its end", "make step 2 .to(sink, ...)"],
            ),
        }
    )
    def test_compile_rejects(self, build: Callable[[], object], fragments: list[str]) -> None:
        assert_pipeline_error(build, fragments)

    async def test_run_rejects_before_opening_the_source(self) -> None:
        with pytest.raises(fs.PipelineError, match=r"make step 2 \.to\(sink"):
            await fs.Pipeline(UnreadSource(), name="p").map(str).run(drain=True)


class TestRunChecks:
    async def test_checkpoints_without_a_name_are_rejected_before_reading(self) -> None:
        pipeline = fs.Pipeline(UnreadSource()).to(QUEUE)
        with pytest.raises(fs.PipelineError) as info:
            await pipeline.run(checkpoints=checkpoints.memory(), drain=True)
        message = str(info.value)
        assert "run(checkpoints=memory()) needs a pipeline name" in message
        assert "fs.Pipeline(source, name='my-pipeline')" in message

    async def test_a_named_pipeline_with_checkpoints_runs(self) -> None:
        stream = users()
        shard = stream.add_shard()
        for n in range(3):
            stream.put(shard, "INSERT", {"pk": f"user#{n}"}, {"pk": f"user#{n}"})
        stream.put(shard, "REMOVE", {"pk": "user#1"}, None, {"pk": "user#1"})
        removed, rest = sinks.collect("removed"), sinks.collect("rest")
        pipeline = (
            fs.Pipeline(stream, name="user-cache")
            .map(to_message)
            .route(fs.when(is_remove, removed), otherwise=rest)
        )
        with anyio.fail_after(10):
            report = await pipeline.run(checkpoints=checkpoints.memory(), drain=True)
        assert removed.items == [{"key": "user#1", "op": "REMOVE"}]
        assert [m["key"] for m in rest.items] == ["user#0", "user#1", "user#2"]
        assert report.pipeline == "user-cache"

    async def test_an_unnamed_pipeline_runs_without_checkpoints(self) -> None:
        stream = users()
        shard = stream.add_shard()
        stream.put(shard, "INSERT", {"pk": "user#0"}, {"pk": "user#0"})
        sink = sinks.collect()
        with anyio.fail_after(10):
            await fs.Pipeline(stream).filter(events="INSERT").to(sink).run(drain=True)
        assert [r.keys for r in sink.items] == [{"pk": "user#0"}]


# -- describe ---------------------------------------------------------------------------


class TestDescribe:
    def test_the_whole_plan(self) -> None:
        pipeline = (
            fs.Pipeline(users(), name="user-cache")
            .filter(events=["REMOVE", "MODIFY"])
            .filter(is_user)
            .map(to_message)
            .flat_map(explode)
            .route(
                fs.when(is_remove, QUEUE),
                fs.when(is_vip, QUEUE, AUDIT),
                otherwise=PURGE,
            )
        )
        assert pipeline.describe() == (
            "pipeline 'user-cache'\n"
            "  source: MemoryStream(Users, 0 shards)\n"
            "  1. filter(events=[MODIFY, REMOVE])\n"
            "  2. filter(is_user)\n"
            "  3. map(to_message)\n"
            "  4. flat_map(explode)\n"
            "  5. route\n"
            "     when is_remove -> queue\n"
            "     when is_vip -> queue, audit\n"
            "     otherwise -> purge"
        )
        assert repr(pipeline) == pipeline.describe()

    @pytest.mark.parametrize(
        ("build", "lines"),
        [
            (lambda p: p.to(QUEUE, AUDIT), ["pipeline", "  1. to(queue, audit)"]),
            (
                lambda p: p.route(fs.when(is_remove, QUEUE)),
                ["  1. route", "     when is_remove -> queue", "     otherwise -> drop (counted)"],
            ),
            (
                lambda p: p.route(otherwise=[PURGE, AUDIT]),
                ["  1. route", "     otherwise -> purge, audit"],
            ),
            (
                lambda p: p.map(to_message),
                ["  1. map(to_message)", "  2. (no end: add .route() or .to())"],
            ),
            (
                lambda p: p.filter(is_user, events="INSERT"),
                ["  1. filter(events=[INSERT], is_user)"],
            ),
            (lambda p: p.map(lambda r: r.keys), ["  1. map(<lambda>)"]),
            (lambda p: p.map(Enricher()), ["  1. map(Enricher)"]),
            (lambda p: p.map(Enricher().enrich), ["  1. map(Enricher.enrich)"]),
            (
                lambda p: p.map(to_message).map(functools.partial(scale, 2)),
                ["  2. map(partial(scale))"],
            ),
            (lambda p: p.flat_map(nested_function()), ["  1. flat_map(parts)"]),
            (lambda p: p.filter(is_user).map(async_message), ["  2. map(async_message)"]),
        ],
        ids=[
            "to",
            "route-dropping",
            "route-only-otherwise",
            "no-end",
            "filter-events-and-predicate",
            "lambda",
            "callable-object",
            "method",
            "partial",
            "nested-function",
            "async-function",
        ],
    )
    def test_lines(self, build: Builder, lines: list[str]) -> None:
        described = build(base()).describe().split("\n")
        assert described[:2] == ["pipeline", "  source: MemoryStream(Users, 0 shards)"]
        for line in lines:
            assert line in described, f"{line!r} not in {described!r}"

    def test_the_source_is_described_by_the_source(self) -> None:
        stream = users()
        stream.add_shard()
        assert "  source: MemoryStream(Users, 1 shards)" in fs.Pipeline(stream).describe()

    def test_when_repr_names_its_predicate_and_sinks(self) -> None:
        assert repr(fs.when(is_vip, QUEUE, AUDIT)) == "when(is_vip, queue, audit)"


def nested_function() -> Callable[[fs.Record], list[fs.Record]]:
    def parts(record: fs.Record) -> list[fs.Record]:
        return [record]

    return parts


async def async_message(record: fs.Record) -> dict[str, Any]:
    return to_message(record)


# -- compile ----------------------------------------------------------------------------


class TestCompile:
    def test_the_plan_holds_the_steps_in_order_and_the_sinks(self) -> None:
        plan = (
            base()
            .filter(events="MODIFY")
            .map(to_message)
            .route(fs.when(is_remove, QUEUE), fs.when(is_vip, AUDIT, QUEUE), otherwise=PURGE)
            .compile()
        )
        assert isinstance(plan, Plan)
        assert [step.describe() for step in plan.steps] == [
            "filter(events=[MODIFY])",
            "map(to_message)",
        ]
        assert plan.sinks == [QUEUE, AUDIT, PURGE]  # each sink once, in order of mention

    @pytest.mark.parametrize(
        ("fn", "is_async"),
        [
            (to_message, False),
            (async_message, True),
            (Enricher(), False),
            (AsyncEnricher(), True),
            (functools.partial(async_message), True),
            (functools.partial(AsyncEnricher()), True),
            (lambda r: async_message(r), False),  # its coroutine is awaited when it runs
        ],
        ids=[
            "function",
            "async-function",
            "callable-object",
            "async-callable-object",
            "partial-of-async-function",
            "partial-of-async-callable-object",
            "lambda-returning-a-coroutine",
        ],
    )
    def test_the_plan_knows_which_functions_are_async(
        self, fn: Callable[[fs.Record], Any], is_async: bool
    ) -> None:
        (step,) = base().map(fn).to(QUEUE).compile().steps
        assert isinstance(step, Map)
        assert step.is_async is is_async


# -- types ------------------------------------------------------------------------------


class TestTypes:
    """Checked by `mypy --strict`: each element type is carried through the builder. A
    line marked ``type: ignore[...]`` proves mypy rejects it (strict mode reports an
    ignore that is not needed)."""

    def test_element_types_follow_the_steps(self) -> None:
        records = fs.Pipeline(users())
        assert_type(records, fs.Pipeline[fs.Record])
        assert_type(records.filter(events="REMOVE"), fs.Pipeline[fs.Record])
        keys = records.map(lambda r: r.keys)
        assert_type(keys, fs.Pipeline[dict[str, Any]])
        assert_type(keys.filter(lambda m: m["pk"] == "user#1"), fs.Pipeline[dict[str, Any]])
        assert_type(records.map(async_message), fs.Pipeline[dict[str, Any]])
        assert_type(records.flat_map(lambda r: [r.sequence_number]), fs.Pipeline[str])
        assert_type(records.map(to_message).flat_map(explode), fs.Pipeline[dict[str, Any]])
        assert_type(records.map(len_of_keys).to(QUEUE), fs.Pipeline[int])
        assert_type(records.flat_map(async_parts), fs.Pipeline[int])

    def test_mistakes_that_mypy_catches(self) -> None:
        keys = fs.Pipeline(users()).map(lambda r: r.keys)
        # None of these functions is called: building a pipeline only stores them.
        keys.map(lambda m: m.event_name)  # type: ignore[attr-defined]
        keys.filter(lambda m: m.sequence_number)  # type: ignore[attr-defined]
        keys.map(to_message)  # type: ignore[arg-type]


def len_of_keys(record: fs.Record) -> int:
    return len(record.keys)


async def async_parts(record: fs.Record) -> Iterator[int]:
    return iter([len(record.keys)])


@pytest.mark.parametrize("interval", [0, -1, math.inf, math.nan, True, "10"])
async def test_run_refuses_a_progress_interval_that_is_not_seconds(interval: object) -> None:
    with pytest.raises(fs.PipelineError, match=r"run\(progress_interval=.*finite positive"):
        await (
            fs.Pipeline(users())
            .to(sinks.collect())
            .run(drain=True, on_progress=lambda report: None, progress_interval=interval)  # type: ignore[arg-type]
        )
