"""A pipeline's steps, compiled into one function that processes a whole page.

The runtime calls `Plan.process()` once per page (batches, not records, cross task
boundaries). Every element carries the index of the record it came from, so event
filters apply to the originating record after a `map`, sinks receive each value next to
its record, and a failure can be pinned to the first record it affects: elements of
earlier records go on, the failing record and everything after it are held back (order
is kept by never delivering past a failure).
"""

from __future__ import annotations

import inspect
from bisect import bisect_left
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from flowstream.record import EventName, Record
from flowstream.sinks.base import Sink

__all__ = ["Filter", "FlatMap", "Map", "Plan", "Processed", "Route", "Step", "StepFailure"]


def is_async_callable(fn: Callable[..., Any]) -> bool:
    """True for `async def` functions, async callable objects and partials of either."""
    if inspect.iscoroutinefunction(fn):
        return True
    call = getattr(fn, "__call__", None)  # noqa: B004 - looking for an async __call__
    return call is not None and inspect.iscoroutinefunction(call)


def callable_name(fn: Callable[..., Any]) -> str:
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None)
    return name if isinstance(name, str) else type(fn).__name__


@dataclass(frozen=True, slots=True)
class Filter:
    predicate: Callable[[Any], Any] | None
    events: frozenset[EventName] | None
    is_async: bool = False

    def describe(self) -> str:
        parts = []
        if self.events is not None:
            parts.append("events=[" + ", ".join(sorted(self.events)) + "]")
        if self.predicate is not None:
            parts.append(callable_name(self.predicate))
        return f"filter({', '.join(parts)})"


@dataclass(frozen=True, slots=True)
class Map:
    fn: Callable[[Any], Any]
    is_async: bool = False

    def describe(self) -> str:
        return f"map({callable_name(self.fn)})"


@dataclass(frozen=True, slots=True)
class FlatMap:
    fn: Callable[[Any], Any]
    is_async: bool = False

    def describe(self) -> str:
        return f"flat_map({callable_name(self.fn)})"


@dataclass(frozen=True, slots=True)
class Route:
    """The end of a pipeline: `when` routes (first match wins) and `otherwise` sinks.
    `.to(*sinks)` is a route with no conditions whose `otherwise` is every sink."""

    whens: tuple[tuple[Callable[[Any], Any], tuple[Sink, ...], bool], ...]
    otherwise: tuple[Sink, ...]
    fan_out: bool = False  # built by .to()

    def sinks(self) -> list[Sink]:
        seen: dict[int, Sink] = {}
        for _, sinks, _ in self.whens:
            for sink in sinks:
                seen.setdefault(id(sink), sink)
        for sink in self.otherwise:
            seen.setdefault(id(sink), sink)
        return list(seen.values())

    def describe(self) -> str:
        if self.fan_out:
            return "to(" + ", ".join(s.name for s in self.otherwise) + ")"
        lines = ["route"]
        for predicate, sinks, _ in self.whens:
            names = ", ".join(s.name for s in sinks)
            lines.append(f"     when {callable_name(predicate)} -> {names}")
        otherwise = ", ".join(s.name for s in self.otherwise) or "drop (counted)"
        lines.append(f"     otherwise -> {otherwise}")
        return "\n".join(lines)


Step = Filter | Map | FlatMap


@dataclass(slots=True)
class StepFailure:
    """A user function raised: `record_index` is the first record held back."""

    record_index: int
    step: str
    error: BaseException


@dataclass(slots=True)
class Processed:
    """The result of running the plan over one page.

    `outputs[i]` is (values, record indices) for sink i of `Plan.sinks`; when `failure`
    is set, only elements of records before `failure.record_index` are in it.
    """

    outputs: list[tuple[list[Any], list[int]]]
    filtered: int = 0
    dropped: int = 0
    failure: StepFailure | None = None


@dataclass(slots=True)
class Plan:
    """Compiled steps and route; `sinks` fixes the order of `Processed.outputs`."""

    steps: tuple[Step, ...]
    route: Route
    sinks: list[Sink] = field(init=False)
    _routes: list[tuple[Callable[[Any], Any], list[int], bool]] = field(init=False)
    _otherwise: list[int] = field(init=False)

    def __post_init__(self) -> None:
        self.sinks = self.route.sinks()
        index = {id(sink): i for i, sink in enumerate(self.sinks)}
        self._routes = [
            (pred, [index[id(s)] for s in sinks], is_async)
            for pred, sinks, is_async in self.route.whens
        ]
        self._otherwise = [index[id(s)] for s in self.route.otherwise]

    def step_label(self, position: int) -> str:
        if position == len(self.steps):
            return f"step {position + 1}: " + self.route.describe().split("\n")[0]
        return f"step {position + 1}: {self.steps[position].describe()}"

    async def process(self, records: Sequence[Record]) -> Processed:
        """Run every step over `records` (one shard's page, in order)."""
        values: list[Any] = list(records)
        origins: list[int] = list(range(len(records)))
        filtered = 0
        failure: StepFailure | None = None
        for position, step in enumerate(self.steps):
            if not values:
                break
            try:
                if isinstance(step, Filter):
                    before = len(values)
                    values, origins = await _filter(step, records, values, origins)
                    filtered += before - len(values)
                elif isinstance(step, Map):
                    values = await _map(step, values, origins)
                else:
                    values, origins = await _flat_map(step, values, origins)
            except _ElementError as exc:
                # Origins never decrease, so holding back the failing record and all
                # after it is cutting a prefix; a later step can only fail earlier.
                record_index = exc.origin
                failure = StepFailure(record_index, self.step_label(position), exc.error)
                if isinstance(step, Filter):
                    filtered += bisect_left(origins, record_index) - bisect_left(
                        exc.origins, record_index
                    )
                cut = bisect_left(exc.origins, record_index)
                values, origins = exc.values[:cut], exc.origins[:cut]
        outputs: list[tuple[list[Any], list[int]]] = [([], []) for _ in self.sinks]
        dropped = 0
        if values:
            try:
                dropped = await self._route(values, origins, outputs)
            except _ElementError as exc:
                record_index = exc.origin
                failure = StepFailure(record_index, self.step_label(len(self.steps)), exc.error)
                for i, (out_values, out_origins) in enumerate(outputs):
                    cut = bisect_left(out_origins, record_index)
                    outputs[i] = (out_values[:cut], out_origins[:cut])
                dropped = sum(1 for origin in exc.origins if origin < record_index)
        return Processed(outputs, filtered, dropped, failure)

    async def _route(
        self,
        values: list[Any],
        origins: list[int],
        outputs: list[tuple[list[Any], list[int]]],
    ) -> int:
        """Fill `outputs`; return how many elements no route took."""
        if not self._routes:
            # .to() or a bare otherwise: every sink gets the same lists (read-only)
            for i in self._otherwise:
                outputs[i] = (values, origins)
            return 0 if self._otherwise else len(values)
        dropped_origins: list[int] = []
        n = 0
        try:
            for n, value in enumerate(values):
                targets = self._otherwise
                for pred, sinks, is_async in self._routes:
                    if await pred(value) if is_async else pred(value):
                        targets = sinks
                        break
                origin = origins[n]
                if not targets:
                    dropped_origins.append(origin)
                for i in targets:
                    out_values, out_origins = outputs[i]
                    out_values.append(value)
                    out_origins.append(origin)
        except Exception as exc:
            raise _ElementError(origins[n], exc, [], dropped_origins) from exc
        return len(dropped_origins)


class _ElementError(Exception):
    """A user function raised for an element of record `origin`; `values`/`origins`
    are the step's output for the elements before it."""

    def __init__(
        self, origin: int, error: BaseException, values: list[Any], origins: list[int]
    ) -> None:
        self.origin = origin
        self.error = error
        self.values = values
        self.origins = origins


async def _filter(
    step: Filter, records: Sequence[Record], values: list[Any], origins: list[int]
) -> tuple[list[Any], list[int]]:
    if step.events is not None:
        events = step.events
        keep = [i for i, o in enumerate(origins) if records[o].event_name in events]
        if len(keep) != len(values):
            values = [values[i] for i in keep]
            origins = [origins[i] for i in keep]
    predicate = step.predicate
    if predicate is None:
        return values, origins
    kept_values: list[Any] = []
    kept_origins: list[int] = []
    n = 0
    try:
        for n, value in enumerate(values):
            if await predicate(value) if step.is_async else predicate(value):
                kept_values.append(value)
                kept_origins.append(origins[n])
    except Exception as exc:
        raise _ElementError(origins[n], exc, kept_values, kept_origins) from exc
    return kept_values, kept_origins


async def _map(step: Map, values: list[Any], origins: list[int]) -> list[Any]:
    fn = step.fn
    out: list[Any] = []
    append = out.append
    try:
        if step.is_async:
            for value in values:
                append(await fn(value))
        else:
            for value in values:
                append(fn(value))
    except Exception as exc:
        raise _ElementError(origins[len(out)], exc, out, origins[: len(out)]) from exc
    return out


async def _flat_map(
    step: FlatMap, values: list[Any], origins: list[int]
) -> tuple[list[Any], list[int]]:
    fn = step.fn
    out: list[Any] = []
    out_origins: list[int] = []
    n = 0
    try:
        for n, value in enumerate(values):
            produced = await fn(value) if step.is_async else fn(value)
            items = list(produced) if isinstance(produced, Iterable) else _not_iterable(produced)
            out.extend(items)
            out_origins.extend([origins[n]] * len(items))
    except Exception as exc:
        raise _ElementError(origins[n], exc, out, out_origins) from exc
    return out, out_origins


def _not_iterable(produced: object) -> list[Any]:
    raise TypeError(
        f"flat_map function returned {type(produced).__name__}, not an iterable; "
        "return a list (or any iterable) of elements, [] for none"
    )
