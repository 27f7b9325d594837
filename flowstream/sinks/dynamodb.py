"""`sinks.dynamodb(table)`: writes elements to a DynamoDB table through BatchWriteItem.

A `Record` is applied as the change it describes (INSERT and MODIFY put the new image,
REMOVE deletes the keys), which makes a table replicator one line; a dict is put as an
item. BatchWriteItem takes no two writes to one key in a call and does not apply a
call's writes in order, so a call holds one write per key and calls go one after the
other: an item's changes land in order.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any, ClassVar, Final, final

import anyio

from flowstream import attrvalue
from flowstream.aws import error_code
from flowstream.backoff import Backoff
from flowstream.errors import DeliveryError, FlowstreamError, SinkError
from flowstream.record import EventName, Record
from flowstream.sinks.aws_base import (
    AwsSink,
    OrderedFailures,
    arn_region,
    chunks,
    delivery_error,
    item_error,
    missing_resource,
)
from flowstream.sinks.base import Batch, SendResult, SinkWriter

if TYPE_CHECKING:
    from aiobotocore.session import AioSession

__all__ = ["DynamoDBSink", "dynamodb"]

# BatchWriteItem limits (DynamoDB API reference): 25 put or delete requests and 16 MB per
# call, 400 KB per item. 25 items of 400 KB are 10 MB, so the call size never binds.
MAX_REQUESTS: Final = 25
MAX_CALL_BYTES: Final = 16 * 1024 * 1024
MAX_ITEM_BYTES: Final = 400 * 1024
#: Calls per chunk while DynamoDB answers with UnprocessedItems (throttling), before
#: those items are failed for the runtime to retry with its own backoff.
UNPROCESSED_ATTEMPTS: Final = 4

_Key = tuple[tuple[str, Any], ...]


@final
@dataclass(eq=False, repr=False)
class DynamoDBSink(AwsSink):
    """Writes elements to a DynamoDB table. Build it with `sinks.dynamodb()`."""

    service: ClassVar[str] = "dynamodb"

    table: str

    def describe(self) -> str:
        return f"dynamodb({self.table})"

    def writer(self, client: Any) -> SinkWriter:
        return _DynamoDBWriter(self, client)

    async def open_writer(self, client: Any) -> SinkWriter:
        # A missing table or bad credentials stop the run at its start; a transient error
        # leaves the look-up to the first send, which the runtime retries.
        writer = _DynamoDBWriter(self, client)
        try:
            await writer.key_schema()
        except DeliveryError as exc:
            if not exc.retryable:
                raise SinkError(str(exc)) from None
        return writer


class _DynamoDBWriter(SinkWriter):
    def __init__(self, sink: DynamoDBSink, client: Any) -> None:
        self._client = client
        self._name = sink.describe()
        self._table = sink.table
        self._endpoint = sink.endpoint_url
        self._key_names: tuple[str, ...] | None = None
        self._lock = anyio.Lock()

    async def send(self, batch: Batch) -> SendResult | None:
        names = await self.key_schema()
        n = len(batch)
        requests: list[dict[str, Any]] = [{}] * n
        sizes = [0] * n
        keys: list[Hashable] = [object()] * n  # an item without a key blocks nothing
        failed: dict[int, BaseException] = {}
        for i, value in enumerate(batch.values):
            try:
                requests[i], keys[i], sizes[i] = self._request(value, names)
            except FlowstreamError as exc:
                failed[i] = item_error(exc, self._name)
        outcome = OrderedFailures(keys, sink=self._name)
        for i, error in failed.items():
            outcome.fail(i, error)
        for run in chunks(sizes, max_count=MAX_REQUESTS, max_bytes=MAX_CALL_BYTES, keys=keys):
            send = outcome.to_send(run)
            if send:
                await self._write(send, requests, keys, outcome)
        return outcome.result()

    # -- one call, and its UnprocessedItems -----------------------------------------------

    async def _write(
        self,
        send: list[int],
        requests: list[dict[str, Any]],
        keys: list[Hashable],
        outcome: OrderedFailures,
    ) -> None:
        pending = send
        backoff = Backoff(base=0.05, cap=1.0)
        for attempt in range(1, UNPROCESSED_ATTEMPTS + 1):
            try:
                response = await self._client.batch_write_item(
                    RequestItems={self._table: [requests[i] for i in pending]}
                )
            except Exception as exc:
                if error_code(exc) == "ValidationException":
                    # The call is rejected for what one request holds (an item DynamoDB
                    # finds too large, a key of the wrong type): send them one by one so
                    # that only that one fails.
                    if len(pending) > 1:
                        for i in pending:
                            if outcome.to_send([i]):
                                await self._write([i], requests, keys, outcome)
                    else:
                        outcome.fail(pending[0], self._call_error(exc))
                    return
                outcome.stop(pending, self._call_error(exc))
                return
            unprocessed = [
                request
                for table_requests in (response.get("UnprocessedItems") or {}).values()
                for request in table_requests
            ]
            if not unprocessed:
                return
            pending = self._unprocessed(unprocessed, pending, keys)
            if attempt < UNPROCESSED_ATTEMPTS:
                await anyio.sleep(backoff.next_delay())
        error = DeliveryError(
            f"sink {self._name}: DynamoDB left the write unprocessed {UNPROCESSED_ATTEMPTS} "
            "times (UnprocessedItems: the table's write capacity is exceeded)",
            retryable=True,
            code="UnprocessedItems",
        )
        for i in pending:
            outcome.fail(i, error)

    def _unprocessed(
        self, unprocessed: list[dict[str, Any]], pending: list[int], keys: list[Hashable]
    ) -> list[int]:
        """The items of `pending` that DynamoDB returned as unprocessed (found by key: a
        call holds one request per key)."""
        assert self._key_names is not None
        by_key = {keys[i]: i for i in pending}
        found: list[int] = []
        for request in unprocessed:
            try:
                if "PutRequest" in request:
                    key = _key(request["PutRequest"]["Item"], self._key_names)
                else:
                    key = _key(request["DeleteRequest"]["Key"], self._key_names)
                found.append(by_key[key])
            except (KeyError, TypeError, ValueError, InvalidOperation):
                # Not what was sent: send the whole call again, which is safe (each
                # request is a whole-item put or a delete, and no later write of these
                # keys went out yet).
                return pending
        return sorted(found)

    # -- requests -------------------------------------------------------------------------

    def _request(self, value: Any, names: tuple[str, ...]) -> tuple[dict[str, Any], _Key, int]:
        """The write request for `value`, its key and its size."""
        if isinstance(value, Record):
            if value.event_name is EventName.REMOVE:
                keys = value.keys
                missing = [name for name in names if name not in keys]
                if missing:
                    raise DeliveryError(
                        f"sink {self._name}: the keys {keys!r} of record "
                        f"{value.sequence_number} lack {missing[0]!r}, part of the key of "
                        f"table {self._table!r}; replicate between tables with the same key "
                        "schema, or map records to items first",
                        retryable=False,
                    )
                key_item = attrvalue.encode({name: keys[name] for name in names}, binary="bytes")
                try:
                    key = _key(key_item, names)
                except ValueError as exc:
                    raise DeliveryError(
                        f"sink {self._name}: {exc}; keys are strings, numbers or bytes",
                        retryable=False,
                    ) from None
                return {"DeleteRequest": {"Key": key_item}}, key, 0
            image = value.new_image
            if image is None:
                raise DeliveryError(
                    f"sink {self._name}: record {value.sequence_number} "
                    f"({value.event_name.value}) has no new image, so there is nothing to "
                    f"put: its stream's view type is {_view_type(value)}; set the source "
                    "table's StreamViewType to NEW_IMAGE or NEW_AND_OLD_IMAGES",
                    retryable=False,
                )
            item = attrvalue.encode(image, path="NewImage", binary="bytes")
        elif isinstance(value, Mapping):
            item = attrvalue.encode(value, binary="bytes")
        else:
            raise DeliveryError(
                f"sink {self._name}: cannot write a {type(value).__name__} value; the "
                "dynamodb sink takes records (applied as changes) or dicts (put as items): "
                "map elements to dicts of the item's attributes",
                retryable=False,
            )
        missing = [name for name in names if name not in item]
        if missing:
            raise DeliveryError(
                f"sink {self._name}: an item without {missing[0]!r}, part of the key of "
                f"table {self._table!r} ({', '.join(names)}); give every item its key "
                "attributes",
                retryable=False,
            )
        size = item_size(item)
        if size > MAX_ITEM_BYTES:
            raise DeliveryError(
                f"sink {self._name}: an item of {size} bytes is over DynamoDB's limit of "
                f"{MAX_ITEM_BYTES} bytes (400 KB) per item; store large values elsewhere "
                "(e.g. S3) and keep a reference",
                retryable=False,
            )
        try:
            key = _key(item, names)
        except ValueError as exc:
            raise DeliveryError(
                f"sink {self._name}: {exc}; keys are strings, numbers or bytes",
                retryable=False,
            ) from None
        return {"PutRequest": {"Item": item}}, key, size

    async def key_schema(self) -> tuple[str, ...]:
        """The table's key attribute names (DescribeTable, once per run)."""
        if self._key_names is not None:
            return self._key_names
        async with self._lock:
            if self._key_names is None:
                try:
                    table = (await self._client.describe_table(TableName=self._table))["Table"]
                except Exception as exc:
                    raise self._call_error(exc) from None
                self._key_names = tuple(key["AttributeName"] for key in table["KeySchema"])
        return self._key_names

    def _call_error(self, exc: BaseException) -> DeliveryError:
        if error_code(exc) == "ResourceNotFoundException":
            message = missing_resource(
                f"table {self._table!r}",
                exc,
                client=self._client,
                endpoint_url=self._endpoint,
                fix="create it, or check the table name and region=",
            )
            return DeliveryError(
                f"sink {self._name}: {message}",
                retryable=False,
                code="ResourceNotFoundException",
            )
        return delivery_error(exc, sink=self._name, what=f"DynamoDB table {self._table!r}")


def _view_type(record: Record) -> str:
    view = record.stream_view_type
    return view.value if view is not None else "unknown (the record does not say)"


def _key(item: Mapping[str, Mapping[str, Any]], names: Iterable[str]) -> _Key:
    """An item's key as a hashable value; equal numbers in other spellings ("1.0", "1")
    give equal keys, as in DynamoDB."""
    parts: list[tuple[str, Any]] = []
    for name in names:
        ((tag, value),) = item[name].items()
        if tag not in ("S", "N", "B"):
            raise ValueError(f"key attribute {name!r} is of type {tag}")
        if tag == "N":
            value = str(Decimal(value).normalize())
        elif isinstance(value, bytearray | memoryview):
            value = bytes(value)
        parts.append((tag, value))
    return tuple(parts)


def item_size(item: Mapping[str, Mapping[str, Any]]) -> int:
    """An item's size as DynamoDB counts it toward the 400 KB limit (attribute names and
    values; DynamoDB Developer Guide, "Item sizes and formats")."""
    return sum(len(name.encode()) + _value_size(av) for name, av in item.items())


def _value_size(av: Mapping[str, Any]) -> int:
    ((tag, value),) = av.items()
    if tag == "S":
        return len(value.encode())
    if tag == "B":
        return len(value)
    if tag == "N":
        return _number_size(value)
    if tag in ("BOOL", "NULL"):
        return 1
    if tag == "SS":
        return sum(len(v.encode()) for v in value)
    if tag == "BS":
        return sum(len(v) for v in value)
    if tag == "NS":
        return sum(_number_size(v) for v in value)
    if tag == "L":
        return 3 + sum(1 + _value_size(v) for v in value)
    # M
    return 3 + sum(1 + len(k.encode()) + _value_size(v) for k, v in value.items())


def _number_size(text: str) -> int:
    """About 1 byte per 2 significant digits, plus 1 (DynamoDB: at most 21 bytes)."""
    digits = text.lstrip("+-").split("e")[0].split("E")[0].replace(".", "").strip("0")
    return min(21, (len(digits) + 1) // 2 + 1 + text.startswith("-"))


def dynamodb(
    table: str,
    *,
    endpoint_url: str | None = None,
    region: str | None = None,
    session: AioSession | None = None,
    max_connections: int = 64,
) -> DynamoDBSink:
    """A sink that writes to the DynamoDB table `table` (a name or a table ARN).

    A `fs.Record` is applied as its change: INSERT and MODIFY put the new image (the
    stream must include new images), REMOVE deletes the item by its keys, so
    ``fs.Pipeline(sources.dynamodb(table="A")).to(sinks.dynamodb("B"))`` keeps B equal to
    A. A dict is put as an item (plain Python values, as records decode to). Needs
    ``dynamodb:BatchWriteItem`` and ``dynamodb:DescribeTable`` (the key schema, read once
    per run). AWS settings come from the standard chain, `endpoint_url=`, `region=` (by
    default the ARN's region) and an aiobotocore `session=`.
    """
    if not isinstance(table, str) or not table:
        raise SinkError(
            f"sinks.dynamodb() needs a table name or ARN, got {table!r}; pass e.g. "
            "sinks.dynamodb('UsersCopy')"
        )
    in_arn = arn_region(
        table, factory="dynamodb", service="dynamodb", resource="table/", what="DynamoDB table"
    )
    region = region or in_arn
    return DynamoDBSink(
        table,
        endpoint_url=endpoint_url,
        region=region,
        session=session,
        max_connections=max_connections,
    )
