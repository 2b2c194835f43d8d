"""Per-device budgets: a token bucket of messages and one of bytes for each device.

One device (or one stolen device identity) must not take the hub's whole attention
(issue 11, items 2 and 4). A :class:`Budgets` holds, for each device, a bucket of
messages and one of bytes that refill at a sustained rate up to a burst; a message the
device cannot pay for is dropped by the caller, and counted. Two budgets exist: a
device's fetches and the bytes of their answers (hub/transport/fetch.py), and a device's
reports, the messages the hub stores (hub/transport/inbound.py).

Buckets are created on a device's first message; devices are the enrolled identities
the broker's ACL admits, so the table is as large as the fleet.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

__all__ = ["INGEST", "Budget", "Budgets"]


@dataclass(frozen=True)
class Budget:
    """A sustained rate and a burst, of messages and of bytes."""

    per_s: float  # messages per second, sustained
    burst: float  # messages at once
    bytes_per_s: float  # bytes per second, sustained
    bytes_burst: float  # bytes at once

    def __post_init__(self) -> None:
        if min(self.per_s, self.burst, self.bytes_per_s, self.bytes_burst) <= 0:
            raise ValueError(f"a budget's rates and bursts must be > 0: {self}")


# A device's reports (state, events, telemetry, drift, captures). An agent sends one
# telemetry and one drift window per window_s (10 s by default), a few events per
# update, and replays its spool after an outage at most AGENT_REPLAY_PER_S
# (agent/spool.py: 5 messages/s after a burst of 200), well inside this.
INGEST: Final = Budget(per_s=20.0, burst=1000.0, bytes_per_s=256 * 2**10, bytes_burst=16 * 2**20)


@dataclass
class _Bucket:
    messages: float
    nbytes: float
    at: float


class Budgets:
    """Thread-safe token buckets, one per device, all with the same :class:`Budget`."""

    def __init__(self, budget: Budget, clock: Callable[[], float] = time.monotonic) -> None:
        self.budget = budget
        self.clock = clock
        self._buckets: dict[str, _Bucket] = {}
        self._lock = threading.Lock()

    def take(self, device_id: str, messages: float = 1.0, nbytes: float = 0.0) -> bool:
        """Spend from the device's buckets; False (nothing spent) when it cannot pay.

        Bytes may go below zero once: an answer whose size is known only after it was
        built is paid for after the fact, and the next waits for the bucket to refill.
        """
        b = self.budget
        now = self.clock()
        with self._lock:
            bucket = self._buckets.get(device_id)
            if bucket is None:
                bucket = self._buckets[device_id] = _Bucket(b.burst, b.bytes_burst, now)
            dt, bucket.at = max(0.0, now - bucket.at), now
            bucket.messages = min(b.burst, bucket.messages + dt * b.per_s)
            bucket.nbytes = min(b.bytes_burst, bucket.nbytes + dt * b.bytes_per_s)
            if bucket.messages < messages or (nbytes and bucket.nbytes <= 0):
                return False
            bucket.messages -= messages
            bucket.nbytes -= nbytes
            return True
