"""`sinks.callback(fn)`: hands each batch to a user function, sync or async."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, final

from flowstream.errors import PipelineError
from flowstream.plan import callable_name, is_async_callable
from flowstream.sinks.base import Batch, SendResult, SimpleSink

__all__ = ["CallbackSink", "callback"]


@final
class CallbackSink(SimpleSink):
    """Calls `fn(values)` with one shard's elements, in order. Returning (or the
    coroutine finishing) acknowledges them; raising fails the whole batch, which is then
    retried. Calls for different shards may run at the same time."""

    def __init__(self, fn: Callable[[list[Any]], Any]) -> None:
        self._fn = fn
        self._is_async = is_async_callable(fn)

    def describe(self) -> str:
        return f"callback({callable_name(self._fn)})"

    async def send(self, batch: Batch) -> SendResult | None:
        if self._is_async:
            await self._fn(batch.values)
        else:
            self._fn(batch.values)
        return None


def callback(fn: Callable[[list[Any]], Awaitable[None] | None]) -> CallbackSink:
    """A sink that calls `fn(values)` for each batch (a list of one shard's elements)."""
    if not callable(fn):
        raise PipelineError(
            f"sinks.callback() got {type(fn).__name__}, which is not callable; pass a "
            "function that takes a list of elements"
        )
    return CallbackSink(fn)
