"""flowstream's pytest plugin, loaded by pytest through the ``pytest11`` entry point.

It lets a user's tests be written as docs/testing.md shows them, with nothing to
configure: a plain ``async def test_...`` runs on asyncio through anyio's own pytest
plugin (anyio comes with flowstream), unless another plugin takes it (pytest-asyncio in
auto mode, or a test marked ``asyncio``, ``anyio`` or ``trio``). It also gives two
fixtures: `memory_stream`, a fresh `MemoryStream`, and `local_streams_server`, that
stream served over the DynamoDB Streams wire protocol for the length of the test.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator
from typing import Any

import pytest

from flowstream.testing.local_server import LocalStreamsServer
from flowstream.testing.memory_stream import MemoryStream

__all__ = ["local_streams_server", "memory_stream"]

_ASYNC_MARKERS = ("anyio", "asyncio", "trio")
# What an unclaimed async test gets: anyio's runner on asyncio (aiobotocore and aiohttp,
# under LocalStreamsServer and the AWS sources and sinks, run on asyncio only).
_ON_ASYNCIO = (
    pytest.mark.anyio,
    pytest.mark.usefixtures("anyio_backend"),
    pytest.mark.parametrize("anyio_backend", ["asyncio"]),
)


def _claimed(collector: pytest.Module | pytest.Class, obj: Any) -> bool:
    """True when another plugin runs this async test."""
    own = {mark.name for mark in getattr(obj, "pytestmark", ())}
    if own & set(_ASYNC_MARKERS):
        return True
    if any(collector.get_closest_marker(name) for name in _ASYNC_MARKERS):
        return True
    config = collector.config
    for plugin, option in (("asyncio", "asyncio_mode"), ("anyio", "anyio_mode")):
        if config.pluginmanager.has_plugin(plugin):
            try:
                if config.getini(option) == "auto":
                    return True
            except ValueError:  # a version of the plugin without that option
                continue
    return False


@pytest.hookimpl(tryfirst=True)
def pytest_pycollect_makeitem(
    collector: pytest.Module | pytest.Class, name: str, obj: object
) -> None:
    if (
        collector.istestfunction(obj, name)
        and inspect.iscoroutinefunction(obj)
        and not _claimed(collector, obj)
    ):
        for mark in _ON_ASYNCIO:
            mark(obj)


@pytest.fixture
def memory_stream() -> MemoryStream:
    """A fresh, empty `MemoryStream` (table ``"memory"``): add shards and put changes."""
    return MemoryStream()


@pytest.fixture
async def local_streams_server(memory_stream: MemoryStream) -> AsyncIterator[LocalStreamsServer]:
    """The test's `memory_stream` served on 127.0.0.1 over the DynamoDB Streams wire
    protocol: point ``sources.dynamodb(stream_arn=server.stream_arn,
    endpoint_url=server.endpoint_url)`` at it."""
    async with LocalStreamsServer(memory_stream) as server:
        yield server
