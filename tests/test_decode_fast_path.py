"""The fast path's own behaviour: numbers checked without a regex, SS members checked
with a join, maps and lists decoded in place."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from test_attrvalue import assert_same, exact

from flowstream import attrvalue
from flowstream.errors import AttributeValueError
from flowstream.record import decode_records


@pytest.mark.parametrize(
    "number",
    [
        "0", "-0", "7", "-7", "1.5", "-0.25", "10.01", "00012", "-007.5",
        "12345678901234567890123456789012345678", "-1234567890123456789012345678901234567",
        "1234567890123456789012345678901234567.5",
        "1.50", "2.0", "1.", "-.5", ".5", "+1", "--1", "1-", "1.2.3", "-", "", ".",
        "1e2", "1E+2", "-1.5E-7", "0.0", " 1", "1_0", "\u0661", "1\u0662", "NaN", "Infinity",
    ],
)  # fmt: skip
def test_numbers_give_the_exact_values(number: str) -> None:
    text = msgspec.json.encode({"n": {"N": number}, "l": {"L": [{"N": number}]}})
    try:
        expected: Any = exact(text)
    except AttributeValueError:  # bad text: the fast path must give way
        assert attrvalue._decode_json(text) is None
        return
    for _ in range(2):  # the second time from the number cache, if kept there
        fast = attrvalue._decode_json(text)
        assert fast is not None
        assert_same(fast, expected)


@pytest.mark.parametrize(
    "text",
    [
        '{"a":{"SS":["x",1]}}',
        '{"a":{"SS":["x",null]}}',
        '{"a":{"SS":["x",["y"]]}}',
        '{"a":{"SS":"xy"}}',
        '{"a":{"M":{"b":{"SS":[{"S":"x"}]}}}}',
        '{"a":{"L":[{"S":"x"}],"M":{}}}',
        '{"a":{"L":[{"L":[{"S":"x","S":"y","N":"1"}]}]}}',
        '{"a":{"M":"x"}}',
        '{"a":{"L":"x"}}',
    ],
)
def test_unusual_members_and_containers_take_the_exact_path(text: str) -> None:
    assert attrvalue._decode_json(text.encode()) is None


def test_sets_binary_and_nesting_decode_as_the_exact_path_does() -> None:
    text = (
        b'{"ss":{"SS":["b","a","b"]},"ns":{"NS":["1","1.50","-2"]},"bs":{"BS":["AA==","AQ=="]},'
        b'"b":{"B":"aGVsbG8="},"m":{"M":{"l":{"L":[{"M":{"x":{"N":"3"}}},{"L":[{"SS":["q"]}]},'
        b'{"NULL":true},{"BOOL":false},{"B":""}]},"e":{"M":{}}}},"z":{"L":[]}}'
    )
    fast = attrvalue._decode_json(text)
    assert fast is not None
    assert_same(fast, exact(text))


def _record(new_image: str) -> bytes:
    return (
        '{"Records":[{"eventID":"1","eventName":"MODIFY","dynamodb":{"Keys":{"pk":{"S":"a"}},'
        f'"SequenceNumber":"1","NewImage":{new_image},"OldImage":{new_image}}}}}]}}'
    ).encode()


def test_record_images_decode_as_the_exact_path_does() -> None:
    (record,) = decode_records(_record('{"pk":{"S":"a"},"n":{"N":"1.25"},"t":{"SS":["x"]}}'))
    assert record.new_image == exact('{"pk":{"S":"a"},"n":{"N":"1.25"},"t":{"SS":["x"]}}')
    assert record.old_image == record.new_image


def test_record_image_errors_still_name_the_path() -> None:
    (record,) = decode_records(_record('{"a":{"M":{"b":{"SS":["x",1]}}}}'))
    with pytest.raises(AttributeValueError, match=r"NewImage\.a\.b"):
        record.new_image  # noqa: B018
