"""Tests of `Plan.process`: filter/map/flat_map steps and the route over one page of
records, the record index each element keeps, and where a failing user function stops
the page."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import pytest

import flowstream as fs
from flowstream import sinks
from flowstream.plan import Plan, Processed
from flowstream.record import Record
from flowstream.testing import MemoryStream

# -- helpers ----------------------------------------------------------------------------


def page(*events: str) -> list[Record]:
    """One shard's page: record i has event `events[i]` and key ``{"pk": i}``."""
    stream = MemoryStream()
    shard = stream.add_shard()
    records = []
    for i, event in enumerate(events):
        item = {"pk": i, "v": f"item{i}"}
        new = None if event == "REMOVE" else item
        old = None if event == "INSERT" else item
        records.append(stream.put(shard, event, {"pk": i}, new, old))
    return records


def inserts(n: int) -> list[Record]:
    return page(*["INSERT"] * n)


def pipeline() -> fs.Pipeline[Record]:
    return fs.Pipeline(MemoryStream())


def record_of(element: Any) -> int:
    """The record number an element was made from: records carry it as key ``pk``, the
    dicts the helpers below make carry it as ``n``."""
    if isinstance(element, Record):
        pk: int = element.keys["pk"]
        return pk
    n: int = element["n"]
    return n


def to_message(record: Record) -> dict[str, Any]:
    return {"n": record.keys["pk"], "op": str(record.event_name)}


def in_three(element: Any) -> list[dict[str, Any]]:
    n = record_of(element)
    return [{"n": n, "part": part} for part in range(3)]


def is_even(element: Any) -> bool:
    return record_of(element) % 2 == 0


class Boom(Exception):
    """What the failing user functions in these tests raise."""


class FailAt:
    """A user function that raises `Boom` for elements of record `k` (for the element
    with ``part == part`` when given), and otherwise returns `fn(element)`."""

    def __init__(
        self, k: int, fn: Callable[[Any], Any] = lambda x: x, *, part: int | None = None
    ) -> None:
        self.k = k
        self.fn = fn
        self.part = part
        self.calls: list[int] = []

    def __call__(self, element: Any) -> Any:
        self.calls.append(record_of(element))
        if record_of(element) == self.k and (self.part is None or element["part"] == self.part):
            raise Boom(f"record {self.k}")
        return self.fn(element)


# Three ways to write a user function: plain, `async def`, an object with async __call__.
def as_sync(fn: Callable[[Any], Any]) -> Callable[[Any], Any]:
    return fn


def as_async_def(fn: Callable[[Any], Any]) -> Callable[[Any], Any]:
    async def call(element: Any) -> Any:
        return fn(element)

    return call


class AsyncCallable:
    def __init__(self, fn: Callable[[Any], Any]) -> None:
        self.fn = fn

    async def __call__(self, element: Any) -> Any:
        return self.fn(element)


def as_async_object(fn: Callable[[Any], Any]) -> Callable[[Any], Any]:
    return AsyncCallable(fn)


FLAVOURS = pytest.mark.parametrize(
    "flavour",
    [as_sync, as_async_def, as_async_object],
    ids=["sync", "async-def", "async-callable-object"],
)

Flavour = Callable[[Callable[[Any], Any]], Callable[[Any], Any]]


def output(plan: Plan, processed: Processed, sink: fs.sinks.Sink) -> tuple[list[Any], list[int]]:
    """(values, record indices) that `processed` has for `sink`."""
    return processed.outputs[plan.sinks.index(sink)]


async def run(p: fs.Pipeline[Any], records: list[Record]) -> tuple[Plan, Processed]:
    plan = p.compile()
    return plan, await plan.process(records)


async def run_to_one(
    build: Callable[[fs.Pipeline[Record]], fs.Pipeline[Any]], records: list[Record]
) -> tuple[Processed, list[Any], list[int]]:
    """Run `build(pipeline()).to(sink)` over `records`; the result and the sink's output."""
    sink = sinks.collect()
    plan, processed = await run(build(pipeline()).to(sink), records)
    values, origins = output(plan, processed, sink)
    return processed, values, origins


def assert_origins_line_up(values: list[Any], origins: list[int]) -> None:
    assert len(values) == len(origins)
    assert [record_of(v) for v in values] == origins
    assert origins == sorted(origins)


# -- filter -----------------------------------------------------------------------------

MIXED = ("INSERT", "MODIFY", "REMOVE", "MODIFY", "INSERT", "REMOVE")


class TestEventFilter:
    @pytest.mark.parametrize(
        ("events", "kept"),
        [
            ("INSERT", [0, 4]),
            (["MODIFY"], [1, 3]),
            (["MODIFY", "REMOVE"], [1, 2, 3, 5]),
            ({"REMOVE", "INSERT"}, [0, 2, 4, 5]),
            ((fs.EventName.REMOVE,), [2, 5]),
            (["INSERT", "MODIFY", "REMOVE"], [0, 1, 2, 3, 4, 5]),
        ],
        ids=["insert-string", "modify", "modify-remove", "set", "enum", "all"],
    )
    async def test_keeps_exactly_those_events(
        self, events: str | Iterable[str], kept: list[int]
    ) -> None:
        records = page(*MIXED)
        processed, values, origins = await run_to_one(lambda p: p.filter(events=events), records)
        assert values == [records[i] for i in kept]
        assert origins == kept
        assert processed.filtered == len(records) - len(kept)
        assert processed.failure is None

    async def test_applies_to_the_originating_record_after_a_map(self) -> None:
        records = page(*MIXED)
        _, values, origins = await run_to_one(
            lambda p: p.map(lambda r: {"n": r.keys["pk"]}).filter(events=["REMOVE"]), records
        )
        assert values == [{"n": 2}, {"n": 5}]
        assert origins == [2, 5]

    async def test_applies_to_every_element_of_a_record_after_a_flat_map(self) -> None:
        records = page(*MIXED)
        processed, values, origins = await run_to_one(
            lambda p: p.flat_map(in_three).filter(events="MODIFY"), records
        )
        assert origins == [1, 1, 1, 3, 3, 3]
        assert_origins_line_up(values, origins)
        assert processed.filtered == 12  # elements, not records: 4 records x 3 parts

    async def test_with_a_predicate_both_must_hold(self) -> None:
        records = page(*MIXED)
        seen: list[int] = []

        def keep_even(record: Record) -> bool:
            seen.append(record.keys["pk"])
            return is_even(record)

        processed, _, origins = await run_to_one(
            lambda p: p.filter(keep_even, events=["MODIFY", "REMOVE"]), records
        )
        assert origins == [2]
        assert seen == [1, 2, 3, 5]  # the predicate never sees other events
        assert processed.filtered == 5


class TestPredicateFilter:
    @FLAVOURS
    async def test_keeps_elements_where_the_predicate_holds(self, flavour: Flavour) -> None:
        records = inserts(5)
        processed, values, origins = await run_to_one(lambda p: p.filter(flavour(is_even)), records)
        assert values == [records[0], records[2], records[4]]
        assert origins == [0, 2, 4]
        assert processed.filtered == 2

    async def test_truthiness_of_the_result_decides(self) -> None:
        records = inserts(4)
        _, _, origins = await run_to_one(
            lambda p: p.filter(lambda r: [None] * (r.keys["pk"] % 2)), records
        )
        assert origins == [1, 3]

    async def test_filters_in_a_row_count_every_element_removed(self) -> None:
        records = page(*MIXED)
        processed, _, origins = await run_to_one(
            lambda p: p.filter(events=["INSERT", "REMOVE"]).filter(is_even), records
        )
        assert origins == [0, 2, 4]
        assert processed.filtered == 3

    async def test_a_page_filtered_to_nothing_runs_no_later_step(self) -> None:
        later = FailAt(-1)
        processed, values, _ = await run_to_one(
            lambda p: p.filter(events="REMOVE").map(later), inserts(3)
        )
        assert values == []
        assert later.calls == []
        assert processed.filtered == 3
        assert processed.failure is None


# -- map and flat_map -------------------------------------------------------------------


class TestMap:
    @FLAVOURS
    async def test_replaces_each_element_keeping_its_origin(self, flavour: Flavour) -> None:
        records = page(*MIXED)
        processed, values, origins = await run_to_one(lambda p: p.map(flavour(to_message)), records)
        assert values == [to_message(r) for r in records]
        assert origins == list(range(6))
        assert (processed.filtered, processed.dropped) == (0, 0)

    async def test_maps_chain_in_order(self) -> None:
        _, values, _ = await run_to_one(
            lambda p: p.map(to_message).map(lambda m: m["n"] * 10).map(str), inserts(3)
        )
        assert values == ["0", "10", "20"]

    async def test_an_empty_page_gives_empty_outputs(self) -> None:
        processed, values, origins = await run_to_one(lambda p: p.map(to_message), [])
        assert (values, origins) == ([], [])
        assert processed.failure is None


def none(element: Any) -> list[Any]:
    return []


def one(element: Any) -> list[Any]:
    return [{"n": record_of(element)}]


def many(element: Any) -> Iterator[dict[str, Any]]:
    n = record_of(element)
    yield from ({"n": n, "part": part} for part in range(n))  # record n gives n elements


class TestFlatMap:
    @pytest.mark.parametrize(
        ("fn", "origins"),
        [
            (none, []),
            (one, [0, 1, 2, 3]),
            (many, [1, 2, 2, 3, 3, 3]),
            (lambda r: ({"n": r.keys["pk"]},), [0, 1, 2, 3]),
            (lambda r: ({"n": r.keys["pk"]} for _ in range(2)), [0, 0, 1, 1, 2, 2, 3, 3]),
        ],
        ids=["zero", "one", "many-from-a-generator", "a-tuple", "a-generator-expression"],
    )
    @FLAVOURS
    async def test_gives_each_origin_to_every_element_it_produced(
        self, flavour: Flavour, fn: Callable[[Any], Iterable[Any]], origins: list[int]
    ) -> None:
        processed, values, got = await run_to_one(lambda p: p.flat_map(flavour(fn)), inserts(4))
        assert got == origins
        assert_origins_line_up(values, got)
        assert processed.failure is None

    async def test_keeps_the_order_of_the_produced_elements(self) -> None:
        _, values, _ = await run_to_one(lambda p: p.flat_map(many), inserts(3))
        assert values == [{"n": 1, "part": 0}, {"n": 2, "part": 0}, {"n": 2, "part": 1}]

    async def test_flat_maps_chain(self) -> None:
        _, values, origins = await run_to_one(
            lambda p: p.flat_map(in_three).flat_map(lambda m: [m] * m["part"]), inserts(2)
        )
        assert origins == [0, 0, 0, 1, 1, 1]
        assert [v["part"] for v in values] == [1, 2, 2, 1, 2, 2]

    @pytest.mark.parametrize(
        "returned",
        [None, 5, True, {"n": 1}, "abc", b"abc"],
        ids=["none", "int", "bool", "dict", "str", "bytes"],
    )
    @FLAVOURS
    async def test_a_result_that_is_not_a_list_of_elements_is_a_type_error(
        self, flavour: Flavour, returned: object
    ) -> None:
        # A str, bytes or dict is iterable, but iterating it gives characters, ints or
        # keys: always a mistake for `return element` instead of `return [element]`.
        records = inserts(3)
        fn = FailAt(-1, lambda x: [x] if record_of(x) < 1 else returned)
        processed, values, origins = await run_to_one(lambda p: p.flat_map(flavour(fn)), records)
        assert processed.failure is not None
        assert processed.failure.record_index == 1
        assert processed.failure.step.startswith("step 1: flat_map(")
        error = processed.failure.error
        assert isinstance(error, TypeError)
        assert type(returned).__name__ in str(error)
        assert "return a list" in str(error)
        assert (values, origins) == ([records[0]], [0])


# -- sync functions that return coroutines ----------------------------------------------


async def async_is_even(element: Any) -> bool:
    return is_even(element)


async def async_to_message(record: Record) -> dict[str, Any]:
    return to_message(record)


async def async_in_three(element: Any) -> list[dict[str, Any]]:
    return in_three(element)


class TestSyncFunctionReturningACoroutine:
    """``lambda r: check(r)`` with an async `check` is a sync function that returns a
    coroutine: it is awaited, not taken as the value (a coroutine is always truthy)."""

    async def test_filter(self) -> None:
        _, _, origins = await run_to_one(lambda p: p.filter(lambda r: async_is_even(r)), inserts(4))
        assert origins == [0, 2]

    async def test_map(self) -> None:
        records = inserts(2)
        _, values, _ = await run_to_one(lambda p: p.map(lambda r: async_to_message(r)), records)
        assert values == [to_message(r) for r in records]

    async def test_flat_map(self) -> None:
        _, _, origins = await run_to_one(
            lambda p: p.flat_map(lambda r: async_in_three(r)), inserts(2)
        )
        assert origins == [0, 0, 0, 1, 1, 1]

    async def test_route_predicate(self) -> None:
        even, odd = sinks.collect("even"), sinks.collect("odd")
        plan, processed = await run(
            pipeline().route(fs.when(lambda r: async_is_even(r), even), otherwise=odd), inserts(4)
        )
        assert output(plan, processed, even)[1] == [0, 2]
        assert output(plan, processed, odd)[1] == [1, 3]


# -- route and to -----------------------------------------------------------------------


class TestRoute:
    @FLAVOURS
    async def test_the_first_matching_route_wins(self, flavour: Flavour) -> None:
        small, even, rest = sinks.collect("small"), sinks.collect("even"), sinks.collect("rest")
        records = inserts(6)
        plan, processed = await run(
            pipeline().route(
                fs.when(flavour(lambda r: r.keys["pk"] < 2), small),
                fs.when(flavour(is_even), even),
                otherwise=rest,
            ),
            records,
        )
        assert output(plan, processed, small) == ([records[0], records[1]], [0, 1])
        assert output(plan, processed, even) == ([records[2], records[4]], [2, 4])
        assert output(plan, processed, rest) == ([records[3], records[5]], [3, 5])
        assert processed.dropped == 0

    async def test_a_route_with_several_sinks_gives_each_the_element(self) -> None:
        a, b, rest = sinks.collect("a"), sinks.collect("b"), sinks.collect("rest")
        plan, processed = await run(
            pipeline().map(to_message).route(fs.when(is_even, a, b), otherwise=rest), inserts(4)
        )
        assert output(plan, processed, a)[1] == [0, 2]
        assert output(plan, processed, b)[1] == [0, 2]
        assert output(plan, processed, rest)[1] == [1, 3]

    async def test_several_otherwise_sinks_each_get_unmatched_elements(self) -> None:
        even, x, y = sinks.collect("even"), sinks.collect("x"), sinks.collect("y")
        plan, processed = await run(
            pipeline().route(fs.when(is_even, even), otherwise=[x, y]), inserts(3)
        )
        assert output(plan, processed, x)[1] == [1]
        assert output(plan, processed, y)[1] == [1]

    async def test_a_sink_in_two_routes_gets_each_element_once(self) -> None:
        shared, other = sinks.collect("shared"), sinks.collect("other")
        plan, processed = await run(
            pipeline().route(fs.when(is_even, shared), otherwise=[other, shared]), inserts(4)
        )
        assert plan.sinks == [shared, other]
        assert output(plan, processed, shared)[1] == [0, 1, 2, 3]
        assert output(plan, processed, other)[1] == [1, 3]

    async def test_a_sink_named_twice_in_one_route_gets_each_element_once(self) -> None:
        sink = sinks.collect()
        records = inserts(3)
        plan, processed = await run(pipeline().route(fs.when(is_even, sink, sink)), records)
        assert plan.sinks == [sink]
        assert processed.outputs == [([records[0], records[2]], [0, 2])]

    async def test_unmatched_elements_are_dropped_and_counted_without_otherwise(self) -> None:
        even = sinks.collect("even")
        plan, processed = await run(
            pipeline().flat_map(in_three).route(fs.when(is_even, even)), inserts(5)
        )
        assert output(plan, processed, even)[1] == [0, 0, 0, 2, 2, 2, 4, 4, 4]
        assert processed.dropped == 6
        assert processed.filtered == 0

    async def test_only_otherwise_sends_everything_there(self) -> None:
        sink = sinks.collect()
        plan, processed = await run(pipeline().route(otherwise=sink), inserts(3))
        assert output(plan, processed, sink)[1] == [0, 1, 2]
        assert processed.dropped == 0

    async def test_a_predicate_is_not_asked_about_elements_an_earlier_route_took(self) -> None:
        first, second = sinks.collect("first"), sinks.collect("second")
        later = FailAt(0, lambda x: True)  # would raise on record 0
        _, processed = await run(
            pipeline().route(fs.when(is_even, first), fs.when(later, second)), inserts(3)
        )
        assert processed.failure is None
        assert later.calls == [1]


class TestTo:
    async def test_every_sink_gets_every_element(self) -> None:
        a, b, c = sinks.collect("a"), sinks.collect("b"), sinks.collect("c")
        records = page(*MIXED)
        plan, processed = await run(
            pipeline().filter(events=["INSERT", "MODIFY"]).map(to_message).to(a, b, c), records
        )
        expected = ([to_message(records[i]) for i in (0, 1, 3, 4)], [0, 1, 3, 4])
        assert plan.sinks == [a, b, c]
        for sink in (a, b, c):
            assert output(plan, processed, sink) == expected
        assert (processed.filtered, processed.dropped) == (2, 0)

    async def test_a_sink_named_twice_is_one_output(self) -> None:
        sink = sinks.collect()
        records = inserts(2)
        plan, processed = await run(pipeline().to(sink, sink), records)
        assert plan.sinks == [sink]
        assert processed.outputs == [(records, [0, 1])]


# -- failures ---------------------------------------------------------------------------

POSITIONS = pytest.mark.parametrize("k", [0, 2, 5], ids=["first", "middle", "last"])


def assert_failed_at(
    processed: Processed, k: int, step: str, error: type[BaseException] = Boom
) -> None:
    failure = processed.failure
    assert failure is not None
    assert failure.record_index == k
    assert failure.step.startswith(step), failure.step
    assert isinstance(failure.error, error)


StepBuilder = Callable[[fs.Pipeline[Record], Callable[[Any], Any]], fs.Pipeline[Any]]

# (build, label of the failing step); `fail` raises for every element of record k.
FAILING_STEPS: dict[str, tuple[StepBuilder, str]] = {
    "filter": (lambda p, fail: p.filter(fail), "step 1: filter("),
    "filter-with-events": (
        lambda p, fail: p.filter(fail, events=["INSERT", "MODIFY"]),
        "step 1: filter(events=[INSERT, MODIFY], ",
    ),
    "map": (lambda p, fail: p.map(to_message).map(fail), "step 2: map("),
    "flat_map": (lambda p, fail: p.flat_map(in_three).flat_map(fail), "step 2: flat_map("),
    "map-after-flat_map": (lambda p, fail: p.flat_map(in_three).map(fail), "step 2: map("),
    "filter-after-event-filter": (
        lambda p, fail: p.filter(events=["INSERT", "MODIFY"]).filter(fail),
        "step 2: filter(",
    ),
}


class TestFailureInAStep:
    @POSITIONS
    @pytest.mark.parametrize("case", sorted(FAILING_STEPS))
    @FLAVOURS
    async def test_holds_back_the_failing_record_and_every_later_one(
        self, flavour: Flavour, case: str, k: int
    ) -> None:
        build, label = FAILING_STEPS[case]
        records = inserts(6)
        fail = FailAt(k, lambda x: [x] if case == "flat_map" else x)
        processed, values, origins = await run_to_one(lambda p: build(p, flavour(fail)), records)
        assert_failed_at(processed, k, label)
        assert set(origins) == set(range(k))
        assert_origins_line_up(values, origins)
        assert fail.calls[-1] == k  # nothing after the failing element was called

    @pytest.mark.parametrize(
        "build",
        [
            lambda p, fail: p.map(fail),
            lambda p, fail: p.filter(fail),
            lambda p, fail: p.flat_map(fail),
        ],
        ids=["map", "filter", "flat_map"],
    )
    async def test_the_step_label_names_the_function(self, build: StepBuilder) -> None:
        def check_price(element: Any) -> Any:
            raise Boom

        processed, _, _ = await run_to_one(
            lambda p: build(p.filter(events="INSERT"), check_price), inserts(1)
        )
        assert processed.failure is not None
        assert processed.failure.step.startswith("step 2: ")
        assert processed.failure.step.endswith("(check_price)")

    async def test_the_error_is_the_exception_the_function_raised(self) -> None:
        error = Boom("the very one")

        def fail(record: Record) -> None:
            raise error

        processed, _, _ = await run_to_one(lambda p: p.map(fail), inserts(2))
        assert processed.failure is not None
        assert processed.failure.error is error

    @FLAVOURS
    async def test_flat_map_holds_back_a_record_whose_elements_were_partly_produced(
        self, flavour: Flavour
    ) -> None:
        # Record 1 gives three elements; record 2's second element fails after its first
        # produced one.
        records = inserts(4)
        fail = FailAt(2, lambda m: [m, m], part=1)
        processed, values, origins = await run_to_one(
            lambda p: p.flat_map(in_three).flat_map(flavour(fail)), records
        )
        assert_failed_at(processed, 2, "step 2: flat_map(")
        assert origins == [0] * 6 + [1] * 6
        assert_origins_line_up(values, origins)

    async def test_flat_map_whose_generator_raises_midway_gives_none_of_its_elements(
        self,
    ) -> None:
        def parts(record: Record) -> Iterator[dict[str, Any]]:
            n = record.keys["pk"]
            yield {"n": n, "part": 0}
            if n == 2:
                raise Boom
            yield {"n": n, "part": 1}

        processed, values, origins = await run_to_one(lambda p: p.flat_map(parts), inserts(4))
        assert_failed_at(processed, 2, "step 1: flat_map(parts)")
        assert origins == [0, 0, 1, 1]
        assert_origins_line_up(values, origins)

    @FLAVOURS
    async def test_map_after_flat_map_holds_back_the_elements_of_the_record_before_it(
        self, flavour: Flavour
    ) -> None:
        fail = FailAt(1, part=2)
        processed, _, origins = await run_to_one(
            lambda p: p.flat_map(in_three).map(flavour(fail)), inserts(3)
        )
        assert_failed_at(processed, 1, "step 2: map(")
        assert origins == [0, 0, 0]

    async def test_a_base_exception_is_not_caught(self) -> None:
        def interrupt(record: Record) -> None:
            raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            await run_to_one(lambda p: p.map(interrupt), inserts(2))


class TestFailureCounts:
    """`filtered` and `dropped` only count records before the failing one: the runtime
    processes the held-back records again, and counts them then."""

    @pytest.mark.parametrize(
        ("k", "filtered"),
        [(0, 0), (1, 0), (3, 1), (5, 2)],
        ids=["k0", "k1", "k3", "k5"],
    )
    async def test_filtered_by_an_earlier_step(self, k: int, filtered: int) -> None:
        records = page("INSERT", "INSERT", "MODIFY", "INSERT", "MODIFY", "INSERT", "MODIFY")
        processed, _, origins = await run_to_one(
            lambda p: p.filter(events="INSERT").map(FailAt(k)), records
        )
        assert_failed_at(processed, k, "step 2: map(")
        assert processed.filtered == filtered
        assert origins == [i for i in (0, 1, 3) if i < k]

    @pytest.mark.parametrize(
        ("k", "filtered"),
        [(0, 0), (1, 1), (3, 2), (5, 3)],
        ids=["k0", "k1", "k3", "k5"],
    )
    async def test_filtered_by_the_failing_filter_itself(self, k: int, filtered: int) -> None:
        # Odd records are filtered out; record k (even or odd) raises.
        def keep_odd(record: Record) -> bool:
            return bool(record.keys["pk"] % 2 == 1)

        processed, _, origins = await run_to_one(
            lambda p: p.filter(FailAt(k, keep_odd)), inserts(7)
        )
        assert_failed_at(processed, k, "step 1: filter(")
        assert processed.filtered == filtered
        assert origins == [i for i in range(k) if i % 2 == 1]

    async def test_filtered_by_events_and_predicate_of_the_failing_filter(self) -> None:
        records = page("INSERT", "MODIFY", "INSERT", "MODIFY", "INSERT", "MODIFY")

        def is_first(record: Record) -> bool:
            return bool(record.keys["pk"] == 0)

        processed, _, origins = await run_to_one(
            lambda p: p.filter(FailAt(4, is_first), events="INSERT"), records
        )
        assert_failed_at(processed, 4, "step 1: filter(events=[INSERT], FailAt)")
        assert origins == [0]
        assert processed.filtered == 3  # records 1 and 3 by event, record 2 by predicate

    async def test_filtered_elements_of_a_partly_passed_record_are_not_counted(self) -> None:
        # Record 1's part 0 is filtered out, part 1 passes, part 2 raises.
        def keep(m: dict[str, Any]) -> bool:
            if m["n"] == 1 and m["part"] == 2:
                raise Boom
            return bool(m["part"])

        processed, _, origins = await run_to_one(
            lambda p: p.flat_map(in_three).filter(keep), inserts(3)
        )
        assert_failed_at(processed, 1, "step 2: filter(keep)")
        assert origins == [0, 0]
        assert processed.filtered == 1

    async def test_a_later_step_failing_at_an_earlier_record_moves_the_failure(self) -> None:
        # Step 1 keeps odd records and fails at record 4; step 2 fails at record 3.
        def keep_odd(record: Record) -> bool:
            return bool(record.keys["pk"] % 2 == 1)

        processed, _, origins = await run_to_one(
            lambda p: p.filter(FailAt(4, keep_odd)).map(FailAt(3)), inserts(6)
        )
        assert_failed_at(processed, 3, "step 2: map(")
        assert origins == [1]
        assert processed.filtered == 2  # records 0 and 2

    async def test_a_failure_at_the_first_record_of_a_later_step_leaves_nothing(self) -> None:
        def keep_odd(record: Record) -> bool:
            return bool(record.keys["pk"] % 2 == 1)

        processed, values, _ = await run_to_one(
            lambda p: p.filter(FailAt(4, keep_odd)).map(FailAt(1)), inserts(6)
        )
        assert_failed_at(processed, 1, "step 2: map(")
        assert values == []
        assert processed.filtered == 1  # record 0 only

    async def test_dropped_by_the_route(self) -> None:
        even = sinks.collect("even")
        plan, processed = await run(
            pipeline().map(FailAt(5)).route(fs.when(is_even, even)), inserts(8)
        )
        assert_failed_at(processed, 5, "step 1: map(")
        assert output(plan, processed, even)[1] == [0, 2, 4]
        assert processed.dropped == 2  # records 1 and 3


class TestCountsBefore:
    """`Processed.counts_before(k)`: what the runtime counts when a sink stops delivery
    at record k (the page's own counts are for all of it)."""

    @pytest.mark.parametrize(
        ("k", "counts"),
        [(0, (0, 0)), (1, (0, 0)), (2, (1, 0)), (4, (2, 0)), (5, (2, 0)), (6, (2, 1))],
        ids=["k0", "k1", "k2", "k4", "k5", "whole-page"],
    )
    async def test_counts_elements_of_earlier_records(
        self, k: int, counts: tuple[int, int]
    ) -> None:
        # Records 1 and 3 are filtered out by event; record 5 is dropped by the route.
        records = page("INSERT", "MODIFY", "INSERT", "MODIFY", "INSERT", "INSERT")
        _, processed = await run(
            pipeline().filter(events="INSERT").route(fs.when(is_even, sinks.collect())), records
        )
        assert (processed.filtered, processed.dropped) == (2, 1)
        assert processed.counts_before(k) == counts

    async def test_agrees_with_the_counts_of_a_failed_page(self) -> None:
        records = page("INSERT", "MODIFY", "INSERT", "MODIFY", "INSERT", "INSERT")
        _, processed = await run(
            pipeline().filter(events="INSERT").route(fs.when(FailAt(4, is_even), sinks.collect())),
            records,
        )
        assert processed.failure is not None
        assert processed.counts_before(processed.failure.record_index) == (2, 0)
        assert (processed.filtered, processed.dropped) == (2, 0)


class TestFailureInTheRoute:
    @POSITIONS
    @FLAVOURS
    async def test_a_route_predicate_holds_back_the_failing_record(
        self, flavour: Flavour, k: int
    ) -> None:
        even, odd = sinks.collect("even"), sinks.collect("odd")
        records = inserts(7)
        plan, processed = await run(
            pipeline().route(fs.when(flavour(FailAt(k, is_even)), even), otherwise=odd),
            records,
        )
        assert_failed_at(processed, k, "step 1: route")
        assert output(plan, processed, even)[1] == [i for i in range(k) if i % 2 == 0]
        assert output(plan, processed, odd)[1] == [i for i in range(k) if i % 2 == 1]
        for sink in (even, odd):
            assert_origins_line_up(*output(plan, processed, sink))

    async def test_the_step_label_names_the_route_and_its_predicate(self) -> None:
        def is_vip(record: Record) -> bool:
            raise Boom

        sink = sinks.collect()
        _, processed = await run(
            pipeline().map(to_message).route(fs.when(is_even, sink), fs.when(is_vip, sink)),
            inserts(2),
        )
        assert processed.failure is not None
        assert processed.failure.step == "step 2: route when is_vip"
        assert processed.failure.record_index == 1

    async def test_drops_are_counted_before_the_failing_record_only(self) -> None:
        even = sinks.collect("even")
        plan, processed = await run(
            pipeline().flat_map(in_three).route(fs.when(FailAt(3, is_even, part=1), even)),
            inserts(6),
        )
        assert_failed_at(processed, 3, "step 2: route")
        assert output(plan, processed, even)[1] == [0, 0, 0, 2, 2, 2]
        assert processed.dropped == 3  # record 1's three parts; not record 3's part 0

    async def test_filtered_is_counted_before_the_failing_record_only(self) -> None:
        sink = sinks.collect()
        records = page("INSERT", "MODIFY", "INSERT", "MODIFY", "INSERT")
        plan, processed = await run(
            pipeline().filter(events="INSERT").route(fs.when(FailAt(2), sink)), records
        )
        assert_failed_at(processed, 2, "step 2: route")
        assert output(plan, processed, sink)[1] == [0]
        assert processed.filtered == 1
        assert processed.dropped == 0

    async def test_a_route_failure_before_a_step_failure_wins(self) -> None:
        sink = sinks.collect()
        plan, processed = await run(
            pipeline().map(FailAt(4, to_message)).route(fs.when(FailAt(1, is_even), sink)),
            inserts(6),
        )
        assert_failed_at(processed, 1, "step 2: route")
        assert output(plan, processed, sink)[1] == [0]

    async def test_to_after_a_failing_step_gets_the_same_prefix_everywhere(self) -> None:
        a, b = sinks.collect("a"), sinks.collect("b")
        plan, processed = await run(pipeline().map(FailAt(2, to_message)).to(a, b), inserts(4))
        assert_failed_at(processed, 2, "step 1: map(")
        for sink in (a, b):
            assert output(plan, processed, sink)[1] == [0, 1]


class TestRetryingTheHeldBackRecords:
    """What the runtime does after a failure: process the held-back tail again. Counts
    over the two calls add up to those of one clean pass."""

    async def test_counts_add_up_over_a_failure_and_a_retry(self) -> None:
        records = page("INSERT", "MODIFY", "INSERT", "MODIFY", "INSERT", "REMOVE")
        failed: list[int] = []

        def flaky(record: Record) -> dict[str, Any]:
            if record.keys["pk"] == 2 and not failed:
                failed.append(2)
                raise Boom
            return to_message(record)

        even = sinks.collect("even")
        plan = pipeline().filter(events=["INSERT", "MODIFY"]).map(flaky)
        compiled = plan.route(fs.when(lambda m: m["n"] % 4 == 0, even)).compile()
        first = await compiled.process(records)
        assert first.failure is not None
        k = first.failure.record_index
        second = await compiled.process(records[k:])
        assert second.failure is None
        clean = await compiled.process(records)
        assert first.filtered + second.filtered == clean.filtered == 1
        assert first.dropped + second.dropped == clean.dropped == 3
        assert first.outputs[0][1] + [k + o for o in second.outputs[0][1]] == clean.outputs[0][1]
