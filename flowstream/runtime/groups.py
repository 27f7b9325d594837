"""Finding the cause inside the exception groups that task groups raise."""

from __future__ import annotations

import anyio

__all__ = ["first_error"]


def first_error(exc: BaseException) -> BaseException:
    """The first real error inside (nested) exception groups; cancellations are a
    consequence of it, not the cause."""
    while isinstance(exc, BaseExceptionGroup):
        inner = [e for e in exc.exceptions if not isinstance(e, anyio.get_cancelled_exc_class())]
        exc = (inner or list(exc.exceptions))[0]
    return exc
