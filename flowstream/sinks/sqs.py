"""`sinks.sqs(queue_url)`: elements as messages of an SQS queue, through SendMessageBatch.

Each element becomes one message whose body is the element as text (`to_bytes`, or
`encode=`), sent in calls of up to 10 messages and the queue's size limit. Only the
messages SQS did not take are retried. A FIFO queue (URL ending in ``.fifo``) gets a
message group id per message (by default the DynamoDB item's keys, so one item's changes
stay in order) and a deduplication id (by default the record's `event_id`), and no call
holds two messages of one group, so a failed message is never overtaken by a later one of
its group.

This module also owns what the AWS messaging sinks share (`sinks.sns`,
`sinks.eventbridge`): message text and attributes, FIFO ids, and sending a batch's calls.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections import Counter
from collections.abc import Awaitable, Callable, Hashable, Iterable, Mapping
from dataclasses import KW_ONLY, dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any, ClassVar, Final, final
from urllib.parse import urlsplit

import anyio

from flowstream.aws import error_code
from flowstream.errors import DeliveryError, FlowstreamError, SinkError
from flowstream.record import Record
from flowstream.serialize import to_bytes
from flowstream.sinks.aws_base import (
    AwsSink,
    OrderedFailures,
    chunks,
    delivery_error,
    encode_with,
    item_error,
    missing_resource,
)
from flowstream.sinks.base import Batch, SendResult, SinkWriter, item_key

if TYPE_CHECKING:
    from aiobotocore.session import AioSession

__all__ = ["AttributeValue", "Attributes", "GroupId", "SqsSink", "sqs"]

#: A message attribute's value: str and bool become String, int, float and Decimal
#: Number, bytes Binary; a mapping in the service's own shape (``{"DataType": ...,
#: "StringValue": ...}``) is sent as it is. None leaves the attribute out.
AttributeValue = str | bytes | int | float | Decimal | Mapping[str, Any] | None

#: Message attributes: a fixed mapping of name to value, or a function of the element
#: and the record it came from that returns one (or None for none).
Attributes = (
    Mapping[str, AttributeValue] | Callable[[Any, Record], Mapping[str, AttributeValue] | None]
)

#: A FIFO message group id: None (the DynamoDB item's keys), a fixed str, or a function of
#: the element and its record.
GroupId = str | Callable[[Any, Record], str] | None

#: How an element becomes message text when the default (`to_bytes`) does not fit.
Encode = Callable[[Any], bytes | str]

# SendMessageBatch (SQS API reference): 10 messages a call. A message (body and
# attributes) is at most the queue's MaximumMessageSize, 256 KiB unless the queue says
# otherwise (SQS now allows up to 1 MiB); a call's total is 256 KiB, or the queue's
# larger limit. 10 attributes a message; ids of 1 to 128 printable ASCII characters;
# per-message delays of 0 to 900 seconds, not on FIFO queues.
MAX_ENTRIES: Final = 10
DEFAULT_MAX_BYTES: Final = 256 * 1024
MAX_ATTRIBUTES: Final = 10
MAX_DELAY: Final = 900
MAX_ID: Final = 128
#: Calls of one batch in flight at once where the destination keeps no order anyway
#: (standard queues and topics, event buses); FIFO calls go one after the other.
CONCURRENT_CALLS: Final = 8

#: Characters SQS and SNS refuse in message text (outside XML 1.0's Char production).
_NOT_XML: Final = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
#: Group and deduplication ids: letters, digits and punctuation.
_ID: Final = re.compile(r"[!-~]{1,128}")
_ATTRIBUTE_NAME: Final = re.compile(r"[A-Za-z0-9_.-]{1,256}")
#: Hosts of AWS SQS endpoints, with the region: sqs.REGION.amazonaws.com(.cn),
#: sqs.REGION.api.aws, and the legacy REGION.queue.amazonaws.com.
_QUEUE_HOST: Final = re.compile(
    r"(?:sqs\.([a-z]{2}(?:-[a-z]+)+-\d+)\.(?:amazonaws\.com(?:\.cn)?|api\.aws)"
    r"|([a-z]{2}(?:-[a-z]+)+-\d+)\.queue\.amazonaws\.com(?:\.cn)?)"
)
_QUEUE_MISSING: Final = frozenset({"QueueDoesNotExist", "AWS.SimpleQueueService.NonExistentQueue"})
# SQS's own throttling codes, which flowstream.aws does not list.
_SQS_THROTTLED: Final = frozenset({"RequestThrottled", "KmsThrottled"})


@final
@dataclass(eq=False, repr=False)
class SqsSink(AwsSink):
    """Sends elements as messages to an SQS queue. Build it with `sinks.sqs()`."""

    service: ClassVar[str] = "sqs"

    queue_url: str
    _: KW_ONLY
    fifo: bool
    message_group_id: GroupId
    deduplication_id: Callable[[Any, Record], str] | None
    attributes: Attributes | None
    delay: int | None
    encode: Encode | None

    def describe(self) -> str:
        return f"sqs({self.queue_url})"

    def writer(self, client: Any) -> SinkWriter:
        return _SqsWriter(self, client, DEFAULT_MAX_BYTES)

    async def open_writer(self, client: Any) -> SinkWriter:
        # Check that the queue exists (a clear error now, not one per shard later) and
        # read its size limit.
        response = await self.check_destination(
            client.get_queue_attributes(
                QueueUrl=self.queue_url, AttributeNames=["MaximumMessageSize"]
            ),
            service="SQS",
            missing=_QUEUE_MISSING,
            explain_missing=lambda exc: _missing_queue(self, client, exc),
        )
        # None (not allowed to look, or a passing fault): send with the default limit.
        limit = (response or {}).get("Attributes", {}).get("MaximumMessageSize")
        return _SqsWriter(self, client, int(limit) if limit else DEFAULT_MAX_BYTES)


class _SqsWriter(SinkWriter):
    def __init__(self, sink: SqsSink, client: Any, max_bytes: int) -> None:
        self._client = client
        self._sink = sink
        self._name = sink.describe()
        self._url = sink.queue_url
        self._fifo = sink.fifo
        self._max_bytes = max_bytes
        self._call_bytes = max(max_bytes, DEFAULT_MAX_BYTES)
        self._ids = FifoIds(sink.message_group_id, sink.deduplication_id, sink=self._name)
        self._attributes = AttributeMaker(sink.attributes, sink=self._name, service="SQS")
        self._encode = sink.encode
        self._delay = sink.delay

    async def send(self, batch: Batch) -> SendResult | None:
        n = len(batch)
        if not n:
            return None
        entries: list[dict[str, Any]] = [{}] * n
        sizes = [0] * n
        keys: list[Hashable] = [object() for _ in range(n)]  # no key: blocks nothing
        failed: dict[int, BaseException] = {}
        fifo, group_given = self._fifo, self._sink.message_group_id is not None
        dedup = self._ids.deduplication_ids(batch) if fifo else None
        for i, (value, record) in enumerate(zip(batch.values, batch.records, strict=True)):
            try:
                entry: dict[str, Any] = {}
                if fifo or group_given:
                    group = self._ids.group_id(value, record)
                    entry["MessageGroupId"] = group
                    if fifo:
                        keys[i] = group
                if fifo:
                    entry["MessageDeduplicationId"] = (
                        dedup[i] if dedup is not None else self._ids.deduplication_id(value, record)
                    )
                text, size = message_text(value, self._encode, sink=self._name, service="SQS")
                entry["MessageBody"] = text
                attributes, attributes_size = self._attributes.make(value, record)
                if attributes:
                    entry["MessageAttributes"] = attributes
                size += attributes_size
                if size > self._max_bytes:
                    raise too_large(
                        value, size, attributes_size, self._max_bytes, sink=self._name, what="SQS"
                    )
                if self._delay is not None:
                    entry["DelaySeconds"] = self._delay
            except FlowstreamError as exc:
                failed[i] = item_error(exc, self._name)
                continue
            entries[i] = entry
            sizes[i] = size
        outcome = OrderedFailures(keys, sink=self._name)
        for i, error in failed.items():
            outcome.fail(i, error)
        runs = chunks(
            sizes,
            max_count=MAX_ENTRIES,
            max_bytes=self._call_bytes,
            keys=keys if fifo else None,
        )

        async def call(send: list[int]) -> None:
            await self._call(send, entries, outcome)

        await send_calls(runs, outcome, call, ordered=fifo)
        if dedup is not None:
            self._ids.remember(batch, dedup, outcome.failed)
        return outcome.result()

    async def _call(
        self, send: list[int], entries: list[dict[str, Any]], outcome: OrderedFailures
    ) -> None:
        try:
            response = await self._client.send_message_batch(
                QueueUrl=self._url,
                Entries=[{"Id": str(k), **entries[i]} for k, i in enumerate(send)],
            )
        except Exception as exc:
            outcome.stop(send, self._call_error(exc))
            return
        batch_failures(response, send, outcome, sink=self._name, service="SQS")

    def _call_error(self, exc: BaseException) -> DeliveryError:
        code = error_code(exc)
        if code in _QUEUE_MISSING:
            return DeliveryError(
                f"sink {self._name}: {_missing_queue(self._sink, self._client, exc)}",
                retryable=False,
                code=code,
            )
        error = delivery_error(exc, sink=self._name, what=f"SQS queue {self._url}")
        if code in _SQS_THROTTLED:
            error.retryable = True
        return error


def _missing_queue(sink: SqsSink, client: Any, exc: BaseException) -> str:
    return missing_resource(
        f"SQS queue {sink.queue_url}",
        exc,
        client=client,
        endpoint_url=sink.endpoint_url,
        fix="create it, or check the queue URL, region= and endpoint_url=",
    )


# -- shared by the messaging sinks (sqs, sns, eventbridge) --------------------------------


def message_text(value: Any, encode: Encode | None, *, sink: str, service: str) -> tuple[str, int]:
    """`value` as message text, and its size in bytes (UTF-8). Raises a `DeliveryError`
    (not retryable) naming the problem when it cannot be a message."""
    data: bytes | None = None
    if encode is not None:
        data = encode_with(encode, value)
    elif isinstance(value, str):
        text = value
    else:
        data = to_bytes(value)
    if data is not None:
        try:
            text = data.decode()
        except UnicodeDecodeError as exc:
            raise DeliveryError(
                f"sink {sink}: a {type(value).__name__} value gave {len(data)} bytes that are "
                f"not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}), and a "
                f"{service} message is text; decode it first, or send it as base64 with "
                "encode=lambda v: base64.b64encode(v)",
                retryable=False,
            ) from None
    if not text:
        raise DeliveryError(
            f"sink {sink}: a {type(value).__name__} value gave an empty message, and "
            f"{service} needs at least one character; filter such elements out first",
            retryable=False,
        )
    bad = _NOT_XML.search(text)
    if bad is not None:
        raise DeliveryError(
            f"sink {sink}: a {type(value).__name__} value holds the character "
            f"U+{ord(bad.group()):04X} at position {bad.start()}, which {service} does not "
            "allow in a message (it takes tab, line breaks and the characters from U+0020 "
            "on, except surrogates, U+FFFE and U+FFFF); remove or replace it, or map the "
            "value to a dict so it is sent as JSON",
            retryable=False,
        )
    if data is not None:
        return text, len(data)
    return text, len(text) if text.isascii() else len(text.encode())


def too_large(
    value: Any, size: int, attributes: int, limit: int, *, sink: str, what: str
) -> DeliveryError:
    """The error for a message over its service's size limit (never retryable)."""
    parts = f" (attributes {attributes} bytes)" if attributes else ""
    return DeliveryError(
        f"sink {sink}: a {type(value).__name__} value makes a message of {size} "
        f"bytes{parts}, over the {what} limit of {limit} bytes ({limit // 1024} KiB) per "
        "message; map it to something smaller, e.g. store the payload elsewhere (S3) and "
        "send a reference",
        retryable=False,
    )


def batch_failures(
    response: Mapping[str, Any],
    send: list[int],
    outcome: OrderedFailures,
    *,
    sink: str,
    service: str,
) -> None:
    """Fail the items of a SendMessageBatch or PublishBatch call (entry ``Id`` k is
    `send[k]`) that the response lists as failed, or does not mention at all. A failure
    that is the sender's fault is not retried; one that is the service's is."""
    succeeded = {str(entry.get("Id")) for entry in response.get("Successful") or ()}
    failures = {str(entry.get("Id")): entry for entry in response.get("Failed") or ()}
    for k, i in enumerate(send):
        failure = failures.get(str(k))
        if failure is not None:
            code = str(failure.get("Code") or "UnknownError")
            # moto sends SenderFault as the string "true"
            sender_fault = failure.get("SenderFault") in (True, "true")
            outcome.fail(
                i,
                DeliveryError(
                    f"sink {sink}: {service} did not take the message: {code}: "
                    f"{failure.get('Message') or ''}",
                    retryable=not sender_fault,
                    code=code,
                ),
            )
        elif str(k) not in succeeded:
            outcome.fail(
                i,
                DeliveryError(
                    f"sink {sink}: {service} answered neither success nor failure for the "
                    "message; it is sent again",
                    retryable=True,
                ),
            )


async def send_calls(
    runs: Iterable[range],
    outcome: OrderedFailures,
    call: Callable[[list[int]], Awaitable[None]],
    *,
    ordered: bool,
) -> None:
    """Make one call per run of items (skipping those `outcome` holds back or failed).

    Ordered: one after the other, so a failure holds back the later items of its key.
    Unordered (the destination keeps no order): up to `CONCURRENT_CALLS` at a time.
    `call` records its own failures in `outcome`, and never raises.
    """
    if ordered:
        for run in runs:
            send = outcome.to_send(run)
            if send:
                await call(send)
        return
    limiter = anyio.CapacityLimiter(CONCURRENT_CALLS)

    async def one(run: range) -> None:
        async with limiter:
            # decided only now: a call that failed as a whole meanwhile stops the rest
            send = outcome.to_send(run)
            if send:
                await call(send)

    async with anyio.create_task_group() as tg:
        for run in runs:
            tg.start_soon(one, run)


class AttributeMaker:
    """Message attributes of each element, in the shape SQS and SNS take, and their size
    as the services count it (names, types and values)."""

    __slots__ = ("_fixed", "_fn", "_service", "_sink")

    def __init__(self, spec: Attributes | None, *, sink: str, service: str) -> None:
        self._sink = sink
        self._service = service
        self._fn: Callable[[Any, Record], Mapping[str, AttributeValue] | None] | None = None
        self._fixed: tuple[dict[str, Any], int] = ({}, 0)
        if spec is None:
            return
        if callable(spec):
            self._fn = spec
        elif isinstance(spec, Mapping):
            try:
                self._fixed = convert_attributes(spec)
            except ValueError as exc:
                raise SinkError(f"{sink}: attributes= {exc}") from None
        else:
            raise SinkError(
                f"{sink}: attributes= must be a dict of name -> value or a function "
                f"(element, record) -> dict, got {type(spec).__name__}"
            )

    def make(self, value: Any, record: Record) -> tuple[dict[str, Any], int]:
        if self._fn is None:
            return self._fixed
        try:
            given = self._fn(value, record)
        except Exception as exc:
            raise DeliveryError(
                f"sink {self._sink}: attributes= raised {type(exc).__name__} for a "
                f"{type(value).__name__} value: {exc}",
                retryable=False,
            ) from exc
        if given is None:
            return {}, 0
        if not isinstance(given, Mapping):
            raise DeliveryError(
                f"sink {self._sink}: attributes= returned a {type(given).__name__}; it must "
                "return a dict of name -> value, or None",
                retryable=False,
            )
        try:
            return convert_attributes(given)
        except ValueError as exc:
            raise DeliveryError(
                f"sink {self._sink}: attributes= returned {exc}", retryable=False
            ) from None


def convert_attributes(given: Mapping[str, AttributeValue]) -> tuple[dict[str, Any], int]:
    """Attributes in the services' shape and their size; raises ValueError naming the
    attribute that cannot be sent."""
    out: dict[str, Any] = {}
    size = 0
    for name, value in given.items():
        if value is None:
            continue
        if not isinstance(name, str) or not _valid_attribute_name(name):
            raise ValueError(
                f"an attribute named {name!r}; names are 1 to 256 letters, digits, '_', '-' "
                "and '.', not starting with 'AWS.' or 'Amazon.', with no '..' and no '.' at "
                "either end"
            )
        attribute = _attribute(name, value)
        out[name] = attribute
        payload = attribute.get("StringValue", attribute.get("BinaryValue", b""))
        size += len(name.encode()) + len(str(attribute.get("DataType", "")))
        size += len(payload.encode() if isinstance(payload, str) else payload)
    if len(out) > MAX_ATTRIBUTES:
        raise ValueError(f"{len(out)} attributes; a message takes at most {MAX_ATTRIBUTES}")
    return out, size


def _valid_attribute_name(name: str) -> bool:
    folded = name.lower()
    return (
        _ATTRIBUTE_NAME.fullmatch(name) is not None
        and not folded.startswith(("aws.", "amazon."))
        and ".." not in name
        and not name.startswith(".")
        and not name.endswith(".")
    )


def _attribute(name: str, value: AttributeValue) -> dict[str, Any]:
    if isinstance(value, Mapping):
        if not isinstance(value.get("DataType"), str):
            raise ValueError(
                f"attribute {name!r} as a mapping without a DataType; give the value itself, "
                "or {'DataType': 'String', 'StringValue': ...}"
            )
        return dict(value)
    if isinstance(value, bool):
        return {"DataType": "String", "StringValue": "true" if value else "false"}
    if isinstance(value, str):
        if not value:
            raise ValueError(f"attribute {name!r} as an empty str; leave it out (None) instead")
        bad = _NOT_XML.search(value)
        if bad is not None:
            raise ValueError(
                f"attribute {name!r} holding the character U+{ord(bad.group()):04X}, which "
                "a message attribute cannot hold"
            )
        return {"DataType": "String", "StringValue": value}
    if isinstance(value, int | float | Decimal):
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"attribute {name!r} as {value}; a Number must be finite")
        if isinstance(value, Decimal) and not value.is_finite():
            raise ValueError(f"attribute {name!r} as {value}; a Number must be finite")
        return {"DataType": "Number", "StringValue": str(value)}
    if isinstance(value, bytes | bytearray | memoryview):
        if not value:
            raise ValueError(f"attribute {name!r} as empty bytes; leave it out (None) instead")
        return {"DataType": "Binary", "BinaryValue": bytes(value)}
    raise ValueError(
        f"attribute {name!r} as a {type(value).__name__}; values are str, bytes, int, float, "
        "Decimal or bool (or a {'DataType': ..., 'StringValue': ...} mapping)"
    )


class FifoIds:
    """Message group and deduplication ids for a FIFO queue or topic.

    The default group id is the DynamoDB item's keys: one item's changes are one group,
    kept in order. The default deduplication id is the record's `event_id`, with ``-k``
    added when the record gave several elements to this sink (the k-th of them), so they
    do not deduplicate each other. A replayed record gets the same ids, so the service
    drops it within its five-minute deduplication window.
    """

    __slots__ = ("_dedup", "_group", "_retry", "_sink")

    def __init__(
        self,
        group: GroupId,
        dedup: Callable[[Any, Record], str] | None,
        *,
        sink: str,
    ) -> None:
        self._group = group
        self._dedup = dedup
        self._sink = sink
        # Per shard, the failed items of the last call and their ids: the runtime's
        # retry sends just those, and a retried element must keep the id it was first
        # given (its index among its record's elements is not visible in the subset).
        self._retry: dict[str, tuple[list[Record], list[Any], list[str]]] = {}

    def group_id(self, value: Any, record: Record) -> str:
        chosen = self._group
        if chosen is None:
            return default_group_id(record)
        if isinstance(chosen, str):
            return chosen
        return self._call("message_group_id", chosen, value, record)

    def deduplication_ids(self, batch: Batch) -> list[str] | None:
        """The default deduplication id of each item of `batch` (call `remember()` once
        it is sent), or None when the user's function gives them (`deduplication_id()`)."""
        if self._dedup is not None:
            return None
        last = self._retry.pop(batch.shard_id, None)
        if last is not None and _same_items(batch, last[0], last[1]):
            return last[2]
        counts = Counter(batch.records)
        seen: Counter[Record] = Counter()
        ids: list[str] = []
        for record in batch.records:
            event_id = record.event_id
            if counts[record] > 1:
                event_id = f"{event_id}-{seen[record]}"
                seen[record] += 1
            if _ID.fullmatch(event_id) is None:
                event_id = hashlib.sha256(event_id.encode()).hexdigest()
            ids.append(event_id)
        return ids

    def deduplication_id(self, value: Any, record: Record) -> str:
        """The id the user's `deduplication_id` function gives."""
        assert self._dedup is not None
        return self._call("deduplication_id", self._dedup, value, record)

    def remember(self, batch: Batch, ids: list[str], failed: Mapping[int, object]) -> None:
        """Keep the default ids of the items that failed, for the retry of just those."""
        if not failed:
            return
        keep = sorted(failed)
        self._retry[batch.shard_id] = (
            [batch.records[i] for i in keep],
            [batch.values[i] for i in keep],
            [ids[i] for i in keep],
        )

    def _call(
        self, option: str, fn: Callable[[Any, Record], str], value: Any, record: Record
    ) -> str:
        try:
            chosen = fn(value, record)
        except Exception as exc:
            raise DeliveryError(
                f"sink {self._sink}: {option}= raised {type(exc).__name__} for a "
                f"{type(value).__name__} value: {exc}",
                retryable=False,
            ) from exc
        if not isinstance(chosen, str) or _ID.fullmatch(chosen) is None:
            raise DeliveryError(
                f"sink {self._sink}: {option}= returned {chosen!r}; {_ID_RULE}",
                retryable=False,
            )
        return chosen


_ID_RULE: Final = "an id is 1 to 128 letters, digits and punctuation characters (no spaces)"


def _same_items(batch: Batch, records: list[Record], values: list[Any]) -> bool:
    return (
        len(batch) == len(records)
        and all(a is b for a, b in zip(batch.records, records, strict=True))
        and all(a is b for a, b in zip(batch.values, values, strict=True))
    )


def default_group_id(record: Record) -> str:
    """The DynamoDB item's keys as a stable group id (sorted JSON, e.g.
    ``{"pk":"user#1","sk":0}``), or their SHA-256 when that is too long or holds
    characters an id cannot."""
    text = item_key(record)
    if _ID.fullmatch(text) is not None:
        return text
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def check_id(option: str, value: object, *, sink: str) -> None:
    """Build-time check of a fixed group id."""
    if isinstance(value, str) and _ID.fullmatch(value) is None:
        raise SinkError(f"{sink}: {option}={value!r} is not a valid id; {_ID_RULE}")
    if value is not None and not isinstance(value, str) and not callable(value):
        raise SinkError(
            f"{sink}: {option}= must be None, a str or a function (element, record) -> str, "
            f"got {type(value).__name__}"
        )


def check_callable(option: str, value: object, *, sink: str) -> None:
    if value is not None and not callable(value):
        raise SinkError(
            f"{sink}: {option}= must be a function (element, record) -> str, got "
            f"{type(value).__name__}"
        )


# -- the factory -------------------------------------------------------------------------


def queue_region(queue_url: str) -> str | None:
    """The region named in an AWS queue URL's host, else None."""
    match = _QUEUE_HOST.fullmatch(urlsplit(queue_url).hostname or "")
    if match is None:
        return None
    return match.group(1) or match.group(2)


def sqs(
    queue_url: str,
    *,
    message_group_id: GroupId = None,
    deduplication_id: Callable[[Any, Record], str] | None = None,
    attributes: Attributes | None = None,
    delay: int | None = None,
    encode: Encode | None = None,
    endpoint_url: str | None = None,
    region: str | None = None,
    session: AioSession | None = None,
    max_connections: int = 64,
) -> SqsSink:
    """A sink that sends each element as one message to the SQS queue at `queue_url`.

    The body is `encode(element)` (str, or bytes that are UTF-8 text), by default
    `flowstream.serialize.to_bytes`: JSON for dicts and records, str as it is.
    `attributes` is a dict of message attributes or a function ``(element, record) ->
    dict``; `delay` (0 to 900 seconds) delays each message, on standard queues.

    On a FIFO queue (URL ending in ``.fifo``), `message_group_id` is None (the DynamoDB
    item's keys: one item's changes stay in order), a fixed str, or a function
    ``(element, record) -> str``; `deduplication_id` is None (the record's `event_id`)
    or such a function. On a standard queue a `message_group_id` is passed on (fair
    queues).

    AWS settings come from the standard chain, `endpoint_url=`, `region=` (by default
    the region in the queue URL) and an aiobotocore `session=`.
    """
    if not isinstance(queue_url, str) or not queue_url.startswith(("https://", "http://")):
        raise SinkError(
            f"sinks.sqs({queue_url!r}) needs a queue URL like "
            "https://sqs.us-east-1.amazonaws.com/123456789012/my-queue (GetQueueUrl, or the "
            "console, gives it)"
        )
    path = [part for part in urlsplit(queue_url).path.split("/") if part]
    if len(path) < 2:
        raise SinkError(
            f"sinks.sqs({queue_url!r}) has no account and queue name in its path; pass the "
            "whole URL, like https://sqs.us-east-1.amazonaws.com/123456789012/my-queue"
        )
    name = f"sqs({queue_url})"
    fifo = path[-1].endswith(".fifo")
    check_id("message_group_id", message_group_id, sink=name)
    check_callable("deduplication_id", deduplication_id, sink=name)
    if deduplication_id is not None and not fifo:
        raise SinkError(
            f"{name}: deduplication_id= applies to FIFO queues only (their URL ends in "
            "'.fifo'); leave it out for a standard queue"
        )
    if delay is not None:
        if isinstance(delay, bool) or not isinstance(delay, int) or not 0 <= delay <= MAX_DELAY:
            raise SinkError(
                f"{name}: delay={delay!r} must be a whole number of seconds from 0 to {MAX_DELAY}"
            )
        if fifo:
            raise SinkError(
                f"{name}: delay= cannot be set per message on a FIFO queue; set the queue's "
                "DelaySeconds attribute instead (it delays every message), or leave delay= out"
            )
    if encode is not None and not callable(encode):
        raise SinkError(f"{name}: encode= must be a function (element) -> str | bytes")
    AttributeMaker(attributes, sink=name, service="SQS")  # checks a fixed dict now
    return SqsSink(
        queue_url,
        fifo=fifo,
        message_group_id=message_group_id,
        deduplication_id=deduplication_id,
        attributes=attributes,
        delay=delay,
        encode=encode,
        endpoint_url=endpoint_url,
        region=region or queue_region(queue_url),
        session=session,
        max_connections=max_connections,
    )
