"""What the AWS sinks share: one aiobotocore client per run, batching under a service's
count and size limits, and turning botocore errors into per-item `DeliveryError`s."""

from __future__ import annotations

import io
from abc import abstractmethod
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Collection,
    Hashable,
    Iterable,
    Iterator,
    Sequence,
)
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Final

from flowstream.aws import (
    configuration_error,
    create_client,
    error_code,
    error_message,
    is_retryable,
)
from flowstream.errors import DeliveryError, FlowstreamError, NotSentError, SinkError
from flowstream.serialize import SerializationError
from flowstream.sinks.base import SendResult, Sink, SinkWriter

if TYPE_CHECKING:
    from aiobotocore.session import AioSession

__all__ = [
    "missing_resource",
    "arn_region",
    "AwsSink",
    "OrderedFailures",
    "chunks",
    "delivery_error",
    "encode_with",
    "item_error",
]


def chunks(
    sizes: Sequence[int],
    *,
    max_count: int,
    max_bytes: int,
    keys: Sequence[Hashable] | None = None,
) -> Iterator[range]:
    """Split items of the given sizes into consecutive runs of at most `max_count` items
    and `max_bytes` bytes. An item larger than `max_bytes` gets a run of its own (the
    caller fails it: it can never be sent). With `keys`, no run holds two items of one
    key (a service that cannot take two writes to one key in a call, or one that may
    land part of a call: then a later change of a key could land before an earlier one
    that failed)."""
    start = 0
    total = 0
    seen: set[Hashable] = set()
    for i, size in enumerate(sizes):
        if i > start and (
            i - start >= max_count
            or total + size > max_bytes
            or (keys is not None and keys[i] in seen)
        ):
            yield range(start, i)
            start, total = i, 0
            seen.clear()
        total += size
        if keys is not None:
            seen.add(keys[i])
    if start < len(sizes):
        yield range(start, len(sizes))


class OrderedFailures:
    """The per-item outcome of a `send()` that delivers in several calls, one after the
    other, so that each key's items land in order.

    Once an item fails, later items of its key are held back (failed, retryable) rather
    than sent ahead of it: the runtime retries them after it, in order. After a call
    fails for a reason that is not its items' (throttling, a missing destination),
    `stop()` fails everything not yet sent, since the next call would fail alike.
    """

    __slots__ = ("_blocked", "_keys", "_sink", "_stopped", "failed")

    def __init__(self, keys: Sequence[Hashable], *, sink: str) -> None:
        self._keys = keys
        self._sink = sink
        self._blocked: set[Hashable] = set()
        self._stopped: BaseException | None = None
        self.failed: dict[int, BaseException] = {}

    def fail(self, index: int, error: BaseException) -> None:
        """Item `index` failed (before or after it was sent)."""
        self.failed[index] = error
        self._blocked.add(self._keys[index])

    def stop(self, indices: Iterable[int], error: BaseException) -> None:
        """A call of `indices` failed as a whole in a way later calls would too."""
        for i in indices:
            self.fail(i, error)
        self._stopped = error

    def to_send(self, run: Iterable[int]) -> list[int]:
        """The items of `run` to send now; the others are failed here (held back behind
        an earlier failure of their key, or after a stop) or failed already."""
        send: list[int] = []
        for i in run:
            if i in self.failed:
                continue
            if self._stopped is not None:
                self.failed[i] = self._stopped
            elif self._keys[i] in self._blocked:
                self.failed[i] = NotSentError(
                    f"sink {self._sink}: held back because an earlier item of the same key "
                    "failed; it is sent after that one, to keep the key's order"
                )
            else:
                send.append(i)
        return send

    def result(self) -> SendResult | None:
        """What `send()` returns: None when nothing failed."""
        return SendResult(self.failed) if self.failed else None


def arn_region(name: str, *, factory: str, service: str, resource: str, what: str) -> str | None:
    """The region of `name` when it is an ARN (None for a plain name). An ARN of another
    service or resource type is a `SinkError` naming the expected shape, e.g.
    ``arn:aws:kinesis:<region>:<account>:stream/<name>`` (`resource` is "stream/")."""
    if not name.startswith("arn:"):
        return None
    parts = name.split(":", 5)
    if (
        len(parts) != 6
        or parts[2] != service
        or not parts[5].startswith(resource)
        or len(parts[5]) == len(resource)
    ):
        raise SinkError(
            f"sinks.{factory}({name!r}) is not a {what} ARN (arn:aws:{service}:<region>:"
            f"<account>:{resource}<name>); pass the ARN or the {what.split()[-1]}'s name"
        )
    return parts[3]


def missing_resource(
    what: str, exc: BaseException, *, client: Any, endpoint_url: str | None, fix: str
) -> str:
    """The message for a destination that does not exist: which one, where it was looked
    for (region and endpoint), what the service said, and `fix`."""
    where = f" at {endpoint_url}" if endpoint_url else ""
    return (
        f"{what} does not exist in {client.meta.region_name}{where} ({error_message(exc)}); {fix}"
    )


def delivery_error(exc: BaseException, *, sink: str, what: str) -> DeliveryError:
    """A botocore error from a whole call, as a `DeliveryError` that says whether a retry
    can help."""
    if isinstance(exc, DeliveryError):
        return exc
    setup = configuration_error(exc, SinkError, what=what, endpoint_url=None)
    code = error_code(exc)
    message = (
        str(setup) if setup is not None else f"{code or type(exc).__name__}: {error_message(exc)}"
    )
    return DeliveryError(
        f"sink {sink}: {message}", retryable=setup is None and is_retryable(exc), code=code
    )


def encode_with(encode: Callable[[Any], bytes | str], value: Any) -> bytes:
    """`encode(value)`, a user's `encode=` function, as bytes; a `SerializationError`
    (fails only that item) when it raises or returns something else."""
    try:
        data = encode(value)
    except Exception as exc:
        raise SerializationError(
            f"encode= failed on a {type(value).__name__} value: {type(exc).__name__}: {exc}"
        ) from None
    if isinstance(data, str):
        return data.encode()
    if not isinstance(data, bytes | bytearray | memoryview):
        raise SerializationError(
            f"encode= returned a {type(data).__name__} for a {type(value).__name__} value; "
            "it must return bytes (or str)"
        )
    return bytes(data)


def item_error(exc: FlowstreamError, sink: str) -> DeliveryError:
    """An item that cannot be sent as it is (it does not serialise, is too large, its
    record does not decode): a `DeliveryError` that retrying cannot fix."""
    if isinstance(exc, DeliveryError):
        return exc
    return DeliveryError(f"sink {sink}: {exc}", retryable=False)


#: aiohttp warns (ResourceWarning) when it is handed a body over 1 MiB as raw bytes.
_LARGE_BODY = 1024 * 1024


def _stream_large_body(request: Any, **_: Any) -> None:
    """Hand a large request body (a 5 MiB PutRecords call, a 6 MiB Lambda payload) to
    aiohttp as a stream rather than raw bytes, which it warns about; under pytest's
    ``filterwarnings = error`` that warning fails the request. The request is signed
    already; the stream carries the same bytes."""
    body = request.body
    if isinstance(body, bytes | bytearray) and len(body) > _LARGE_BODY:
        request.body = io.BytesIO(body)


#: Codes that say "you may not look at this": the open-time check is skipped, since a
#: role that may send need not be allowed to read the destination's attributes.
NOT_ALLOWED: Final = frozenset({"AccessDenied", "AccessDeniedException", "AuthorizationError"})


@dataclass(eq=False, repr=False, kw_only=True)
class AwsSink(Sink):
    """A sink that talks to one AWS service through an aiobotocore client opened per run.

    Subclasses are dataclasses too (``@dataclass(eq=False, repr=False)``, the
    destination first, then ``_: KW_ONLY`` and their options): the connection settings
    come from here. They name the `service` and build their writer from the client.
    """

    service: ClassVar[str]

    endpoint_url: str | None = None
    region: str | None = None
    session: AioSession | None = None
    max_connections: int = 64

    def open(self) -> AbstractAsyncContextManager[SinkWriter]:
        return self._open()

    @asynccontextmanager
    async def _open(self) -> AsyncIterator[SinkWriter]:
        async with AsyncExitStack() as stack:
            try:
                client = await stack.enter_async_context(
                    create_client(
                        self.service,
                        session=self.session,
                        region=self.region,
                        endpoint_url=self.endpoint_url,
                        max_connections=self.max_connections,
                    )
                )
            except Exception as exc:
                error = configuration_error(
                    exc, SinkError, what=self.describe(), endpoint_url=self.endpoint_url
                )
                raise (error or SinkError(f"cannot open {self.describe()}: {exc}")) from None
            client.meta.events.register(f"before-send.{self.service}", _stream_large_body)
            yield await self.open_writer(client)

    async def open_writer(self, client: Any) -> SinkWriter:
        """The writer for one run: `writer(client)`. A sink that can check its
        destination before the first send (that it exists, its limits) overrides this and
        raises a `SinkError` that names the fix."""
        return self.writer(client)

    async def check_destination(
        self,
        call: Awaitable[Any],
        *,
        service: str,
        missing: Collection[str],
        explain_missing: Callable[[BaseException], str],
    ) -> Any:
        """The answer of `call`, a look at the destination made when the sink opens, or
        None when the sink may not look (or the look failed in passing): it then runs
        with its defaults. A missing destination (`missing` error codes) or a setup
        problem raises a `SinkError` that names the fix."""
        try:
            return await call
        except Exception as exc:
            code = error_code(exc)
            if code in missing:
                raise SinkError(explain_missing(exc)) from None
            if code not in NOT_ALLOWED:
                setup = configuration_error(
                    exc,
                    SinkError,
                    what=f"{service} ({self.describe()})",
                    endpoint_url=self.endpoint_url,
                )
                if setup is not None:
                    raise setup from None
            return None

    @abstractmethod
    def writer(self, client: Any) -> SinkWriter:
        """The writer for one run, using `client`."""
