"""The DynamoDB AttributeValue codec: DynamoDB JSON (``{"S": "x"}``, ``{"N": "1"}``, ...)
to plain Python values and back.

Decoding is on the hot path of every stream consumer. Parsed JSON (plain dicts and
lists) goes through `decode`, which dispatches on the type tag through a dict, decodes
strings and plain integers without a call, and builds the attribute path of an error
(``NewImage.address.zip``) only while that error propagates, never on the success path.
Records decode their keys and images from JSON text with `_decode_json`, which takes
apart the dicts it parsed itself (in place) and falls back to `decode` for anything
unusual. It leaves the garbage collector alone: pausing it per image saved 1-3%, too
little for a library to flip process-wide state that other threads may rely on.
"""

from __future__ import annotations

import binascii
import math
import re
import sys
from collections.abc import Callable, Mapping
from decimal import Decimal, InvalidOperation
from typing import Any, Final, Literal

import msgspec

from flowstream.errors import AttributeValueError

__all__ = [
    "decode",
    "decode_value",
    "encode",
    "encode_value",
]

_TAGS: Final = ("B", "BOOL", "BS", "L", "M", "N", "NS", "NULL", "S", "SS")
_VALID_TAGS: Final = ", ".join(_TAGS)

# DynamoDB numbers: at most 38 significant digits, and a nonzero magnitude between 1E-130
# and 9.99...E+125, i.e. an adjusted (scientific) exponent in [-130, 125].
_MAX_DIGITS: Final = 38
_MIN_ADJUSTED: Final = -130
_MAX_ADJUSTED: Final = 125
_INT_FAST_LIMIT: Final = 10**_MAX_DIGITS  # |n| below this has <= 38 digits: always valid
_INT_RANGE_LIMIT: Final = 10 ** (_MAX_ADJUSTED + 1)

# The number syntax DynamoDB accepts (it takes "+3", ".123", "0001.23", "-17.4E37", "1." and
# rejects "NaN", "Infinity", " 1", "1 "). Decimal() alone would also take surrounding
# whitespace, underscores, non-ASCII digits, NaN and Infinity, so text is checked first.
_NUMBER_RE: Final = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")

_NESTING_HELP: Final = (
    "is nested too deeply for Python's recursion limit ({limit}); DynamoDB itself allows "
    "at most 32 levels of nested maps and lists, so flatten the value{cycle}"
)


class _Failure(Exception):
    """Internal: a problem found while converting. Each enclosing map or list appends its
    key or index to `parts` (innermost first) as the failure propagates; the public
    functions turn it into an `AttributeValueError` with the joined path. It never
    escapes this module."""

    def __init__(self, problem: str) -> None:
        self.problem = problem
        self.parts: list[str | int] = []


def _join_path(prefix: str, parts: list[str | int]) -> str:
    path = prefix
    for part in reversed(parts):
        if type(part) is int:
            path = f"{path}[{part}]"
        elif path:
            path = f"{path}.{part}"
        else:
            path = str(part)
    return path


def _type_name(value: object) -> str:
    cls = type(value)
    if cls.__module__ == "builtins":
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# --------------------------------------------------------------------------- decoding


def _wrong_type(tag: str, expected: str, value: object) -> _Failure:
    return _Failure(
        f"{tag} value must be {expected}, got {_type_name(value)} {_short(value)}; "
        f"DynamoDB JSON looks like {_EXAMPLES[tag]}"
    )


_EXAMPLES: Final = {
    "S": '{"S": "text"}',
    "N": '{"N": "12.5"} (numbers are carried as strings)',
    "B": '{"B": "aGVsbG8="} (base64 text, or bytes from botocore)',
    "BOOL": '{"BOOL": true}',
    "NULL": '{"NULL": true}',
    "M": '{"M": {"name": {"S": "x"}}}',
    "L": '{"L": [{"S": "x"}, {"N": "1"}]}',
    "SS": '{"SS": ["a", "b"]}',
    "NS": '{"NS": ["1", "2.5"]}',
    "BS": '{"BS": ["aGVsbG8="]}',
}


def _bad_attribute(av: object) -> _Failure:
    """Explain why `av` is not an AttributeValue (slow path, only on failure)."""
    if not isinstance(av, Mapping):
        return _Failure(
            f'expected an AttributeValue, a one-key object such as {{"S": "text"}}, '
            f"got {_type_name(av)} {_short(av)}"
        )
    if len(av) != 1:
        keys = ", ".join(repr(k) for k in av) or "none"
        return _Failure(
            f"an AttributeValue must have exactly one type tag, got {len(av)} keys "
            f"({keys}); give one of {_VALID_TAGS}"
        )
    (tag,) = av
    hint = ""
    if isinstance(tag, str) and tag.upper() in _EXAMPLES:
        hint = f" (did you mean {tag.upper()!r}? tags are upper case)"
    return _Failure(f"unknown type tag {tag!r}{hint}; valid tags are {_VALID_TAGS}")


def _decode_s(value: Any) -> str:
    if isinstance(value, str):
        return str.__str__(value)
    raise _wrong_type("S", "a str", value)


def _decode_n(value: Any) -> int | Decimal:
    # Fast paths for what DynamoDB sends: "42", "-42", "1234.56" (it trims trailing zeros,
    # so a fraction ends in a nonzero digit). At most 38 characters means at most 38 digits
    # and a magnitude within DynamoDB's range, so no limit check is needed. isascii() shuts
    # out the non-ASCII digits that isdigit() and int() accept; isdigit() shuts out "_",
    # "+" and whitespace, which int() and Decimal() accept. Anything else, including "1.50"
    # and "2.0", takes the slow path, which is exact too.
    if type(value) is str and len(value) <= _MAX_DIGITS and value.isascii():
        if value.isdigit():
            return int(value)
        # Digits around one point, the last digit nonzero: not integral.
        if value.replace(".", "", 1).isdigit() and value[-1] not in "0.":
            return Decimal(value)
        if value[:1] == "-":
            unsigned = value[1:]
            if unsigned.isdigit():
                return int(value)
            if unsigned.replace(".", "", 1).isdigit() and value[-1] not in "0.":
                return Decimal(value)
    return _decode_n_slow(value)


def _decode_n_slow(value: Any) -> int | Decimal:
    if not isinstance(value, str):
        raise _wrong_type("N", "a str", value)
    if _NUMBER_RE.fullmatch(value) is None:
        raise _Failure(
            f"{_short(value)} is not a DynamoDB number; N text is an optional sign, digits "
            'with an optional fraction and exponent, such as "12", "-0.5" or "1.5E+10" '
            "(no spaces, underscores, NaN or Infinity)"
        )
    try:
        number = Decimal(value)
    except (InvalidOperation, ValueError, OverflowError):
        raise _Failure(
            f"{_short(value)} has an exponent out of DynamoDB's range "
            "(magnitude 1E-130 to 9.99...E+125)"
        ) from None
    _, digits, exponent = number.as_tuple()
    assert isinstance(exponent, int)  # finite: the text was checked above
    if not any(digits):
        return 0
    _check_number(_short(value), digits, exponent)
    if exponent >= 0 or not any(digits[exponent:]):
        return int(number)
    return number


def _check_number(text: str, digits: tuple[int, ...], exponent: int) -> int:
    """Check a nonzero finite number against DynamoDB's limits; returns the count of
    digits left after trailing zeros (which DynamoDB trims) are dropped."""
    count = len(digits)
    while digits[count - 1] == 0:
        count -= 1
    if count > _MAX_DIGITS:
        raise _Failure(
            f"{text} has {count} significant digits; DynamoDB numbers hold at most "
            f"{_MAX_DIGITS}: round it (e.g. with Decimal.quantize) or store it as a string"
        )
    adjusted = exponent + len(digits) - 1
    if adjusted > _MAX_ADJUSTED:
        raise _Failure(
            f"{text} is too large for DynamoDB (largest magnitude 9.99...E+125); "
            "scale it down or store it as a string"
        )
    if adjusted < _MIN_ADJUSTED:
        raise _Failure(
            f"{text} is too small for DynamoDB (smallest nonzero magnitude 1E-130); "
            "round it to zero or store it as a string"
        )
    return count


def _decode_b(value: Any) -> bytes:
    if type(value) is str:
        try:
            return binascii.a2b_base64(value, strict_mode=True)
        except (binascii.Error, ValueError) as exc:
            raise _Failure(
                f"B value {_short(value)} is not valid base64 ({exc}); DynamoDB JSON carries "
                "binary as standard base64 text with '=' padding"
            ) from None
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    if isinstance(value, str):
        return _decode_b(str.__str__(value))
    raise _wrong_type("B", "base64 text or bytes", value)


def _decode_bool(value: Any) -> bool:
    if value is True or value is False:
        return value
    raise _wrong_type("BOOL", "true or false", value)


def _decode_null(value: Any) -> None:
    if value is not True:
        raise _Failure(
            f"NULL value must be true, got {_type_name(value)} {_short(value)}; DynamoDB "
            'writes a null as {"NULL": true}'
        )


def _decode_map(value: Any) -> dict[str, Any]:
    if type(value) is not dict and not isinstance(value, Mapping):
        raise _wrong_type("M", "an object of attribute names to AttributeValues", value)
    out: dict[str, Any] = {}
    for key, av in value.items():
        if type(key) is not str:
            if not isinstance(key, str):
                raise _non_str_key(key)
            key = str.__str__(key)
        try:
            ((tag, inner),) = av.items()
            # Strings and plain integers inline, without a call; 38 is _MAX_DIGITS as a
            # constant (see _decode_n for why these checks are enough).
            if tag == "S" and type(inner) is str:
                out[key] = inner
            elif (
                tag == "N"
                and type(inner) is str
                and inner.isdigit()
                and len(inner) <= 38
                and inner.isascii()
            ):
                out[key] = int(inner)
            else:
                out[key] = _DECODERS[tag](inner)
        except _Failure as failure:
            failure.parts.append(key)
            raise
        except (AttributeError, TypeError, ValueError, KeyError):
            bad = _bad_attribute(av)
            bad.parts.append(key)
            raise bad from None
    return out


def _decode_list(value: Any) -> list[Any]:
    if type(value) is not list and not isinstance(value, list | tuple):
        raise _wrong_type("L", "a list of AttributeValues", value)
    out: list[Any] = []
    append = out.append
    for av in value:
        try:
            ((tag, inner),) = av.items()
            if tag == "S" and type(inner) is str:
                append(inner)
            elif (
                tag == "N"
                and type(inner) is str
                and inner.isdigit()
                and len(inner) <= 38
                and inner.isascii()
            ):
                append(int(inner))
            else:
                append(_DECODERS[tag](inner))
        except _Failure as failure:
            failure.parts.append(len(out))  # the index of `av`: one append per element
            raise
        except (AttributeError, TypeError, ValueError, KeyError):
            bad = _bad_attribute(av)
            bad.parts.append(len(out))
            raise bad from None
    return out


def _set_items(tag: str, value: Any, element: str) -> list[Any] | tuple[Any, ...]:
    if type(value) is list or isinstance(value, list | tuple):
        return value
    raise _wrong_type(tag, f"a list of {element}", value)


def _decode_ss(value: Any) -> set[str]:
    items = _set_items("SS", value, "str")
    for index, item in enumerate(items):
        if type(item) is not str:
            failure = _wrong_type("SS", "a list of str", item)
            failure.parts.append(index)
            raise failure
    return set(items)


def _decode_ns(value: Any) -> set[int | Decimal]:
    items = _set_items("NS", value, "number strings")
    out: set[int | Decimal] = set()
    add = out.add
    for index, item in enumerate(items):
        try:
            if type(item) is str and item.isdigit() and len(item) <= 38 and item.isascii():
                add(int(item))
            else:
                add(_decode_n(item))
        except _Failure as failure:
            failure.parts.append(index)
            raise
    return out


def _decode_bs(value: Any) -> set[bytes]:
    items = _set_items("BS", value, "base64 strings")
    out: set[bytes] = set()
    for index, item in enumerate(items):
        try:
            out.add(_decode_b(item))
        except _Failure as failure:
            failure.parts.append(index)
            raise
    return out


_DECODERS: Final[dict[str, Callable[[Any], Any]]] = {
    "S": _decode_s,
    "N": _decode_n,
    "BOOL": _decode_bool,
    "M": _decode_map,
    "L": _decode_list,
    "NULL": _decode_null,
    "B": _decode_b,
    "SS": _decode_ss,
    "NS": _decode_ns,
    "BS": _decode_bs,
}


def _non_str_key(key: object) -> _Failure:
    return _Failure(
        f"map key {_short(key)} ({_type_name(key)}) is not a str; attribute names and map "
        "keys must be str, so convert it with str() first"
    )


def _too_deep(path: str, *, encoding: bool) -> AttributeValueError:
    cycle = " (or remove the reference cycle)" if encoding else ""
    problem = "value " + _NESTING_HELP.format(limit=sys.getrecursionlimit(), cycle=cycle)
    return AttributeValueError(path, problem)


def decode(item: Mapping[str, Any], *, path: str = "") -> dict[str, Any]:
    """Decode a DynamoDB item, image or key map (attribute name -> AttributeValue) into
    a dict of Python values: ``{"name": {"S": "x"}, "n": {"N": "1"}}`` gives
    ``{"name": "x", "n": 1}``.

    `path` prefixes the attribute path of errors (``decode(image, path="NewImage")``
    reports ``NewImage.address.zip``). Raises `AttributeValueError`.
    """
    if type(item) is not dict and not isinstance(item, Mapping):
        raise AttributeValueError(
            path,
            f"expected an item, an object of attribute names to AttributeValues such as "
            f'{{"name": {{"S": "x"}}}}, got {_type_name(item)} {_short(item)}',
        )
    try:
        return _decode_map(item)
    except _Failure as failure:
        raise AttributeValueError(_join_path(path, failure.parts), failure.problem) from None
    except RecursionError:
        raise _too_deep(path, encoding=False) from None


def decode_value(value: Mapping[str, Any], *, path: str = "") -> Any:
    """Decode one AttributeValue: ``{"S": "x"}`` gives ``"x"``, ``{"N": "1.5"}`` gives
    ``Decimal("1.5")``. `path` names the value in errors. Raises `AttributeValueError`."""
    try:
        try:
            ((tag, inner),) = value.items()
            decoder = _DECODERS[tag]
        except (AttributeError, TypeError, ValueError, KeyError):
            raise _bad_attribute(value) from None
        return decoder(inner)
    except _Failure as failure:
        raise AttributeValueError(_join_path(path, failure.parts), failure.problem) from None
    except RecursionError:
        raise _too_deep(path, encoding=False) from None


# ------------------------------------------------------- decoding DynamoDB JSON text
#
# Records keep their keys and images as raw JSON and decode them here on first access.
# The dicts and lists msgspec parses the text into are ours, so the walk takes each
# AttributeValue apart with popitem() (no items view, no iterator, and a second tag is
# simply what is left behind), converts strings and numbers inline, and writes each value
# back over its AttributeValue in the parsed map or list, which becomes the result (no
# second container to allocate and grow). It uses no error machinery at all: anything
# unusual makes `_decode_json` return None, and the caller takes the exact path above,
# which parses the text again, gives the same values and reports errors.


class _Unusual(Exception):
    """Internal: the fast walk met something only the exact path handles."""


_JSON: Final = msgspec.json.Decoder()

# Decoded N text -> value, for short texts: numbers of a few digits repeat in a stream
# (counts, flags, versions, small prices), and a dict lookup is cheaper than checking
# and converting the text; values are immutable, so sharing them is safe. Longer numbers
# (ids, timestamps, coordinates) rarely repeat and are not kept. Cleared when full, so
# memory stays bounded.
_NUMBERS: Final[dict[str, int | Decimal]] = {}
_NUMBERS_MAX: Final = 4096
_NUMBERS_TEXT: Final = 8


def _number(text: str) -> int | Decimal:
    """N text the cache does not hold -> int or Decimal, exactly as `_decode_n`."""
    # What DynamoDB writes: an optional "-", digits, and maybe a point and digits ending
    # in a nonzero one; within 38 characters that is within every limit (see _decode_n).
    # isascii() makes isdigit() mean 0-9. String methods here cost less than a regex.
    value: int | Decimal
    if len(text) <= _MAX_DIGITS and text.isascii():
        digits = text[1:] if text[:1] == "-" else text
        if digits.isdigit():
            value = int(text)
        else:
            whole, _, fraction = digits.partition(".")
            if whole.isdigit() and fraction.isdigit() and fraction[-1] != "0":
                value = Decimal(text)
            else:
                value = _decode_n(text)  # the exact checks; raises _Failure for bad text
    else:
        value = _decode_n(text)
    if len(text) <= _NUMBERS_TEXT:
        if len(_NUMBERS) >= _NUMBERS_MAX:
            _NUMBERS.clear()
        _NUMBERS[text] = value
    return value


def _walk_map(values: dict[str, Any]) -> dict[str, Any]:
    cached = _NUMBERS.get
    for key, av in values.items():
        tag, value = av.popitem()
        if av:
            raise _Unusual  # a second tag
        if tag == "S":
            if type(value) is not str:
                raise _Unusual
        elif tag == "N":
            number = cached(value)
            value = _number(value) if number is None else number
        elif tag == "M" and type(value) is dict:
            value = _walk_map(value)
        elif tag == "L" and type(value) is list:
            value = _walk_list(value)
        else:
            value = _walk_other(tag, value)
        values[key] = value  # an existing key: the map neither grows nor reorders
    return values


def _walk_list(values: list[Any]) -> list[Any]:
    # The per-value body is the one of _walk_map, written out again on purpose: this is
    # the innermost loop of image decoding, and a function call per value is what the
    # fast path exists to avoid.
    cached = _NUMBERS.get
    for index, av in enumerate(values):
        tag, value = av.popitem()
        if av:
            raise _Unusual  # a second tag
        if tag == "S":
            if type(value) is not str:
                raise _Unusual
        elif tag == "N":
            number = cached(value)
            value = _number(value) if number is None else number
        elif tag == "M" and type(value) is dict:
            value = _walk_map(value)
        elif tag == "L" and type(value) is list:
            value = _walk_list(value)
        else:
            value = _walk_other(tag, value)
        values[index] = value
    return values


def _walk_other(tag: str, value: Any) -> Any:
    if tag == "BOOL":
        if value is True or value is False:
            return value
    elif tag == "NULL":
        if value is True:
            return None
    elif tag == "B":
        if type(value) is str:
            return binascii.a2b_base64(value, strict_mode=True)
    elif tag == "SS":
        if type(value) is list:
            "".join(value)  # a TypeError unless every member is a str
            return set(value)
    elif tag == "NS":
        return _decode_ns(value)
    elif tag == "BS":
        return _decode_bs(value)
    raise _Unusual  # an unknown tag, a value of the wrong type, or M/L of the wrong type


_FALL_BACK: Final = (
    msgspec.DecodeError,  # not JSON
    _Failure,  # a bad number, base64 text or set
    _Unusual,
    AttributeError,  # an AttributeValue that is not an object
    KeyError,  # an AttributeValue without a tag
    TypeError,  # an N value that is not a str, an SS member that is not
    ValueError,  # bad base64 (binascii.Error)
    RecursionError,
)


def _decode_json(text: bytes | bytearray | memoryview | msgspec.Raw) -> dict[str, Any] | None:
    """An item, image or key map as DynamoDB JSON text -> a dict of Python values, as
    `decode(msgspec.json.decode(text))` gives it; None when that exact path must run
    (invalid or unusual text: it raises the right error or handles the rarity)."""
    try:
        values = _JSON.decode(text)
        return _walk_map(values) if type(values) is dict else None
    except _FALL_BACK:
        return None


# --------------------------------------------------------------------------- encoding


def _decimal_text(number: Decimal, shown: object) -> str:
    """DynamoDB text for a Decimal: trailing zeros dropped, integral values as plain
    digits, fractions as Python writes them ("0.001", "1.5E-130")."""
    if not number.is_finite():
        raise _Failure(
            f"{_short(shown)} is not a finite number; DynamoDB has no NaN or Infinity: store "
            "None (NULL), drop the attribute, or use a string"
        )
    text = str(number)
    if len(text) <= _MAX_DIGITS and "E" not in text:
        # Fast path: without an exponent Python writes at most 6 leading zeros after the
        # point and no trailing zeros before it, so 38 characters are within every limit.
        if "." in text:
            text = text.rstrip("0").rstrip(".")
        return "0" if text == "-0" else text
    sign, digits, exponent = number.as_tuple()
    assert isinstance(exponent, int)
    if not any(digits):
        return "0"  # also for -0 and 0E+500: DynamoDB has a single zero
    count = _check_number(_short(shown), digits, exponent)
    exponent += len(digits) - count
    if exponent >= 0:
        text = "".join(map(str, digits[:count])) + "0" * exponent
        return "-" + text if sign else text
    return str(Decimal((sign, digits[:count], exponent)))


def _int_text(number: int) -> str:
    if -_INT_FAST_LIMIT < number < _INT_FAST_LIMIT:
        return str(number)
    if not -_INT_RANGE_LIMIT < number < _INT_RANGE_LIMIT:
        # Not repr(number): Python refuses to print ints of more than 4300 digits.
        digits = int(number.bit_length() * 0.30103) + 1
        raise _Failure(
            f"int of about {digits} digits is too large for DynamoDB (largest magnitude "
            "9.99...E+125); store it as a string"
        )
    text = str(number)
    significant = len(text.rstrip("0").lstrip("-"))
    if significant > _MAX_DIGITS:
        raise _Failure(
            f"{_short(number)} has {significant} significant digits; DynamoDB numbers hold at "
            f"most {_MAX_DIGITS}: round it or store it as a string"
        )
    return text


def _float_text(number: float) -> str:
    if not math.isfinite(number):
        raise _Failure(
            f"float {number!r} is not a finite number; DynamoDB has no NaN or Infinity: store "
            "None (NULL), drop the attribute, or use a string"
        )
    text = repr(number)
    if "e" not in text:  # then repr has a point and at most 17 digits: "1.5", "100.0"
        text = text.rstrip("0").rstrip(".")
        return "0" if text == "-0" else text
    return _decimal_text(Decimal(text), number)


def _number_text(value: Any) -> str:
    if type(value) is int:
        return _int_text(value)
    if type(value) is float:
        return _float_text(value)
    if isinstance(value, Decimal):
        return _decimal_text(value, value)
    if isinstance(value, int):  # IntEnum and other int subclasses
        return _int_text(int(value))
    return _float_text(float(value))


def _binary(value: bytes | bytearray | memoryview, as_bytes: bool) -> bytes | str:
    if as_bytes:
        return bytes(value)
    return binascii.b2a_base64(value, newline=False).decode("ascii")


def _encode_str(value: Any, as_bytes: bool) -> dict[str, Any]:
    return {"S": value if type(value) is str else str.__str__(value)}


def _encode_bool(value: Any, as_bytes: bool) -> dict[str, Any]:
    return {"BOOL": value}


def _encode_null(value: Any, as_bytes: bool) -> dict[str, Any]:
    return {"NULL": True}


def _encode_int(value: Any, as_bytes: bool) -> dict[str, Any]:
    return {"N": _int_text(value)}


def _encode_float(value: Any, as_bytes: bool) -> dict[str, Any]:
    return {"N": _float_text(value)}


def _encode_decimal(value: Any, as_bytes: bool) -> dict[str, Any]:
    return {"N": _decimal_text(value, value)}


def _encode_binary(value: Any, as_bytes: bool) -> dict[str, Any]:
    return {"B": _binary(value, as_bytes)}


def _encode_map(value: Mapping[Any, Any], as_bytes: bool) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for key, item in value.items():
        if type(key) is not str:
            if not isinstance(key, str):
                raise _non_str_key(key)
            key = str.__str__(key)
        try:
            if type(item) is str:
                out[key] = {"S": item}
            else:
                out[key] = (_ENCODERS.get(type(item)) or _encode_other)(item, as_bytes)
        except _Failure as failure:
            failure.parts.append(key)
            raise
    return out


def _encode_m(value: Any, as_bytes: bool) -> dict[str, Any]:
    return {"M": _encode_map(value, as_bytes)}


def _encode_l(value: Any, as_bytes: bool) -> dict[str, Any]:
    out: list[dict[str, Any]] = []
    append = out.append
    for item in value:
        try:
            if type(item) is str:
                append({"S": item})
            else:
                append((_ENCODERS.get(type(item)) or _encode_other)(item, as_bytes))
        except _Failure as failure:
            failure.parts.append(len(out))
            raise
    return {"L": out}


def _set_kind(item: object) -> str:
    if isinstance(item, str):
        return "SS"
    if isinstance(item, bool):
        return "bool"
    if isinstance(item, int | float | Decimal):
        return "NS"
    if isinstance(item, bytes | bytearray | memoryview):
        return "BS"
    return _type_name(item)


def _encode_set(value: Any, as_bytes: bool) -> dict[str, Any]:
    if not value:
        raise _Failure(
            "empty set: DynamoDB rejects empty sets; store None (NULL) or drop the attribute"
        )
    kinds: dict[str, object] = {}
    for item in value:
        kinds.setdefault(_set_kind(item), item)
    if len(kinds) != 1 or not set(kinds) <= {"SS", "NS", "BS"}:
        found = ", ".join(f"{_type_name(example)} {_short(example)}" for example in kinds.values())
        # a set of one other type that converts to bytes (boto3's Binary) is not mixed
        (example, *more) = kinds.values()
        fix = (
            "use a list for mixed or other values"
            if more or not _converts_to_bytes(example)
            else "convert each to bytes first: bytes(value)"
        )
        raise _Failure(
            f"a set must hold only str (SS), only numbers (NS) or only bytes (BS), but this "
            f"one holds {found}; {fix}"
        )
    (kind,) = kinds
    # Sorted so that the output does not depend on hash order; deduplicated after
    # conversion since DynamoDB rejects a set with two equal members (0.1 and
    # Decimal("0.1") are distinct Python values but both become "0.1").
    if kind == "SS":
        return {"SS": sorted({item if type(item) is str else str.__str__(item) for item in value})}
    if kind == "NS":
        return {"NS": sorted({_number_text(item) for item in value})}
    raw = sorted({bytes(item) for item in value})
    return {"BS": [_binary(item, as_bytes) for item in raw]}


def _encode_other(value: Any, as_bytes: bool) -> dict[str, Any]:
    """Subclasses of supported types (str and int enums, OrderedDict, named tuples...)
    and the unsupported-type error."""
    if isinstance(value, str):
        return _encode_str(value, as_bytes)
    if isinstance(value, int):
        return _encode_int(int(value), as_bytes)
    if isinstance(value, float):
        return _encode_float(float(value), as_bytes)
    if isinstance(value, Decimal):
        return _encode_decimal(value, as_bytes)
    if isinstance(value, bytes | bytearray | memoryview):
        return _encode_binary(value, as_bytes)
    if isinstance(value, Mapping):
        return _encode_m(value, as_bytes)
    if isinstance(value, list | tuple):
        return _encode_l(value, as_bytes)
    if isinstance(value, set | frozenset):
        return _encode_set(value, as_bytes)
    raise _Failure(
        f"cannot encode a value of type {_type_name(value)}; DynamoDB JSON holds str, int, float, "
        "Decimal, bool, None, bytes, dict, list, tuple, set and frozenset: "
        + (
            "convert it to bytes first: bytes(value)"
            if _converts_to_bytes(value)
            else "convert it first (e.g. a datetime to an ISO 8601 str)"
        )
    )


def _converts_to_bytes(value: object) -> bool:
    return hasattr(type(value), "__bytes__")  # boto3's Binary, among others


_ENCODERS: Final[dict[type, Callable[[Any, bool], dict[str, Any]]]] = {
    str: _encode_str,
    int: _encode_int,
    bool: _encode_bool,
    float: _encode_float,
    Decimal: _encode_decimal,
    type(None): _encode_null,
    dict: _encode_m,
    list: _encode_l,
    tuple: _encode_l,
    bytes: _encode_binary,
    bytearray: _encode_binary,
    memoryview: _encode_binary,
    set: _encode_set,
    frozenset: _encode_set,
}


def _as_bytes(binary: str) -> bool:
    if binary == "base64":
        return False
    if binary == "bytes":
        return True
    raise ValueError(f"binary must be 'base64' or 'bytes', got {binary!r}")


def encode(
    item: Mapping[str, Any],
    *,
    path: str = "",
    binary: Literal["base64", "bytes"] = "base64",
) -> dict[str, dict[str, Any]]:
    """Encode a dict of Python values as a DynamoDB item (attribute name ->
    AttributeValue): ``{"name": "x", "n": 1}`` gives ``{"name": {"S": "x"}, "n": {"N":
    "1"}}``.

    Binary values become base64 text (DynamoDB JSON), or stay bytes with
    ``binary="bytes"`` (what botocore clients take). `path` prefixes the attribute path of
    errors. Raises `AttributeValueError`.
    """
    as_bytes = _as_bytes(binary)
    if not isinstance(item, Mapping):
        raise AttributeValueError(
            path,
            f"expected an item, a mapping of attribute names to values, got "
            f"{_type_name(item)} {_short(item)}",
        )
    try:
        return _encode_map(item, as_bytes)
    except _Failure as failure:
        raise AttributeValueError(_join_path(path, failure.parts), failure.problem) from None
    except RecursionError:
        raise _too_deep(path, encoding=True) from None


def encode_value(
    value: Any,
    *,
    path: str = "",
    binary: Literal["base64", "bytes"] = "base64",
) -> dict[str, Any]:
    """Encode one Python value as an AttributeValue: ``"x"`` gives ``{"S": "x"}``, ``1.5``
    gives ``{"N": "1.5"}``, ``{"a", "b"}`` gives ``{"SS": ["a", "b"]}``. `binary` and `path`
    work as in `encode`. Raises `AttributeValueError`."""
    as_bytes = _as_bytes(binary)
    try:
        return (_ENCODERS.get(type(value)) or _encode_other)(value, as_bytes)
    except _Failure as failure:
        raise AttributeValueError(_join_path(path, failure.parts), failure.problem) from None
    except RecursionError:
        raise _too_deep(path, encoding=True) from None
