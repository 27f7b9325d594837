"""One process per pipeline and store: the claim a durable checkpoint store keeps while a
run has it open, so that a second process running the same pipeline on the same store is
refused instead of reading every shard again and delivering everything twice.

A claim names its process (host, pid and a random token) and carries a heartbeat the run
renews every `HEARTBEAT` seconds. Another process may take a claim over when it is its
own, when its process is gone (same host, no such pid), or when its heartbeat is older
than `STALE_AFTER` seconds (a process on another host that died). A run whose claim was
taken over stops at its next heartbeat. Workers that share a stream use leases instead
(docs/scaling.md).
"""

from __future__ import annotations

import os
import secrets
import socket
import time
from dataclasses import dataclass
from typing import Final

from flowstream.errors import CheckpointError

__all__ = [
    "HEARTBEAT",
    "STALE_AFTER",
    "Claim",
    "busy_error",
    "claim_error",
    "lost_error",
    "may_take",
]

#: Seconds between heartbeats of a claim.
HEARTBEAT: Final = 5.0
#: Seconds without a heartbeat after which a claim of a process on another host is stale.
STALE_AFTER: Final = 30.0


@dataclass(frozen=True, slots=True)
class Claim:
    owner: str
    host: str
    pid: int
    heartbeat: float

    @classmethod
    def mine(cls) -> Claim:
        """A new claim of this process (each open of a store makes its own)."""
        host = socket.gethostname()
        pid = os.getpid()
        return cls(f"{host}:{pid}:{secrets.token_hex(3)}", host, pid, time.time())


def may_take(existing: Claim | None, me: Claim, now: float) -> bool:
    """True when `me` may claim what `existing` holds."""
    if existing is None or existing.owner == me.owner:
        return True
    if existing.host == me.host and not _alive(existing.pid):
        return True
    return now - existing.heartbeat > STALE_AFTER


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def claim_error(store: str, pipeline: str, existing: Claim, now: float) -> CheckpointError:
    age = max(0.0, now - existing.heartbeat)
    return CheckpointError(
        f"{store}: pipeline {pipeline!r} is already running on these checkpoints in "
        f"{existing.owner} (its last heartbeat {age:.0f}s ago). Two processes on one store "
        "would each read every shard and deliver everything twice. To run several workers "
        "on one stream, pass run(leases=leases.dynamodb(table)) instead of checkpoints= "
        "(docs/scaling.md); if that process is gone, its claim goes stale "
        f"{max(0.0, STALE_AFTER - age):.0f}s from now"
    )


def lost_error(store: str, pipeline: str) -> CheckpointError:
    return CheckpointError(
        f"{store}: another process took over pipeline {pipeline!r} on these checkpoints "
        f"(this run missed its heartbeats for over {STALE_AFTER:.0f}s: paused, or cut off); "
        "this run stops so that the two do not both deliver. To run several workers on one "
        "stream, use run(leases=leases.dynamodb(table)) (docs/scaling.md)"
    )


def busy_error(store: str, pipeline: str, existing: Claim, now: float) -> CheckpointError:
    """The refusal to change checkpoints a live run holds: its next save would undo the
    change, or build on positions it no longer has."""
    age = max(0.0, now - existing.heartbeat)
    return CheckpointError(
        f"{store}: pipeline {pipeline!r} is running on these checkpoints in {existing.owner} "
        f"(its last heartbeat {age:.0f}s ago), so they were not changed; stop that process "
        "first and run this again (a process that died without releasing them frees them "
        f"{max(0.0, STALE_AFTER - age):.0f}s from now, or at once when it ran on this host)"
    )
