"""A local server run as a subprocess for tests: a free 127.0.0.1 port, a wait until it
answers, its output kept for the error when it does not start, and a clean stop."""

from __future__ import annotations

import os
import socket
import subprocess
import tempfile
import time
from abc import ABC, abstractmethod
from typing import IO, Self

__all__ = ["ServerProcess", "closed_port", "free_port"]

STOP_TIMEOUT = 10.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def closed_port() -> int:
    """A port that refuses connections (bound and released: nothing listens on it)."""
    return free_port()


class ServerProcess(ABC):
    """Subclasses give the command for a port and say when the server answers. Use as a
    context manager, or `start()` and `stop()`."""

    #: What the errors call it.
    name = "server"
    startup_timeout = 30.0

    def __init__(self) -> None:
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @abstractmethod
    def command(self, port: int) -> list[str]:
        """The command line that starts the server on `port`."""

    @abstractmethod
    def answers(self) -> bool:
        """True once the server answers requests."""

    def start(self, attempts: int = 3) -> None:
        """Start the server and wait until it answers. A port taken between choosing it
        and binding it makes the server exit at once: then try another port."""
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in stop()
        for _ in range(attempts):
            self.port = free_port()
            self._process = subprocess.Popen(
                self.command(self.port),
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
            )
            if self._wait_until_ready():
                return
        self.stop()
        raise RuntimeError(f"{self.name} did not start: {self.log_tail()}")

    def _wait_until_ready(self) -> bool:
        assert self._process is not None
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                return False  # exited (port taken?)
            if self.answers():
                return True
            time.sleep(0.01)  # polling a condition with a deadline, not hoping for timing
        self._process.kill()
        self._process.wait()
        return False

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
        """The end of the server's output."""
        if self._log is None:
            return ""
        self._log.flush()
        self._log.seek(0, os.SEEK_END)
        end = self._log.tell()
        self._log.seek(max(0, end - size))
        return self._log.read().decode(errors="replace")

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
