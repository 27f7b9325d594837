"""`sinks.lambda_function(name)`: elements as the JSON payload of Lambda invocations.

One element per invocation, or with `batch_size=` a JSON array of up to that many. The
invocations of a shard's batch run one after another, in order; a payload that failed
holds back later elements of the same DynamoDB item, so an item's changes reach the
function in order (for ``RequestResponse``; ``Event`` invocations are queued by Lambda,
which does not promise their order).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Hashable
from dataclasses import KW_ONLY, dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Final, Literal, final

import msgspec

from flowstream.aws import error_code
from flowstream.errors import DeliveryError, FlowstreamError, SinkError
from flowstream.serialize import SerializationError, to_bytes
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

__all__ = ["Invocation", "LambdaSink", "lambda_function"]

Invocation = Literal["Event", "RequestResponse"]

# Invoke's request payload limits, as AWS documents them today (Lambda API reference,
# Invoke, and the Invoke documentation in botocore's lambda/2015-03-31 model): "For
# synchronous invocations, the maximum payload size is 6 MB. For asynchronous invocations,
# the maximum payload size is 1 MB." (The asynchronous limit was 256 KB until 2025.)
MAX_PAYLOAD: Final[dict[str, int]] = {
    "RequestResponse": 6 * 1024 * 1024,
    "Event": 1024 * 1024,
}
#: Errors of one payload, not of the function or the account: later payloads can succeed.
_PAYLOAD_ERRORS: Final = frozenset(
    {"RequestTooLargeException", "InvalidRequestContentException", "UnsupportedMediaTypeException"}
)
_DETAIL_LIMIT: Final = 500
_RAW_JSON: Final = msgspec.json.Decoder(msgspec.Raw)  # validates without building objects


@final
@dataclass(eq=False, repr=False)
class LambdaSink(AwsSink):
    """Invokes a Lambda function with elements as payloads. Build it with
    `sinks.lambda_function()`."""

    service: ClassVar[str] = "lambda"

    function: str
    _: KW_ONLY
    invocation: Invocation
    batch_size: int
    encode: Callable[[Any], bytes | str] | None

    def describe(self) -> str:
        return f"lambda({self.function})"

    def writer(self, client: Any) -> SinkWriter:
        return _LambdaWriter(self, client)


class _LambdaWriter(SinkWriter):
    def __init__(self, sink: LambdaSink, client: Any) -> None:
        self._client = client
        self._name = sink.describe()
        self._function = sink.function
        self._invocation = sink.invocation
        self._batch_size = sink.batch_size
        self._encode = sink.encode
        self._endpoint = sink.endpoint_url
        self._limit = MAX_PAYLOAD[sink.invocation]

    async def send(self, batch: Batch) -> SendResult | None:
        n = len(batch)
        parts: list[bytes] = [b""] * n
        sizes = [0] * n
        keys: list[Hashable] = [object()] * n  # an item without a key blocks nothing
        failed: dict[int, BaseException] = {}
        # An array payload costs its brackets and a comma per element.
        overhead = 1 if self._batch_size > 1 else 0
        budget = self._limit - overhead
        for i, (value, record) in enumerate(zip(batch.values, batch.records, strict=True)):
            # An element whose record's keys do not decode holds back nothing.
            with contextlib.suppress(FlowstreamError):
                keys[i] = item_key(record)
            try:
                part = self._json(value)
                if len(part) + overhead > budget:
                    raise DeliveryError(
                        f"sink {self._name}: a {type(value).__name__} value of {len(part)} "
                        f"bytes of JSON is over Lambda's limit of {self._limit} bytes per "
                        f"{self._invocation} payload; map it to something smaller",
                        retryable=False,
                    )
            except FlowstreamError as exc:
                failed[i] = item_error(exc, self._name)
                continue
            parts[i] = part
            sizes[i] = len(part) + overhead
        outcome = OrderedFailures(keys, sink=self._name)
        for i, error in failed.items():
            outcome.fail(i, error)
        for run in chunks(sizes, max_count=self._batch_size, max_bytes=budget):
            send = outcome.to_send(run)
            if send:
                await self._invoke(send, parts, outcome)
        return outcome.result()

    async def _invoke(self, send: list[int], parts: list[bytes], outcome: OrderedFailures) -> None:
        if self._batch_size == 1:
            (only,) = send
            payload = parts[only]
        else:
            payload = b"[" + b",".join([parts[i] for i in send]) + b"]"
        try:
            response = await self._client.invoke(
                FunctionName=self._function, InvocationType=self._invocation, Payload=payload
            )
            # Read it all, so the connection goes back to the pool (a StreamingBody of
            # every aiobotocore version has read() and close(); older ones are no context
            # managers).
            stream = response["Payload"]
            try:
                body = await stream.read()
            finally:
                stream.close()
        except Exception as exc:
            error = self._call_error(exc)
            if error.code in _PAYLOAD_ERRORS:
                for i in send:
                    outcome.fail(i, error)
            else:
                outcome.stop(send, error)
            return
        function_error = response.get("FunctionError")
        if function_error:
            # The function ran and raised (or timed out, or ran out of memory): often
            # transient (a dependency down), so the runtime retries it with backoff, and
            # after its retries the shard stops at the element (or dead-letters it).
            error = DeliveryError(
                f"sink {self._name}: the function failed ({function_error}): {_detail(body)}",
                retryable=True,
                code=str(function_error),
            )
            for i in send:
                outcome.fail(i, error)

    def _json(self, value: Any) -> bytes:
        """`value` as a JSON value: a str becomes a JSON string; bytes and the output of
        `encode=` must be JSON already."""
        if self._encode is None:
            if isinstance(value, str):
                return msgspec.json.encode(value)
            data = to_bytes(value)
            if not isinstance(value, bytes | bytearray | memoryview):
                return data  # msgspec wrote it: JSON already
            source = f"a {type(value).__name__} value is"
        else:
            data = encode_with(self._encode, value)
            source = "encode= returned"
        try:
            _RAW_JSON.decode(data)
        except msgspec.DecodeError as exc:
            raise SerializationError(
                f"{source} not JSON ({exc}), and a Lambda payload must be; give JSON bytes "
                "(e.g. msgspec.json.encode(x)), a str (sent as a JSON string) or a dict"
            ) from None
        return data

    def _call_error(self, exc: BaseException) -> DeliveryError:
        code = error_code(exc)
        if code == "ResourceNotFoundException":
            message = missing_resource(
                f"Lambda function {self._function!r}",
                exc,
                client=self._client,
                endpoint_url=self._endpoint,
                fix="deploy it, or check the function name (or alias) and region=",
            )
            return DeliveryError(
                f"sink {self._name}: {message}",
                retryable=False,
                code=code,
            )
        error = delivery_error(exc, sink=self._name, what=f"Lambda function {self._function!r}")
        if code == "TooManyRequestsException":
            # Lambda says how long to back off in the Retry-After header.
            retry_after = getattr(exc, "response", {}).get("retryAfterSeconds")
            with contextlib.suppress(ValueError):
                error.retry_after = float(retry_after) if retry_after else None
        return error


def _detail(body: bytes) -> str:
    """What the function's error payload says, e.g. ``KeyError: 'pk'``."""
    try:
        error = msgspec.json.decode(body)
    except msgspec.DecodeError:
        error = None
    if isinstance(error, dict) and ("errorType" in error or "errorMessage" in error):
        text = f"{error.get('errorType', 'Error')}: {error.get('errorMessage', '')}"
    else:
        text = body.decode(errors="replace")
    return text if len(text) <= _DETAIL_LIMIT else text[: _DETAIL_LIMIT - 3] + "..."


def lambda_function(
    name: str,
    *,
    invocation: Invocation = "Event",
    batch_size: int = 1,
    encode: Callable[[Any], bytes | str] | None = None,
    endpoint_url: str | None = None,
    region: str | None = None,
    session: AioSession | None = None,
    max_connections: int = 64,
) -> LambdaSink:
    """A sink that invokes the Lambda function `name` (a name, ``name:alias``, or an ARN)
    with each element as its JSON payload, or with `batch_size` > 1 with a JSON array of
    up to that many elements.

    `invocation` is "Event" (queued by Lambda: the sink waits only for Lambda to accept
    the payload, at most 1 MiB) or "RequestResponse" (the sink waits for the function to
    finish; at most 6 MiB; a function error fails the payload's elements, retryably).
    Payloads are `flowstream.serialize.to_bytes` JSON; str and bytes elements must
    already be JSON text; `encode=` replaces it (it must return JSON). AWS settings come
    from the standard chain, `endpoint_url=`, `region=` (by default the ARN's region) and
    an aiobotocore `session=`.
    """
    if not isinstance(name, str) or not name:
        raise SinkError(
            f"sinks.lambda_function() needs a function name or ARN, got {name!r}; pass e.g. "
            "sinks.lambda_function('on-change')"
        )
    if invocation not in MAX_PAYLOAD:
        raise SinkError(
            f"sinks.lambda_function(invocation={invocation!r}) is not an invocation type; "
            "use 'Event' (asynchronous) or 'RequestResponse' (wait for the function)"
        )
    if type(batch_size) is not int or batch_size < 1:
        raise SinkError(
            f"sinks.lambda_function(batch_size={batch_size!r}) must be a whole number of at least 1"
        )
    in_arn = arn_region(
        name,
        factory="lambda_function",
        service="lambda",
        resource="function:",
        what="Lambda function",
    )
    region = region or in_arn
    return LambdaSink(
        name,
        invocation=invocation,
        batch_size=batch_size,
        encode=encode,
        endpoint_url=endpoint_url,
        region=region,
        session=session,
        max_connections=max_connections,
    )
