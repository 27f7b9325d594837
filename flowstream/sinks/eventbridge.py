"""`sinks.eventbridge(bus)`: elements as events on an EventBridge event bus, through
PutEvents.

Each element becomes one event whose ``Detail`` is the element as a JSON object, with a
``Source`` and ``DetailType`` that are fixed or computed per element. Events go in calls of
up to 10 entries and 256 KiB; only the entries EventBridge did not take are retried. An
event bus keeps no order, so a batch's calls run side by side.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import KW_ONLY, dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Final, final

import msgspec

from flowstream.aws import RETRYABLE_CODES, error_code
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
from flowstream.sinks.base import Batch, SendResult, SinkWriter
from flowstream.sinks.sqs import send_calls, too_large

if TYPE_CHECKING:
    from aiobotocore.session import AioSession

__all__ = ["EventBridgeSink", "Resources", "eventbridge"]

#: An event's resources (ARNs): a fixed list, or a function of the element and its record.
Resources = Sequence[str] | Callable[[Any, Record], Sequence[str]]

# PutEvents (EventBridge API reference and quotas): 10 entries a call; an entry of at most
# 256 KiB, counted as the UTF-8 bytes of Source, DetailType, Detail and each resource
# (plus 14 bytes for a Time, which flowstream does not set); a call's entries together at
# most 256 KiB.
MAX_ENTRIES: Final = 10
MAX_BYTES: Final = 256 * 1024
_BUS_NAME: Final = re.compile(r"[/.\-_A-Za-z0-9]{1,256}")
_BUS_ARN: Final = re.compile(r"arn:[a-z-]+:events:([a-z0-9-]+):\d{12}:event-bus/[/.\-_A-Za-z0-9]+")
_JSON_CHECK: Final = msgspec.json.Decoder()


@final
@dataclass(eq=False, repr=False)
class EventBridgeSink(AwsSink):
    """Puts elements as events on an EventBridge bus. Build it with `sinks.eventbridge()`."""

    service: ClassVar[str] = "events"

    bus: str
    _: KW_ONLY
    source: str | Callable[[Any, Record], str]
    detail_type: str | Callable[[Any, Record], str]
    resources: Resources | None
    encode: Callable[[Any], bytes | str] | None

    def describe(self) -> str:
        return f"eventbridge({self.bus})"

    def writer(self, client: Any) -> SinkWriter:
        return _EventBridgeWriter(self, client)

    async def open_writer(self, client: Any) -> SinkWriter:
        # Check that the bus exists: a clear error now, not one per shard later.
        await self.check_destination(
            client.describe_event_bus(Name=self.bus),
            service="EventBridge",
            missing={"ResourceNotFoundException"},
            explain_missing=lambda exc: _missing_bus(self, client, exc),
        )
        return self.writer(client)


class _EventBridgeWriter(SinkWriter):
    def __init__(self, sink: EventBridgeSink, client: Any) -> None:
        self._client = client
        self._sink = sink
        self._name = sink.describe()

    async def send(self, batch: Batch) -> SendResult | None:
        n = len(batch)
        if not n:
            return None
        sink = self._sink
        entries: list[dict[str, Any]] = [{}] * n
        sizes = [0] * n
        failed: dict[int, BaseException] = {}
        for i, (value, record) in enumerate(zip(batch.values, batch.records, strict=True)):
            try:
                source = self._text("source", sink.source, value, record)
                detail_type = self._text("detail_type", sink.detail_type, value, record)
                detail, detail_size = self._detail(value)
                entry: dict[str, Any] = {
                    "EventBusName": sink.bus,
                    "Source": source,
                    "DetailType": detail_type,
                    "Detail": detail,
                }
                size = len(source.encode()) + len(detail_type.encode()) + detail_size
                if sink.resources is not None:
                    resources = self._resources(value, record)
                    entry["Resources"] = resources
                    size += sum(len(r.encode()) for r in resources)
                if size > MAX_BYTES:
                    raise too_large(value, size, 0, MAX_BYTES, sink=self._name, what="EventBridge")
            except FlowstreamError as exc:
                failed[i] = item_error(exc, self._name)
                continue
            entries[i] = entry
            sizes[i] = size
        # An event bus keeps no order: no item waits behind another's failure.
        outcome = OrderedFailures([object() for _ in range(n)], sink=self._name)
        for i, error in failed.items():
            outcome.fail(i, error)

        async def call(send: list[int]) -> None:
            await self._call(send, entries, outcome)

        runs = chunks(sizes, max_count=MAX_ENTRIES, max_bytes=MAX_BYTES)
        await send_calls(runs, outcome, call, ordered=False)
        return outcome.result()

    def _text(
        self, option: str, chosen: str | Callable[[Any, Record], str], value: Any, record: Record
    ) -> str:
        if isinstance(chosen, str):
            return chosen
        try:
            text = chosen(value, record)
        except Exception as exc:
            raise DeliveryError(
                f"sink {self._name}: {option}= raised {type(exc).__name__} for a "
                f"{type(value).__name__} value: {exc}",
                retryable=False,
            ) from exc
        if not isinstance(text, str) or not text:
            raise DeliveryError(
                f"sink {self._name}: {option}= returned {text!r}; it must return a non-empty str",
                retryable=False,
            )
        return text

    def _resources(self, value: Any, record: Record) -> list[str]:
        chosen = self._sink.resources
        assert chosen is not None
        if callable(chosen):
            try:
                given = chosen(value, record)
            except Exception as exc:
                raise DeliveryError(
                    f"sink {self._name}: resources= raised {type(exc).__name__} for a "
                    f"{type(value).__name__} value: {exc}",
                    retryable=False,
                ) from exc
        else:
            given = chosen
        if (
            isinstance(given, str)
            or not isinstance(given, Sequence)
            or not all(isinstance(r, str) for r in given)
        ):
            raise DeliveryError(
                f"sink {self._name}: resources= gave {given!r}; it must be a list of str (ARNs)",
                retryable=False,
            )
        return list(given)

    def _detail(self, value: Any) -> tuple[str, int]:
        """The element as the event's Detail: JSON text of an object."""
        encode = self._sink.encode
        if encode is None:
            try:
                data = to_bytes(value)
            except UnicodeEncodeError as exc:  # a str holding a lone surrogate
                raise DeliveryError(
                    f"sink {self._name}: a str value cannot be UTF-8 text: {exc}",
                    retryable=False,
                ) from None
            # only str and bytes pass through to_bytes unchecked; the rest is JSON
            trusted = not isinstance(value, str | bytes | bytearray | memoryview)
        else:
            data = encode_with(encode, value)
            trusted = False
        is_object = data.lstrip()[:1] == b"{"
        if is_object and not trusted:
            try:
                _JSON_CHECK.decode(data)
            except (msgspec.DecodeError, UnicodeDecodeError):
                is_object = False
        if not is_object:
            raise DeliveryError(
                f"sink {self._name}: a {type(value).__name__} value does not make a JSON "
                "object, and an event's Detail must be one; map it to a dict first (e.g. "
                '{"value": ...})',
                retryable=False,
            )
        # JSON that msgspec wrote or decoded is UTF-8
        return data.decode(), len(data)

    async def _call(
        self, send: list[int], entries: list[dict[str, Any]], outcome: OrderedFailures
    ) -> None:
        try:
            response = await self._client.put_events(Entries=[entries[i] for i in send])
        except Exception as exc:
            outcome.stop(send, self._call_error(exc))
            return
        results = response.get("Entries") or []
        if len(results) != len(send):
            # Which events landed cannot be told: send them all again (at least once).
            error = DeliveryError(
                f"sink {self._name}: PutEvents answered {len(results)} result(s) for "
                f"{len(send)} event(s)",
                retryable=True,
            )
            for i in send:
                outcome.fail(i, error)
            return
        for i, result in zip(send, results, strict=True):
            code = result.get("ErrorCode")
            if code:
                outcome.fail(
                    i,
                    DeliveryError(
                        f"sink {self._name}: EventBridge did not take the event: {code}: "
                        f"{result.get('ErrorMessage') or ''}",
                        retryable=code in RETRYABLE_CODES,
                        code=code,
                    ),
                )

    def _call_error(self, exc: BaseException) -> DeliveryError:
        if error_code(exc) == "ResourceNotFoundException":
            return DeliveryError(
                f"sink {self._name}: {_missing_bus(self._sink, self._client, exc)}",
                retryable=False,
                code="ResourceNotFoundException",
            )
        return delivery_error(exc, sink=self._name, what=f"EventBridge bus {self._sink.bus!r}")


def _missing_bus(sink: EventBridgeSink, client: Any, exc: BaseException) -> str:
    return missing_resource(
        f"EventBridge bus {sink.bus!r}",
        exc,
        client=client,
        endpoint_url=sink.endpoint_url,
        fix="create it, or check the bus name, region= and endpoint_url=",
    )


def eventbridge(
    bus_name: str = "default",
    *,
    source: str | Callable[[Any, Record], str],
    detail_type: str | Callable[[Any, Record], str],
    resources: Resources | None = None,
    encode: Callable[[Any], bytes | str] | None = None,
    endpoint_url: str | None = None,
    region: str | None = None,
    session: AioSession | None = None,
    max_connections: int = 64,
) -> EventBridgeSink:
    """A sink that puts each element as one event on the EventBridge bus `bus_name` (a
    name or a bus ARN; the account's default bus when left out).

    The event's ``Detail`` is the element as a JSON object (`encode(element)`, by default
    `flowstream.serialize.to_bytes`: dicts, records, Structs and dataclasses are objects);
    an element that is not one fails alone. `source` and `detail_type` are str or
    functions ``(element, record) -> str``; `resources` a list of ARNs or such a function.

    AWS settings come from the standard chain, `endpoint_url=`, `region=` (by default
    the ARN's region) and an aiobotocore `session=`.
    """
    arn = _BUS_ARN.fullmatch(bus_name) if isinstance(bus_name, str) else None
    if arn is None and (not isinstance(bus_name, str) or _BUS_NAME.fullmatch(bus_name) is None):
        raise SinkError(
            f"sinks.eventbridge({bus_name!r}) needs an event bus name (1 to 256 letters, "
            "digits and . - _ /) or a bus ARN like "
            "arn:aws:events:us-east-1:123456789012:event-bus/my-bus"
        )
    name = f"eventbridge({bus_name})"
    for option, given in (("source", source), ("detail_type", detail_type)):
        if isinstance(given, str):
            if not given:
                raise SinkError(f"{name}: {option}= is empty; every event needs one")
        elif not callable(given):
            raise SinkError(
                f"{name}: {option}= must be a str or a function (element, record) -> str, got "
                f"{type(given).__name__}"
            )
    if resources is not None and not callable(resources):
        if isinstance(resources, str) or not all(isinstance(r, str) for r in resources):
            raise SinkError(
                f"{name}: resources= must be a list of ARNs (str) or a function "
                "(element, record) -> list of str"
            )
        resources = list(resources)
    if encode is not None and not callable(encode):
        raise SinkError(f"{name}: encode= must be a function (element) -> str | bytes")
    return EventBridgeSink(
        bus_name,
        source=source,
        detail_type=detail_type,
        resources=resources,
        encode=encode,
        endpoint_url=endpoint_url,
        region=region or (arn.group(1) if arn else None),
        session=session,
        max_connections=max_connections,
    )
