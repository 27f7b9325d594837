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
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import IO

import pytest

__all__ = ["MotoServer", "closed_port", "free_port", "moto_server", "moto_url"]

STARTUP_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def closed_port() -> int:
    """A port that refuses connections (bound and released: nothing listens on it)."""
    return free_port()


class MotoServer:
    """A moto server subprocess. Use as a context manager, or `start()` and `stop()`."""

    def __init__(self) -> None:
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, attempts: int = 3) -> None:
        """Start the server and wait until it answers. A port taken between choosing it
        and binding it makes the server exit at once: then try another port."""
        # The server's output, kept for the error when it does not start.
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in stop()
        for _ in range(attempts):
            self.port = free_port()
            self._process = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-p", str(self.port), "-H", "127.0.0.1"],
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
            )
            if self._wait_until_ready():
                return
        self.stop()
        raise RuntimeError(f"moto server did not start: {self.log_tail()}")

    def _wait_until_ready(self) -> bool:
        assert self._process is not None
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                return False  # exited (port taken?)
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(f"{self.url}/moto-api/", timeout=1),
            ):
                return True
            time.sleep(0.02)  # polling a condition with a deadline, not hoping for timing
        self._process.kill()
        self._process.wait()
        return False

    def reset(self) -> None:
        """Forget every table, stream, queue, ... (``POST /moto-api/reset``)."""
        request = urllib.request.Request(f"{self.url}/moto-api/reset", method="POST")
        with urllib.request.urlopen(request, timeout=10) as response:
            if response.status != 200:
                raise RuntimeError(f"moto reset answered HTTP {response.status}")

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_tail(self, size: int = 2000) -> str:
        if self._log is None:
            return ""
        self._log.flush()
        self._log.seek(0, os.SEEK_END)
        end = self._log.tell()
        self._log.seek(max(0, end - size))
        return self._log.read().decode(errors="replace")

    def __enter__(self) -> MotoServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


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
