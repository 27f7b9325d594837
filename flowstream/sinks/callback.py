"""`sinks.callback(fn)`: hands each batch to a user function, sync or async."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any, final

from flowstream.callables import callable_name, is_async_callable
from flowstream.errors import PipelineError
from flowstream.sinks.base import Batch, SendResult, SimpleSink

__all__ = ["CallbackSink", "callback"]


@final
class CallbackSink(SimpleSink):
    """Calls `fn(values)` with one shard's elements, in order. Returning (or the
    coroutine finishing) acknowledges them; raising fails the whole batch, which is then
    retried. Calls for different shards may run at the same time."""

    def __init__(self, fn: Callable[[list[Any]], Any], name: str | None = None) -> None:
        self._fn = fn
        self._name = name
        self._is_async = is_async_callable(fn)

    def describe(self) -> str:
        return self._name or f"callback({callable_name(self._fn)})"

    async def send(self, batch: Batch) -> SendResult | None:
        # A copy: a function that consumes its list (pop() as it goes) must not shrink the
        # batch that is retried, or counted, after it raises.
        values = list(batch.values)
        if self._is_async:
            await self._fn(values)
        else:
            result = self._fn(values)
            # A plain function may hand back an awaitable (a lambda around an async
            # call, a partial): await it, or its work would never run.
            if inspect.isawaitable(result):
                await result
        return None


def callback(
    fn: Callable[[list[Any]], Awaitable[None] | None], *, name: str | None = None
) -> CallbackSink:
    """A sink that calls `fn(values)` for each batch (a list of one shard's elements).
    `name` is what plans and reports call it (default: ``callback(<function name>)``)."""
    if not callable(fn):
        raise PipelineError(
            f"sinks.callback() got {type(fn).__name__}, which is not callable; pass a "
            "function that takes a list of elements"
        )
    if name is not None and (not isinstance(name, str) or not name):
        raise PipelineError(
            f"sinks.callback(name={name!r}) must be a non-empty str, or None for the "
            "function's name"
        )
    return CallbackSink(fn, name)
