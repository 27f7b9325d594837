"""SIGTERM and SIGINT stop a script's run gracefully: it returns its report."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent(
    """
    import sys
    import anyio
    import flowstream as fs
    from flowstream import sinks
    from flowstream.testing import MemoryStream

    async def main() -> None:
        stream = MemoryStream()
        shard = stream.add_shard()
        stream.put(shard, "INSERT", {"pk": "a"})

        def ready(values):
            print("delivered", len(values), flush=True)

        report = await fs.Pipeline(stream).to(sinks.callback(ready)).run(handle_signals=True)
        print("stop_reason", report.stop_reason, flush=True)
        print("state", report.shards[shard].state.value, flush=True)

    anyio.run(main)
    """
)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_stops_the_run_and_returns_the_report(signum: signal.Signals) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", SCRIPT], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "delivered 1"
        child.send_signal(signum)
        out, err = child.communicate(timeout=30)
    finally:
        child.kill()
    assert child.returncode == 0, err
    assert f"stop_reason {signum.name}" in out
    assert "state paused" in out
