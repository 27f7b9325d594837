"""One change from a DynamoDB stream, decoded fast and lazily.

A `Record` is decoded straight from the stream's JSON with msgspec. Its keys and images
stay raw JSON until first touched (DESIGN.md §4): a filter on the event name never pays
for images, and a page of records is a few flat objects per record, cheap for the
garbage collector (``gc=False``: a record holds no reference back to anything that could
form a cycle).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, Final

import msgspec

from flowstream import attrvalue
from flowstream.errors import AttributeValueError, RecordDecodeError

__all__ = ["EventName", "Record", "StreamViewType", "decode_records"]

_EMPTY: Final = msgspec.Raw()
# DynamoDB Streams sends seconds; the Kinesis-stream format of the same record sends
# milliseconds. No real record is from before 1973 or after 5138, so the two never mix.
_MILLIS_THRESHOLD: Final = 1e11


class EventName(enum.StrEnum):
    """What happened to the item. A `str`, so ``record.event_name == "REMOVE"`` holds."""

    INSERT = "INSERT"
    MODIFY = "MODIFY"
    REMOVE = "REMOVE"


class StreamViewType(enum.StrEnum):
    """Which images the stream writes for each change."""

    KEYS_ONLY = "KEYS_ONLY"
    NEW_IMAGE = "NEW_IMAGE"
    OLD_IMAGE = "OLD_IMAGE"
    NEW_AND_OLD_IMAGES = "NEW_AND_OLD_IMAGES"


class UserIdentity(
    msgspec.Struct,
    frozen=True,
    gc=False,
    omit_defaults=True,
    rename={
        "lambda_type": "type",
        "lambda_principal_id": "principalId",
        "wire_type": "Type",
        "wire_principal_id": "PrincipalId",
    },
):
    """Who made the change; set by DynamoDB itself for TTL deletes.

    GetRecords spells the keys ``Type``/``PrincipalId``, Lambda events ``type``/
    ``principalId``; both are read, and written back as they came.
    """

    lambda_type: str = ""
    lambda_principal_id: str = ""
    wire_type: str = ""
    wire_principal_id: str = ""

    @property
    def type(self) -> str:
        return self.wire_type or self.lambda_type

    @property
    def principal_id(self) -> str:
        return self.wire_principal_id or self.lambda_principal_id


class StreamData(msgspec.Struct, frozen=True, gc=False, omit_defaults=True, rename="pascal"):
    """The ``dynamodb`` object of a stream record, kept as the wire sends it."""

    keys: msgspec.Raw
    sequence_number: str
    size_bytes: int = 0
    stream_view_type: StreamViewType | None = None
    new_image: msgspec.Raw = _EMPTY
    old_image: msgspec.Raw = _EMPTY
    # seconds since the epoch on the wire; an ISO string once botocore has parsed it
    approximate_creation_date_time: float | datetime | None = None


class _LazyParts:
    """The slot for the decoded keys and images of a `Record`. It lives outside the
    Struct's fields, so msgspec neither encodes it nor fills it from input: a record
    encodes to the stream's own shape wherever it is nested, and no body can plant
    "decoded" images. It holds one immutable tuple, set when the record is built and
    replaced as parts are decoded, so that reading it never raises (an AttributeError
    per record would cost more than decoding small keys)."""

    __slots__ = ("_decoded",)
    _decoded: tuple[Any, Any, Any]  # keys, new_image, old_image; UNSET until decoded


_UNDECODED: Final = (msgspec.UNSET, msgspec.UNSET, msgspec.UNSET)
_set_decoded: Final[Callable[[Any, tuple[Any, Any, Any]], None]] = _LazyParts.__dict__[
    "_decoded"
].__set__


class Record(
    msgspec.Struct,
    _LazyParts,
    frozen=True,
    gc=False,
    omit_defaults=True,
    rename={
        "event_id": "eventID",
        "event_name": "eventName",
        "event_version": "eventVersion",
        "event_source": "eventSource",
        "aws_region": "awsRegion",
        "event_source_arn": "eventSourceARN",
        "user_identity": "userIdentity",
        "shard_id": "shardId",
    },
):
    """One change to one item: what happened (`event_name`), to which item (`keys`),
    and the item before and after (`old_image`, `new_image`, decoded on first access).

    Records compare and hash by shard and sequence number. Serialise one with
    `to_json()`, which gives back the stream's own JSON shape.
    """

    event_id: str
    event_name: EventName
    dynamodb: StreamData
    event_version: str = ""
    event_source: str = ""
    aws_region: str = ""
    event_source_arn: str = ""
    user_identity: UserIdentity | None = None
    shard_id: str = ""

    @property
    def sequence_number(self) -> str:
        """The record's position in its shard: a decimal string, increasing per shard."""
        return self.dynamodb.sequence_number

    def __post_init__(self) -> None:
        # Runs for decoded records too; one slot store is all it does (hot path).
        _set_decoded(self, _UNDECODED)

    @property
    def keys(self) -> dict[str, Any]:
        """The item's key attributes as Python values (decoded once, on first access)."""
        try:
            parts = self._decoded
        except AttributeError:  # a copy made without __post_init__ (copy.copy, pickle)
            parts = _UNDECODED
        value = parts[0]
        if value is msgspec.UNSET:
            value = _decode_image(self.dynamodb.keys, "Keys")
            _set_decoded(self, (value, parts[1], parts[2]))
        return value  # type: ignore[no-any-return]

    @property
    def new_image(self) -> dict[str, Any] | None:
        """The item after the change, or None (REMOVE, or a view type without it)."""
        try:
            parts = self._decoded
        except AttributeError:  # a copy made without __post_init__ (copy.copy, pickle)
            parts = _UNDECODED
        value = parts[1]
        if value is msgspec.UNSET:
            raw = self.dynamodb.new_image
            value = _decode_image(raw, "NewImage") if raw else None
            _set_decoded(self, (parts[0], value, parts[2]))
        return value  # type: ignore[no-any-return]

    @property
    def old_image(self) -> dict[str, Any] | None:
        """The item before the change, or None (INSERT, or a view type without it)."""
        try:
            parts = self._decoded
        except AttributeError:  # a copy made without __post_init__ (copy.copy, pickle)
            parts = _UNDECODED
        value = parts[2]
        if value is msgspec.UNSET:
            raw = self.dynamodb.old_image
            value = _decode_image(raw, "OldImage") if raw else None
            _set_decoded(self, (parts[0], parts[1], value))
        return value  # type: ignore[no-any-return]

    def new_value(self, name: str, default: Any = None) -> Any:
        """One attribute of the new image as a Python value (`default` when the image or
        the attribute is missing), decoding only that attribute: a cache invalidator
        reading a version number does not pay for the whole image."""
        return self._value(self.dynamodb.new_image, 1, name, default, "NewImage")

    def old_value(self, name: str, default: Any = None) -> Any:
        """One attribute of the old image, as `new_value` does for the new one."""
        return self._value(self.dynamodb.old_image, 2, name, default, "OldImage")

    def _value(self, raw: msgspec.Raw, slot: int, name: str, default: Any, path: str) -> Any:
        try:
            decoded = self._decoded[slot]
        except AttributeError:  # a copy made without __post_init__ (copy.copy, pickle)
            decoded = msgspec.UNSET
        if decoded is not msgspec.UNSET:  # the whole image is decoded already
            return default if decoded is None else decoded.get(name, default)
        if not raw:
            return default
        try:
            attributes = _ATTRIBUTES.decode(raw)
        except msgspec.DecodeError:
            # not an object of attributes: the whole-image path reports it exactly
            image = _decode_image(raw, path)
            return image.get(name, default)
        value = attributes.get(name)
        if value is None:
            return default
        one = attrvalue._decode_json(b'{"v":' + bytes(value) + b"}")
        if one is not None:
            return one["v"]
        try:
            parsed = msgspec.json.decode(value)
        except msgspec.DecodeError as exc:
            raise RecordDecodeError(f"{path}.{name} is not valid JSON: {exc}") from None
        return attrvalue.decode_value(parsed, path=f"{path}.{name}")

    @property
    def approximate_creation_time(self) -> datetime | None:
        """When the change was made (aware, UTC; DynamoDB rounds it to the second)."""
        value = self.dynamodb.approximate_creation_date_time
        if value is None:
            return None
        if isinstance(value, datetime):
            return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
        if value > _MILLIS_THRESHOLD:
            value /= 1000.0
        return datetime.fromtimestamp(value, UTC)

    @property
    def size_bytes(self) -> int:
        """Size of the record's data as DynamoDB counts it."""
        return self.dynamodb.size_bytes

    @property
    def stream_view_type(self) -> StreamViewType | None:
        """Which images the stream writes (None when the record does not say)."""
        return self.dynamodb.stream_view_type

    @property
    def is_ttl_delete(self) -> bool:
        """True for a REMOVE that DynamoDB's Time to Live made, not a user."""
        identity = self.user_identity
        return (
            self.event_name is EventName.REMOVE
            and identity is not None
            and identity.type == "Service"
            and identity.principal_id == "dynamodb.amazonaws.com"
        )

    def to_json(self) -> bytes:
        """The record in the stream's JSON shape (plus ``shardId``), raw parts untouched.
        (msgspec encodes a record to this shape anywhere, e.g. inside a dict.)"""
        return _ENCODER.encode(self)

    def to_dict(self) -> dict[str, Any]:
        """The record in the stream's JSON shape as plain Python objects (DynamoDB JSON
        images, not decoded ones)."""
        return msgspec.json.decode(self.to_json())  # type: ignore[no-any-return]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Record):
            return NotImplemented
        return (
            self.dynamodb.sequence_number == other.dynamodb.sequence_number
            and self.shard_id == other.shard_id
        )

    def __hash__(self) -> int:
        return hash((self.shard_id, self.dynamodb.sequence_number))

    def __repr__(self) -> str:
        shard = f" shard_id={self.shard_id!r}" if self.shard_id else ""
        try:
            keys = repr(self.keys)
        except (AttributeValueError, RecordDecodeError):
            # repr() runs in tracebacks and logs of exactly such records: never raise.
            keys = f"<undecodable {bytes(self.dynamodb.keys).decode(errors='replace')}>"
        return (
            f"Record({self.event_name.value} sequence_number={self.sequence_number!r}"
            f"{shard} keys={keys})"
        )


class _Page(msgspec.Struct, gc=False):
    """A GetRecords response body or a Lambda event: both carry ``Records``."""

    Records: list[Record]
    NextShardIterator: str | None = None


_PAGE_DECODER: Final = msgspec.json.Decoder(_Page)
#: decode_records() also takes a list of records as JSON text.
_RECORDS_DECODER: Final = msgspec.json.Decoder(_Page | list[Record])
#: Decimals as JSON numbers: an event parsed with json.loads(parse_float=Decimal) keeps
#: its creation times numbers.
_ENCODER: Final = msgspec.json.Encoder(decimal_format="number")
_BOM: Final = b"\xef\xbb\xbf"


#: An image's attributes, each left as its JSON text: one can be decoded alone.
_ATTRIBUTES: Final = msgspec.json.Decoder(dict[str, msgspec.Raw])


def _decode_image(raw: msgspec.Raw, path: str) -> dict[str, Any]:
    fast = attrvalue._decode_json(raw)
    if fast is not None:
        return fast
    # The exact path: the same values for unusual input, and the error for bad input.
    try:
        item = msgspec.json.decode(raw)
    except msgspec.DecodeError as exc:
        raise RecordDecodeError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(item, dict):
        raise RecordDecodeError(
            f"{path} must be a JSON object of attribute values, got {type(item).__name__}"
        )
    return attrvalue.decode(item, path=path)


def decode_page(body: bytes | bytearray | memoryview | str) -> tuple[list[Record], str | None]:
    """Decode a GetRecords response body into its records and ``NextShardIterator``."""
    try:
        page = _PAGE_DECODER.decode(body)
    except msgspec.DecodeError as exc:
        raise _body_error(exc, body) from None
    return page.Records, page.NextShardIterator


def _body_error(exc: msgspec.DecodeError, body: bytes | bytearray | memoryview | str) -> Exception:
    if not isinstance(exc, msgspec.ValidationError):
        return RecordDecodeError(f"body is not valid JSON: {exc}")
    if "ApproximateCreationDateTime" in str(exc):
        bad = _bad_creation_time(body)
        if bad is not None:
            return bad
    return RecordDecodeError(
        f"body is not a DynamoDB Streams GetRecords response or Lambda event: {exc}; "
        "pass the raw response body or the event dict with its 'Records' list"
    )


def _bad_creation_time(body: bytes | bytearray | memoryview | str) -> RecordDecodeError | None:
    """The error for the first record whose creation time is neither a number nor a
    date-time string (found again in the plain JSON: an error path, not a hot one)."""
    parsed = msgspec.json.decode(body)
    records = parsed.get("Records") if isinstance(parsed, dict) else parsed
    for i, record in enumerate(records if isinstance(records, list) else []):
        dynamodb = record.get("dynamodb") if isinstance(record, dict) else None
        value = dynamodb.get("ApproximateCreationDateTime") if isinstance(dynamodb, dict) else None
        if value is None or (isinstance(value, int | float) and not isinstance(value, bool)):
            continue
        try:
            msgspec.convert(value, datetime)
        except msgspec.ValidationError:
            shown = attrvalue._short(value)
            return RecordDecodeError(
                f"Records[{i}].dynamodb.ApproximateCreationDateTime is {shown}; it "
                "must be a number of seconds since the epoch, as GetRecords and Lambda send it (or "
                "an RFC 3339 date-time string, as botocore's parsed responses hold)"
            )
    return None


def decode_records(
    body: bytes | bytearray | memoryview | str | Mapping[str, Any] | Iterable[Mapping[str, Any]],
    *,
    shard_id: str | None = None,
) -> list[Record]:
    """Decode DynamoDB Streams records, fast, with images left lazy.

    `body` is a GetRecords response body or a Lambda event (``{"Records": [...]}``), or
    a list of records, each as bytes or str (a UTF-8 byte order mark is skipped) or as
    parsed JSON (botocore's parsed response, and ``json.loads(parse_float=Decimal)``,
    work too). `shard_id` is stamped on every record (neither shape carries it).
    """
    if isinstance(body, str):
        text: bytes | bytearray | memoryview | str = body.removeprefix("\ufeff")
    elif isinstance(body, bytes | bytearray | memoryview):
        text = body[3:] if body[:3] == _BOM else body
    else:
        # Parsed JSON goes back through the one fast decoder; datetimes and bytes that
        # botocore produced encode to forms the decoder reads.
        text = _ENCODER.encode(body if isinstance(body, Mapping) else list(body))
    try:
        decoded = _RECORDS_DECODER.decode(text)
    except msgspec.DecodeError as exc:
        raise _body_error(exc, text) from None
    records = decoded if isinstance(decoded, list) else decoded.Records
    if shard_id:
        for record in records:
            msgspec.structs.force_setattr(record, "shard_id", shard_id)
    return records
