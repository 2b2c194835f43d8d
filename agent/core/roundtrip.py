"""The fetch time-out, adapted to the round trips this device observes.

A fixed time-out is wrong both ways: on a quiet hub it waits long for a lost answer, and
on a busy one (thousands of devices fetching at once) it fires while the answer is still
queued, and the re-requests make the hub busier still. :class:`RoundTrip` measures each
fetch's round trip (request to its first answering blob) and keeps a smoothed mean and
deviation, as TCP does (RFC 6298): the time-out is ``srtt + 4 * rttvar``, never under
the configured ``fetch_timeout_s`` (a quiet hub keeps today's patience) nor over
``MAX_TIMEOUT_FACTOR`` times it (a hub that stopped answering is still given up on). In
memory only: a restarted device measures again.
"""

from __future__ import annotations

from typing import Final

MAX_TIMEOUT_FACTOR: Final = 8.0  # the configured fetch_timeout_s multiples, at most
MAX_OPEN: Final = 8  # unanswered requests remembered
ALPHA, BETA = 1 / 8, 1 / 4  # RFC 6298's gains for the mean and the deviation


class RoundTrip:
    """Smoothed round-trip time of one device's fetches, and the time-out it gives."""

    def __init__(self, configured_s: float) -> None:
        self.configured_s = configured_s
        self.srtt: float | None = None
        self.rttvar = 0.0
        self.samples = 0
        # req -> when, of the latest requests still unanswered (each req id is new, so a
        # late answer to one asked again still measures its own round trip)
        self._asked: dict[str, float] = {}

    def asked(self, req: str, now: float) -> None:
        """A fetch ``req`` went out at ``now``."""
        self._asked[req] = now
        if len(self._asked) > MAX_OPEN:
            del self._asked[next(iter(self._asked))]

    def answered(self, req: str, now: float) -> None:
        """A blob answering ``req`` arrived: the first one measures the round trip."""
        asked = self._asked.pop(req, None)
        if asked is None:
            return
        sample = max(0.0, now - asked)
        self.samples += 1
        if self.srtt is None:
            self.srtt, self.rttvar = sample, sample / 2
        else:
            self.rttvar = (1 - BETA) * self.rttvar + BETA * abs(self.srtt - sample)
            self.srtt = (1 - ALPHA) * self.srtt + ALPHA * sample

    def timeout(self) -> float:
        """Seconds without an answer before asking again."""
        if self.srtt is None:
            return self.configured_s
        rto = self.srtt + 4 * self.rttvar
        return min(max(rto, self.configured_s), MAX_TIMEOUT_FACTOR * self.configured_s)
