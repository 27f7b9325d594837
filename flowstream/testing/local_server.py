"""`LocalStreamsServer`: a `MemoryStream` served over the DynamoDB Streams wire protocol
on 127.0.0.1, so that the real aiobotocore client reads many shards, splits, closed shards
and the rollover, with faults injected on demand. It is also the fast endpoint of the
end-to-end benchmarks: GetRecords joins cached, pre-encoded record bytes.
"""

from __future__ import annotations

import base64
import binascii
import itertools
import time
from bisect import bisect_left
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Final, Literal, TypeAlias, final, get_args

import anyio
import msgspec
from aiohttp import web

from flowstream.errors import SourceError
from flowstream.record import Record, decode_records
from flowstream.sources.base import Position, PositionKind
from flowstream.testing.memory_stream import MemoryStream, _ShardData

__all__ = ["FaultKind", "LocalStreamsServer", "Operation"]

FaultKind: TypeAlias = Literal[
    "expired_iterator", "trimmed", "throttle", "internal_error", "latency", "empty_page"
]
Operation: TypeAlias = Literal[
    "ListStreams", "DescribeStream", "GetShardIterator", "GetRecords", "DescribeTable"
]

_STREAMS_TARGET: Final = "DynamoDBStreams_20120810."
_DYNAMODB_TARGET: Final = "DynamoDB_20120810."
_ERROR_TYPE: Final = "com.amazonaws.dynamodb.v20120810#"
_CONTENT_TYPE: Final = "application/x-amz-json-1.0"
_MAX_PAGE_BYTES: Final = 1024 * 1024  # GetRecords returns at most 1 MB ...
_MAX_PAGE_RECORDS: Final = 1000  # ... or 1,000 records, whichever comes first
_MAX_SHARDS_PER_PAGE: Final = 100
_SEQUENCE_DIGITS: Final = range(21, 41)
_ITERATOR_VERSION: Final = "|1|"  # real iterators are "<stream arn>|1|<opaque base64>"

# Which operations a fault kind can hit; None: every operation.
_FAULT_OPERATIONS: Final[Mapping[str, frozenset[str] | None]] = {
    "expired_iterator": frozenset({"GetRecords"}),
    "trimmed": frozenset({"GetRecords", "GetShardIterator"}),
    "throttle": None,
    "internal_error": None,
    "latency": None,
    "empty_page": frozenset({"GetRecords"}),
}
_FAULT_ERRORS: Final[Mapping[str, tuple[str, str, int]]] = {
    "expired_iterator": ("ExpiredIteratorException", "Iterator expired", 400),
    "trimmed": (
        "TrimmedDataAccessException",
        "The operation attempted to read past the oldest stream record in a shard.",
        400,
    ),
    "throttle": ("LimitExceededException", "Rate exceeded for shard", 400),
    "internal_error": ("InternalServerError", "Internal server error (injected)", 500),
}

_encode: Final = msgspec.json.Encoder().encode
_decode: Final = msgspec.json.Decoder().decode


class _RawPage(msgspec.Struct, gc=False):
    """A GetRecords body with each record kept as the bytes it came in."""

    Records: list[msgspec.Raw]


_decode_raw_page: Final = msgspec.json.Decoder(_RawPage).decode


class _ApiError(Exception):
    """An error answer: the service's error code, its message and the HTTP status."""

    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status

    def response(self) -> web.Response:
        body = _encode({"__type": _ERROR_TYPE + self.code, "message": self.message})
        return web.Response(status=self.status, body=body, headers={"Content-Type": _CONTENT_TYPE})


def _validation(message: str) -> _ApiError:
    return _ApiError("ValidationException", message)


class _Fault:
    __slots__ = ("delay", "kind", "operation", "remaining", "shard_id")

    def __init__(
        self,
        kind: str,
        operation: str | None,
        shard_id: str | None,
        times: int | None,
        delay: float,
    ) -> None:
        self.kind = kind
        self.operation = operation
        self.shard_id = shard_id
        self.remaining = times
        self.delay = delay

    def matches(self, operation: str, shard_id: str | None) -> bool:
        allowed = _FAULT_OPERATIONS[self.kind]
        return (
            (allowed is None or operation in allowed)
            and (self.operation is None or self.operation == operation)
            and (self.shard_id is None or self.shard_id == shard_id)
        )


def _encode_record(record: Record) -> bytes:
    # The service's records carry no shardId (that is ours, stamped on decoding).
    identity = record.user_identity
    if record.shard_id or identity is not None:
        record = msgspec.structs.replace(record, shard_id="", user_identity=None)
    encoded = _encode(record)
    if identity is not None:
        # GetRecords spells these members as botocore's model does (PrincipalId, Type);
        # only Lambda events spell them principalId and type.
        identity_json = _encode({"PrincipalId": identity.principal_id, "Type": identity.type})
        encoded = encoded[:-1] + b',"userIdentity":' + identity_json + b"}"
    return encoded


@final
class LocalStreamsServer:
    """An HTTP server speaking the DynamoDB Streams JSON 1.0 protocol over `stream`:

    ```python
    async with LocalStreamsServer(stream) as server:
        source = sources.dynamodb(stream_arn=server.stream_arn, endpoint_url=server.endpoint_url)
    ```

    It answers ListStreams, DescribeStream, GetShardIterator and GetRecords (and
    DynamoDB's DescribeTable for the stream's table), live: records put, shards split,
    closed, trimmed and rolled over in the `MemoryStream` show at once. `calls` counts
    requests by operation name and by ``(operation, shard_id)``; `inject()` makes the
    next calls fail or wait; `delete_stream()` makes the stream disappear;
    `load_pages()` adds records already encoded (for benchmarks). Iterators
    expire `iterator_ttl` seconds after they were issued, as real ones do after 15
    minutes. Use it from the event loop's thread, as the stream.
    """

    def __init__(
        self,
        stream: MemoryStream,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        iterator_ttl: float = 900.0,
        key_schema: Mapping[str, Literal["HASH", "RANGE"]] | None = None,
    ) -> None:
        if iterator_ttl < 0:
            raise ValueError(
                f"LocalStreamsServer(iterator_ttl={iterator_ttl}) must be at least 0 seconds"
            )
        self.stream = stream
        self.host = host
        self.port = port
        self.iterator_ttl = iterator_ttl
        self.key_schema = dict(key_schema) if key_schema is not None else {"pk": "HASH"}
        #: Requests received, by operation name and by ``(operation, shard_id)`` for the
        #: shard operations; faulted and failed requests count too.
        self.calls: Counter[str | tuple[str, str]] = Counter()
        self._faults: list[_Fault] = []
        self._deleted = False
        self._runner: web.ServerRunner | None = None
        self._endpoint_url: str | None = None
        self._serial = itertools.count()
        self._request_ids = itertools.count()
        # Each record's JSON, encoded once when first served (records never change).
        self._encoded: dict[str, list[bytes]] = {}
        self._label = stream.stream_arn.rsplit("/stream/", 1)[-1]
        self._operations: dict[str, Callable[[dict[str, Any]], Awaitable[bytes]]] = {
            _STREAMS_TARGET + "ListStreams": self._list_streams,
            _STREAMS_TARGET + "DescribeStream": self._describe_stream,
            _STREAMS_TARGET + "GetShardIterator": self._get_shard_iterator,
            _STREAMS_TARGET + "GetRecords": self._get_records,
            _DYNAMODB_TARGET + "DescribeTable": self._describe_table,
        }

    # -- lifecycle ----------------------------------------------------------------------

    async def __aenter__(self) -> LocalStreamsServer:
        if self._runner is not None:
            raise RuntimeError("this LocalStreamsServer is already running; make a new one")
        # A client that gives up on a call cancels its handler (a long "latency" fault),
        # and on exit in-flight calls get a moment to finish, then are cut off.
        server = web.Server(self._handle, handler_cancellation=True, access_log=None)
        runner = web.ServerRunner(server, handle_signals=False, shutdown_timeout=0.1)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.host, self.port)
            await site.start()
            host, port = runner.addresses[0][:2]
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._endpoint_url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    @property
    def endpoint_url(self) -> str:
        """``http://127.0.0.1:<port>``, for ``endpoint_url=`` of a client or source."""
        if self._endpoint_url is None:
            raise RuntimeError(
                "LocalStreamsServer is not running; use it as "
                "`async with LocalStreamsServer(stream) as server:`"
            )
        return self._endpoint_url

    @property
    def stream_arn(self) -> str:
        return self.stream.stream_arn

    # -- pre-encoded records ------------------------------------------------------------

    def load_pages(self, shard_id: str, bodies: Iterable[bytes]) -> int:
        """Append the records of GetRecords response bodies (``{"Records": [...]}``, the
        rest ignored) to the open shard `shard_id` of the stream, and serve each as the
        bytes it came in: a GetRecords answer then joins bytes and encodes nothing, so an
        end-to-end benchmark measures its client, not this server. Their sequence numbers
        must rise, above the shard's last record; the stream numbers later `put()`s after
        them. Returns how many records were added."""
        stream = self.stream
        shard = stream._shard(shard_id)
        if shard.closed:
            raise SourceError(
                f"shard {shard_id!r} is closed; load pages into one of its children or an "
                "open shard"
            )
        last = shard.sequences[-1] if shard.sequences else shard.starting_sequence - 1
        records: list[Record] = []
        sequences: list[int] = []
        encoded: list[bytes] = []
        for body in bodies:
            raws = _decode_raw_page(body).Records
            page = decode_records(body, shard_id=shard_id)
            for record, raw in zip(page, raws, strict=True):
                sequence = record.sequence_number
                if not (sequence.isdigit() and len(sequence) in _SEQUENCE_DIGITS):
                    raise SourceError(
                        f"record {record.event_id!r} has SequenceNumber {sequence!r}; "
                        "sequence numbers are strings of 21 to 40 digits"
                    )
                if int(sequence) <= last:
                    raise SourceError(
                        f"record {record.event_id!r} has SequenceNumber {sequence}, not above "
                        f"{last}, the last one in shard {shard_id!r}; sequence numbers rise"
                    )
                last = int(sequence)
                records.append(record)
                sequences.append(last)
                encoded.append(bytes(raw))
        # All or nothing: a bad record leaves the shard as it was.
        self._cached(shard).extend(encoded)
        shard.records.extend(records)
        shard.sequences.extend(sequences)
        if stream._peek_sequence() <= last:
            stream._sequence = itertools.count(last + 1)
        shard.notify()
        return len(records)

    # -- faults -------------------------------------------------------------------------

    def inject(
        self,
        kind: FaultKind,
        *,
        operation: Operation | None = None,
        shard_id: str | None = None,
        times: int | None = 1,
        delay: float = 0.0,
    ) -> None:
        """Make the next `times` matching calls fail (or, for ``"latency"``, wait `delay`
        seconds and then answer normally); ``times=None`` hits every matching call until
        `clear_faults()`. A call matches when its operation is `operation` (any the kind
        applies to when None) and, if `shard_id` is given, it is about that shard (for
        GetRecords: the iterator's shard). Kinds: ``"expired_iterator"`` (GetRecords),
        ``"trimmed"`` (GetRecords, GetShardIterator), ``"throttle"``
        (LimitExceededException), ``"internal_error"`` (HTTP 500), ``"latency"``,
        ``"empty_page"`` (GetRecords answers no records and an iterator at the same place,
        as DynamoDB may while records lie behind it). Any fault waits `delay` seconds
        before it answers."""
        if kind not in _FAULT_OPERATIONS:
            raise ValueError(
                f"inject({kind!r}): unknown fault; use one of {', '.join(_FAULT_OPERATIONS)}"
            )
        allowed = _FAULT_OPERATIONS[kind]
        if operation is not None:
            if operation not in get_args(Operation):
                raise ValueError(
                    f"inject(operation={operation!r}): not an operation this server answers; "
                    f"use one of {', '.join(get_args(Operation))}"
                )
            if allowed is not None and operation not in allowed:
                raise ValueError(
                    f"inject({kind!r}, operation={operation!r}): this fault only hits "
                    f"{' and '.join(sorted(allowed))}; pass one of those or operation=None"
                )
        if times is not None and times < 1:
            raise ValueError(f"inject(times={times}) must be at least 1, or None for always")
        if delay < 0:
            raise ValueError(f"inject(delay={delay}) must be at least 0 seconds")
        self._faults.append(_Fault(kind, operation, shard_id, times, delay))

    def clear_faults(self) -> None:
        """Forget every injected fault that has not fired yet."""
        self._faults.clear()

    def delete_stream(self) -> None:
        """Delete the stream (as deleting its table would): from now on every call about
        it answers ResourceNotFoundException and ListStreams no longer lists it."""
        self._deleted = True

    async def _fire_faults(self, operation: str, shard_id: str | None) -> bool:
        """Fire the faults that match a call: wait, or raise the error. Returns True
        when the call is to answer an empty page."""
        empty = False
        for fault in list(self._faults):
            if not fault.matches(operation, shard_id):
                continue
            if fault.remaining is not None:
                # Counted before any await, so concurrent calls never share one firing.
                fault.remaining -= 1
                if fault.remaining == 0:
                    self._faults.remove(fault)
            if fault.delay:
                await anyio.sleep(fault.delay)
            if fault.kind == "empty_page":
                empty = True
            elif fault.kind != "latency":
                raise _ApiError(*_FAULT_ERRORS[fault.kind])
        return empty

    # -- HTTP ---------------------------------------------------------------------------

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        target = request.headers.get("X-Amz-Target", "")
        operation = self._operations.get(target) if request.method == "POST" else None
        self.calls[target.partition(".")[2] or target] += 1
        try:
            if operation is None:
                raise _ApiError(
                    "UnknownOperationException", f"Unknown operation {target or '(none)'}"
                )
            try:
                params = _decode(await request.read())
            except msgspec.DecodeError:
                raise _ApiError("SerializationException", "Request body is not JSON") from None
            if not isinstance(params, dict):
                raise _ApiError("SerializationException", "Request body is not a JSON object")
            body = await operation(params)
        except _ApiError as error:
            response = error.response()
        else:
            response = web.Response(body=body, headers={"Content-Type": _CONTENT_TYPE})
        response.headers["x-amzn-RequestId"] = f"flowstream-{next(self._request_ids):012d}"
        return response

    # -- operations ---------------------------------------------------------------------

    async def _list_streams(self, params: dict[str, Any]) -> bytes:
        table = _optional_str(params, "TableName")
        _optional_int(params, "Limit", _MAX_SHARDS_PER_PAGE)
        start = _optional_str(params, "ExclusiveStartStreamArn")
        await self._fire_faults("ListStreams", None)
        stream = self.stream
        listed = not self._deleted and table in (None, stream.table) and start != stream.stream_arn
        streams = (
            [
                {
                    "StreamArn": stream.stream_arn,
                    "TableName": stream.table,
                    "StreamLabel": self._label,
                }
            ]
            if listed
            else []
        )
        return _encode({"Streams": streams})

    async def _describe_stream(self, params: dict[str, Any]) -> bytes:
        arn = _required_str(params, "StreamArn")
        limit = _optional_int(params, "Limit", _MAX_SHARDS_PER_PAGE) or _MAX_SHARDS_PER_PAGE
        start = _optional_str(params, "ExclusiveStartShardId")
        shard_filter = params.get("ShardFilter")
        parent: str | None = None
        if shard_filter is not None:
            if not isinstance(shard_filter, dict) or shard_filter.get("Type") != "CHILD_SHARDS":
                raise _validation("ShardFilter.Type must be CHILD_SHARDS")
            parent = _required_str(shard_filter, "ShardId")
        await self._fire_faults("DescribeStream", None)
        self._check_stream(arn)
        shards = self.stream._listed_shards()
        if parent is not None:
            shards = [s for s in shards if s.parent == parent]
        if start is not None:
            order = {shard_id: n for n, shard_id in enumerate(self.stream._shards)}
            if start not in order:
                raise _validation(f"ExclusiveStartShardId {start} is not a shard of this stream")
            shards = [s for s in shards if order[s.shard_id] > order[start]]
        page = shards[:limit]
        description: dict[str, Any] = {
            "StreamArn": arn,
            "StreamLabel": self._label,
            "StreamStatus": "ENABLED",
            "StreamViewType": self.stream.view_type.value,
            "CreationRequestDateTime": self._created(),
            "TableName": self.stream.table,
            "KeySchema": self._key_schema(),
            "Shards": [_shard_json(s) for s in page],
        }
        if len(shards) > limit:
            description["LastEvaluatedShardId"] = page[-1].shard_id
        return _encode({"StreamDescription": description})

    async def _get_shard_iterator(self, params: dict[str, Any]) -> bytes:
        arn = _required_str(params, "StreamArn")
        shard_id = _required_str(params, "ShardId")
        kind = _required_str(params, "ShardIteratorType")
        sequence = _optional_str(params, "SequenceNumber")
        timestamp = params.get("Timestamp")
        self.calls["GetShardIterator", shard_id] += 1
        await self._fire_faults("GetShardIterator", shard_id)
        self._check_stream(arn)
        shard = self.stream._shards.get(shard_id)
        if shard is None or shard.removed:
            raise _ApiError(
                "ResourceNotFoundException",
                f"Requested resource not found: Shard {shard_id} does not exist",
            )
        if kind in ("TRIM_HORIZON", "LATEST"):
            index = shard.index_of(Position(PositionKind(kind)))
        elif kind in ("AT_SEQUENCE_NUMBER", "AFTER_SEQUENCE_NUMBER"):
            if sequence is None:
                raise _validation(f"SequenceNumber is required for ShardIteratorType {kind}")
            if not (sequence.isdigit() and len(sequence) in _SEQUENCE_DIGITS):
                raise _validation(f"Invalid SequenceNumber {sequence}")
            index = shard.index_of(Position(PositionKind(kind), sequence))
            if index < shard.trimmed:
                raise _ApiError(*_FAULT_ERRORS["trimmed"][:2])
        elif kind == "AT_TIMESTAMP":
            if isinstance(timestamp, bool) or not isinstance(timestamp, int | float):
                raise _validation("Timestamp is required for ShardIteratorType AT_TIMESTAMP")
            if timestamp > time.time():
                raise _validation("Timestamp is in the future")
            found = bisect_left(shard.records, timestamp, key=_creation_time)
            index = max(found, shard.trimmed)  # older than the trim horizon: the horizon
        else:
            raise _validation(f"Invalid ShardIteratorType {kind}")
        return _encode({"ShardIterator": self._iterator(shard_id, index)})

    async def _get_records(self, params: dict[str, Any]) -> bytes:
        token = _required_str(params, "ShardIterator")
        limit = _optional_int(params, "Limit", _MAX_PAGE_RECORDS) or _MAX_PAGE_RECORDS
        shard_id, index, issued = self._parse_iterator(token)
        self.calls["GetRecords", shard_id] += 1
        empty = await self._fire_faults("GetRecords", shard_id)
        self._check_stream(self.stream.stream_arn)
        shard = self.stream._shards.get(shard_id)
        if shard is None or index > len(shard.records):
            raise _validation("Invalid ShardIterator")
        now = time.monotonic_ns()
        if now - issued > self.iterator_ttl * 1e9:
            raise _ApiError(*_FAULT_ERRORS["expired_iterator"][:2])
        if index < shard.trimmed:
            raise _ApiError(*_FAULT_ERRORS["trimmed"][:2])
        parts = [] if empty else self._encoded_page(shard, index, limit)
        end = index + len(parts)
        body = b'{"Records":[' + b",".join(parts) + b"]"
        if not (shard.closed and end >= len(shard.records)):
            # Absent once a closed shard is read to its end: the service's "shard ended".
            body += b',"NextShardIterator":' + _encode(self._iterator(shard_id, end, now))
        return body + b"}"

    async def _describe_table(self, params: dict[str, Any]) -> bytes:
        table = _required_str(params, "TableName")
        await self._fire_faults("DescribeTable", None)
        stream = self.stream
        if self._deleted or table != stream.table:
            raise _ApiError(
                "ResourceNotFoundException",
                f"Requested resource not found: Table: {table} not found",
            )
        return _encode(
            {
                "Table": {
                    "TableName": stream.table,
                    "TableArn": stream.stream_arn.rsplit("/stream/", 1)[0],
                    "TableStatus": "ACTIVE",
                    "CreationDateTime": self._created(),
                    "KeySchema": self._key_schema(),
                    "StreamSpecification": {
                        "StreamEnabled": True,
                        "StreamViewType": stream.view_type.value,
                    },
                    "LatestStreamArn": stream.stream_arn,
                    "LatestStreamLabel": self._label,
                }
            }
        )

    # -- helpers ------------------------------------------------------------------------

    def _check_stream(self, arn: str) -> None:
        if self._deleted or arn != self.stream.stream_arn:
            raise _ApiError(
                "ResourceNotFoundException",
                f"Requested resource not found: Stream: {arn} not found",
            )

    def _cached(self, shard: _ShardData, end: int | None = None) -> list[bytes]:
        """The shard's encoded records, encoded up to `end` (None: all of them)."""
        cache = self._encoded.setdefault(shard.shard_id, [])
        records = shard.records
        end = len(records) if end is None else end
        if len(cache) < end:
            cache.extend(_encode_record(r) for r in records[len(cache) : end])
        return cache

    def _encoded_page(self, shard: _ShardData, index: int, limit: int) -> list[bytes]:
        end = min(index + limit, len(shard.records))
        parts = self._cached(shard, end)[index:end]
        if sum(map(len, parts)) + len(parts) > _MAX_PAGE_BYTES:
            size = 0
            for n, part in enumerate(parts):
                size += len(part) + 1
                if size > _MAX_PAGE_BYTES and n:
                    return parts[:n]
        return parts

    def _iterator(self, shard_id: str, index: int, now: int | None = None) -> str:
        issued = time.monotonic_ns() if now is None else now
        payload = f"{shard_id}|{index}|{issued}|{next(self._serial)}".encode()
        opaque = base64.urlsafe_b64encode(payload).decode()
        return self.stream.stream_arn + _ITERATOR_VERSION + opaque

    def _parse_iterator(self, token: str) -> tuple[str, int, int]:
        arn, version, opaque = token.rpartition(_ITERATOR_VERSION)
        if not version:
            raise _validation("Invalid ShardIterator")
        if arn != self.stream.stream_arn:
            raise _ApiError(
                "ResourceNotFoundException",
                f"Requested resource not found: Stream: {arn} not found",
            )
        try:
            payload = base64.urlsafe_b64decode(opaque.encode()).decode()
            shard_id, index, issued, _serial = payload.rsplit("|", 3)
            return shard_id, int(index), int(issued)
        except (binascii.Error, UnicodeDecodeError, ValueError):
            raise _validation("Invalid ShardIterator") from None

    def _created(self) -> float:
        try:
            created = datetime.strptime(self._label, "%Y-%m-%dT%H:%M:%S.%f")
        except ValueError:
            return 0.0
        return created.replace(tzinfo=UTC).timestamp()

    def _key_schema(self) -> list[dict[str, str]]:
        return [{"AttributeName": name, "KeyType": kind} for name, kind in self.key_schema.items()]


def _shard_json(shard: _ShardData) -> dict[str, Any]:
    starting = str(shard.starting_sequence)
    numbers = {"StartingSequenceNumber": starting}
    ending = shard.ending_sequence()
    if ending is not None:
        numbers["EndingSequenceNumber"] = ending
    described: dict[str, Any] = {"ShardId": shard.shard_id, "SequenceNumberRange": numbers}
    if shard.parent is not None:
        described["ParentShardId"] = shard.parent
    return described


def _creation_time(record: Record) -> float:
    value = record.dynamodb.approximate_creation_date_time
    if isinstance(value, datetime):
        return value.timestamp()
    return value or 0.0


def _required_str(params: Mapping[str, Any], name: str) -> str:
    value = params.get(name)
    if not isinstance(value, str) or not value:
        raise _validation(f"1 validation error detected: Value at '{name}' must be a string")
    return value


def _optional_str(params: Mapping[str, Any], name: str) -> str | None:
    return None if params.get(name) is None else _required_str(params, name)


def _optional_int(params: Mapping[str, Any], name: str, maximum: int) -> int | None:
    value = params.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _validation(
            f"1 validation error detected: Value '{value}' at '{name[0].lower()}{name[1:]}' "
            "failed to satisfy constraint: Member must have value greater than or equal to 1"
        )
    if value > maximum:
        raise _validation(
            f"1 validation error detected: Value '{value}' at '{name[0].lower()}{name[1:]}' "
            f"failed to satisfy constraint: Member must have value less than or equal to {maximum}"
        )
    return value
