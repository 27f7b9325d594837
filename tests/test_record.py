"""Tests of `flowstream.record`: decoding GetRecords bodies and Lambda events into
`Record`s, every public property, lazy images, the JSON shape and equality."""

from __future__ import annotations

import base64
import copy
import json
import pickle
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any, ClassVar

import msgspec
import pytest
from boto3_values import wire_image

import flowstream as fs
from flowstream.errors import AttributeValueError, FlowstreamError, RecordDecodeError
from flowstream.record import EventName, Record, StreamViewType, decode_page, decode_records

SHARD = "shardId-00000001700000000000-0a1b2c3d"
STREAM_ARN = "arn:aws:dynamodb:us-east-1:123456789012:table/Users/stream/2024-01-01T00:00:00.000"
ITERATOR = "arn:aws:dynamodb:us-east-1:123456789012:table/Users/stream/2024|1|AAAAAAAAAbcd=="
T_1_7E9 = datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)  # 1.7E9 seconds after the epoch

# A GetRecords response body, byte for byte in the shape DynamoDB Streams sends it.
GET_RECORDS_BODY = b"""{"Records":[{"eventID":"c81e728d9d4c2f636f067f89cc14862c",
"eventName":"MODIFY","eventVersion":"1.1","eventSource":"aws:dynamodb","awsRegion":"us-east-1",
"dynamodb":{"ApproximateCreationDateTime":1.7E9,
"Keys":{"pk":{"S":"user#42"},"sk":{"N":"7"}},
"NewImage":{"pk":{"S":"user#42"},"sk":{"N":"7"},"name":{"S":"Ada"},"balance":{"N":"12.5"},
"exact":{"N":"12345678901234567890.123456789012345678"},"avatar":{"B":"aGVsbG8="},
"active":{"BOOL":true},"nickname":{"NULL":true},
"address":{"M":{"city":{"S":"London"},"zip":{"S":"N1"}}},
"history":{"L":[{"S":"x"},{"N":"1"}]},"tags":{"SS":["a","b"]},"scores":{"NS":["1","2.5"]},
"blobs":{"BS":["AQI="]}},
"OldImage":{"pk":{"S":"user#42"},"sk":{"N":"7"},"name":{"S":"Ada L."}},
"SequenceNumber":"111100000000000000001","SizeBytes":123,"StreamViewType":"NEW_AND_OLD_IMAGES"}}],
"NextShardIterator":"arn:aws:dynamodb:us-east-1:123456789012:table/Users/stream/2024|1|AAAAAAAAAbcd=="}"""

EXPECTED_KEYS = {"pk": "user#42", "sk": 7}
EXPECTED_NEW_IMAGE = {
    "pk": "user#42",
    "sk": 7,
    "name": "Ada",
    "balance": Decimal("12.5"),
    "exact": Decimal("12345678901234567890.123456789012345678"),
    "avatar": b"hello",
    "active": True,
    "nickname": None,
    "address": {"city": "London", "zip": "N1"},
    "history": ["x", 1],
    "tags": {"a", "b"},
    "scores": {1, Decimal("2.5")},
    "blobs": {b"\x01\x02"},
}
EXPECTED_OLD_IMAGE = {"pk": "user#42", "sk": 7, "name": "Ada L."}

# A Lambda event: the same records plus eventSourceARN, and no NextShardIterator.
LAMBDA_EVENT = json.dumps(
    {
        "Records": [
            {
                "eventID": "1",
                "eventName": "INSERT",
                "eventVersion": "1.1",
                "eventSource": "aws:dynamodb",
                "awsRegion": "us-east-1",
                "dynamodb": {
                    "ApproximateCreationDateTime": 1.7e9,
                    "Keys": {"pk": {"S": "user#1"}},
                    "NewImage": {"pk": {"S": "user#1"}, "n": {"N": "1"}},
                    "SequenceNumber": "222200000000000000001",
                    "SizeBytes": 26,
                    "StreamViewType": "NEW_AND_OLD_IMAGES",
                },
                "eventSourceARN": STREAM_ARN,
            },
            {
                "eventID": "2",
                "eventName": "REMOVE",
                "eventVersion": "1.1",
                "eventSource": "aws:dynamodb",
                "awsRegion": "us-east-1",
                "dynamodb": {
                    "ApproximateCreationDateTime": 1.7e9 + 60,
                    "Keys": {"pk": {"S": "user#2"}},
                    "OldImage": {"pk": {"S": "user#2"}, "expires": {"N": "1699999999"}},
                    "SequenceNumber": "222200000000000000002",
                    "SizeBytes": 40,
                    "StreamViewType": "NEW_AND_OLD_IMAGES",
                },
                "userIdentity": {"type": "Service", "principalId": "dynamodb.amazonaws.com"},
                "eventSourceARN": STREAM_ARN,
            },
        ]
    }
).encode()


def _botocore_value(av: dict[str, Any]) -> dict[str, Any]:
    ((tag, inner),) = av.items()
    if tag == "B":
        return {"B": base64.b64decode(inner)}
    if tag == "BS":
        return {"BS": [base64.b64decode(item) for item in inner]}
    if tag == "M":
        return {"M": {name: _botocore_value(value) for name, value in inner.items()}}
    if tag == "L":
        return {"L": [_botocore_value(value) for value in inner]}
    return av


def botocore_style(body: bytes) -> dict[str, Any]:
    """What botocore's parser makes of `body`: timestamps as aware datetimes, binary as
    bytes, and its own ResponseMetadata next to the records."""
    parsed: dict[str, Any] = json.loads(body)
    for record in parsed["Records"]:
        stream = record["dynamodb"]
        stream["ApproximateCreationDateTime"] = datetime.fromtimestamp(
            stream["ApproximateCreationDateTime"], UTC
        )
        for part in ("Keys", "NewImage", "OldImage"):
            if part in stream:
                stream[part] = {k: _botocore_value(v) for k, v in stream[part].items()}
    parsed["ResponseMetadata"] = {
        "RequestId": "R1",
        "HTTPStatusCode": 200,
        "HTTPHeaders": {"content-type": "application/x-amz-json-1.0"},
        "RetryAttempts": 0,
    }
    return parsed


BodyForm = Callable[[bytes], Any]

BODY_FORMS: dict[str, BodyForm] = {
    "bytes": lambda body: body,
    "str": lambda body: body.decode(),
    "bytearray": bytearray,
    "memoryview": memoryview,
    "parsed-dict": json.loads,
    "parsed-with-decimals": lambda body: json.loads(body, parse_float=Decimal, parse_int=Decimal),
    "records-list": lambda body: json.loads(body)["Records"],
    "records-list-text": lambda body: json.dumps(json.loads(body)["Records"]),
    "bytes-with-bom": lambda body: b"\xef\xbb\xbf" + body,  # as .NET tools write files
    "str-with-bom": lambda body: "\ufeff" + body.decode(),  # such a file read as utf-8
}
GET_RECORDS_FORMS: dict[str, BodyForm] = {**BODY_FORMS, "botocore-dict": botocore_style}


def record_json(
    *,
    event_name: str = "MODIFY",
    sequence_number: str = "111100000000000000001",
    keys: str = '{"pk":{"S":"a"}}',
    new_image: str | None = None,
    old_image: str | None = None,
    creation: str | None = "1.7E9",
    extra: str = "",
) -> str:
    parts = [f'"Keys":{keys}', f'"SequenceNumber":"{sequence_number}"']
    if new_image is not None:
        parts.append(f'"NewImage":{new_image}')
    if old_image is not None:
        parts.append(f'"OldImage":{old_image}')
    if creation is not None:
        parts.append(f'"ApproximateCreationDateTime":{creation}')
    return (
        f'{{"eventID":"e-{sequence_number}","eventName":"{event_name}",'
        f'"dynamodb":{{{",".join(parts)}}}{extra}}}'
    )


def one(record: str, *, shard_id: str | None = None) -> Record:
    (decoded,) = decode_records(f'{{"Records":[{record}]}}', shard_id=shard_id)
    return decoded


class TestGetRecordsBody:
    @pytest.mark.parametrize("form", GET_RECORDS_FORMS, ids=list(GET_RECORDS_FORMS))
    def test_every_property(self, form: str) -> None:
        (record,) = decode_records(GET_RECORDS_FORMS[form](GET_RECORDS_BODY), shard_id=SHARD)

        assert record.event_id == "c81e728d9d4c2f636f067f89cc14862c"
        assert record.event_name is EventName.MODIFY
        assert record.keys == EXPECTED_KEYS
        assert record.new_image == EXPECTED_NEW_IMAGE
        assert record.old_image == EXPECTED_OLD_IMAGE
        assert record.sequence_number == "111100000000000000001"
        assert record.shard_id == SHARD
        assert record.approximate_creation_time == T_1_7E9
        assert record.size_bytes == 123
        assert record.stream_view_type is StreamViewType.NEW_AND_OLD_IMAGES
        assert record.is_ttl_delete is False
        assert (record.event_version, record.event_source, record.aws_region) == (
            "1.1",
            "aws:dynamodb",
            "us-east-1",
        )
        assert record.event_source_arn == ""

    @pytest.mark.parametrize("form", GET_RECORDS_FORMS, ids=list(GET_RECORDS_FORMS))
    def test_decoded_values_keep_their_types(self, form: str) -> None:
        (record,) = decode_records(GET_RECORDS_FORMS[form](GET_RECORDS_BODY))
        image = record.new_image
        assert image is not None
        # == would let 7 == Decimal(7) or 1.0 == 1 through
        assert type(image["sk"]) is int
        assert type(image["balance"]) is Decimal
        assert str(image["exact"]) == "12345678901234567890.123456789012345678"
        assert type(image["avatar"]) is bytes

    def test_shard_id_is_empty_when_not_given(self) -> None:
        (record,) = decode_records(GET_RECORDS_BODY)
        assert record.shard_id == ""

    def test_decode_page_gives_the_next_shard_iterator(self) -> None:
        records, next_iterator = decode_page(GET_RECORDS_BODY)
        assert [r.sequence_number for r in records] == ["111100000000000000001"]
        assert next_iterator == ITERATOR

    def test_decode_page_of_a_closed_shard_end_has_no_iterator(self) -> None:
        assert decode_page(b'{"Records":[]}') == ([], None)

    def test_empty_page(self) -> None:
        assert decode_records(b'{"Records":[],"NextShardIterator":"x"}') == []

    def test_botocore_aware_datetime_in_another_zone_is_converted_to_utc(self) -> None:
        body = botocore_style(GET_RECORDS_BODY)
        plus_two = timezone(timedelta(hours=2))
        body["Records"][0]["dynamodb"]["ApproximateCreationDateTime"] = T_1_7E9.astimezone(plus_two)
        (record,) = decode_records(body)
        created = record.approximate_creation_time
        assert created == T_1_7E9
        assert created is not None
        assert created.utcoffset() == timedelta(0)


class TestLambdaEvent:
    LAMBDA_FORMS: ClassVar[dict[str, BodyForm]] = {
        k: BODY_FORMS[k] for k in BODY_FORMS if k not in ("bytearray", "memoryview")
    }

    @pytest.mark.parametrize("form", LAMBDA_FORMS, ids=list(LAMBDA_FORMS))
    def test_every_property(self, form: str) -> None:
        insert, remove = decode_records(self.LAMBDA_FORMS[form](LAMBDA_EVENT))

        assert insert.event_source_arn == remove.event_source_arn == STREAM_ARN
        assert insert.event_name is EventName.INSERT
        assert insert.keys == {"pk": "user#1"}
        assert insert.new_image == {"pk": "user#1", "n": 1}
        assert insert.old_image is None
        assert insert.is_ttl_delete is False

        assert remove.event_name is EventName.REMOVE
        assert remove.new_image is None
        assert remove.old_image == {"pk": "user#2", "expires": 1699999999}
        assert remove.is_ttl_delete is True
        assert remove.approximate_creation_time == T_1_7E9 + timedelta(seconds=60)
        assert remove.size_bytes == 40
        assert [insert.sequence_number, remove.sequence_number] == [
            "222200000000000000001",
            "222200000000000000002",
        ]

    def test_a_lambda_event_has_no_next_iterator(self) -> None:
        records, next_iterator = decode_page(LAMBDA_EVENT)
        assert len(records) == 2
        assert next_iterator is None


EVENTS = Path(__file__).parent / "events"


class TestThirdPartyEvents:
    """Event files other tools ship (tests/events/README.md), in every form a user may
    hold them: as read from disk, as text, parsed, parsed with Decimals."""

    FORMS: ClassVar[dict[str, Callable[[bytes], Any]]] = {
        "file-bytes": lambda raw: raw,
        "read-as-utf-8": lambda raw: raw.decode("utf-8"),
        "read-as-utf-8-sig": lambda raw: raw.decode("utf-8-sig"),
        "json.load": lambda raw: json.loads(raw),
        "json.load-parse-float-decimal": lambda raw: json.loads(raw, parse_float=Decimal),
        "records-list": lambda raw: json.loads(raw)["Records"],
        "records-list-text": lambda raw: json.dumps(json.loads(raw)["Records"]),
    }

    @pytest.mark.parametrize("form", FORMS)
    @pytest.mark.parametrize("name", sorted(p.name for p in EVENTS.glob("*.json")))
    def test_decodes_in_every_form(self, name: str, form: str) -> None:
        raw = (EVENTS / name).read_bytes()
        wire = json.loads(raw)["Records"]
        records = decode_records(self.FORMS[form](raw))
        assert len(records) == len(wire)
        for record, expected in zip(records, wire, strict=True):
            data = expected["dynamodb"]
            assert record.event_name == expected["eventName"]
            assert record.sequence_number == data["SequenceNumber"]
            created = data.get("ApproximateCreationDateTime")
            if created is None:
                assert record.approximate_creation_time is None
            else:
                seconds = created / 1000 if created > 1e11 else created  # .NET's milliseconds
                assert record.approximate_creation_time == datetime.fromtimestamp(seconds, UTC)
            assert record.keys == wire_image(data["Keys"])
            assert record.new_image == wire_image(data.get("NewImage"))
            assert record.old_image == wire_image(data.get("OldImage"))


class TestEventName:
    @pytest.mark.parametrize("name", ["INSERT", "MODIFY", "REMOVE"])
    def test_compares_equal_to_its_str(self, name: str) -> None:
        record = one(record_json(event_name=name))
        assert record.event_name == name
        assert isinstance(record.event_name, EventName)
        assert isinstance(record.event_name, str)
        assert {name: "found"}[record.event_name] == "found"
        assert f"{record.event_name}" == name

    def test_exported_from_the_package(self) -> None:
        assert fs.EventName is EventName
        assert fs.Record is Record
        assert fs.StreamViewType is StreamViewType
        assert fs.decode_records is decode_records


class TestApproximateCreationTime:
    @pytest.mark.parametrize(
        ("wire", "expected"),
        [
            pytest.param("1.7E9", T_1_7E9, id="seconds-exponent"),
            pytest.param("1700000000", T_1_7E9, id="seconds-int"),
            pytest.param("1700000000.5", T_1_7E9 + timedelta(milliseconds=500), id="fraction"),
            pytest.param("1700000000000", T_1_7E9, id="milliseconds"),
            pytest.param("1.7000000005E12", T_1_7E9 + timedelta(milliseconds=500), id="ms-frac"),
            pytest.param('"2023-11-14T22:13:20Z"', T_1_7E9, id="iso-utc"),
            pytest.param('"2023-11-15T00:13:20+02:00"', T_1_7E9, id="iso-offset"),
            pytest.param('"2023-11-14T22:13:20"', T_1_7E9, id="iso-naive-is-utc"),
        ],
    )
    def test_is_an_aware_utc_datetime(self, wire: str, expected: datetime) -> None:
        created = one(record_json(creation=wire)).approximate_creation_time
        assert created == expected
        assert created is not None
        assert created.tzinfo is not None
        assert created.utcoffset() == timedelta(0)

    def test_none_when_absent(self) -> None:
        assert one(record_json(creation=None)).approximate_creation_time is None


class TestIsTtlDelete:
    TTL = ',"userIdentity":{"type":"Service","principalId":"dynamodb.amazonaws.com"}'

    @pytest.mark.parametrize(
        ("event_name", "extra", "expected"),
        [
            pytest.param("REMOVE", TTL, True, id="ttl-remove"),
            pytest.param("REMOVE", "", False, id="user-remove"),
            pytest.param("MODIFY", TTL, False, id="service-modify"),
            pytest.param(
                "REMOVE",
                ',"userIdentity":{"type":"Service","principalId":"other.amazonaws.com"}',
                False,
                id="other-service",
            ),
            pytest.param(
                "REMOVE",
                ',"userIdentity":{"type":"User","principalId":"dynamodb.amazonaws.com"}',
                False,
                id="not-a-service",
            ),
        ],
    )
    def test_only_a_remove_by_dynamodb_itself(
        self, event_name: str, extra: str, expected: bool
    ) -> None:
        assert one(record_json(event_name=event_name, extra=extra)).is_ttl_delete is expected


class TestStreamViewTypeAndSize:
    @pytest.mark.parametrize("view", list(StreamViewType), ids=str)
    def test_view_type(self, view: StreamViewType) -> None:
        record = one(
            record_json(extra="").replace(
                '"dynamodb":{', f'"dynamodb":{{"StreamViewType":"{view}",'
            )
        )
        assert record.stream_view_type is view
        assert record.stream_view_type == str(view)

    def test_absent_view_type_and_size(self) -> None:
        record = one(record_json())
        assert record.stream_view_type is None
        assert record.size_bytes == 0

    def test_keys_only_record_has_no_images(self) -> None:
        record = one(
            record_json().replace('"dynamodb":{', '"dynamodb":{"StreamViewType":"KEYS_ONLY",')
        )
        assert (record.new_image, record.old_image) == (None, None)
        assert record.keys == {"pk": "a"}


class TestLaziness:
    BAD = '{"pk":{"S":"a"},"zip":{"Q":"1"}}'

    def test_bad_new_image_decodes_and_fails_only_when_accessed(self) -> None:
        record = one(record_json(new_image=self.BAD, old_image='{"pk":{"S":"a"}}'))
        assert record.keys == {"pk": "a"}
        assert record.old_image == {"pk": "a"}
        with pytest.raises(AttributeValueError, match=r"unknown type tag 'Q'") as info:
            _ = record.new_image
        assert info.value.path == "NewImage.zip"
        assert str(info.value).startswith("NewImage.zip: ")

    def test_bad_old_image_names_old_image(self) -> None:
        record = one(record_json(old_image=self.BAD))
        with pytest.raises(AttributeValueError) as info:
            _ = record.old_image
        assert info.value.path == "OldImage.zip"

    def test_bad_keys_decode_and_fail_only_when_accessed(self) -> None:
        (record,) = decode_records(
            f'{{"Records":[{record_json(keys=self.BAD, new_image=chr(123) + chr(125))}]}}'
        )
        assert record.sequence_number == "111100000000000000001"
        assert record.new_image == {}
        with pytest.raises(AttributeValueError) as info:
            _ = record.keys
        assert info.value.path == "Keys.zip"

    def test_a_failing_image_fails_again_on_the_next_access(self) -> None:
        record = one(record_json(new_image=self.BAD))
        for _ in range(2):
            with pytest.raises(AttributeValueError):
                _ = record.new_image

    def test_image_that_is_not_an_object_names_the_part(self) -> None:
        record = one(record_json(new_image='["x"]'))
        with pytest.raises(RecordDecodeError, match=r"NewImage must be a JSON object"):
            _ = record.new_image

    @pytest.mark.parametrize("part", ["keys", "new_image", "old_image"])
    def test_decoded_once(self, part: str) -> None:
        record = one(record_json(new_image='{"pk":{"S":"a"}}', old_image='{"pk":{"S":"b"}}'))
        first = getattr(record, part)
        assert first is not None
        assert getattr(record, part) is first

    def test_parts_are_cached_independently(self) -> None:
        record = one(record_json(new_image='{"n":{"N":"1"}}', old_image='{"n":{"N":"2"}}'))
        new = record.new_image
        keys = record.keys
        old = record.old_image
        assert (record.new_image, record.keys, record.old_image) == (new, keys, old)
        assert record.new_image is new
        assert record.keys is keys
        assert record.old_image is old
        assert (new, keys, old) == ({"n": 1}, {"pk": "a"}, {"n": 2})

    def test_absent_image_is_none_on_every_access(self) -> None:
        record = one(record_json())
        assert record.new_image is None
        assert record.new_image is None
        assert record.old_image is None

    def test_a_body_cannot_plant_decoded_parts(self) -> None:
        planted = record_json().replace(
            '"eventID"', '"_decoded":[{"pk":"planted"},null,null],"_keys":{"pk":"x"},"eventID"'
        )
        assert one(planted).keys == {"pk": "a"}

    @pytest.mark.parametrize(
        "clone",
        [copy.copy, copy.deepcopy, lambda r: pickle.loads(pickle.dumps(r))],
        ids=["copy", "deepcopy", "pickle"],
    )
    def test_copies_decode_too(self, clone: Callable[[Record], Record]) -> None:
        record = one(record_json(new_image='{"n":{"N":"1"}}'), shard_id=SHARD)
        _ = record.keys
        copied = clone(record)
        assert copied == record
        assert copied.keys == {"pk": "a"}
        assert copied.new_image == {"n": 1}

    @pytest.mark.parametrize(
        ("image", "path"),
        [
            pytest.param('{"pk":{"S":"a"},"zip":{"S":"1","N":"1"}}', "NewImage.zip", id="two-tags"),
            pytest.param(
                r'{"pk":{"S":"a"},"zip":{"S":"1\u002c","N":"1"}}',
                "NewImage.zip",
                id="two-tags-escaped-comma",
            ),
            pytest.param(
                '{"pk":{"S":"a"},"m":{"M":{"l":{"L":[{"NULL":true,"BOOL":true}]}}}}',
                "NewImage.m.l[0]",
                id="two-tags-nested",
            ),
        ],
    )
    def test_an_attribute_value_with_two_tags_is_an_error(self, image: str, path: str) -> None:
        record = one(record_json(new_image=image))
        with pytest.raises(AttributeValueError, match="exactly one type tag") as info:
            _ = record.new_image
        assert info.value.path == path

    def test_images_decode_to_the_documented_types(self) -> None:
        image = (
            '{"pk":{"S":"a, b"},"n":{"N":"7"},"d":{"N":"-0.25"},"e":{"N":"1E+2"},'
            '"f":{"N":"2.0"},"b":{"B":"AQI="},"t":{"BOOL":true},"z":{"NULL":true},'
            '"ss":{"SS":["x"]},"ns":{"NS":["1","1.5"]},"bs":{"BS":["AQI="]},'
            '"m":{"M":{"l":{"L":[{"N":"3"},{"S":"s"}]}}}}'
        )
        record = one(record_json(new_image=image, old_image=image))
        expected = {
            "pk": "a, b",
            "n": 7,
            "d": Decimal("-0.25"),
            "e": 100,
            "f": 2,
            "b": b"\x01\x02",
            "t": True,
            "z": None,
            "ss": {"x"},
            "ns": {1, Decimal("1.5")},
            "bs": {b"\x01\x02"},
            "m": {"l": [3, "s"]},
        }
        for image_value in (record.new_image, record.old_image):
            assert image_value == expected
            assert image_value is not None
            assert [type(image_value[k]) for k in ("n", "d", "e", "f", "b")] == [
                int,
                Decimal,
                int,
                int,
                bytes,
            ]
        assert record.new_image is not record.old_image
        assert record.new_image["m"] is not record.old_image["m"]  # type: ignore[index]

    def test_repr_names_the_change_and_never_raises(self) -> None:
        good = one(record_json(event_name="REMOVE"), shard_id=SHARD)
        assert repr(good) == (
            f"Record(REMOVE sequence_number='111100000000000000001' shard_id='{SHARD}' "
            "keys={'pk': 'a'})"
        )
        bad = one(record_json(keys=self.BAD))
        assert '"Q"' in repr(bad)
        assert "undecodable" in repr(bad)


class TestToJson:
    def test_gives_back_the_stream_shape(self) -> None:
        (record,) = decode_records(GET_RECORDS_BODY, shard_id=SHARD)
        expected = json.loads(GET_RECORDS_BODY)["Records"][0]
        expected["shardId"] = SHARD
        assert json.loads(record.to_json()) == expected
        assert record.to_dict() == expected

    def test_leaves_out_what_the_record_does_not_carry(self) -> None:
        record = one(record_json())
        assert record.to_dict() == {
            "eventID": "e-111100000000000000001",
            "eventName": "MODIFY",
            "dynamodb": {
                "Keys": {"pk": {"S": "a"}},
                "SequenceNumber": "111100000000000000001",
                "ApproximateCreationDateTime": 1.7e9,
            },
        }

    def test_keeps_user_identity_and_source_arn(self) -> None:
        _, remove = decode_records(LAMBDA_EVENT)
        wire = remove.to_dict()
        assert wire["userIdentity"] == {"type": "Service", "principalId": "dynamodb.amazonaws.com"}
        assert wire["eventSourceARN"] == STREAM_ARN

    def test_unchanged_by_decoding_the_images(self) -> None:
        (record,) = decode_records(GET_RECORDS_BODY, shard_id=SHARD)
        before = record.to_json()
        _ = (record.keys, record.new_image, record.old_image)
        assert record.to_json() == before

    def test_a_nested_record_encodes_in_the_stream_shape(self) -> None:
        (record,) = decode_records(GET_RECORDS_BODY, shard_id=SHARD)
        _ = (record.keys, record.new_image, record.old_image)
        assert msgspec.json.encode({"r": record}) == b'{"r":' + record.to_json() + b"}"
        assert msgspec.json.encode([record]) == b"[" + record.to_json() + b"]"

    @pytest.mark.parametrize(
        "body", [GET_RECORDS_BODY, LAMBDA_EVENT], ids=["get-records", "lambda"]
    )
    def test_round_trips_through_decode_records(self, body: bytes) -> None:
        originals = decode_records(body, shard_id=SHARD)
        for original in originals:
            _ = original.new_image  # a decoded cache must not leak into the JSON
            (again,) = decode_records(b'{"Records":[' + original.to_json() + b"]}")
            assert again.to_json() == original.to_json()
            assert again == original
            assert again.shard_id == SHARD
            for name in (
                "event_id",
                "event_name",
                "keys",
                "new_image",
                "old_image",
                "sequence_number",
                "approximate_creation_time",
                "size_bytes",
                "stream_view_type",
                "is_ttl_delete",
                "event_source_arn",
            ):
                assert getattr(again, name) == getattr(original, name), name

    def test_round_trips_as_parsed_dicts(self) -> None:
        originals = decode_records(LAMBDA_EVENT, shard_id=SHARD)
        assert decode_records([r.to_dict() for r in originals]) == originals

    def test_botocore_datetime_round_trips(self) -> None:
        (record,) = decode_records(botocore_style(GET_RECORDS_BODY))
        assert record.to_dict()["dynamodb"]["ApproximateCreationDateTime"] == (
            "2023-11-14T22:13:20Z"
        )
        (again,) = decode_records([record.to_dict()])
        assert again.approximate_creation_time == T_1_7E9
        assert again.new_image == EXPECTED_NEW_IMAGE


class TestEquality:
    def test_same_shard_and_sequence_number_are_equal(self) -> None:
        a = one(record_json(new_image='{"v":{"N":"1"}}'), shard_id=SHARD)
        b = one(record_json(new_image='{"v":{"N":"2"}}').replace('"e-1', '"x-1'), shard_id=SHARD)
        assert a.event_id != b.event_id
        assert a == b
        assert hash(a) == hash(b)
        assert len({a, b}) == 1

    @pytest.mark.parametrize(
        ("shard_b", "sequence_b"),
        [
            pytest.param(
                "shardId-00000001700000000000-ffffffff", "111100000000000000001", id="shard"
            ),
            pytest.param(SHARD, "111100000000000000002", id="sequence"),
        ],
    )
    def test_other_shard_or_sequence_number_differ(self, shard_b: str, sequence_b: str) -> None:
        a = one(record_json(), shard_id=SHARD)
        b = one(record_json(sequence_number=sequence_b), shard_id=shard_b)
        assert a != b
        assert len({a, b}) == 2

    def test_not_equal_to_other_types(self) -> None:
        record = one(record_json())
        assert record != record.to_dict()
        assert record != "111100000000000000001"

    def test_records_are_immutable(self) -> None:
        record = one(record_json())
        with pytest.raises(AttributeError):
            record.event_id = "x"  # type: ignore[misc]


class TestBadBodies:
    @pytest.mark.parametrize(
        ("body", "message"),
        [
            pytest.param(b"{", r"body is not valid JSON", id="truncated"),
            pytest.param("<html>503</html>", r"body is not valid JSON", id="html"),
            pytest.param(b"", r"body is not valid JSON", id="empty"),
            pytest.param(b"{}", r"missing required field `Records`", id="no-records"),
            pytest.param(b'{"records":[]}', r"missing required field `Records`", id="lower-case"),
            pytest.param(b'{"Records":{}}', r"Expected `array`", id="records-not-list"),
            pytest.param(
                b"[1]",
                r"body is not a DynamoDB Streams GetRecords response or Lambda event",
                id="list-of-non-records",
            ),
            pytest.param(
                '{"Records":[' + record_json(event_name="UPDATE") + "]}",
                r"Invalid enum value 'UPDATE' - at `\$\.Records\[0\]\.eventName`",
                id="wrong-event-name",
            ),
            pytest.param(
                b'{"Records":[{"eventID":"1","eventName":"INSERT"}]}',
                r"missing required field `dynamodb`",
                id="no-dynamodb",
            ),
            pytest.param(
                b'{"Records":[{"eventID":"1","eventName":"INSERT","dynamodb":{"Keys":{}}}]}',
                r"missing required field `SequenceNumber`",
                id="no-sequence-number",
            ),
        ],
    )
    def test_raise_record_decode_error(self, body: bytes | str, message: str) -> None:
        with pytest.raises(RecordDecodeError, match=message) as info:
            decode_records(body)
        assert isinstance(info.value, FlowstreamError)
        assert isinstance(info.value, ValueError)

    def test_shape_errors_say_what_to_pass(self) -> None:
        with pytest.raises(RecordDecodeError, match=r"GetRecords response or Lambda event"):
            decode_records({"Items": []})

    @pytest.mark.parametrize(
        ("value", "shown"),
        [
            pytest.param('"yesterday"', "'yesterday'", id="word"),
            pytest.param('"1700000000"', "'1700000000'", id="number-as-string"),
            pytest.param("true", "True", id="bool"),
            pytest.param("[1]", "[1]", id="list"),
        ],
    )
    def test_a_creation_time_that_is_not_a_time_names_both_forms(
        self, value: str, shown: str
    ) -> None:
        good, bad = record_json(), record_json(creation=value)
        with pytest.raises(RecordDecodeError) as info:
            decode_records(f'{{"Records":[{good},{bad}]}}')
        message = str(info.value)
        assert message.startswith(f"Records[1].dynamodb.ApproximateCreationDateTime is {shown}; ")
        assert "a number of seconds since the epoch" in message
        assert "RFC 3339 date-time string" in message

    def test_a_single_record_dict_is_not_a_body(self) -> None:
        record = json.loads(record_json())
        with pytest.raises(RecordDecodeError, match=r"Records"):
            decode_records(record)
        assert len(decode_records([record])) == 1
