"""What the AWS sinks share: one aiobotocore client per run, batching under a service's
count and size limits, and turning botocore errors into per-item `DeliveryError`s."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from typing import Any

from aiobotocore.session import AioSession

from flowstream.aws import (
    configuration_error,
    create_client,
    error_code,
    error_message,
    is_retryable,
)
from flowstream.errors import DeliveryError, SinkError
from flowstream.sinks.base import Sink, SinkWriter

__all__ = ["AwsSink", "chunks", "delivery_error"]


def chunks(sizes: Sequence[int], *, max_count: int, max_bytes: int) -> Iterator[range]:
    """Split items of the given sizes into consecutive runs of at most `max_count` items
    and `max_bytes` bytes. An item larger than `max_bytes` gets a run of its own (the
    caller fails it: it can never be sent)."""
    start = 0
    total = 0
    for i, size in enumerate(sizes):
        if i > start and (i - start >= max_count or total + size > max_bytes):
            yield range(start, i)
            start, total = i, 0
        total += size
    if start < len(sizes):
        yield range(start, len(sizes))


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


class AwsSink(Sink):
    """A sink that talks to one AWS service through an aiobotocore client opened per run.

    Subclasses name the `service` and build their writer from the client.
    """

    service: str

    def __init__(
        self,
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        session: AioSession | None = None,
        max_connections: int = 64,
    ) -> None:
        self.endpoint_url = endpoint_url
        self.region = region
        self.session = session
        self.max_connections = max_connections

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
            yield self.writer(client)

    @abstractmethod
    def writer(self, client: Any) -> SinkWriter:
        """The writer for one run, using `client`."""
