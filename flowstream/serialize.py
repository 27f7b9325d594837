"""Turns pipeline elements into bytes for sinks, one way for every sink.

Records become the stream's own JSON (`Record.to_json()`); str and bytes pass as they
are; everything else (dicts, lists, msgspec Structs, dataclasses, datetimes, Decimals,
sets) is encoded by msgspec as JSON, Decimals as JSON numbers so no digit is lost.
"""

from __future__ import annotations

from typing import Any, Final

import msgspec

from flowstream.errors import SinkError
from flowstream.record import Record

__all__ = ["SerializationError", "encode_lines", "to_bytes"]


class SerializationError(SinkError, TypeError):
    """An element that cannot be turned into bytes (its type is named)."""


def _enc_hook(value: Any) -> Any:
    if isinstance(value, Record):
        return msgspec.Raw(value.to_json())
    raise NotImplementedError(type(value))


_ENCODER: Final = msgspec.json.Encoder(enc_hook=_enc_hook, decimal_format="number")


def to_bytes(value: Any) -> bytes:
    """The bytes a sink sends for `value`."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, Record):
        return value.to_json()
    try:
        return _ENCODER.encode(value)
    except (TypeError, NotImplementedError) as exc:
        raise SerializationError(
            f"cannot serialise a {type(value).__name__} value ({exc}); map elements to "
            "dicts, lists, str, bytes, numbers, msgspec Structs or dataclasses first"
        ) from None


def encode_lines(values: list[Any]) -> tuple[bytes, dict[int, BaseException]]:
    """Each value as one line; values that cannot be serialised are left out and
    returned by index, so a sink fails only those items."""
    lines: list[bytes] = []
    failed: dict[int, BaseException] = {}
    for i, value in enumerate(values):
        try:
            lines.append(to_bytes(value))
        except SerializationError as exc:
            failed[i] = exc
    lines.append(b"")
    return b"\n".join(lines), failed
