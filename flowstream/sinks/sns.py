"""`sinks.sns(topic_arn)`: elements as messages published to an SNS topic, through
PublishBatch.

Each element becomes one message (its text as in `sinks.sqs`), published in calls of up
to 10 messages and the topic's size limit; only the messages SNS did not take are
retried. A FIFO topic (ARN ending in ``.fifo``) gets message group and deduplication ids
as a FIFO queue does, and no call holds two messages of one group.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Hashable
from dataclasses import KW_ONLY, dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Final, final

from flowstream.aws import error_code
from flowstream.errors import DeliveryError, FlowstreamError, SinkError
from flowstream.record import Record
from flowstream.sinks.aws_base import (
    AwsSink,
    OrderedFailures,
    chunks,
    delivery_error,
    item_error,
    missing_resource,
)
from flowstream.sinks.base import Batch, SendResult, SinkWriter
from flowstream.sinks.sqs import (
    DEFAULT_MAX_BYTES,
    MAX_ENTRIES,
    AttributeMaker,
    Attributes,
    Encode,
    FifoIds,
    GroupId,
    batch_failures,
    check_callable,
    check_id,
    message_text,
    send_calls,
    too_large,
)

if TYPE_CHECKING:
    from aiobotocore.session import AioSession

__all__ = ["SnsSink", "Subject", "sns"]

#: A message's subject (for email subscriptions): a fixed str, or a function of the
#: element and its record.
Subject = str | Callable[[Any, Record], str]

# Publish (SNS API reference): a subject is ASCII, starts with a letter, digit or
# punctuation, holds no line breaks or control characters, and is under 100 characters.
MAX_SUBJECT: Final = 99
_SUBJECT: Final = re.compile(r"[!-~][ -~]{0,98}")
_TOPIC_ARN: Final = re.compile(r"arn:[a-z-]+:sns:([a-z0-9-]+):\d{12}:[A-Za-z0-9_-]{1,256}(\.fifo)?")
_TOPIC_MISSING: Final = frozenset({"NotFound", "NotFoundException"})


@final
@dataclass(eq=False, repr=False)
class SnsSink(AwsSink):
    """Publishes elements as messages to an SNS topic. Build it with `sinks.sns()`."""

    service: ClassVar[str] = "sns"

    topic_arn: str
    _: KW_ONLY
    fifo: bool
    message_group_id: GroupId
    deduplication_id: Callable[[Any, Record], str] | None
    attributes: Attributes | None
    subject: Subject | None
    encode: Encode | None

    def describe(self) -> str:
        return f"sns({self.topic_arn})"

    def writer(self, client: Any) -> SinkWriter:
        return _SnsWriter(self, client, DEFAULT_MAX_BYTES)

    async def open_writer(self, client: Any) -> SinkWriter:
        # Check that the topic exists and read its size limit (topics may raise it).
        response = await self.check_destination(
            client.get_topic_attributes(TopicArn=self.topic_arn),
            service="SNS",
            missing=_TOPIC_MISSING,
            explain_missing=lambda exc: _missing_topic(self, client, exc),
        )
        limit = (response or {}).get("Attributes", {}).get("MaximumMessageSize")
        return _SnsWriter(self, client, int(limit) if limit else DEFAULT_MAX_BYTES)


class _SnsWriter(SinkWriter):
    def __init__(self, sink: SnsSink, client: Any, max_bytes: int) -> None:
        self._client = client
        self._sink = sink
        self._name = sink.describe()
        self._arn = sink.topic_arn
        self._fifo = sink.fifo
        # SNS caps a call's total at the topic's message size limit as well.
        self._max_bytes = max_bytes
        self._ids = FifoIds(sink.message_group_id, sink.deduplication_id, sink=self._name)
        self._attributes = AttributeMaker(sink.attributes, sink=self._name, service="SNS")
        self._encode = sink.encode

    async def send(self, batch: Batch) -> SendResult | None:
        n = len(batch)
        if not n:
            return None
        entries: list[dict[str, Any]] = [{}] * n
        sizes = [0] * n
        keys: list[Hashable] = [object() for _ in range(n)]  # no key: blocks nothing
        failed: dict[int, BaseException] = {}
        fifo = self._fifo
        dedup = self._ids.deduplication_ids(batch) if fifo else None
        for i, (value, record) in enumerate(zip(batch.values, batch.records, strict=True)):
            try:
                entry: dict[str, Any] = {}
                if fifo:
                    group = self._ids.group_id(value, record)
                    keys[i] = group
                    entry["MessageGroupId"] = group
                    entry["MessageDeduplicationId"] = (
                        dedup[i] if dedup is not None else self._ids.deduplication_id(value, record)
                    )
                text, size = message_text(value, self._encode, sink=self._name, service="SNS")
                entry["Message"] = text
                attributes, attributes_size = self._attributes.make(value, record)
                if attributes:
                    entry["MessageAttributes"] = attributes
                size += attributes_size
                if size > self._max_bytes:
                    raise too_large(
                        value, size, attributes_size, self._max_bytes, sink=self._name, what="SNS"
                    )
                if self._sink.subject is not None:
                    entry["Subject"] = self._subject(value, record)
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
            max_bytes=self._max_bytes,
            keys=keys if fifo else None,
        )

        async def call(send: list[int]) -> None:
            await self._call(send, entries, outcome)

        await send_calls(runs, outcome, call, ordered=fifo)
        if dedup is not None:
            self._ids.remember(batch, dedup, outcome.failed)
        return outcome.result()

    def _subject(self, value: Any, record: Record) -> str:
        chosen = self._sink.subject
        if isinstance(chosen, str):
            return chosen
        assert chosen is not None
        try:
            subject = chosen(value, record)
        except Exception as exc:
            raise DeliveryError(
                f"sink {self._name}: subject= raised {type(exc).__name__} for a "
                f"{type(value).__name__} value: {exc}",
                retryable=False,
            ) from exc
        if not isinstance(subject, str) or _SUBJECT.fullmatch(subject) is None:
            raise DeliveryError(
                f"sink {self._name}: subject= returned {subject!r}; {_SUBJECT_RULE}",
                retryable=False,
            )
        return subject

    async def _call(
        self, send: list[int], entries: list[dict[str, Any]], outcome: OrderedFailures
    ) -> None:
        try:
            response = await self._client.publish_batch(
                TopicArn=self._arn,
                PublishBatchRequestEntries=[
                    {"Id": str(k), **entries[i]} for k, i in enumerate(send)
                ],
            )
        except Exception as exc:
            outcome.stop(send, self._call_error(exc))
            return
        batch_failures(response, send, outcome, sink=self._name, service="SNS")

    def _call_error(self, exc: BaseException) -> DeliveryError:
        code = error_code(exc)
        if code in _TOPIC_MISSING:
            return DeliveryError(
                f"sink {self._name}: {_missing_topic(self._sink, self._client, exc)}",
                retryable=False,
                code=code,
            )
        return delivery_error(exc, sink=self._name, what=f"SNS topic {self._arn}")


_SUBJECT_RULE: Final = (
    f"a subject is 1 to {MAX_SUBJECT} ASCII characters with no line breaks or control "
    "characters, starting with a letter, digit or punctuation"
)


def _missing_topic(sink: SnsSink, client: Any, exc: BaseException) -> str:
    return missing_resource(
        f"SNS topic {sink.topic_arn}",
        exc,
        client=client,
        endpoint_url=sink.endpoint_url,
        fix="create it, or check the topic ARN, region= and endpoint_url=",
    )


def sns(
    topic_arn: str,
    *,
    message_group_id: GroupId = None,
    deduplication_id: Callable[[Any, Record], str] | None = None,
    attributes: Attributes | None = None,
    subject: Subject | None = None,
    encode: Encode | None = None,
    endpoint_url: str | None = None,
    region: str | None = None,
    session: AioSession | None = None,
    max_connections: int = 64,
) -> SnsSink:
    """A sink that publishes each element as one message to the SNS topic `topic_arn`.

    The message is `encode(element)` (str, or bytes that are UTF-8 text), by default
    `flowstream.serialize.to_bytes`. `attributes` is a dict of message attributes or a
    function ``(element, record) -> dict``; `subject` (for email subscribers) a str or
    such a function.

    On a FIFO topic (ARN ending in ``.fifo``), `message_group_id` is None (the DynamoDB
    item's keys: one item's changes stay in order), a fixed str, or a function
    ``(element, record) -> str``; `deduplication_id` is None (the record's `event_id`)
    or such a function.

    AWS settings come from the standard chain, `endpoint_url=`, `region=` (by default
    the ARN's region) and an aiobotocore `session=`.
    """
    match = _TOPIC_ARN.fullmatch(topic_arn) if isinstance(topic_arn, str) else None
    if match is None:
        raise SinkError(
            f"sinks.sns({topic_arn!r}) needs a topic ARN like "
            "arn:aws:sns:us-east-1:123456789012:my-topic (CreateTopic or the console gives it)"
        )
    name = f"sns({topic_arn})"
    fifo = match.group(2) is not None
    check_id("message_group_id", message_group_id, sink=name)
    check_callable("deduplication_id", deduplication_id, sink=name)
    if not fifo and (message_group_id is not None or deduplication_id is not None):
        option = "message_group_id" if message_group_id is not None else "deduplication_id"
        raise SinkError(
            f"{name}: {option}= applies to FIFO topics only (their ARN ends in '.fifo'); "
            "leave it out for a standard topic"
        )
    if isinstance(subject, str) and _SUBJECT.fullmatch(subject) is None:
        raise SinkError(f"{name}: subject={subject!r} cannot be sent; {_SUBJECT_RULE}")
    if subject is not None and not isinstance(subject, str) and not callable(subject):
        raise SinkError(
            f"{name}: subject= must be a str or a function (element, record) -> str, got "
            f"{type(subject).__name__}"
        )
    if encode is not None and not callable(encode):
        raise SinkError(f"{name}: encode= must be a function (element) -> str | bytes")
    AttributeMaker(attributes, sink=name, service="SNS")  # checks a fixed dict now
    return SnsSink(
        topic_arn,
        fifo=fifo,
        message_group_id=message_group_id,
        deduplication_id=deduplication_id,
        attributes=attributes,
        subject=subject,
        encode=encode,
        endpoint_url=endpoint_url,
        region=region or match.group(1),
        session=session,
        max_connections=max_connections,
    )
