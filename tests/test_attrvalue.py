"""Tests for flowstream.attrvalue: DynamoDB JSON <-> Python, both directions."""

from __future__ import annotations

import base64
import contextlib
import datetime
import enum
import random
from collections import OrderedDict
from collections.abc import Iterator
from decimal import Decimal
from types import MappingProxyType
from typing import Any, NamedTuple

import msgspec
import pytest
from boto3.dynamodb.types import Binary

from flowstream import attrvalue
from flowstream.attrvalue import decode, decode_value, encode, encode_value
from flowstream.errors import AttributeValueError

MAX_38 = "9.9999999999999999999999999999999999999E+125"
MAX_38_INT = int("99999999999999999999999999999999999999" + "0" * 88)


# Not a StrEnum on purpose: str() of this member is "Color.RED", so the encoder must take
# the str value itself.
class Color(str, enum.Enum):  # noqa: UP042
    RED = "red"


class Level(enum.IntEnum):
    HIGH = 3


class Point(NamedTuple):
    x: int
    y: int


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def nest_map(depth: int, leaf: dict[str, Any]) -> dict[str, Any]:
    """`depth` levels of {"M": {"k": ...}} around `leaf`."""
    value = leaf
    for _ in range(depth):
        value = {"M": {"k": value}}
    return value


def nest_list(depth: int, leaf: dict[str, Any]) -> dict[str, Any]:
    value = leaf
    for _ in range(depth):
        value = {"L": [value]}
    return value


@contextlib.contextmanager
def expect_error(path: str, *fragments: str) -> Iterator[None]:
    """Expect an AttributeValueError at `path` whose message holds every fragment."""
    with pytest.raises(AttributeValueError) as excinfo:
        yield
    error = excinfo.value
    assert error.path == path
    message = str(error)
    if path:
        assert message.startswith(f"{path}: "), message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


class TestPublicNames:
    def test_all_is_the_public_api(self) -> None:
        defined_here = {
            name
            for name, value in vars(attrvalue).items()
            if not name.startswith("_") and getattr(value, "__module__", None) == attrvalue.__name__
        }
        assert sorted(attrvalue.__all__) == sorted(defined_here)
        assert attrvalue.__all__ == ["decode", "decode_value", "encode", "encode_value"]


class TestDecodeValue:
    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            pytest.param({"S": "x"}, "x", id="S"),
            pytest.param({"S": ""}, "", id="S-empty"),
            pytest.param({"S": "žluťoučký 🐍"}, "žluťoučký 🐍", id="S-unicode"),
            pytest.param({"BOOL": True}, True, id="BOOL-true"),
            pytest.param({"BOOL": False}, False, id="BOOL-false"),
            pytest.param({"NULL": True}, None, id="NULL"),
            pytest.param({"B": "aGVsbG8="}, b"hello", id="B-base64-str"),
            pytest.param({"B": b"hello"}, b"hello", id="B-bytes"),
            pytest.param({"B": bytearray(b"hello")}, b"hello", id="B-bytearray"),
            pytest.param({"B": memoryview(b"hello")}, b"hello", id="B-memoryview"),
            pytest.param({"B": ""}, b"", id="B-empty"),
            pytest.param({"M": {}}, {}, id="M-empty"),
            pytest.param({"L": []}, [], id="L-empty"),
        ],
    )
    def test_scalars_and_empty_containers(self, value: dict[str, Any], expected: Any) -> None:
        result = decode_value(value)
        assert result == expected
        assert type(result) is type(expected)

    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            pytest.param("10", 10, id="integer"),
            pytest.param("0", 0, id="zero"),
            pytest.param("-0", 0, id="negative-zero"),
            pytest.param("-42", -42, id="negative"),
            pytest.param("1E+2", 100, id="exponent-integral"),
            pytest.param("1e2", 100, id="lowercase-exponent"),
            pytest.param("1.5E+1", 15, id="fraction-exponent-integral"),
            pytest.param("1.0", 1, id="integral-with-zero-fraction"),
            pytest.param("-2.000", -2, id="negative-integral-with-zero-fraction"),
            pytest.param("1.", 1, id="trailing-dot"),
            pytest.param("+3", 3, id="plus-sign"),
            pytest.param("007", 7, id="leading-zeros"),
            pytest.param("0e1000", 0, id="zero-huge-exponent"),
            pytest.param("-17.4E37", -174 * 10**36, id="negative-exponent-integral"),
        ],
    )
    def test_integral_numbers_are_int(self, text: str, expected: int) -> None:
        result = decode_value({"N": text})
        assert result == expected
        assert type(result) is int

    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            pytest.param("1.5", Decimal("1.5"), id="fraction"),
            pytest.param("-0.1357", Decimal("-0.1357"), id="negative-fraction"),
            pytest.param(".123", Decimal("0.123"), id="leading-dot"),
            pytest.param("0001.23", Decimal("1.23"), id="leading-zeros"),
            pytest.param("1.50", Decimal("1.50"), id="trailing-zero-kept"),
            pytest.param("1.5E-7", Decimal("1.5E-7"), id="negative-exponent"),
            pytest.param("12345E-2", Decimal("123.45"), id="exponent-fraction"),
        ],
    )
    def test_fractional_numbers_are_decimal(self, text: str, expected: Decimal) -> None:
        result = decode_value({"N": text})
        assert type(result) is Decimal
        assert result == expected

    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            pytest.param(
                "12345678901234567890123456789012345678",
                12345678901234567890123456789012345678,
                id="positive-int",
            ),
            pytest.param(
                "-12345678901234567890123456789012345678",
                -12345678901234567890123456789012345678,
                id="negative-int",
            ),
            pytest.param(
                "1.2345678901234567890123456789012345678",
                Decimal("1.2345678901234567890123456789012345678"),
                id="fraction",
            ),
            pytest.param(
                "-1234567890123456789.0123456789012345678",
                Decimal("-1234567890123456789.0123456789012345678"),
                id="negative-fraction",
            ),
            pytest.param("1E-130", Decimal("1E-130"), id="smallest"),
            pytest.param("-1E-130", Decimal("-1E-130"), id="smallest-negative"),
            pytest.param(MAX_38, MAX_38_INT, id="largest"),
            pytest.param("-" + MAX_38, -MAX_38_INT, id="largest-negative"),
            pytest.param(
                "1.2345678901234567890123456789012345678000",
                Decimal("1.2345678901234567890123456789012345678"),
                id="38-digits-plus-trailing-zeros",
            ),
        ],
    )
    def test_38_digit_numbers_are_exact(self, text: str, expected: int | Decimal) -> None:
        result = decode_value({"N": text})
        assert result == expected
        assert type(result) is type(expected)
        if isinstance(result, Decimal):
            # exact: every digit of the text, not rounded to the default 28-digit context
            assert result.as_tuple() == Decimal(text).as_tuple()

    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            pytest.param({"SS": ["a", "b", "a"]}, {"a", "b"}, id="SS"),
            pytest.param({"NS": ["1", "2.5", "-3", "1E+2"]}, {1, Decimal("2.5"), -3, 100}, id="NS"),
            pytest.param({"BS": [b64(b"\x00"), b64(b"\xff")]}, {b"\x00", b"\xff"}, id="BS-base64"),
            pytest.param({"BS": [b"\x00", bytearray(b"\xff")]}, {b"\x00", b"\xff"}, id="BS-bytes"),
            pytest.param({"SS": []}, set(), id="SS-empty-is-tolerated"),
        ],
    )
    def test_sets(self, value: dict[str, Any], expected: set[Any]) -> None:
        result = decode_value(value)
        assert type(result) is set
        assert result == expected

    def test_ns_elements_choose_int_or_decimal(self) -> None:
        result = decode_value({"NS": ["10", "1.5"]})
        assert {type(x) for x in result} == {int, Decimal}

    def test_nested_map_and_list(self) -> None:
        value = {
            "M": {
                "a": {"L": [{"N": "1"}, {"M": {"b": {"SS": ["x"]}}}, {"NULL": True}]},
                "c": {"B": b64(b"\x01\x02")},
            }
        }
        assert decode_value(value) == {"a": [1, {"b": {"x"}}, None], "c": b"\x01\x02"}

    def test_list_tuple_is_accepted(self) -> None:
        assert decode_value({"L": ({"S": "a"}, {"N": "2"})}) == ["a", 2]

    @pytest.mark.parametrize("depth", [10, 32, 200])
    def test_deep_maps(self, depth: int) -> None:
        result = decode_value(nest_map(depth, {"S": "leaf"}))
        for _ in range(depth):
            assert list(result) == ["k"]
            result = result["k"]
        assert result == "leaf"

    @pytest.mark.parametrize("depth", [10, 32, 200])
    def test_deep_lists(self, depth: int) -> None:
        result = decode_value(nest_list(depth, {"N": "7"}))
        for _ in range(depth):
            assert len(result) == 1
            result = result[0]
        assert result == 7

    def test_too_deep_raises_the_module_error(self) -> None:
        with expect_error("NewImage.doc", "nested too deeply", "32 levels"):
            decode_value(nest_map(5000, {"S": "leaf"}), path="NewImage.doc")

    @pytest.mark.parametrize(
        ("value", "path", "fragments"),
        [
            pytest.param(
                {"X": 1}, "v", ("unknown type tag 'X'", "B, BOOL, BS, L"), id="unknown-tag"
            ),
            pytest.param(
                {"s": "x"}, "v", ("unknown type tag 's'", "did you mean 'S'"), id="lowercase-tag"
            ),
            pytest.param({}, "v", ("exactly one type tag", "got 0 keys"), id="no-tag"),
            pytest.param(
                {"S": "x", "N": "1"}, "v", ("exactly one type tag", "'S', 'N'"), id="two-tags"
            ),
            pytest.param("x", "v", ("expected an AttributeValue", "got str"), id="not-an-object"),
            pytest.param(None, "v", ("expected an AttributeValue", "got NoneType"), id="none"),
            pytest.param({"S": 5}, "v", ("S value must be a str", "got int 5"), id="S-int"),
            pytest.param({"N": 5}, "v", ("N value must be a str", "as strings"), id="N-int"),
            pytest.param(
                {"BOOL": "yes"}, "v", ("BOOL value must be true or false",), id="BOOL-str"
            ),
            pytest.param({"BOOL": 1}, "v", ("BOOL value must be true or false",), id="BOOL-int"),
            pytest.param({"NULL": False}, "v", ("NULL value must be true",), id="NULL-false"),
            pytest.param({"L": {}}, "v", ("L value must be a list",), id="L-object"),
            pytest.param({"M": []}, "v", ("M value must be an object",), id="M-list"),
            pytest.param({"SS": "abc"}, "v", ("SS value must be a list of str",), id="SS-str"),
            pytest.param(
                {"SS": ["a", 1]}, "v[1]", ("SS value must be a list of str",), id="SS-int-element"
            ),
            pytest.param(
                {"NS": ["1", "x"]}, "v[1]", ("'x' is not a DynamoDB number",), id="NS-bad-element"
            ),
            pytest.param({"BS": ["AA==", "!"]}, "v[1]", ("not valid base64",), id="BS-bad-element"),
            pytest.param({"B": 5}, "v", ("B value must be base64 text or bytes",), id="B-int"),
            pytest.param(
                {"B": "aGVsbG8"}, "v", ("not valid base64", "padding"), id="B-bad-padding"
            ),
            pytest.param({"B": "aGVs bG8="}, "v", ("not valid base64",), id="B-space"),
            pytest.param({"B": "é"}, "v", ("not valid base64",), id="B-non-ascii"),
        ],
    )
    def test_errors(self, value: Any, path: str, fragments: tuple[str, ...]) -> None:
        with expect_error(path, *fragments):
            decode_value(value, path="v")

    @pytest.mark.parametrize(
        ("text", "fragment"),
        [
            pytest.param("", "not a DynamoDB number", id="empty"),
            pytest.param("abc", "not a DynamoDB number", id="word"),
            pytest.param(" 1", "no spaces", id="leading-space"),
            pytest.param("1 ", "not a DynamoDB number", id="trailing-space"),
            pytest.param("1_000", "underscores", id="underscore"),
            pytest.param("NaN", "NaN or Infinity", id="nan"),
            pytest.param("Infinity", "not a DynamoDB number", id="infinity"),
            pytest.param("-", "not a DynamoDB number", id="lone-minus"),
            pytest.param("1e", "not a DynamoDB number", id="bare-exponent"),
            pytest.param("0x10", "not a DynamoDB number", id="hex"),
            pytest.param("1..2", "not a DynamoDB number", id="two-dots"),
            pytest.param("\u0661", "not a DynamoDB number", id="arabic-indic-digit"),
            pytest.param(
                "\u0661\u0662.\u0665", "not a DynamoDB number", id="arabic-indic-fraction"
            ),
            pytest.param(
                "123456789012345678901234567890123456789", "39 significant digits", id="39-digits"
            ),
            pytest.param(
                "-1.23456789012345678901234567890123456789",
                "39 significant digits",
                id="39-digits-fraction",
            ),
            pytest.param("1E+126", "too large", id="too-large"),
            pytest.param("-1E+126", "too large", id="too-large-negative"),
            pytest.param("1E-131", "too small", id="too-small"),
            pytest.param("0.9E-130", "too small", id="too-small-fraction"),
            pytest.param(
                "1e99999999999999999999999", "out of DynamoDB's range", id="absurd-exponent"
            ),
        ],
    )
    def test_number_errors(self, text: str, fragment: str) -> None:
        with expect_error("NewImage.price", fragment):
            decode_value({"N": text}, path="NewImage.price")

    def test_error_without_path(self) -> None:
        with pytest.raises(AttributeValueError) as excinfo:
            decode_value({"X": 1})
        assert excinfo.value.path == ""
        assert str(excinfo.value).startswith("unknown type tag 'X'")

    def test_list_error_index(self) -> None:
        value = {"L": [{"S": "a"}, {"L": [{"N": "1"}, {"N": "one"}]}]}
        with expect_error("v[1][1]", "'one' is not a DynamoDB number"):
            decode_value(value, path="v")


class TestDecode:
    def test_image(self) -> None:
        image = {
            "name": {"S": "x"},
            "n": {"N": "1"},
            "price": {"N": "9.99"},
            "tags": {"SS": ["a"]},
            "address": {"M": {"zip": {"S": "12345"}}},
            "avatar": {"B": "AAE="},
            "gone": {"NULL": True},
            "ok": {"BOOL": False},
            "list": {"L": [{"N": "-1"}, {"S": "s"}]},
        }
        assert decode(image) == {
            "name": "x",
            "n": 1,
            "price": Decimal("9.99"),
            "tags": {"a"},
            "address": {"zip": "12345"},
            "avatar": b"\x00\x01",
            "gone": None,
            "ok": False,
            "list": [-1, "s"],
        }

    def test_keeps_attribute_order(self) -> None:
        image = {name: {"S": name} for name in ["z", "a", "m"]}
        assert list(decode(image)) == ["z", "a", "m"]

    def test_from_msgspec_json(self) -> None:
        raw = b'{"pk":{"S":"user#1"},"v":{"N":"3"},"b":{"B":"aGk="},"s":{"NS":["1.5"]}}'
        assert decode(msgspec.json.decode(raw)) == {
            "pk": "user#1",
            "v": 3,
            "b": b"hi",
            "s": {Decimal("1.5")},
        }

    def test_empty_item(self) -> None:
        assert decode({}) == {}

    def test_mapping_that_is_not_a_dict(self) -> None:
        assert decode(MappingProxyType({"a": {"S": "x"}})) == {"a": "x"}

    def test_nested_10_levels_of_maps_and_lists(self) -> None:
        value: dict[str, Any] = {"N": "1.25"}
        for level in range(10):
            value = {"M": {"m": value}} if level % 2 else {"L": [{"NULL": True}, value]}
        result: Any = decode({"top": value})["top"]
        for level in reversed(range(10)):
            result = result["m"] if level % 2 else result[1]
        assert result == Decimal("1.25")

    @pytest.mark.parametrize(
        ("image", "prefix", "path", "fragment"),
        [
            pytest.param(
                {"address": {"M": {"city": {"S": "x"}, "zip": {"N": "1x"}}}},
                "NewImage",
                "NewImage.address.zip",
                "'1x' is not a DynamoDB number",
                id="map-in-image",
            ),
            pytest.param(
                {"address": {"M": {"zip": {"N": "1x"}}}},
                "",
                "address.zip",
                "'1x' is not a DynamoDB number",
                id="no-prefix",
            ),
            pytest.param(
                {"tags": {"L": [{"S": "a"}, {"S": "b"}, {"S": 5}]}},
                "NewImage",
                "NewImage.tags[2]",
                "S value must be a str",
                id="list-element",
            ),
            pytest.param(
                {"a": {"L": [{"S": "x"}, {"M": {"b": {"L": [{"X": 1}]}}}]}},
                "OldImage",
                "OldImage.a[1].b[0]",
                "unknown type tag 'X'",
                id="list-map-list",
            ),
            pytest.param(
                {"address": {"M": {"zip": {"X": 1}}}},
                "NewImage",
                "NewImage.address.zip",
                "unknown type tag 'X'",
                id="unknown-tag",
            ),
            pytest.param(
                {"address": {"M": {"zip": "12345"}}},
                "NewImage",
                "NewImage.address.zip",
                "expected an AttributeValue",
                id="bare-value",
            ),
            pytest.param(
                {"address": {"M": {"zip": {"S": "1", "N": "1"}}}},
                "NewImage",
                "NewImage.address.zip",
                "exactly one type tag",
                id="two-tags",
            ),
            pytest.param(
                {"pk": {"S": "x"}, "ttl": {"N": "1E+200"}},
                "Keys",
                "Keys.ttl",
                "too large",
                id="out-of-range",
            ),
            pytest.param(
                {"address": {"M": {"zip": {"B": "not base64!"}}}},
                "NewImage",
                "NewImage.address.zip",
                "not valid base64",
                id="bad-base64",
            ),
            pytest.param(
                {"address": {"M": {"zip": {"BOOL": "yes"}}}},
                "NewImage",
                "NewImage.address.zip",
                "BOOL value must be true or false",
                id="wrong-value-type",
            ),
            pytest.param(
                {"address": {"L": {}}},
                "NewImage",
                "NewImage.address",
                "L value must be a list",
                id="L-object",
            ),
        ],
    )
    def test_error_paths(
        self, image: dict[str, Any], prefix: str, path: str, fragment: str
    ) -> None:
        with expect_error(path, fragment):
            decode(image, path=prefix)

    def test_non_str_map_key(self) -> None:
        image: Any = {"address": {"M": {1: {"S": "x"}}}}
        with expect_error("NewImage.address", "map key 1 (int) is not a str", "str()"):
            decode(image, path="NewImage")

    def test_str_subclass_key_becomes_str(self) -> None:
        result = decode({Color.RED: {"N": "1"}})
        assert result == {"red": 1}
        assert [type(key) for key in result] == [str]

    def test_non_str_attribute_name(self) -> None:
        image: Any = {("a",): {"S": "x"}}
        with expect_error("NewImage", "map key ('a',) (tuple) is not a str"):
            decode(image, path="NewImage")

    @pytest.mark.parametrize(
        "item",
        [
            pytest.param([{"S": "x"}], id="list"),
            pytest.param("x", id="str"),
            pytest.param(None, id="none"),
        ],
    )
    def test_item_that_is_not_a_map(self, item: Any) -> None:
        with expect_error("NewImage", "expected an item", '{"name": {"S": "x"}}'):
            decode(item, path="NewImage")

    def test_too_deep_raises_the_module_error(self) -> None:
        with expect_error("NewImage", "nested too deeply"):
            decode({"doc": nest_list(5000, {"S": "x"})}, path="NewImage")

    def test_error_is_a_value_error_without_internal_chain(self) -> None:
        with pytest.raises(ValueError, match="unknown type tag") as excinfo:
            decode({"a": {"X": 1}})
        assert excinfo.value.__cause__ is None
        assert excinfo.value.__suppress_context__


class TestEncodeValue:
    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            pytest.param("x", {"S": "x"}, id="str"),
            pytest.param("", {"S": ""}, id="str-empty"),
            pytest.param(True, {"BOOL": True}, id="bool-true-not-N"),
            pytest.param(False, {"BOOL": False}, id="bool-false-not-N"),
            pytest.param(None, {"NULL": True}, id="none"),
            pytest.param(0, {"N": "0"}, id="int-zero"),
            pytest.param(-42, {"N": "-42"}, id="int-negative"),
            pytest.param(10**37, {"N": "1" + "0" * 37}, id="int-38-digits"),
            pytest.param(10**125, {"N": "1" + "0" * 125}, id="int-largest-power"),
            pytest.param(MAX_38_INT, {"N": str(MAX_38_INT)}, id="int-largest"),
            pytest.param(1.5, {"N": "1.5"}, id="float"),
            pytest.param(0.1, {"N": "0.1"}, id="float-shortest-repr"),
            pytest.param(1.0, {"N": "1"}, id="float-integral"),
            pytest.param(100.0, {"N": "100"}, id="float-integral-zeros"),
            pytest.param(-2.5, {"N": "-2.5"}, id="float-negative"),
            pytest.param(-0.0, {"N": "0"}, id="float-negative-zero"),
            pytest.param(1e16, {"N": "10000000000000000"}, id="float-exponent"),
            pytest.param(1e-7, {"N": "1E-7"}, id="float-small"),
            pytest.param(1.5e125, {"N": "15" + "0" * 124}, id="float-large"),
            pytest.param(1.5e-130, {"N": "1.5E-130"}, id="float-tiny"),
            pytest.param(Decimal("1.5"), {"N": "1.5"}, id="decimal"),
            pytest.param(Decimal("1.500"), {"N": "1.5"}, id="decimal-trailing-zeros"),
            pytest.param(Decimal("100"), {"N": "100"}, id="decimal-integral"),
            pytest.param(Decimal("1E+2"), {"N": "100"}, id="decimal-exponent-integral"),
            pytest.param(Decimal("-0"), {"N": "0"}, id="decimal-negative-zero"),
            pytest.param(Decimal("-0.00"), {"N": "0"}, id="decimal-negative-zero-fraction"),
            pytest.param(Decimal("0E-7"), {"N": "0"}, id="decimal-zero-negative-exponent"),
            pytest.param(Decimal("10.0"), {"N": "10"}, id="decimal-integral-fraction"),
            pytest.param(Decimal("-12.3400"), {"N": "-12.34"}, id="decimal-negative"),
            pytest.param(Decimal("0.0000001"), {"N": "1E-7"}, id="decimal-exponent-fraction"),
            pytest.param(Decimal("1.5E+3"), {"N": "1500"}, id="decimal-positive-exponent"),
            pytest.param(Decimal("0E+500"), {"N": "0"}, id="decimal-zero-huge-exponent"),
            pytest.param(Decimal("0.001"), {"N": "0.001"}, id="decimal-small"),
            pytest.param(Decimal("-1E-130"), {"N": "-1E-130"}, id="decimal-smallest"),
            pytest.param(Decimal(MAX_38), {"N": str(MAX_38_INT)}, id="decimal-largest"),
            pytest.param(
                Decimal("1.2345678901234567890123456789012345678"),
                {"N": "1.2345678901234567890123456789012345678"},
                id="decimal-38-digits",
            ),
            pytest.param(
                Decimal("1.23456789012345678901234567890123456780000"),
                {"N": "1.2345678901234567890123456789012345678"},
                id="decimal-38-digits-trailing-zeros",
            ),
            pytest.param(b"hello", {"B": "aGVsbG8="}, id="bytes"),
            pytest.param(b"", {"B": ""}, id="bytes-empty"),
            pytest.param(bytearray(b"hello"), {"B": "aGVsbG8="}, id="bytearray"),
            pytest.param(memoryview(b"hello"), {"B": "aGVsbG8="}, id="memoryview"),
            pytest.param([1, "a"], {"L": [{"N": "1"}, {"S": "a"}]}, id="list"),
            pytest.param((1, "a"), {"L": [{"N": "1"}, {"S": "a"}]}, id="tuple"),
            pytest.param({"a": 1}, {"M": {"a": {"N": "1"}}}, id="dict"),
            pytest.param({"b", "a"}, {"SS": ["a", "b"]}, id="set-str-sorted"),
            pytest.param(frozenset({"a"}), {"SS": ["a"]}, id="frozenset"),
            pytest.param({3, 1.5, Decimal("2")}, {"NS": ["1.5", "2", "3"]}, id="set-numbers"),
            pytest.param({0.1, Decimal("0.1")}, {"NS": ["0.1"]}, id="set-numbers-deduplicated"),
            pytest.param({b"\x01", b"\x00"}, {"BS": ["AA==", "AQ=="]}, id="set-bytes"),
            pytest.param(Color.RED, {"S": "red"}, id="str-enum"),
            pytest.param(Level.HIGH, {"N": "3"}, id="int-enum"),
            pytest.param({Color.RED}, {"SS": ["red"]}, id="set-of-str-enum"),
            pytest.param(OrderedDict(a=True), {"M": {"a": {"BOOL": True}}}, id="ordered-dict"),
            pytest.param(MappingProxyType({"a": None}), {"M": {"a": {"NULL": True}}}, id="mapping"),
            pytest.param(Point(1, 2), {"L": [{"N": "1"}, {"N": "2"}]}, id="named-tuple"),
        ],
    )
    def test_values(self, value: Any, expected: dict[str, Any]) -> None:
        assert encode_value(value) == expected

    def test_bool_is_bool_inside_containers(self) -> None:
        assert encode_value([True, 1]) == {"L": [{"BOOL": True}, {"N": "1"}]}

    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            pytest.param(b"hi", {"B": b"hi"}, id="bytes"),
            pytest.param(bytearray(b"hi"), {"B": b"hi"}, id="bytearray"),
            pytest.param(memoryview(b"hi"), {"B": b"hi"}, id="memoryview"),
            pytest.param({b"b", b"a"}, {"BS": [b"a", b"b"]}, id="set"),
            pytest.param({"x": [b"a"]}, {"M": {"x": {"L": [{"B": b"a"}]}}}, id="nested"),
        ],
    )
    def test_binary_as_bytes(self, value: Any, expected: dict[str, Any]) -> None:
        result = encode_value(value, binary="bytes")
        assert result == expected

    def test_binary_as_bytes_gives_bytes_type(self) -> None:
        assert type(encode_value(bytearray(b"x"), binary="bytes")["B"]) is bytes

    def test_bad_binary_option(self) -> None:
        with pytest.raises(ValueError, match="binary must be 'base64' or 'bytes'"):
            encode_value(b"x", binary="hex")  # type: ignore[arg-type]

    def test_deep_nesting(self) -> None:
        value: Any = "leaf"
        for _ in range(200):
            value = {"k": [value]}
        result = encode_value(value)
        for _ in range(200):
            result = result["M"]["k"]["L"][0]
        assert result == {"S": "leaf"}

    def test_too_deep_raises_the_module_error(self) -> None:
        value: Any = "leaf"
        for _ in range(5000):
            value = [value]
        with expect_error("Item", "nested too deeply"):
            encode_value(value, path="Item")

    def test_reference_cycle(self) -> None:
        value: dict[str, Any] = {}
        value["self"] = value
        with expect_error("Item", "nested too deeply", "reference cycle"):
            encode_value(value, path="Item")

    @pytest.mark.parametrize(
        ("value", "fragments"),
        [
            pytest.param(set(), ("empty set", "None", "drop the attribute"), id="empty-set"),
            pytest.param(frozenset(), ("empty set",), id="empty-frozenset"),
            pytest.param(
                {1, "a"}, ("only str (SS), only numbers (NS)", "int 1", "str 'a'"), id="mixed-set"
            ),
            pytest.param(
                {b"a", "a"}, ("only str (SS)", "use a list for mixed"), id="mixed-bytes-str-set"
            ),
            pytest.param(
                {Binary(b"a"), Binary(b"b")},
                ("only bytes (BS)", "boto3.dynamodb.types.Binary", "convert each to bytes first"),
                id="boto3-binary-set",
            ),
            pytest.param(
                Binary(b"a"),
                ("type boto3.dynamodb.types.Binary", "convert it to bytes first: bytes(value)"),
                id="boto3-binary",
            ),
            pytest.param({True}, ("only str (SS)", "bool True"), id="bool-set"),
            pytest.param({None}, ("only str (SS)", "NoneType"), id="none-set"),
            pytest.param({(1, 2)}, ("only str (SS)", "tuple"), id="tuple-set"),
            pytest.param({float("nan")}, ("not a finite number",), id="set-with-nan"),
            pytest.param(float("nan"), ("float nan is not a finite number", "NULL"), id="nan"),
            pytest.param(float("inf"), ("float inf is not a finite number",), id="inf"),
            pytest.param(float("-inf"), ("float -inf is not a finite number",), id="minus-inf"),
            pytest.param(Decimal("NaN"), ("not a finite number",), id="decimal-nan"),
            pytest.param(Decimal("sNaN"), ("not a finite number",), id="decimal-snan"),
            pytest.param(Decimal("-Infinity"), ("not a finite number",), id="decimal-infinity"),
            pytest.param(
                Decimal("1.23456789012345678901234567890123456789"),
                ("39 significant digits", "at most 38", "quantize"),
                id="decimal-39-digits",
            ),
            pytest.param(
                123456789012345678901234567890123456789,
                ("39 significant digits", "at most 38"),
                id="int-39-digits",
            ),
            pytest.param(2**130, ("40 significant digits",), id="int-2-to-130"),
            pytest.param(10**126, ("too large", "9.99...E+125"), id="int-too-large"),
            pytest.param(-(10**5000), ("too large",), id="int-huge"),
            pytest.param(Decimal("1E+126"), ("too large",), id="decimal-too-large"),
            pytest.param(Decimal("1E-131"), ("too small", "1E-130"), id="decimal-too-small"),
            pytest.param(1e300, ("too large",), id="float-too-large"),
            pytest.param(5e-324, ("too small",), id="float-too-small"),
            pytest.param(
                datetime.datetime(2024, 1, 1),
                ("cannot encode a value of type datetime.datetime", "ISO 8601"),
                id="datetime",
            ),
            pytest.param(object(), ("cannot encode a value of type object",), id="object"),
            pytest.param(complex(1, 2), ("type complex",), id="complex"),
            pytest.param(iter([1]), ("type list_iterator",), id="iterator"),
            pytest.param({1: "a"}, ("map key 1 (int) is not a str", "str()"), id="non-str-key"),
        ],
    )
    def test_errors(self, value: Any, fragments: tuple[str, ...]) -> None:
        with expect_error("Item.attr", *fragments):
            encode_value(value, path="Item.attr")

    def test_error_paths_in_nested_values(self) -> None:
        value = {"a": [1, {"b": float("nan")}]}
        with expect_error("Item.a[1].b", "not a finite number"):
            encode_value(value, path="Item")
        with expect_error("a[1].b", "not a finite number"):
            encode_value(value)


class TestEncode:
    def test_item(self) -> None:
        item = {
            "name": "x",
            "n": 1,
            "price": Decimal("9.99"),
            "ratio": 0.5,
            "tags": {"a"},
            "address": {"zip": "12345"},
            "avatar": b"\x00\x01",
            "gone": None,
            "ok": False,
            "list": [-1, "s"],
        }
        assert encode(item) == {
            "name": {"S": "x"},
            "n": {"N": "1"},
            "price": {"N": "9.99"},
            "ratio": {"N": "0.5"},
            "tags": {"SS": ["a"]},
            "address": {"M": {"zip": {"S": "12345"}}},
            "avatar": {"B": "AAE="},
            "gone": {"NULL": True},
            "ok": {"BOOL": False},
            "list": {"L": [{"N": "-1"}, {"S": "s"}]},
        }

    def test_binary_as_bytes(self) -> None:
        assert encode({"b": b"\x00", "s": {b"\x01"}}, binary="bytes") == {
            "b": {"B": b"\x00"},
            "s": {"BS": [b"\x01"]},
        }

    def test_str_subclass_key(self) -> None:
        result = encode({Color.RED: 1})
        assert result == {"red": {"N": "1"}}
        assert [type(key) for key in result] == [str]

    def test_nested_10_levels(self) -> None:
        value: Any = Decimal("-0.5")
        for level in range(10):
            value = {"m": value} if level % 2 else [value]
        result: Any = encode({"top": value})["top"]
        for level in reversed(range(10)):
            result = result["M"]["m"] if level % 2 else result["L"][0]
        assert result == {"N": "-0.5"}

    @pytest.mark.parametrize(
        ("item", "prefix", "path", "fragment"),
        [
            pytest.param(
                {"address": {"zip": float("inf")}},
                "NewImage",
                "NewImage.address.zip",
                "not a finite number",
                id="map",
            ),
            pytest.param(
                {"address": {"zip": set()}},
                "",
                "address.zip",
                "empty set",
                id="no-prefix",
            ),
            pytest.param(
                {"tags": ["a", "b", object()]},
                "NewImage",
                "NewImage.tags[2]",
                "cannot encode a value of type object",
                id="list-element",
            ),
            pytest.param(
                {"a": ({"b": [1, {1, "x"}]},)},
                "Item",
                "Item.a[0].b[1]",
                "only str (SS)",
                id="list-map-list",
            ),
            pytest.param(
                {"address": {2: "x"}},
                "Item",
                "Item.address",
                "map key 2 (int) is not a str",
                id="non-str-key",
            ),
        ],
    )
    def test_error_paths(self, item: dict[str, Any], prefix: str, path: str, fragment: str) -> None:
        with expect_error(path, fragment):
            encode(item, path=prefix)

    def test_non_str_attribute_name(self) -> None:
        item: Any = {1: "x"}
        with expect_error("Item", "map key 1 (int) is not a str"):
            encode(item, path="Item")

    @pytest.mark.parametrize(
        "item",
        [pytest.param(["x"], id="list"), pytest.param("x", id="str"), pytest.param(1, id="int")],
    )
    def test_item_that_is_not_a_map(self, item: Any) -> None:
        with expect_error("Item", "expected an item"):
            encode(item, path="Item")


ROUND_TRIP_VALUES = [
    pytest.param("text", id="str"),
    pytest.param("", id="str-empty"),
    pytest.param(0, id="int-zero"),
    pytest.param(-7, id="int-negative"),
    pytest.param(12345678901234567890123456789012345678, id="int-38-digits"),
    pytest.param(-12345678901234567890123456789012345678, id="int-38-digits-negative"),
    pytest.param(MAX_38_INT, id="int-largest"),
    pytest.param(Decimal("1.5"), id="decimal"),
    pytest.param(Decimal("-0.001"), id="decimal-negative"),
    pytest.param(Decimal("1.2345678901234567890123456789012345678"), id="decimal-38-digits"),
    pytest.param(Decimal("-1234567890123456789.0123456789012345678"), id="decimal-38-negative"),
    pytest.param(Decimal("1E-130"), id="decimal-smallest"),
    pytest.param(Decimal("-1E-130"), id="decimal-smallest-negative"),
    pytest.param(True, id="bool-true"),
    pytest.param(False, id="bool-false"),
    pytest.param(None, id="none"),
    pytest.param(b"\x00\xffbinary", id="bytes"),
    pytest.param(b"", id="bytes-empty"),
    pytest.param({"a": 1, "b": {"c": [None, "x"]}}, id="dict"),
    pytest.param({}, id="dict-empty"),
    pytest.param([1, "a", [b"x", {"k": False}]], id="list"),
    pytest.param([], id="list-empty"),
    pytest.param({"a", "b", "c"}, id="set-str"),
    pytest.param({1, Decimal("2.5"), -3, MAX_38_INT}, id="set-numbers"),
    pytest.param({b"a", b"\x00"}, id="set-bytes"),
]


def assert_same(left: Any, right: Any) -> None:
    """Equal, and of the same types all the way down (1 == True == Decimal(1) otherwise)."""
    assert type(left) is type(right), (left, right)
    if isinstance(left, dict):
        assert list(left) == list(right)
        for key in left:
            assert_same(left[key], right[key])
    elif isinstance(left, list):
        assert len(left) == len(right)
        for a, b in zip(left, right, strict=True):
            assert_same(a, b)
    elif isinstance(left, Decimal):
        assert left.as_tuple() == right.as_tuple()
    else:
        assert left == right


class TestRoundTrip:
    @pytest.mark.parametrize("value", ROUND_TRIP_VALUES)
    def test_python_to_dynamodb_and_back(self, value: Any) -> None:
        assert_same(decode_value(encode_value(value)), value)

    @pytest.mark.parametrize("value", ROUND_TRIP_VALUES)
    def test_python_to_dynamodb_and_back_with_bytes(self, value: Any) -> None:
        assert_same(decode_value(encode_value(value, binary="bytes")), value)

    @pytest.mark.parametrize("value", ROUND_TRIP_VALUES)
    def test_through_json_text(self, value: Any) -> None:
        text = msgspec.json.encode(encode({"v": value}))
        assert_same(decode(msgspec.json.decode(text))["v"], value)

    def test_sets_keep_element_types(self) -> None:
        result = decode_value(encode_value({1, Decimal("0.5")}))
        assert sorted(type(x).__name__ for x in result) == ["Decimal", "int"]

    def test_floats_come_back_as_exact_numbers(self) -> None:
        assert decode(encode({"a": 1.0, "b": 0.1, "c": 1e16})) == {
            "a": 1,
            "b": Decimal("0.1"),
            "c": 10**16,
        }

    @pytest.mark.parametrize(
        "value",
        [
            pytest.param({"S": "x"}, id="S"),
            pytest.param({"N": "1.5"}, id="N"),
            pytest.param({"N": "-1E-130"}, id="N-exponent"),
            pytest.param({"B": "AAE="}, id="B"),
            pytest.param({"BOOL": True}, id="BOOL"),
            pytest.param({"NULL": True}, id="NULL"),
            pytest.param({"SS": ["a", "b"]}, id="SS"),
            pytest.param({"NS": ["-1", "0.5", "10"]}, id="NS"),
            pytest.param({"BS": ["AA==", "AQ=="]}, id="BS"),
            pytest.param({"M": {"a": {"L": [{"N": "1"}, {"M": {}}]}}}, id="M-L"),
        ],
    )
    def test_dynamodb_to_python_and_back(self, value: dict[str, Any]) -> None:
        assert encode_value(decode_value(value)) == value

    def test_10_levels_of_maps_and_lists(self) -> None:
        value: Any = {"answer": Decimal("4.2"), "blob": b"\x01", "tags": {"x"}}
        for level in range(12):
            value = {"level": level, "inner": value} if level % 2 else [level, value]
        assert_same(decode(encode({"doc": value}))["doc"], value)


def exact(text: str | bytes) -> dict[str, Any]:
    """What the exact path gives for DynamoDB JSON text."""
    return decode(msgspec.json.decode(text))


class TestDecodeJsonText:
    """`_decode_json`, the fast path records decode keys and images with: for any text it
    gives what `decode(msgspec.json.decode(text))` gives, or None (then the record takes
    that exact path, which also reports errors)."""

    @pytest.mark.parametrize(
        "text",
        [
            pytest.param("{}", id="empty-item"),
            pytest.param('{"s":{"S":"x"},"e":{"S":""},"u":{"S":"žluť 🐍"}}', id="S"),
            pytest.param(r'{"s":{"S":"a \"q\" \\ \n \t \/ end"}}', id="S-escapes"),
            pytest.param('{"s":{"S":"a, b, c"},"t":{"SS":["x,y","z"]}}', id="commas-in-strings"),
            pytest.param(
                '{"a":{"N":"0"},"b":{"N":"-0"},"c":{"N":"42"},"d":{"N":"-17"},'
                '"e":{"N":"1.5"},"f":{"N":"-0.001"},"g":{"N":"123456789.25"},'
                '"h":{"N":"12345678901234567890123456789012345678"},'
                '"i":{"N":"-1.2345678901234567890123456789012345678"}}',
                id="N",
            ),
            pytest.param('{"b":{"B":"aGVsbG8="},"e":{"B":""}}', id="B"),
            pytest.param('{"t":{"BOOL":true},"f":{"BOOL":false},"n":{"NULL":true}}', id="literals"),
            pytest.param(
                '{"ss":{"SS":["a","b"]},"ns":{"NS":["1","2.5","-3"]},"bs":{"BS":["AA==","AQ=="]},'
                '"empty":{"SS":[]}}',
                id="sets",
            ),
            pytest.param(
                '{"m":{"M":{"a":{"L":[{"N":"1"},{"M":{"b":{"SS":["x"]}}},{"NULL":true},'
                '{"L":[]}]},"c":{"M":{}}}}}',
                id="nested",
            ),
            pytest.param('{"pk":{"S":"user#1"},"sk":{"N":"7"}}', id="keys"),
        ],
    )
    def test_what_dynamodb_writes_takes_the_fast_path(self, text: str) -> None:
        fast = attrvalue._decode_json(text.encode())
        assert fast is not None
        assert_same(fast, exact(text))

    @pytest.mark.parametrize(
        "text",
        [
            pytest.param('{"a":{"N":"1.0"},"b":{"N":"1E+2"},"c":{"N":"+3"}}', id="N-integral"),
            pytest.param('{"a":{"N":"007"},"b":{"N":".5"},"c":{"N":"1.50"}}', id="N-unusual"),
            pytest.param('{"a":{"N":"-0.0"},"b":{"N":"1e2"},"c":{"N":"1.5E-7"}}', id="N-exponent"),
            pytest.param(f'{{"a":{{"N":"{MAX_38}"}}}}', id="N-largest"),
            pytest.param('{"a":{"NS":["1.0","1E+2","1"]}}', id="NS-unusual"),
            pytest.param('{ "a" : { "S" : "x" } ,\n "b" : {"N": "1"} }', id="whitespace"),
            pytest.param(r'{"a":{"\u0053":"x"},"\u0062":{"N":"1"}}', id="escaped-keys"),
            pytest.param(r'{"a":{"S":"x\u002c y, z"}}', id="escaped-comma"),
            pytest.param('{"a":{"S":"x"},"a":{"S":"y"}}', id="duplicate-name"),
            pytest.param('{"a":{"S":"x","S":"y"}}', id="duplicate-tag"),
            pytest.param('{"a,b":{"S":"x"},"c":{"M":{"d,e":{"N":"1"}}}}', id="comma-in-name"),
            pytest.param('{"a":{"SS":["x","x"]}}', id="SS-duplicates"),
            pytest.param('{"S":{"S":"x"},"N":{"M":{"N":{"N":"1"}}}}', id="names-like-tags"),
        ],
    )
    def test_unusual_text_gives_the_exact_values(self, text: str) -> None:
        fast = attrvalue._decode_json(text.encode())
        if fast is not None:
            assert_same(fast, exact(text))

    def test_deep_nesting(self) -> None:
        text = msgspec.json.encode({"doc": nest_map(16, nest_list(16, {"N": "1.25"}))})
        fast = attrvalue._decode_json(text)
        assert fast is not None
        assert_same(fast, exact(text))

    @pytest.mark.parametrize(
        "text",
        [
            pytest.param('{"a":{"S":"x","N":"1"}}', id="two-tags"),
            pytest.param('{"a":{"N":"1","S":"x"}}', id="two-tags-reversed"),
            pytest.param('{"a":{"S":"x" , "N":"1"}}', id="two-tags-whitespace"),
            pytest.param('{"a":{"S":"x, y","N":"1"}}', id="two-tags-comma-in-string"),
            pytest.param(r'{"a":{"S":"x\u002c","N":"1"}}', id="two-tags-escaped-comma"),
            pytest.param(r'{"a":{"S":"x","\u004e":"1"}}', id="two-tags-escaped-key"),
            pytest.param('{"a":{"M":{"b":{"S":"x","M":{}}}}}', id="two-tags-in-map"),
            pytest.param('{"a":{"L":[{"S":"x"},{"BOOL":true,"NULL":true}]}}', id="two-in-list"),
            pytest.param('{"a":{"S":null,"N":"1"}}', id="null-and-tag"),
            pytest.param('{"a":{}}', id="no-tag"),
            pytest.param('{"a":{"Q":"1"}}', id="unknown-tag"),
            pytest.param('{"a":{"NULL":false}}', id="NULL-false"),
            pytest.param('{"a":"x"}', id="bare-value"),
            pytest.param('{"a":{"S":1}}', id="S-number"),
            pytest.param('{"a":{"N":"x"}}', id="N-text"),
            pytest.param('{"a":{"N":"1,5"}}', id="N-comma"),
            pytest.param('{"a":{"N":"NaN"}}', id="N-nan"),
            pytest.param('{"a":{"N":"1E+200"}}', id="N-too-large"),
            pytest.param('{"a":{"NS":["1","x"]}}', id="NS-text"),
            pytest.param('{"a":{"B":"not base64"}}', id="B-invalid"),
            pytest.param('{"a":{"BS":["AA==","?"]}}', id="BS-invalid"),
            pytest.param('{"a":{"SS":[1]}}', id="SS-number"),
            pytest.param('{"a":{"M":[]}}', id="M-list"),
            pytest.param('{"a":{"L":{}}}', id="L-object"),
        ],
    )
    def test_bad_items_take_the_exact_path(self, text: str) -> None:
        assert attrvalue._decode_json(text.encode()) is None
        with pytest.raises(AttributeValueError):
            exact(text)

    @pytest.mark.parametrize("text", ['["x"]', "[]", '"x"', "{", "", '{"a":{"S":"x"}} x'])
    def test_text_that_is_not_an_item(self, text: str) -> None:
        assert attrvalue._decode_json(text.encode()) is None

    def test_takes_raw_and_buffers(self) -> None:
        text = b'{"a":{"N":"1"}}'
        for form in (text, bytearray(text), memoryview(text), msgspec.Raw(text)):
            assert attrvalue._decode_json(form) == {"a": 1}

    def test_random_items_decode_as_the_exact_path_does(self) -> None:
        rng = random.Random(6)

        def value(depth: int) -> Any:
            kind = rng.randrange(12 if depth < 4 else 8)
            if kind == 0:
                return rng.choice(["", "x", "a, b", 'q"uote', "back\\slash", "ünï", "\u2028"])
            if kind == 1:
                return rng.randint(1 - 10**38, 10**38 - 1) // 10 ** rng.randrange(38)
            if kind == 2:
                return Decimal(rng.randint(-(10**20), 10**20)).scaleb(-rng.randrange(25))
            if kind == 3:
                return rng.random() < 0.5
            if kind == 4:
                return None
            if kind == 5:
                return rng.randbytes(rng.randrange(8))
            if kind == 6:
                return {rng.choice(["a", "b, c", "d"]) for _ in range(rng.randint(1, 3))}
            if kind == 7:
                return {Decimal(rng.randint(-99, 99)).scaleb(-rng.randrange(3)) for _ in "ab"}
            if kind in (8, 9):
                return {f"k{i}": value(depth + 1) for i in range(rng.randrange(4))}
            return [value(depth + 1) for _ in range(rng.randrange(4))]

        taken = 0
        for _ in range(300):
            item = {f"attr{i}": value(0) for i in range(rng.randrange(1, 8))}
            text = msgspec.json.encode(encode(item))
            fast = attrvalue._decode_json(text)
            assert fast is not None, text
            assert_same(fast, exact(text))
            assert_same(fast, decode(encode(item)))
            taken += 1
        assert taken == 300

    def test_the_number_cache_stays_bounded_and_exact(self) -> None:
        text = msgspec.json.encode(
            {f"n{i}": {"N": str(i)} for i in range(3 * attrvalue._NUMBERS_MAX)}
            | {"d": {"N": "1.25"}, "long": {"N": "123456789012.5"}}
        )
        for _ in range(2):  # the second time from the cache
            fast = attrvalue._decode_json(text)
            assert fast is not None
            assert_same(fast, exact(text))
            assert len(attrvalue._NUMBERS) <= attrvalue._NUMBERS_MAX
        assert "123456789012.5" not in attrvalue._NUMBERS
