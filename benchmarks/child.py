"""A benchmark's server in a process of its own (so that its CPU is not the client's):
started as ``python SCRIPT ARGS...``, it says it is ready on its first line of output and
exits when its stdin closes, so it never outlives a parent that dies without stopping it.
"""

from __future__ import annotations

import selectors
import subprocess
import sys
from pathlib import Path

STOP_TIMEOUT = 10.0


class Child:
    """One such process: `first_line()` once, `stop()` when done."""

    def __init__(self, script: str, *args: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(Path(script).resolve()), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def first_line(self, timeout: float) -> bytes:
        """Its first line of output, or b"" when none comes within `timeout`."""
        stdout = self.process.stdout
        assert stdout is not None
        with selectors.DefaultSelector() as selector:
            selector.register(stdout, selectors.EVENT_READ)
            if not selector.select(timeout):
                return b""
        return stdout.readline()

    def stop(self) -> None:
        """Close its stdin (it exits), then terminate or kill it if it does not."""
        process = self.process
        if process.stdin is not None:
            process.stdin.close()
        try:
            process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.terminate()
            try:
                process.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if process.stdout is not None:
            process.stdout.close()
