"""Lambda and EventBridge filter patterns: `compile(pattern)` once, then
`Pattern.matches(event)` per event.

The grammar and the matching rules are AWS's (aws/event-ruler's README is the
reference): a pattern is an object whose keys are ANDed; a key holds either a nested
object or an array of leaf conditions, ORed. An array in the event matches when any of
its elements does, and objects inside event arrays are matched one element at a time
(two fields never match in two different elements). Numbers compare as numbers, in exact
matches too (``300``, ``300.0`` and ``3.0e2`` are equal): that is what event-ruler, the
engine behind both services, does, though Lambda's page says they differ; a number never
equals a string. ``numeric`` compares JSON numbers only, as IEEE-754 doubles.

Invalid patterns raise `PatternError` from `compile()`, naming the path and the rule.
"""

from __future__ import annotations

import ipaddress
import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, cast, final

from flowstream.errors import PipelineError

__all__ = ["Pattern", "PatternError", "compile", "to_json"]


class PatternError(PipelineError):
    """A filter pattern that AWS would refuse: the message names the path and the rule."""


#: A test of one present leaf value of the event (a str, number, bool or None).
_Test = Callable[[object], bool]

_MISSING: Final = object()
_NUMERIC_OPS: Final = ("=", "<", "<=", ">", ">=")
_OPERATORS: Final = frozenset(
    {
        "prefix",
        "suffix",
        "equals-ignore-case",
        "wildcard",
        "anything-but",
        "numeric",
        "exists",
        "cidr",
        "exactly",
    }
)
#: Keys that make an array under "$or" conditions of a field named "$or", not patterns.
_RESERVED: Final = _OPERATORS | {"=", "<", "<=", ">", ">="}


class _Number(float):
    """A number of a pattern given as JSON text, with that text kept: exact matching
    compares numbers as Lambda does, by their JSON text."""

    text: str

    def __new__(cls, text: str) -> _Number:
        number = super().__new__(cls, text)
        number.text = text
        return number


def to_json(value: object) -> str:
    """Compact JSON text of a pattern (or part of one), numbers written as they were
    given: Lambda compares numbers by their text, so 3.0e2 must stay 3.0e2."""
    if isinstance(value, _Number):
        return value.text
    if isinstance(value, Mapping):
        return "{" + ",".join(f"{json.dumps(k)}:{to_json(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ",".join(to_json(v) for v in value) + "]"
    return json.dumps(value)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _as_double(value: object) -> float | None:
    """A JSON number of the event as a finite double, else None (strings, booleans, and
    numbers a double cannot hold never match a number)."""
    if not _is_number(value):
        return None
    try:
        number = float(value)  # type: ignore[arg-type]
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


@dataclass(frozen=True, slots=True)
class _Leaf:
    """The ORed conditions of one key; `absent` says whether a missing key (or one
    holding an object: conditions apply to leaves only) matches."""

    strings: frozenset[str]  # the exact strings: one set lookup (the common case)
    tests: tuple[_Test, ...]  # every other condition
    absent: bool
    present: bool  # an `exists: true` among the conditions

    def matches(self, value: object) -> bool:
        cls = value.__class__
        if cls is str:  # the hot path: checks by type, not isinstance against an ABC
            return self.present or value in self.strings or self._tested(value)
        if cls is dict or value is _MISSING:
            return self.absent
        if cls is list:
            leaves = list(_leaves(value))  # type: ignore[arg-type]
            if not leaves:
                return self.absent
            return self.present or any(self._one(v) for v in leaves)
        if isinstance(value, Mapping):
            return self.absent
        return self.present or self._tested(value)

    def _one(self, value: object) -> bool:
        return (value.__class__ is str and value in self.strings) or self._tested(value)

    def _tested(self, value: object) -> bool:
        return any(test(value) for test in self.tests) if self.tests else False


def _leaves(values: Sequence[object]) -> Any:
    for value in values:
        if isinstance(value, list):
            yield from _leaves(value)
        elif not isinstance(value, Mapping):
            yield value


def _objects(values: Sequence[object]) -> Any:
    for value in values:
        if isinstance(value, list):
            yield from _objects(value)
        elif isinstance(value, Mapping):
            yield value


@dataclass(frozen=True, slots=True)
class _Object:
    fields: tuple[tuple[str, _Leaf | _Object], ...]
    ors: tuple[tuple[_Object, ...], ...]

    def matches(self, event: object, siblings: Sequence[Mapping[str, object]] = ()) -> bool:
        """`siblings`: the objects of the event array `event` is an element of."""
        if event.__class__ is not dict:
            if isinstance(event, list):  # objects in an array: one element at a time
                objects = list(_objects(event))
                if not objects:
                    return self.matches({})
                return any(self.matches(one, objects) for one in objects)
            if not isinstance(event, Mapping):
                event = {}  # missing, or a leaf: only `exists: false` below can match
        mapping = cast(Mapping[str, object], event)
        for key, condition in self.fields:
            value = mapping.get(key, _MISSING)
            if not condition.matches(value):
                return False
            if (
                siblings
                and value is _MISSING
                and isinstance(condition, _Leaf)
                and condition.absent
                and any(_has_leaf(one.get(key, _MISSING)) for one in siblings)
            ):
                return False  # absence is decided over the whole array (event-ruler)
        return all(any(alt.matches(mapping, siblings) for alt in alts) for alts in self.ors)


def _has_leaf(value: object) -> bool:
    if value is _MISSING or isinstance(value, Mapping):
        return False
    if isinstance(value, list):
        return any(True for _ in _leaves(value))
    return True


@final
class Pattern:
    """A compiled filter pattern; build it with `compile()`."""

    __slots__ = ("_root", "source")

    def __init__(self, root: _Object, source: Mapping[str, Any]) -> None:
        self._root = root
        #: the pattern as given (a mapping), e.g. to write it back as JSON
        self.source = source

    def matches(self, event: Mapping[str, Any]) -> bool:
        """True when `event` (a parsed JSON object) matches the pattern."""
        return self._root.matches(event)

    def json(self) -> str:
        """The pattern as compact JSON text (numbers as they were written)."""
        return to_json(self.source)

    def __repr__(self) -> str:
        return f"Pattern({self.json()})"


def compile(pattern: Mapping[str, Any] | str) -> Pattern:
    """Compile `pattern` (a mapping, or JSON text) once; raises `PatternError` naming
    the path and the rule broken when AWS would refuse it."""
    if isinstance(pattern, str | bytes):
        try:
            parsed = json.loads(pattern, parse_float=_Number, parse_int=_Number)
        except json.JSONDecodeError as exc:
            raise PatternError(f"the filter pattern is not JSON: {exc}") from None
    else:
        parsed = pattern
    if not isinstance(parsed, Mapping) or not parsed:
        raise PatternError(
            "a filter pattern is a JSON object with at least one key, such as "
            '{"eventName": ["INSERT"]}'
        )
    return Pattern(_compile_object(parsed, ""), parsed)


def _where(path: str) -> str:
    return f"at {path}" if path else "at the top"


def _compile_object(obj: Mapping[str, Any], path: str) -> _Object:
    fields: list[tuple[str, _Leaf | _Object]] = []
    ors: list[tuple[_Object, ...]] = []
    for key, value in obj.items():
        if not isinstance(key, str):
            raise PatternError(f"{_where(path)}: key {key!r} is not a string")
        here = f"{path}.{key}" if path else key
        if key == "$or" and _is_or(value):
            if len(value) < 2 or not all(v for v in value):
                raise PatternError(
                    f"{here}: $or needs an array of at least two non-empty objects, each a "
                    "pattern of its own"
                )
            ors.append(tuple(_compile_object(v, path) for v in value))
        elif isinstance(value, Mapping):
            if not value:
                raise PatternError(f"{here}: an empty object matches nothing; remove the key")
            if _OPERATORS & set(value):
                raise PatternError(
                    f"{here}: an operator ({', '.join(sorted(_OPERATORS & set(value)))}) must "
                    'be inside an array, e.g. {"' + key + '": [{"prefix": "x"}]}'
                )
            fields.append((key, _compile_object(value, here)))
        elif isinstance(value, list):
            fields.append((key, _compile_leaf(value, here)))
        else:
            raise PatternError(
                f"{here}: a value must be an array of conditions or an object, not "
                f"{json.dumps(value, default=float)}; write [{json.dumps(value, default=float)}]"
            )
    return _Object(tuple(fields), tuple(ors))


def _is_or(value: object) -> bool:
    """An `$or` holds patterns: objects without an operator among their keys, at any
    depth (otherwise event-ruler reads `$or` as a field name)."""
    return (
        isinstance(value, list)
        and bool(value)
        and all(isinstance(v, Mapping) and not _has_reserved(v) for v in value)
    )


def _has_reserved(obj: Mapping[str, Any]) -> bool:
    for key, value in obj.items():
        if key in _RESERVED:
            return True
        if isinstance(value, Mapping) and _has_reserved(value):
            return True
        if (
            key == "$or"
            and isinstance(value, list)
            and any(isinstance(v, Mapping) and _has_reserved(v) for v in value)
        ):
            return True
    return False


def _compile_leaf(values: list[Any], path: str) -> _Leaf:
    if not values:
        raise PatternError(f"{path}: an empty array matches nothing")
    strings: set[str] = set()
    tests: list[_Test] = []
    absent = present = False
    for value in values:
        if isinstance(value, Mapping):
            if len(value) != 1:
                raise PatternError(
                    f"{path}: a condition object holds exactly one operator, not "
                    f"{sorted(value) or 'none'}"
                )
            ((op, arg),) = value.items()
            if op == "exists":
                if not isinstance(arg, bool):
                    raise PatternError(f"{path}: exists takes true or false, not {arg!r}")
                if arg:
                    present = True
                else:
                    absent = True
                continue
            tests.append(_compile_operator(op, arg, path))
        elif isinstance(value, list):
            raise PatternError(f"{path}: arrays do not nest in a pattern")
        elif isinstance(value, str):
            strings.add(value)
        else:
            tests.append(_exact(value))
    return _Leaf(frozenset(strings), tuple(tests), absent, present)


def _exact(expected: object) -> _Test:
    """A null, boolean or number (exact strings are a `_Leaf`'s set)."""
    if expected is None or isinstance(expected, bool):
        return lambda v: v is expected
    number = _as_double(expected)
    if number is None:
        raise PatternError(f"{expected!r} is not a JSON value a double can hold")
    return lambda v: _as_double(v) == number


def _string_arg(op: str, arg: object, path: str) -> str:
    if not isinstance(arg, str):
        raise PatternError(f"{path}: {op} takes a string, not {json.dumps(arg, default=float)}")
    return arg


def _compile_operator(op: str, arg: Any, path: str) -> _Test:
    if op in ("prefix", "suffix"):
        if isinstance(arg, Mapping):
            if set(arg) != {"equals-ignore-case"}:
                raise PatternError(
                    f'{path}: {op} takes a string or {{"equals-ignore-case": string}}'
                )
            folded = _string_arg(f"{op} equals-ignore-case", arg["equals-ignore-case"], path)
            folded = folded.lower()
            if op == "prefix":
                return lambda v: isinstance(v, str) and v.lower().startswith(folded)
            return lambda v: isinstance(v, str) and v.lower().endswith(folded)
        text = _string_arg(op, arg, path)
        if op == "prefix":
            return lambda v: isinstance(v, str) and v.startswith(text)
        return lambda v: isinstance(v, str) and v.endswith(text)
    if op == "equals-ignore-case":
        folded = _string_arg(op, arg, path).lower()
        return lambda v: isinstance(v, str) and v.lower() == folded
    if op == "wildcard":
        regex = _wildcard(_string_arg(op, arg, path), path)
        return lambda v: isinstance(v, str) and regex.fullmatch(v) is not None
    if op == "numeric":
        return _numeric(arg, path)
    if op == "exactly":  # event-ruler's explicit exact match
        text = _string_arg(op, arg, path)
        return lambda v: v == text
    if op == "cidr":
        try:
            network = ipaddress.ip_network(_string_arg(op, arg, path), strict=False)
        except ValueError as exc:
            raise PatternError(f"{path}: cidr {arg!r} is not an IP range: {exc}") from None
        if "/" not in arg or network.prefixlen == network.max_prefixlen:
            raise PatternError(
                f"{path}: cidr {arg!r} must be a range with fewer than "
                f"{network.max_prefixlen} mask bits (as 10.0.0.0/24); match one address "
                "exactly instead"
            )
        return lambda v: _in_network(v, network)
    if op == "anything-but":
        return _anything_but(arg, path)
    raise PatternError(
        f"{path}: unknown operator {op!r}; the operators are " + ", ".join(sorted(_OPERATORS))
    )


def _in_network(value: object, network: ipaddress.IPv4Network | ipaddress.IPv6Network) -> bool:
    if not isinstance(value, str):
        return False
    try:
        return ipaddress.ip_address(value) in network
    except ValueError:
        return False


def _wildcard(text: str, path: str) -> re.Pattern[str]:
    parts: list[str] = []
    i = 0
    while i < len(text):
        char = text[i]
        if char == "\\":
            following = text[i + 1 : i + 2]
            if following not in ("*", "\\"):
                raise PatternError(
                    f"{path}: wildcard {text!r} has an escape other than \\* or \\\\"
                )
            parts.append(re.escape(following))
            i += 2
            continue
        if char == "*":
            if text[i + 1 : i + 2] == "*":
                raise PatternError(f"{path}: wildcard {text!r} has consecutive * characters")
            parts.append(".*")
        else:
            parts.append(re.escape(char))
        i += 1
    return re.compile("".join(parts), re.DOTALL)


def _numeric(arg: object, path: str) -> _Test:
    if not isinstance(arg, list) or len(arg) not in (2, 4):
        raise PatternError(
            f'{path}: numeric takes [op, number] or a range [">", low, "<=", high], not '
            f"{json.dumps(arg, default=float)}"
        )
    bounds: list[tuple[str, float]] = []
    for op, number in zip(arg[::2], arg[1::2], strict=True):
        if op not in _NUMERIC_OPS:
            raise PatternError(
                f"{path}: numeric operator {op!r} is not one of {', '.join(_NUMERIC_OPS)}"
            )
        bound = _as_double(number)
        if bound is None:
            raise PatternError(
                f"{path}: numeric {op} needs a number a double can hold, not {number!r}"
            )
        bounds.append((op, bound))
    if len(bounds) == 2:
        (low_op, low), (high_op, high) = bounds
        if low_op not in (">", ">=") or high_op not in ("<", "<=") or low >= high:
            raise PatternError(
                f"{path}: a numeric range is a lower bound (> or >=) then a higher upper "
                f"bound (< or <=), not {json.dumps(arg, default=float)}"
            )

    def test(value: object) -> bool:
        number = _as_double(value)
        if number is None:
            return False
        return all(_compare(number, op, bound) for op, bound in bounds)

    return test


def _compare(value: float, op: str, bound: float) -> bool:
    if op == "=":
        return value == bound
    if op == "<":
        return value < bound
    if op == "<=":
        return value <= bound
    if op == ">":
        return value > bound
    return value >= bound


def _anything_but(arg: Any, path: str) -> _Test:
    if isinstance(arg, Mapping):
        if len(arg) != 1 or next(iter(arg)) not in (
            "prefix",
            "suffix",
            "equals-ignore-case",
            "wildcard",
        ):
            raise PatternError(
                f"{path}: anything-but wraps one of prefix, suffix, equals-ignore-case or "
                f"wildcard, not {sorted(arg)}"
            )
        ((op, inner),) = arg.items()
        values = inner if isinstance(inner, list) else [inner]
        if not values:
            raise PatternError(f"{path}: anything-but {op} has an empty array")
        if op in ("prefix", "suffix") and "" in values:
            raise PatternError(f"{path}: anything-but {op} needs a non-empty string")
        tests = [_compile_operator(op, value, f"{path} anything-but") for value in values]
        # a value that is not a string can never be ruled out by them: it matches
        return lambda v: not (isinstance(v, str) and any(test(v) for test in tests))
    values = arg if isinstance(arg, list) else [arg]
    if not values:
        raise PatternError(f"{path}: anything-but has an empty array")
    if all(isinstance(v, str) for v in values):
        strings = frozenset(values)
        return lambda v: not (isinstance(v, str) and v in strings)
    if all(_is_number(v) for v in values):
        numbers = frozenset(_as_double(v) for v in values)
        if None in numbers:
            raise PatternError(f"{path}: anything-but has a number a double cannot hold")
        return lambda v: v.__class__ is str or _as_double(v) not in numbers
    raise PatternError(
        f"{path}: anything-but takes a string, a number, or an array of all strings or all "
        f"numbers, not {json.dumps(arg, default=float)}"
    )
