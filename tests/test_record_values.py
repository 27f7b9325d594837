"""`Record.new_value` / `old_value`: one attribute, decoded alone, equal to what the
whole image gives."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import msgspec
import pytest

import flowstream as fs
from flowstream.errors import AttributeValueError, RecordDecodeError
from flowstream.testing import MemoryStream

IMAGE: dict[str, Any] = {
    "pk": "user#1",
    "version": 12,
    "price": Decimal("19.99"),
    "tags": {"a", "b"},
    "scores": {1, Decimal("2.5")},
    "blob": b"\x00\xff",
    "blobs": {b"x", b"y"},
    "active": True,
    "nothing": None,
    "address": {"city": "Oslo", "zip": "0150", "lines": ["a", 2, {"deep": [None]}]},
    "history": [1, "two", {"three": 3}],
    "empty_map": {},
    "empty_list": [],
    "text": 'quotes " and \\ and unicode é',
}


def record(event: str = "MODIFY", new: Any = IMAGE, old: Any = None) -> fs.Record:
    stream = MemoryStream()
    shard = stream.add_shard()
    return stream.put(shard, event, {"pk": "user#1"}, new, old)


@pytest.mark.parametrize("name", sorted(IMAGE))
def test_each_attribute_equals_the_whole_image_s(name: str) -> None:
    fresh = record(old=IMAGE)
    assert fresh.new_value(name) == IMAGE[name]
    assert fresh.old_value(name) == IMAGE[name]
    # and agrees with the image once that is decoded
    assert fresh.new_image is not None
    assert fresh.new_value(name) == fresh.new_image[name]


def test_missing_attributes_and_images_give_the_default() -> None:
    removed = record("REMOVE", new=None, old={"pk": "user#1", "version": 3})
    assert removed.new_value("version") is None
    assert removed.new_value("version", 0) == 0
    assert removed.old_value("version") == 3
    assert removed.old_value("nope", "d") == "d"
    inserted = record("INSERT")
    assert inserted.old_value("version", -1) == -1
    assert inserted.new_value("nope") is None


def with_new_image(wire_image: Any) -> fs.Record:
    """A MODIFY record decoded from the wire with `wire_image` as its NewImage JSON."""
    wire = {
        "eventID": "1",
        "eventName": "MODIFY",
        "dynamodb": {
            "Keys": {"pk": {"S": "a"}},
            "SequenceNumber": "100000000000000000001",
            "NewImage": wire_image,
        },
    }
    (decoded,) = fs.decode_records(msgspec.json.encode({"Records": [wire]}))
    return decoded


def test_a_bad_attribute_is_an_error_naming_its_path() -> None:
    bad = with_new_image({"pk": {"S": "a"}, "n": {"N": "not a number"}})
    assert bad.new_value("pk") == "a"  # the good attribute alone still reads
    with pytest.raises(AttributeValueError, match=r"NewImage\.n"):
        bad.new_value("n")


def test_an_image_that_is_not_an_object_is_reported() -> None:
    bad = with_new_image(["not", "an", "object"])
    with pytest.raises(RecordDecodeError, match="NewImage"):
        bad.new_value("pk")
