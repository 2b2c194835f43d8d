"""How alerts are delivered: timeouts, retries, backoff and the bounds (``HubConfig.alerts``).

A delivery is tried at once, then after ``backoff_s``, doubling each time up to
``backoff_max_s``, with jitter (each wait is drawn between half and all of it, so
receivers that came back together are not hit together); after ``max_attempts`` tries or
``max_age_s`` seconds it is marked failed. A receiver answering 2xx has it; 408, 429, any
5xx, a timeout or a connection error is retried; any other 4xx fails it at once.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

__all__ = ["DeliveryPolicy", "backoff_delay"]


@dataclass(frozen=True)
class DeliveryPolicy:
    external_url: str = ""  # the hub's API as receivers reach it (generatorURL); "": none
    timeout_s: float = 5.0  # seconds for one POST, connect to answer
    max_attempts: int = 8  # tries of one delivery, the first included
    backoff_s: float = 2.0  # seconds before the second try; doubles each try
    backoff_max_s: float = 600.0  # seconds, the longest wait between tries
    max_age_s: float = 86_400.0  # seconds after which an unsent delivery fails
    max_pending: int = 1000  # pending deliveries per receiver; beyond, the oldest is dropped
    retention_s: float = 30 * 86_400.0  # seconds alerts, deliveries and attempts are kept
    tick_s: float = 0.5  # seconds between the dispatcher's passes
    workers: int = 4  # receivers sent to at once; a slow one holds up only its own
    batch: int = 20  # deliveries one receiver is sent per turn

    def __post_init__(self) -> None:
        problems = [
            name
            for name, bad in (
                ("timeout_s", not 0 < self.timeout_s <= 60),
                ("max_attempts", not 1 <= self.max_attempts <= 100),
                ("backoff_s", not 0 < self.backoff_s <= self.backoff_max_s),
                ("max_age_s", self.max_age_s <= 0),
                ("max_pending", self.max_pending < 1),
                ("retention_s", self.retention_s < self.max_age_s),
                ("tick_s", not 0 < self.tick_s <= 60),
                ("workers", not 1 <= self.workers <= 64),
                ("batch", self.batch < 1),
            )
            if bad
        ]
        if problems:
            raise ValueError(f"alert delivery settings out of range: {', '.join(problems)}")


def backoff_delay(policy: DeliveryPolicy, attempts: int, rng: random.Random) -> float:
    """Seconds to wait after the ``attempts``-th failed try: exponential, jittered."""
    full = min(policy.backoff_max_s, policy.backoff_s * 2.0 ** min(attempts - 1, 30))
    return float(full / 2 + rng.uniform(0, full / 2))
