"""moto's server as a real local AWS endpoint for tests (DESIGN.md §5).

`MotoServer` runs ``python -m moto.server`` as a subprocess on a free 127.0.0.1 port,
waits until it answers, and resets its state on demand. The pytest fixtures at the end
(`moto_server`, session-scoped; `moto_url`, per test, reset first) are what tests use;
tests/conftest.py loads this module as a plugin, so any test can ask for them. One
server, started by the first test that needs it, serves every service moto knows
(DynamoDB, DynamoDB Streams, SQS, SNS, EventBridge, Kinesis, ...): sink tests share it.
"""

from __future__ import annotations

import contextlib
import sys
import urllib.request
from collections.abc import Iterator

import pytest
from server_process import ServerProcess, closed_port, free_port

__all__ = ["MotoServer", "closed_port", "free_port", "moto_server", "moto_url"]


class MotoServer(ServerProcess):
    """A moto server subprocess."""

    name = "moto server"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self, port: int) -> list[str]:
        return [sys.executable, "-m", "moto.server", "-p", str(port), "-H", "127.0.0.1"]

    def answers(self) -> bool:
        with (
            contextlib.suppress(OSError),
            urllib.request.urlopen(f"{self.url}/moto-api/", timeout=1),
        ):
            return True
        return False

    def reset(self) -> None:
        """Forget every table, stream, queue, ... (``POST /moto-api/reset``)."""
        request = urllib.request.Request(f"{self.url}/moto-api/reset", method="POST")
        with urllib.request.urlopen(request, timeout=10) as response:
            if response.status != 200:
                raise RuntimeError(f"moto reset answered HTTP {response.status}")


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    """One moto server for the whole test session."""
    with MotoServer() as server:
        yield server


@pytest.fixture
def moto_url(moto_server: MotoServer) -> str:
    """The endpoint URL of a freshly reset moto server."""
    moto_server.reset()
    return moto_server.url
