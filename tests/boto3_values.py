"""boto3's reading of DynamoDB values, to compare ours with: `TypeDeserializer` with its
`Binary` unwrapped to bytes."""

from __future__ import annotations

import base64
from typing import Any, overload

from boto3.dynamodb.types import Binary, TypeDeserializer

__all__ = ["image", "plain", "wire_image"]

_deserialize = TypeDeserializer().deserialize


def plain(value: Any) -> Any:
    """boto3's deserialised value with `Binary` unwrapped, to compare with ours."""
    if isinstance(value, Binary):
        return bytes(value)
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    if isinstance(value, set | frozenset):
        return {plain(v) for v in value}
    return value


@overload
def image(parsed: dict[str, Any]) -> dict[str, Any]: ...
@overload
def image(parsed: None) -> None: ...
def image(parsed: dict[str, Any] | None) -> dict[str, Any] | None:
    """An item or image as botocore parses it (binary already bytes), as boto3 reads it."""
    if parsed is None:
        return None
    return {name: plain(_deserialize(value)) for name, value in parsed.items()}


def wire_image(wire: dict[str, Any] | None) -> dict[str, Any] | None:
    """An image as the wire (or an event file) carries it, binary as base64 text."""
    if wire is None:
        return None
    return image({name: _parsed(value) for name, value in wire.items()})


def _parsed(value: dict[str, Any]) -> dict[str, Any]:
    ((tag, inner),) = value.items()
    if tag == "B":
        return {"B": base64.b64decode(inner)}
    if tag == "BS":
        return {"BS": [base64.b64decode(item) for item in inner]}
    if tag == "M":
        return {"M": {k: _parsed(v) for k, v in inner.items()}}
    if tag == "L":
        return {"L": [_parsed(v) for v in inner]}
    return value
