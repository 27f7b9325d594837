"""Helpers for tests: wait on a condition with a deadline instead of sleeping."""

from __future__ import annotations

from collections.abc import Callable

import anyio


async def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Return once `condition()` holds; fail the test after `timeout` seconds."""
    with anyio.fail_after(timeout):
        while not condition():
            await anyio.sleep(0.002)
