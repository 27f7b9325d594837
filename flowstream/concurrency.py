"""Per-key concurrency inside a shard (`Pipeline.concurrency()`).

A shard's elements keep their order only where order matters: between elements of one
key. Each page's elements for a sink are grouped by key, and up to `per_shard` groups
are delivered at once; one key's elements go in order, in one group, so two elements of
a key are never in flight together. The key defaults to the keys of the record an
element came from (the item's primary key), as Lambda's ParallelizationFactor does.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

from flowstream.callables import callable_name
from flowstream.errors import PipelineError
from flowstream.record import Record

__all__ = [
    "Concurrency",
    "ConcurrencyKeyError",
    "KeyFailure",
    "group_by_key",
    "keys_of",
    "record_key",
]

#: The most groups of one shard in flight at once (Lambda's ParallelizationFactor stops at 10).
MAX_PER_SHARD = 1000


@dataclass(frozen=True, slots=True)
class Concurrency:
    """Up to `per_shard` elements (sink batches of one key) of a shard in flight;
    `key(element)` gives an element's ordering key (None: its record's keys)."""

    per_shard: int = 1
    key: Callable[[Any], Hashable] | None = None

    def __post_init__(self) -> None:
        per_shard = self.per_shard
        if (
            isinstance(per_shard, bool)
            or not isinstance(per_shard, int)
            or not 1 <= per_shard <= MAX_PER_SHARD
        ):
            raise PipelineError(
                f".concurrency() got per_shard={per_shard!r}; give a whole number from 1 "
                f"(one element of a shard at a time) to {MAX_PER_SHARD}, e.g. "
                ".concurrency(10)"
            )
        if self.key is not None and not callable(self.key):
            raise PipelineError(
                f".concurrency() got key={type(self.key).__name__}, which is not callable; "
                "pass a function of the element that returns its ordering key, e.g. "
                "key=lambda m: m['user_id']"
            )

    def describe(self) -> str:
        by = "the record's keys" if self.key is None else callable_name(self.key)
        return f"concurrency: up to {self.per_shard} per shard, in order per key ({by})"

    def describe_key(self) -> str:
        """The step a key function's failure is reported at."""
        return f"concurrency(key={callable_name(self.key) if self.key else 'keys'})"


class ConcurrencyKeyError(Exception):
    """The key function raised for an element, or returned something unhashable. Not
    retryable when it is the latter: the same element gets the same key every time."""

    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


def record_key(record: Record) -> Hashable:
    """A record's keys as one hashable value."""
    return tuple(sorted(record.keys.items()))


def keys_of(
    concurrency: Concurrency,
    values: Sequence[Any],
    origins: Sequence[int],
    records: Sequence[Record],
) -> list[Hashable]:
    """Each element's ordering key. Raises `KeyFailure` at the first element whose key
    cannot be had."""
    fn = concurrency.key
    if fn is None:
        by_record: dict[int, Hashable] = {}
        out: list[Hashable] = []
        for origin in origins:
            key = by_record.get(origin)
            if key is None:
                key = by_record[origin] = record_key(records[origin])
            out.append(key)
        return out
    keys: list[Hashable] = []
    name = callable_name(fn)
    for n, value in enumerate(values):
        try:
            key = fn(value)
        except Exception as exc:
            raise KeyFailure(
                n,
                ConcurrencyKeyError(
                    f"concurrency key {name} raised {type(exc).__name__}: {exc}", retryable=True
                ),
                keys,
            ) from exc
        try:
            hash(key)
        except TypeError:
            raise KeyFailure(
                n,
                ConcurrencyKeyError(
                    f"concurrency key {name} returned {type(key).__name__}, which is not "
                    "hashable; return a str, a number or a tuple of them",
                    retryable=False,
                ),
                keys,
            ) from None
        keys.append(key)
    return keys


class KeyFailure(Exception):
    """The key of element `index` could not be had; `keys` are those before it."""

    def __init__(
        self, index: int, error: ConcurrencyKeyError, keys: list[Hashable] | None = None
    ) -> None:
        self.index = index
        self.error = error
        self.keys = keys or []


def group_by_key(keys: Sequence[Hashable]) -> list[list[int]]:
    """Element indices grouped by key, groups in the order their first element comes,
    each group in order."""
    groups: dict[Hashable, list[int]] = {}
    for i, key in enumerate(keys):
        group = groups.get(key)
        if group is None:
            groups[key] = [i]
        else:
            group.append(i)
    return list(groups.values())
