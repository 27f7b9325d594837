"""`sinks.kinesis(stream)`: elements as records of a Kinesis data stream, through PutRecords.

Each element becomes one record; its partition key is, by default, the originating
DynamoDB item's keys, so one item's changes go to one Kinesis shard. A PutRecords call
may land some records and not others, so a call never holds two records of one partition
key, and a record whose call failed holds back the later records of its key: a key's
records land in order.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Hashable
from dataclasses import KW_ONLY, dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Final, final

from flowstream.aws import RETRYABLE_CODES, error_code
from flowstream.errors import DeliveryError, FlowstreamError, SinkError
from flowstream.record import Record
from flowstream.serialize import to_bytes
from flowstream.sinks.aws_base import (
    AwsSink,
    OrderedFailures,
    arn_region,
    chunks,
    delivery_error,
    encode_with,
    item_error,
    missing_resource,
)
from flowstream.sinks.base import Batch, SendResult, SinkWriter, item_key

if TYPE_CHECKING:
    from aiobotocore.session import AioSession

__all__ = ["KinesisSink", "PartitionKey", "kinesis"]

#: How a record's partition key is chosen: None (the DynamoDB item's keys), a fixed str,
#: or a function of the element and the record it came from.
PartitionKey = str | Callable[[Any, Record], str] | None

# PutRecords limits (Kinesis API reference, PutRecords): 500 records per call; a record
# (data plus partition key) of at most 1 MiB unless the stream's MaxRecordSizeInKiB was
# raised; partition keys of 1 to 256 Unicode characters. The call limit is 5 MiB for
# streams with the default record size (10 MiB only for streams with larger records).
MAX_RECORDS: Final = 500
MAX_CALL_BYTES: Final = 5 * 1024 * 1024
MAX_RECORD_BYTES: Final = 1024 * 1024
MAX_PARTITION_KEY: Final = 256


@final
@dataclass(eq=False, repr=False)
class KinesisSink(AwsSink):
    """Puts elements into a Kinesis data stream. Build it with `sinks.kinesis()`."""

    service: ClassVar[str] = "kinesis"

    stream: str
    _: KW_ONLY
    partition_key: PartitionKey
    encode: Callable[[Any], bytes | str] | None

    def describe(self) -> str:
        return f"kinesis({self.stream})"

    def writer(self, client: Any) -> SinkWriter:
        return _KinesisWriter(self, client)


class _KinesisWriter(SinkWriter):
    def __init__(self, sink: KinesisSink, client: Any) -> None:
        self._client = client
        self._name = sink.describe()
        self._stream = sink.stream
        by = "StreamARN" if sink.stream.startswith("arn:") else "StreamName"
        self._target = {by: sink.stream}
        self._partition_key = sink.partition_key
        self._encode = sink.encode
        self._endpoint = sink.endpoint_url

    async def send(self, batch: Batch) -> SendResult | None:
        n = len(batch)
        entries: list[dict[str, Any]] = [{}] * n
        sizes = [0] * n
        keys: list[Hashable] = [object()] * n  # an item without a key blocks nothing
        failed: dict[int, BaseException] = {}
        for i, (value, record) in enumerate(zip(batch.values, batch.records, strict=True)):
            try:
                key = self._key(value, record)
                keys[i] = key
                data = self._data(value)
                size = len(data) + len(key.encode())
                if size > MAX_RECORD_BYTES:
                    raise DeliveryError(
                        f"sink {self._name}: a {type(value).__name__} value makes a record of "
                        f"{size} bytes (data and partition key), over Kinesis' limit of "
                        f"{MAX_RECORD_BYTES} bytes (1 MiB) per record; map it to something "
                        "smaller",
                        retryable=False,
                    )
            except FlowstreamError as exc:
                failed[i] = item_error(exc, self._name)
                continue
            entries[i] = {"Data": data, "PartitionKey": key}
            sizes[i] = size
        outcome = OrderedFailures(keys, sink=self._name)
        for i, error in failed.items():
            outcome.fail(i, error)
        for run in chunks(sizes, max_count=MAX_RECORDS, max_bytes=MAX_CALL_BYTES, keys=keys):
            send = outcome.to_send(run)
            if send:
                await self._put(send, entries, outcome)
        return outcome.result()

    async def _put(
        self, send: list[int], entries: list[dict[str, Any]], outcome: OrderedFailures
    ) -> None:
        try:
            response = await self._client.put_records(
                Records=[entries[i] for i in send], **self._target
            )
        except Exception as exc:
            outcome.stop(send, self._call_error(exc))
            return
        results = response.get("Records", [])
        if len(results) != len(send):
            # Which records landed cannot be told: send them all again (at least once).
            error = DeliveryError(
                f"sink {self._name}: PutRecords answered {len(results)} result(s) for "
                f"{len(send)} record(s)",
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
                        f"sink {self._name}: {code}: {result.get('ErrorMessage', '')}",
                        retryable=code in RETRYABLE_CODES,
                        code=code,
                    ),
                )

    def _key(self, value: Any, record: Record) -> str:
        chosen = self._partition_key
        if chosen is None:
            return default_partition_key(record)
        if isinstance(chosen, str):
            return chosen
        try:
            key = chosen(value, record)
        except Exception as exc:
            raise DeliveryError(
                f"sink {self._name}: partition_key= raised {type(exc).__name__}: {exc}",
                retryable=False,
            ) from exc
        if not isinstance(key, str) or not 1 <= len(key) <= MAX_PARTITION_KEY:
            problem = (
                f"returned a {type(key).__name__}"
                if not isinstance(key, str)
                else f"returned a str of {len(key)} characters"
            )
            raise DeliveryError(
                f"sink {self._name}: partition_key= {problem}; it must return a str of 1 to "
                f"{MAX_PARTITION_KEY} characters",
                retryable=False,
            )
        return key

    def _data(self, value: Any) -> bytes:
        if self._encode is None:
            return to_bytes(value)
        return encode_with(self._encode, value)

    def _call_error(self, exc: BaseException) -> DeliveryError:
        if error_code(exc) == "ResourceNotFoundException":
            message = missing_resource(
                f"Kinesis stream {self._stream!r}",
                exc,
                client=self._client,
                endpoint_url=self._endpoint,
                fix="create it, or check the stream name and region=",
            )
            return DeliveryError(
                f"sink {self._name}: {message}",
                retryable=False,
                code="ResourceNotFoundException",
            )
        return delivery_error(exc, sink=self._name, what=f"Kinesis stream {self._stream!r}")


def default_partition_key(record: Record) -> str:
    """The DynamoDB item's keys as a stable string (sorted JSON, e.g.
    ``{"pk":"user#1","sk":0}``), or its SHA-256 when that is longer than Kinesis allows:
    every change of one item gets the same key, so it goes to the same Kinesis shard."""
    text = item_key(record)
    if len(text) <= MAX_PARTITION_KEY:
        return text
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


def kinesis(
    stream_name: str,
    *,
    partition_key: PartitionKey = None,
    encode: Callable[[Any], bytes | str] | None = None,
    endpoint_url: str | None = None,
    region: str | None = None,
    session: AioSession | None = None,
    max_connections: int = 64,
) -> KinesisSink:
    """A sink that puts each element into the Kinesis data stream `stream_name` (a name or
    a stream ARN) as one record.

    The data is `encode(element)`, by default `flowstream.serialize.to_bytes` (JSON for
    dicts and records, str and bytes as they are). `partition_key` is None (the
    originating DynamoDB item's keys: one item's changes stay in order in one Kinesis
    shard), a fixed str, or a function ``(element, record) -> str``. AWS settings come
    from the standard chain, `endpoint_url=`, `region=` (by default the ARN's region) and
    an aiobotocore `session=`.
    """
    if not isinstance(stream_name, str) or not stream_name:
        raise SinkError(
            f"sinks.kinesis() needs a stream name or ARN, got {stream_name!r}; pass e.g. "
            "sinks.kinesis('changes')"
        )
    in_arn = arn_region(
        stream_name, factory="kinesis", service="kinesis", resource="stream/", what="Kinesis stream"
    )
    region = region or in_arn
    if isinstance(partition_key, str) and not 1 <= len(partition_key) <= MAX_PARTITION_KEY:
        raise SinkError(
            f"sinks.kinesis(partition_key=...) is a str of {len(partition_key)} characters; "
            f"Kinesis takes 1 to {MAX_PARTITION_KEY}"
        )
    if (
        partition_key is not None
        and not isinstance(partition_key, str)
        and not callable(partition_key)
    ):
        raise SinkError(
            f"sinks.kinesis(partition_key=) must be None, a str or a function (element, "
            f"record) -> str, got {type(partition_key).__name__}"
        )
    return KinesisSink(
        stream_name,
        partition_key=partition_key,
        encode=encode,
        endpoint_url=endpoint_url,
        region=region,
        session=session,
        max_connections=max_connections,
    )
