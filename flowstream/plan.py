"""A pipeline's steps, compiled into one function that processes a whole page.

The runtime calls `Plan.process()` once per page (batches, not records, cross task
boundaries). Every element carries the index of the record it came from, so event
filters apply to the originating record after a `map`, sinks receive each value next to
its record, and a failure can be pinned to the first record it affects: elements of
earlier records go on, the failing record and everything after it are held back (order
is kept by never delivering past a failure).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import CoroutineType
from typing import Any

from flowstream.batching import Batching
from flowstream.callables import callable_name
from flowstream.concurrency import Concurrency, KeyFailure, keys_of
from flowstream.patterns import Pattern
from flowstream.policy import FailurePolicy
from flowstream.record import EventName, Record
from flowstream.record_view import lambda_view
from flowstream.sinks.base import Sink

__all__ = ["Filter", "FlatMap", "Map", "Plan", "Processed", "Route", "Step", "StepFailure"]


@dataclass(frozen=True, slots=True)
class Filter:
    predicate: Callable[[Any], Any] | None
    events: frozenset[EventName] | None
    is_async: bool = False
    policy: FailurePolicy | None = None
    #: filter patterns, ORed, matched against the originating record in Lambda's shape
    patterns: tuple[Pattern, ...] | None = None
    #: the opt-in that shows ``N`` values to the patterns as numbers
    n_as_numbers: bool = False

    def describe(self) -> str:
        parts = []
        if self.events is not None:
            parts.append("events=[" + ", ".join(sorted(self.events)) + "]")
        if self.patterns is not None:
            shown = [pattern.json() for pattern in self.patterns]
            parts.append("pattern=" + (shown[0] if len(shown) == 1 else f"[{', '.join(shown)}]"))
            if self.n_as_numbers:
                parts.append("n_as_numbers=True")
        if self.predicate is not None:
            parts.append(callable_name(self.predicate))
        return f"filter({', '.join(parts)})"


@dataclass(frozen=True, slots=True)
class Map:
    fn: Callable[[Any], Any]
    is_async: bool = False
    policy: FailurePolicy | None = None

    def describe(self) -> str:
        return f"map({callable_name(self.fn)})"


@dataclass(frozen=True, slots=True)
class FlatMap:
    fn: Callable[[Any], Any]
    is_async: bool = False
    policy: FailurePolicy | None = None

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
    """A user function raised: `record_index` is the first record held back;
    `position` is the step's index (the route's is the number of steps)."""

    record_index: int
    step: str
    error: BaseException
    position: int


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
    #: (record indices in, record indices out) of each filter step that ran
    filter_origins: list[tuple[list[int], list[int]]] = field(default_factory=list, repr=False)
    #: record index of each element the route dropped
    dropped_origins: list[int] = field(default_factory=list, repr=False)
    #: with per-key concurrency, each element's ordering key, per sink (as `outputs`)
    keys: list[list[Hashable]] | None = None

    def merged(self, then: Processed, offset: int) -> Processed:
        """This page's results followed by `then`'s, whose records come `offset` records
        later (a batching window delivers pages as one). Neither has a failure."""
        sinks = max(len(self.outputs), len(then.outputs))
        none: tuple[list[Any], list[int]] = ([], [])
        firsts = self.outputs or [none] * sinks
        thens = then.outputs or [none] * sinks
        outputs = [
            (values + more, origins + [o + offset for o in more_origins])
            for (values, origins), (more, more_origins) in zip(firsts, thens, strict=True)
        ]
        steps = max(len(self.filter_origins), len(then.filter_origins))
        filters = []
        for j in range(steps):
            kept_in, kept_out = self.filter_origins[j] if j < len(self.filter_origins) else ([], [])
            more_in, more_out = then.filter_origins[j] if j < len(then.filter_origins) else ([], [])
            filters.append(
                (kept_in + [o + offset for o in more_in], kept_out + [o + offset for o in more_out])
            )
        keys = None
        if self.keys is not None or then.keys is not None:
            firsts_keys = self.keys or [[] for _ in range(sinks)]
            thens_keys = then.keys or [[] for _ in range(sinks)]
            keys = [a + b for a, b in zip(firsts_keys, thens_keys, strict=True)]
        return Processed(
            outputs,
            self.filtered + then.filtered,
            self.dropped + then.dropped,
            None,
            filters,
            self.dropped_origins + [o + offset for o in then.dropped_origins],
            keys,
        )

    def counts_before(self, record_index: int) -> tuple[int, int]:
        """(filtered, dropped): how many elements of the records before `record_index`
        were filtered out and dropped by the route. What to count when delivery stops
        at that record; the records from it on are processed (and counted) again."""
        filtered = sum(
            bisect_left(kept_in, record_index) - bisect_left(kept_out, record_index)
            for kept_in, kept_out in self.filter_origins
        )
        return filtered, bisect_left(self.dropped_origins, record_index)


@dataclass(slots=True)
class Plan:
    """Compiled steps and route; `sinks` fixes the order of `Processed.outputs`."""

    steps: tuple[Step, ...]
    route: Route
    policy: FailurePolicy = field(default_factory=FailurePolicy)
    concurrency: Concurrency = field(default_factory=Concurrency)
    batching: Batching = field(default_factory=Batching)
    sinks: list[Sink] = field(init=False)
    #: `sinks`, then the dead-letter sinks that are not among them: what a run opens
    all_sinks: list[Sink] = field(init=False)
    #: what dead letters are delivered under: the pipeline's retries and backoff, with no
    #: dead-letter sink of its own and no age limit
    letter_policy: FailurePolicy = field(init=False)
    _positions: dict[int, int] = field(init=False)  # id(sink) -> index in all_sinks
    _routes: list[tuple[Callable[[Any], Any], list[int], bool]] = field(init=False)
    _otherwise: list[int] = field(init=False)

    def __post_init__(self) -> None:
        self.sinks = self.route.sinks()
        index = {id(sink): i for i, sink in enumerate(self.sinks)}
        self.all_sinks = list(self.sinks)
        for sink in self.dead_letter_sinks():
            if id(sink) not in index:
                self.all_sinks.append(sink)
        self._positions = {id(sink): i for i, sink in enumerate(self.all_sinks)}
        self.letter_policy = replace(self.policy, dead_letter=None, max_record_age=None)
        # A sink named twice in one route (`.to(s, s)`) still gets each element once.
        self._routes = [
            (pred, list(dict.fromkeys(index[id(s)] for s in sinks)), is_async)
            for pred, sinks, is_async in self.route.whens
        ]
        self._otherwise = list(dict.fromkeys(index[id(s)] for s in self.route.otherwise))

    def policy_at(self, position: int) -> FailurePolicy:
        """The failure policy of step `position`: its own, else the pipeline's."""
        if position < len(self.steps):
            own = self.steps[position].policy
            if own is not None:
                return own
        return self.policy

    def dead_letter_sinks(self) -> list[Sink]:
        """Every dead-letter sink the policies name, each once."""
        policies = [self.policy, *(step.policy for step in self.steps)]
        seen: dict[int, Sink] = {}
        for policy in policies:
            if policy is not None and policy.dead_letter is not None:
                seen.setdefault(id(policy.dead_letter), policy.dead_letter)
        return list(seen.values())

    def position_of(self, sink: Sink) -> int:
        """The index of `sink` in `all_sinks` (and in a run's writers)."""
        position = self._positions.get(id(sink))
        if position is None:
            raise ValueError(f"{sink.name} is not a sink of this plan")
        return position

    def step_label(self, position: int) -> str:
        if position == len(self.steps):
            return f"step {position + 1}: " + self.route.describe().split("\n")[0]
        return f"step {position + 1}: {self.steps[position].describe()}"

    async def process(self, records: Sequence[Record]) -> Processed:
        """Run every step over `records` (one shard's page, in order)."""
        values: list[Any] = list(records)
        origins: list[int] = list(range(len(records)))
        # (origins in, origins out) of each filter step that ran: the filtered count is
        # taken at the end, when it is known which records are held back (they are
        # processed again later and counted then, not twice).
        filters: list[tuple[list[int], list[int]]] = []
        failure: StepFailure | None = None
        for position, step in enumerate(self.steps):
            if not values:
                break
            try:
                if isinstance(step, Filter):
                    before = origins
                    values, origins = await _filter(step, records, values, origins)
                    filters.append((before, origins))
                elif isinstance(step, Map):
                    values = await _map(step, values, origins)
                else:
                    values, origins = await _flat_map(step, values, origins)
            except _ElementError as exc:
                # Origins never decrease, so holding back the failing record and all
                # after it is cutting a prefix; a later step can only fail earlier.
                record_index = exc.origin
                failure = StepFailure(record_index, self.step_label(position), exc.error, position)
                if isinstance(step, Filter):
                    filters.append((origins, exc.origins))
                cut = bisect_left(exc.origins, record_index)
                values, origins = exc.values[:cut], exc.origins[:cut]
        outputs: list[tuple[list[Any], list[int]]] = [([], []) for _ in self.sinks]
        dropped: list[int] = []
        if values:
            try:
                dropped = await self._route(values, origins, outputs)
            except _ElementError as exc:
                record_index = exc.origin
                label = f"{self.step_label(len(self.steps))} {exc.where}"
                failure = StepFailure(record_index, label, exc.error, len(self.steps))
                for i, (out_values, out_origins) in enumerate(outputs):
                    cut = bisect_left(out_origins, record_index)
                    outputs[i] = (out_values[:cut], out_origins[:cut])
                dropped = exc.origins
        keys: list[list[Hashable]] | None = None
        if self.concurrency.per_shard > 1:
            keys, key_failure = self._keys(records, outputs)
            if key_failure is not None:
                failure = key_failure
        processed = Processed(
            outputs, failure=failure, filter_origins=filters, dropped_origins=dropped, keys=keys
        )
        end = len(records) if failure is None else failure.record_index
        processed.filtered, processed.dropped = processed.counts_before(end)
        return processed

    def _keys(
        self, records: Sequence[Record], outputs: list[tuple[list[Any], list[int]]]
    ) -> tuple[list[list[Hashable]], StepFailure | None]:
        """Each output element's ordering key. Where a key cannot be had, the record is
        a failure of its own (label ``concurrency``), and the outputs are cut before it."""
        computed: dict[int, list[Hashable]] = {}  # fan-out sinks share their lists
        keys: list[list[Hashable]] = []
        first: tuple[int, BaseException] | None = None
        for values, origins in outputs:
            known = computed.get(id(values))
            if known is None:
                try:
                    known = keys_of(self.concurrency, values, origins, records)
                except KeyFailure as exc:
                    known = exc.keys
                    origin = origins[exc.index]
                    if first is None or origin < first[0]:
                        first = (origin, exc.error)
                computed[id(values)] = known
            keys.append(known)
        if first is None:
            return keys, None
        origin, error = first
        for i, (values, origins) in enumerate(outputs):
            cut = bisect_left(origins, origin)
            outputs[i] = (values[:cut], origins[:cut])
            keys[i] = keys[i][:cut]
        label = f"step {len(self.steps) + 1}: {self.concurrency.describe_key()}"
        return keys, StepFailure(origin, label, error, len(self.steps))

    async def _route(
        self,
        values: list[Any],
        origins: list[int],
        outputs: list[tuple[list[Any], list[int]]],
    ) -> list[int]:
        """Fill `outputs`; return the origins of the elements no route took."""
        if not self._routes:
            # .to() or a bare otherwise: every sink gets the same lists (read-only)
            for i in self._otherwise:
                outputs[i] = (values, origins)
            return [] if self._otherwise else origins
        dropped_origins: list[int] = []
        n = 0
        pred: Callable[[Any], Any] | None = None
        try:
            for n, value in enumerate(values):
                targets = self._otherwise
                for pred, sinks, is_async in self._routes:
                    matched = pred(value)
                    if is_async or type(matched) is CoroutineType:
                        matched = await matched
                    if matched:
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
            where = f"when {callable_name(pred)}" if pred is not None else ""
            raise _ElementError(origins[n], exc, [], dropped_origins, where) from exc
        return dropped_origins


class _ElementError(Exception):
    """A user function raised for an element of record `origin`; `values`/`origins`
    are the step's output for the elements before it; `where` narrows the step down
    (which route predicate)."""

    def __init__(
        self,
        origin: int,
        error: BaseException,
        values: list[Any],
        origins: list[int],
        where: str = "",
    ) -> None:
        self.origin = origin
        self.error = error
        self.values = values
        self.origins = origins
        self.where = where


async def _filter(
    step: Filter, records: Sequence[Record], values: list[Any], origins: list[int]
) -> tuple[list[Any], list[int]]:
    if step.events is not None:
        events = step.events
        keep = [i for i, o in enumerate(origins) if records[o].event_name in events]
        if len(keep) != len(values):
            values = [values[i] for i in keep]
            origins = [origins[i] for i in keep]
    if step.patterns is not None:
        values, origins = _match_patterns(step, records, values, origins)
    predicate = step.predicate
    if predicate is None:
        return values, origins
    kept_values: list[Any] = []
    kept_origins: list[int] = []
    n = 0
    is_async = step.is_async
    try:
        for n, value in enumerate(values):
            keep = predicate(value)
            if is_async or type(keep) is CoroutineType:
                keep = await keep
            if keep:
                kept_values.append(value)
                kept_origins.append(origins[n])
    except Exception as exc:
        raise _ElementError(origins[n], exc, kept_values, kept_origins) from exc
    return kept_values, kept_origins


def _match_patterns(
    step: Filter, records: Sequence[Record], values: list[Any], origins: list[int]
) -> tuple[list[Any], list[int]]:
    patterns = step.patterns or ()
    numbers = step.n_as_numbers
    verdicts: dict[int, bool] = {}  # per record: the elements of one record share it
    kept_values: list[Any] = []
    kept_origins: list[int] = []
    for value, origin in zip(values, origins, strict=True):
        verdict = verdicts.get(origin)
        if verdict is None:
            view = lambda_view(records[origin], numbers=numbers)
            try:
                verdict = any(pattern.matches(view) for pattern in patterns)
            except Exception as exc:  # a record that cannot be read: the failure policy's
                raise _ElementError(origin, exc, kept_values, kept_origins) from exc
            verdicts[origin] = verdict
        if verdict:
            kept_values.append(value)
            kept_origins.append(origin)
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
                result = fn(value)
                if type(result) is CoroutineType:
                    result = await result
                append(result)
    except Exception as exc:
        raise _ElementError(origins[len(out)], exc, out, origins[: len(out)]) from exc
    return out


async def _flat_map(
    step: FlatMap, values: list[Any], origins: list[int]
) -> tuple[list[Any], list[int]]:
    fn = step.fn
    out: list[Any] = []
    out_origins: list[int] = []
    is_async = step.is_async
    n = 0
    try:
        for n, value in enumerate(values):
            produced = fn(value)
            if is_async or type(produced) is CoroutineType:
                produced = await produced
            items = produced if type(produced) is list else _elements(produced)
            out.extend(items)
            out_origins.extend([origins[n]] * len(items))
    except Exception as exc:
        raise _ElementError(origins[n], exc, out, out_origins) from exc
    return out, out_origins


def _elements(produced: object) -> list[Any]:
    """What a flat_map function returned, as a list of elements. A str, bytes or mapping
    is iterable, but its characters, ints or keys are never the elements meant: that
    is `return element` written for `return [element]`."""
    if isinstance(produced, Iterable) and not isinstance(
        produced, str | bytes | bytearray | Mapping
    ):
        return list(produced)
    raise TypeError(
        f"flat_map function returned {type(produced).__name__}, not a list of elements; "
        "return a list (or another iterable) of elements: [element] for one, [] for none"
    )
