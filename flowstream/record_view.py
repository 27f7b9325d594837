"""A record as the JSON object Lambda hands a function (and matches filter patterns
against), built lazily: `lambda_view(record)`.

Keys and images stay DynamoDB JSON with their type keys (``{"S": "x"}``), as in Lambda's
event; an image is split into raw attributes only when a pattern reaches into it, and an
attribute is decoded only when a pattern names it, so matching never decodes images into
Python values. ``ApproximateCreationDateTime`` is a number of epoch seconds, as Lambda
filters it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from datetime import datetime
from typing import Any, Final

import msgspec

from flowstream.errors import RecordDecodeError
from flowstream.record import _ATTRIBUTES, Record

__all__ = ["lambda_view"]

_decode: Final = msgspec.json.decode


class _Image(Mapping[str, Any]):
    """A DynamoDB JSON image or key set whose attributes decode on access."""

    __slots__ = ("_attributes", "_numbers", "_path", "_raw")

    def __init__(self, raw: bytes | msgspec.Raw, numbers: bool, path: str) -> None:
        self._raw = raw
        self._numbers = numbers
        self._path = path
        self._attributes: dict[str, msgspec.Raw] | None = None

    def _split(self) -> dict[str, msgspec.Raw]:
        attributes = self._attributes
        if attributes is None:
            try:
                attributes = self._attributes = _ATTRIBUTES.decode(self._raw)
            except msgspec.DecodeError as exc:
                raise RecordDecodeError(
                    f"{self._path} is not an object of DynamoDB attributes: {exc}"
                ) from None
        return attributes

    def __getitem__(self, key: str) -> Any:
        value = _decode(self._split()[key])
        return _numbers_of(value) if self._numbers else value

    def __iter__(self) -> Iterator[str]:
        return iter(self._split())

    def __len__(self) -> int:
        return len(self._split())


def _numbers_of(value: Any) -> Any:
    """DynamoDB JSON with ``N`` and ``NS`` values as JSON numbers (the opt-in that lets
    `numeric` compare them, which Lambda cannot)."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, inner in value.items():
            if key == "N" and isinstance(inner, str):
                out[key] = _number(inner)
            elif key == "NS" and isinstance(inner, list):
                out[key] = [_number(n) if isinstance(n, str) else n for n in inner]
            else:
                out[key] = _numbers_of(inner)
        return out
    if isinstance(value, list):
        return [_numbers_of(inner) for inner in value]
    return value


def _number(text: str) -> int | float | str:
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            return text


def lambda_view(record: Record, *, numbers: bool = False) -> dict[str, Any]:
    """`record` in Lambda's JSON shape (lazy images, see the module docstring);
    `numbers` turns ``N`` values into JSON numbers."""
    data = record.dynamodb
    dynamodb: dict[str, Any] = {
        "Keys": _Image(data.keys, numbers, "Keys"),
        "SequenceNumber": data.sequence_number,
        "SizeBytes": data.size_bytes,
    }
    created = data.approximate_creation_date_time
    if created is not None:
        dynamodb["ApproximateCreationDateTime"] = (
            created.timestamp() if isinstance(created, datetime) else float(created)
        )
    if data.stream_view_type is not None:
        dynamodb["StreamViewType"] = data.stream_view_type.value
    if data.new_image:
        dynamodb["NewImage"] = _Image(data.new_image, numbers, "NewImage")
    if data.old_image:
        dynamodb["OldImage"] = _Image(data.old_image, numbers, "OldImage")
    view: dict[str, Any] = {
        "eventID": record.event_id,
        "eventName": record.event_name.value,
        "eventVersion": record.event_version or "1.1",
        "eventSource": record.event_source or "aws:dynamodb",
        "awsRegion": record.aws_region,
        "eventSourceARN": record.event_source_arn,
        "dynamodb": dynamodb,
    }
    if record.user_identity is not None:
        view["userIdentity"] = msgspec.to_builtins(record.user_identity)
    return view
