"""A real ``redis-server`` for tests of the Redis sink.

`RedisServer` runs ``redis-server`` as a subprocess on a free 127.0.0.1 port (no
persistence), waits until it answers PING, and resets it between tests. The pytest
fixtures at the end (`redis_server`, session-scoped; `redis_url`, per test, reset first)
are what tests use; tests/conftest.py loads this module as a plugin. A machine without
``redis-server`` fails those tests with the command that installs it: CI installs it, so
a skip would only hide a broken setup.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from typing import IO

import pytest
from moto_server import free_port

__all__ = ["RedisServer", "redis_server", "redis_url"]

STARTUP_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0
INSTALL_HINT = (
    "redis-server is not installed (the Redis sink tests run a real one); install it: "
    "`apt-get install -y redis-server` (Debian/Ubuntu) or `brew install redis` (macOS)"
)


class RedisServer:
    """A redis-server subprocess. Use as a context manager, or `start()` and `stop()`."""

    def __init__(self) -> None:
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._dir: tempfile.TemporaryDirectory[str] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, attempts: int = 3) -> None:
        """Start the server and wait until it answers PING. A port taken between choosing
        it and binding it makes the server exit at once: then try another port."""
        executable = shutil.which("redis-server")
        if executable is None:
            pytest.fail(INSTALL_HINT, pytrace=False)
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in stop()
        self._dir = tempfile.TemporaryDirectory(prefix="flowstream-redis-")
        for _ in range(attempts):
            self.port = free_port()
            # no persistence: nothing is written, nothing is left to clean up
            options = ["--save", "", "--appendonly", "no", "--dir", self._dir.name]
            self._process = subprocess.Popen(
                [executable, "--port", str(self.port), "--bind", "127.0.0.1", *options],
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
            )
            if self._wait_until_ready():
                return
        self.stop()
        raise RuntimeError(f"redis-server did not start: {self.log_tail()}")

    def _wait_until_ready(self) -> bool:
        assert self._process is not None
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                return False  # exited (port taken?)
            if self._answers_ping():
                return True
            time.sleep(0.01)  # polling a condition with a deadline, not hoping for timing
        self._process.kill()
        self._process.wait()
        return False

    def _answers_ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"*1\r\n$4\r\nPING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def reset(self) -> None:
        """Back to a fresh server: no keys, no extra ACL users, no memory limit, and
        counters (INFO commandstats) at zero."""
        import redis  # the tests that use the server need redis-py anyway

        with redis.Redis(host="127.0.0.1", port=self.port) as client:
            client.flushall()
            for user in client.acl_users():
                name = user.decode() if isinstance(user, bytes) else str(user)
                if name != "default":
                    client.acl_deluser(name)
            client.config_set("maxmemory", 0)
            client.config_resetstat()

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
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None

    def log_tail(self, size: int = 2000) -> str:
        if self._log is None:
            return ""
        self._log.flush()
        self._log.seek(0, os.SEEK_END)
        end = self._log.tell()
        self._log.seek(max(0, end - size))
        return self._log.read().decode(errors="replace")

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One redis-server for the whole test session."""
    with RedisServer() as server:
        yield server


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The URL (``redis://127.0.0.1:PORT/0``) of a freshly reset redis-server."""
    redis_server.reset()
    return redis_server.url
