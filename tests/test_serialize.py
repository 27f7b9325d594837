"""Tests of `flowstream.serialize`: the one way elements become bytes for sinks."""

from __future__ import annotations

import dataclasses
import enum
import json
import uuid
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import msgspec
import pytest

from flowstream.errors import FlowstreamError, SinkError
from flowstream.record import Record, decode_records
from flowstream.serialize import SerializationError, encode_lines, to_bytes

SHARD = "shardId-00000001700000000000-0a1b2c3d"
RECORD_LINE = (
    b'{"eventID":"e1","eventName":"MODIFY","dynamodb":{"Keys":{"pk":{"S":"a"}},'
    b'"SequenceNumber":"111100000000000000001","NewImage":{"pk":{"S":"a"},"n":{"N":"1.5"}}},'
    b'"shardId":"shardId-00000001700000000000-0a1b2c3d"}'
)
DIGITS_38 = "1234567890123456789.0123456789012345678"


def make_record() -> Record:
    (record,) = decode_records(b'{"Records":[' + RECORD_LINE + b"]}")
    return record


class Point(msgspec.Struct):
    x: int
    y: int


@dataclasses.dataclass
class Change:
    key: str
    amount: Decimal
    at: datetime


class Color(enum.Enum):
    RED = "red"


class Opaque:
    """A type no encoder knows."""


class TestToBytes:
    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            pytest.param({"a": 1, "b": [True, None]}, b'{"a":1,"b":[true,null]}', id="dict"),
            pytest.param([1, "x", 2.5], b'[1,"x",2.5]', id="list"),
            pytest.param((1, 2), b"[1,2]", id="tuple"),
            pytest.param(Point(1, 2), b'{"x":1,"y":2}', id="struct"),
            pytest.param(
                Change("k", Decimal("10.50"), datetime(2024, 1, 1, tzinfo=UTC)),
                b'{"key":"k","amount":10.50,"at":"2024-01-01T00:00:00Z"}',
                id="dataclass",
            ),
            pytest.param(Decimal(DIGITS_38), DIGITS_38.encode(), id="decimal-38-digits"),
            pytest.param(
                {"n": Decimal("-1E+125")}, b'{"n":-1E+125}', id="decimal-exponent-in-dict"
            ),
            pytest.param(10**30, b"1" + b"0" * 30, id="int-beyond-64-bits"),
            pytest.param(
                datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC), b'"2024-01-02T03:04:05Z"', id="datetime"
            ),
            pytest.param(
                datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=2))),
                b'"2024-01-02T03:04:05+02:00"',
                id="datetime-offset",
            ),
            pytest.param(date(2024, 1, 2), b'"2024-01-02"', id="date"),
            pytest.param({"b": b"\x00\xff"}, b'{"b":"AP8="}', id="nested-bytes-as-base64"),
            pytest.param(Color.RED, b'"red"', id="enum"),
            pytest.param(uuid.UUID(int=1), b'"00000000-0000-0000-0000-000000000001"', id="uuid"),
            pytest.param("plain text", b"plain text", id="str-as-is"),
            pytest.param("żółw ✓", "żółw ✓".encode(), id="str-utf8"),
            pytest.param('{"pre":"encoded"}', b'{"pre":"encoded"}', id="str-json-not-quoted"),
            pytest.param(b"\x00raw\xff", b"\x00raw\xff", id="bytes-as-is"),
            pytest.param(bytearray(b"raw"), b"raw", id="bytearray-as-is"),
            pytest.param(memoryview(b"raw"), b"raw", id="memoryview-as-is"),
        ],
    )
    def test_encodes(self, value: Any, expected: bytes) -> None:
        assert to_bytes(value) == expected

    def test_decimal_keeps_every_digit_as_a_json_number(self) -> None:
        parsed = json.loads(to_bytes({"amount": Decimal(DIGITS_38)}), parse_float=Decimal)
        assert parsed == {"amount": Decimal(DIGITS_38)}
        assert isinstance(parsed["amount"], Decimal)

    @pytest.mark.parametrize("value", [{3, 1, 2}, frozenset({3, 1, 2})], ids=["set", "frozenset"])
    def test_sets_become_arrays(self, value: set[int] | frozenset[int]) -> None:
        assert sorted(json.loads(to_bytes(value))) == [1, 2, 3]

    def test_record_is_its_stream_json(self) -> None:
        record = make_record()
        assert to_bytes(record) == record.to_json() == RECORD_LINE

    def test_record_with_decoded_images_is_unchanged(self) -> None:
        record = make_record()
        _ = (record.keys, record.new_image)
        assert to_bytes(record) == RECORD_LINE

    @pytest.mark.parametrize(
        ("wrap", "prefix", "suffix"),
        [
            pytest.param(lambda r: {"record": r}, b'{"record":', b"}", id="in-dict"),
            pytest.param(lambda r: [r], b"[", b"]", id="in-list"),
            pytest.param(lambda r: (r,), b"[", b"]", id="in-tuple"),
        ],
    )
    def test_nested_record_is_its_stream_json(
        self, wrap: Any, prefix: bytes, suffix: bytes
    ) -> None:
        record = make_record()
        _ = (record.keys, record.new_image)  # decoded parts must not leak into the JSON
        assert to_bytes(wrap(record)) == prefix + RECORD_LINE + suffix

    def test_nested_record_round_trips(self) -> None:
        record = make_record()
        _ = record.new_image
        line = to_bytes({"record": record, "error": "boom"})
        (again,) = decode_records([json.loads(line)["record"]])
        assert again == record
        image = again.new_image
        assert image == {"pk": "a", "n": Decimal("1.5")}
        assert type(image["n"]) is Decimal  # decoded from the stream JSON, not a float


class TestToBytesErrors:
    @pytest.mark.parametrize(
        ("value", "message"),
        [
            pytest.param(object(), r"^cannot serialise a object value; map elements", id="object"),
            pytest.param(1 + 2j, r"^cannot serialise a complex value;", id="complex"),
            pytest.param(Opaque(), r"^cannot serialise a [\w.]*\bOpaque value;", id="custom"),
            pytest.param(
                {"a": [Opaque()]},
                r"^cannot serialise a dict value \(it holds a [\w.]*\bOpaque\);",
                id="nested",
            ),
            pytest.param(
                {(1, 2): "x"},
                r"^cannot serialise a dict value \(it holds a tuple\)",
                id="tuple-key",
            ),
            # our own words, whether msgspec refuses the value (>= 0.19) or writes NaN
            pytest.param(
                Decimal("NaN"),
                r"^cannot serialise a decimal\.Decimal value: it is or holds a Decimal NaN or "
                r"Infinity, which JSON cannot carry; replace it with None or a string first$",
                id="nan",
            ),
            pytest.param(
                {"n": Decimal("-Infinity")},
                r"^cannot serialise a dict value: it is or holds a Decimal NaN or Infinity",
                id="nested-infinity",
            ),
            pytest.param(
                [Decimal("1.5"), Decimal("sNaN")],
                r"^cannot serialise a list value: it is or holds a Decimal NaN or Infinity",
                id="nested-signalling-nan",
            ),
        ],
    )
    def test_names_the_type(self, value: Any, message: str) -> None:
        with pytest.raises(SerializationError, match=message):
            to_bytes(value)

    def test_is_a_sink_error_and_a_type_error(self) -> None:
        with pytest.raises(SerializationError) as info:
            to_bytes(object())
        assert isinstance(info.value, SinkError)
        assert isinstance(info.value, FlowstreamError)
        assert isinstance(info.value, TypeError)

    def test_text_that_merely_mentions_nan_is_fine(self) -> None:
        assert to_bytes({"note": "NaN and Infinity"}) == b'{"note":"NaN and Infinity"}'


class TestEncodeLines:
    def test_one_line_per_value_each_ending_in_newline(self) -> None:
        data, failed = encode_lines([{"a": 1}, "text", b"raw", make_record()])
        assert data == b'{"a":1}\ntext\nraw\n' + RECORD_LINE + b"\n"
        assert failed == {}

    def test_nothing_for_no_values(self) -> None:
        assert encode_lines([]) == (b"", {})

    def test_failed_values_are_left_out_by_index(self) -> None:
        data, failed = encode_lines([{"a": 1}, object(), {"b": 2}, 1j])
        assert data == b'{"a":1}\n{"b":2}\n'
        assert sorted(failed) == [1, 3]
        assert all(isinstance(exc, SerializationError) for exc in failed.values())
        assert "object" in str(failed[1])
        assert "complex" in str(failed[3])

    def test_all_failed(self) -> None:
        data, failed = encode_lines([object(), object()])
        assert data == b""
        assert sorted(failed) == [0, 1]

    @pytest.mark.parametrize(
        "value",
        ["two\nlines", "carriage\rreturn", b"raw\r\nbytes"],
        ids=["newline", "carriage-return", "crlf-bytes"],
    )
    def test_text_with_a_line_break_fails_alone(self, value: str | bytes) -> None:
        data, failed = encode_lines(["before", value, "after"])
        assert data == b"before\nafter\n"
        assert list(failed) == [1]
        assert "line break" in str(failed[1])

    def test_text_with_line_breaks_passes_when_multiline(self) -> None:
        data, failed = encode_lines(["two\nlines", "one"], multiline=True)
        assert data == b"two\nlines\none\n"
        assert failed == {}

    def test_json_values_never_break_lines(self) -> None:
        data, failed = encode_lines([{"text": "a\nb\rc"}, ["x\n"]])
        assert failed == {}
        assert data.count(b"\n") == 2
        assert [json.loads(line) for line in data.splitlines()] == [{"text": "a\nb\rc"}, ["x\n"]]


def test_a_str_with_a_lone_surrogate_is_a_serialization_error() -> None:
    from flowstream.serialize import SerializationError, to_bytes

    with pytest.raises(SerializationError, match="position 1"):
        to_bytes("a\ud800b")
