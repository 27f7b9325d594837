"""What flowstream knows about the functions users hand it: whether to await them, and
what to call them in plans and errors. Low in the module tree: the planner, the pipeline
builder and the sinks all use it."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

__all__ = ["callable_name", "is_async_callable"]


def is_async_callable(fn: Callable[..., Any]) -> bool:
    """True for `async def` functions, async callable objects and partials of either.

    A sync function that returns a coroutine (``lambda r: check(r)`` with an async
    `check`) is not one, so the steps await a coroutine a sync function returns."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    if inspect.iscoroutinefunction(fn):
        return True
    call = getattr(fn, "__call__", None)  # noqa: B004 - looking for an async __call__
    return call is not None and inspect.iscoroutinefunction(call)


def callable_name(fn: Callable[..., Any]) -> str:
    """A function's name for plans and errors: ``Class.method``, ``check`` for a function
    nested in another (not ``outer.<locals>.check``), the class of a callable object."""
    if isinstance(fn, functools.partial):
        return f"partial({callable_name(fn.func)})"
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None)
    if not isinstance(name, str):
        return type(fn).__name__
    return name.rpartition("<locals>.")[2]
