"""A real ``redis-server`` for tests of the Redis sink.

`RedisServer` runs ``redis-server`` as a subprocess on a free 127.0.0.1 port (no
persistence), waits until it answers PING, and resets it between tests. The pytest
fixtures at the end (`redis_server`, session-scoped; `redis_url`, per test, reset first)
are what tests use; tests/conftest.py loads this module as a plugin. A machine without
``redis-server`` fails those tests with the command that installs it: CI installs it, so
a skip would only hide a broken setup.
"""

from __future__ import annotations

import shutil
import socket
import tempfile
from collections.abc import Iterator

import pytest
from server_process import ServerProcess

__all__ = ["RedisServer", "redis_server", "redis_url"]

INSTALL_HINT = (
    "redis-server is not installed (the Redis sink tests run a real one); install it: "
    "`apt-get install -y redis-server` (Debian/Ubuntu) or `brew install redis` (macOS)"
)


class RedisServer(ServerProcess):
    """A redis-server subprocess, with no persistence."""

    name = "redis-server"
    startup_timeout = 10.0

    def __init__(self) -> None:
        super().__init__()
        self._dir: tempfile.TemporaryDirectory[str] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, attempts: int = 3) -> None:
        if shutil.which("redis-server") is None:
            pytest.fail(INSTALL_HINT, pytrace=False)
        self._dir = tempfile.TemporaryDirectory(prefix="flowstream-redis-")
        super().start(attempts)

    def command(self, port: int) -> list[str]:
        assert self._dir is not None
        # no persistence: nothing is written, nothing is left to clean up
        options = ["--save", "", "--appendonly", "no", "--dir", self._dir.name]
        return ["redis-server", "--port", str(port), "--bind", "127.0.0.1", *options]

    def answers(self) -> bool:
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
        super().stop()
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None


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
