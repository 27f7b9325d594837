"""Turns pipeline elements into bytes for sinks, one way for every sink.

str and bytes (and other bytes-like objects) pass as they are; everything else (records,
dicts, lists, msgspec Structs, dataclasses, datetimes, Decimals, sets) is encoded by
msgspec as JSON. A record, alone or nested, takes the stream's own JSON shape
(`Record.to_json()`); Decimals become JSON numbers so no digit is lost.
"""

from __future__ import annotations

from typing import Any, Final

import msgspec

from flowstream.errors import DeliveryError

__all__ = ["SerializationError", "encode_lines", "to_bytes"]

_HELP: Final = (
    "map elements to dicts, lists, str, bytes, numbers, msgspec Structs or dataclasses first"
)


class SerializationError(DeliveryError, TypeError):
    """Raised by `to_bytes` (and failed per item by the sinks that use it) for an element
    that cannot be turned into bytes; the message names the type. Never retryable."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retryable=False)


class _Unsupported(Exception):
    """Internal: msgspec met a value it cannot encode, somewhere inside the element."""

    def __init__(self, value: object) -> None:
        self.type_name = _type_name(type(value))


def _enc_hook(value: Any) -> Any:
    raise _Unsupported(value)


def _type_name(cls: type) -> str:
    if cls.__module__ == "builtins":
        return cls.__qualname__
    return f"{cls.__module__}.{cls.__qualname__}"


_ENCODER: Final = msgspec.json.Encoder(enc_hook=_enc_hook, decimal_format="number")
_CHECKER: Final = msgspec.json.Decoder()
_STRING_DECIMALS: Final = msgspec.json.Encoder(enc_hook=_enc_hook, decimal_format="string")


def to_bytes(value: Any) -> bytes:
    """The bytes a sink sends for `value`. Raises `SerializationError`."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        try:
            return value.encode()
        except UnicodeEncodeError as exc:  # a lone surrogate: not text any sink can send
            raise SerializationError(
                f"cannot serialise a str value: {exc.reason} at position {exc.start}; "
                "strings must be valid Unicode text"
            ) from None
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    try:
        data = _ENCODER.encode(value)
    except _Unsupported as exc:
        outer = _type_name(type(value))
        where = "" if exc.type_name == outer else f" (it holds a {exc.type_name})"
        raise SerializationError(f"cannot serialise a {outer} value{where}; {_HELP}") from None
    except (TypeError, ValueError, OverflowError) as exc:
        # msgspec >= 0.19 refuses a non-finite Decimal; then the same value encodes with
        # Decimals as strings
        if _encodes_with_string_decimals(value):
            raise _non_finite(value) from None
        raise SerializationError(
            f"cannot serialise a {_type_name(type(value))} value: {exc}; {_HELP}"
        ) from None
    # older msgspec writes a non-finite Decimal as the bare word NaN or Infinity, which
    # is not JSON; only then is the output parsed back to find out.
    if (b"NaN" in data or b"Infinity" in data) and not _is_json(data):
        raise _non_finite(value)
    return data


def _non_finite(value: Any) -> SerializationError:
    return SerializationError(
        f"cannot serialise a {_type_name(type(value))} value: it is or holds a Decimal NaN "
        "or Infinity, which JSON cannot carry; replace it with None or a string first"
    )


def _encodes_with_string_decimals(value: Any) -> bool:
    try:
        _STRING_DECIMALS.encode(value)
    except Exception:
        return False
    return True


def _is_json(data: bytes) -> bool:
    try:
        _CHECKER.decode(data)
    except msgspec.DecodeError:
        return False
    return True


def encode_lines(
    values: list[Any], *, multiline: bool = False
) -> tuple[bytes, dict[int, BaseException]]:
    """Each value as one line, each line ending in ``\\n``; values that cannot be
    serialised are left out and returned by index, so a sink fails only those items.

    A str or bytes value that holds a line break would become more than one line; it
    fails unless `multiline` is true (for sinks read by people, not parsed by lines).
    """
    lines: list[bytes] = []
    failed: dict[int, BaseException] = {}
    for i, value in enumerate(values):
        try:
            line = to_bytes(value)
        except SerializationError as exc:
            failed[i] = exc
            continue
        # JSON from msgspec never holds a raw line break; only str and bytes can.
        if not multiline and (b"\n" in line or b"\r" in line):
            failed[i] = SerializationError(
                f"cannot write a {_type_name(type(value))} value holding a line break as one "
                "line; replace the line breaks, or map the value to a dict so it is written "
                "as JSON"
            )
            continue
        lines.append(line)
    lines.append(b"")
    return b"\n".join(lines), failed
