"""The agent's link to its broker as an operator sees it: logged once per change, and
queried by ``GET /v1/status``.

paho reconnects by itself (``reconnect_delay_set(min, max)``: it waits ``min`` seconds
after a failure, doubles the wait after each failure that follows, up to ``max``, and
starts again at ``min`` once connected). :class:`ConnectionLog` follows the same
progression so that it can say when the next attempt comes, and logs:

- ``connected to URL`` (INFO), with how long it was down and how many attempts failed;
- ``lost the connection to URL (why); retrying in N s`` (WARNING);
- ``cannot connect to URL (why); retrying in N s (attempt k; backoff 1..60 s)`` (WARNING)
  for the first failed attempt after a change, or when the reason changes; the same
  failure again only once every :data:`REPEAT_LOG_S` (``still cannot connect ...``),
  the attempts in between at DEBUG;
- the same ``cannot connect`` line at ERROR when the broker answered with a refusal
  (``refused: Not authorized``: a certificate or an ACL a person must fix).

Thread safety: paho's thread reports, the endpoint's threads read; one lock.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

log = logging.getLogger("agent.connection")

REPEAT_LOG_S = 60.0  # seconds between two log lines about the same failure repeating


class ConnectionLog:
    """What the daemon knows about its broker link.

    Args:
        url: the broker, as the config names it.
        min_delay_s / max_delay_s: paho's reconnect backoff (``reconnect_delay_set``).
        clock: wall-clock seconds (tests may pass their own).
    """

    def __init__(
        self,
        url: str,
        min_delay_s: float = 1.0,
        max_delay_s: float = 60.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.url = url
        self.min_delay_s = min_delay_s
        self.max_delay_s = max_delay_s
        self.clock = clock
        self._lock = threading.Lock()
        self.connected = False
        self.since = clock()  # when ``connected`` last changed (or the agent started)
        self.retries = 0  # failed attempts since the last successful connection
        self.last_error: str | None = None
        self._logged_error: str | None = None  # the failure the log last told
        self._delay: float | None = None  # paho's current backoff; None: the next is min
        self._next_attempt: float | None = None
        self._last_logged = 0.0  # when a repeated failure was last logged
        self._connections = 0
        self._stopping = False

    # ------------------------------------------------------------- paho's reports

    def attempt_failed(self, error: str) -> None:
        """A connection attempt failed before the broker answered (refused, timeout, DNS)."""
        with self._lock:
            self._failed(error)

    def _failed(self, error: str) -> None:
        delay = self._backoff()
        self.retries += 1
        self.last_error = error
        now = self.clock()
        if error != self._logged_error:
            self._logged_error, self._last_logged = error, now
            refused = error.startswith("refused")  # a certificate, an ACL: a person must act
            log.log(
                logging.ERROR if refused else logging.WARNING,
                "cannot connect to %s (%s); retrying in %.0f s (attempt %d; backoff %.0f..%.0f s)",
                self.url,
                error,
                delay,
                self.retries,
                self.min_delay_s,
                self.max_delay_s,
            )
        elif now - self._last_logged >= REPEAT_LOG_S:
            self._last_logged = now
            log.warning(
                "still cannot connect to %s (%s): %d attempts in %.0f s; retrying in %.0f s",
                self.url,
                error,
                self.retries,
                now - self.since,
                delay,
            )
        else:
            log.debug("cannot connect to %s (%s); retrying in %.0f s", self.url, error, delay)

    def refused(self, reason: str) -> None:
        """The broker answered the CONNECT with a refusal (CONNACK failure). paho closes
        the socket and reports a disconnect next: that ends the attempt (and logs it)."""
        with self._lock:
            self.last_error = f"refused: {reason}"

    def up(self) -> None:
        """The broker accepted the connection."""
        with self._lock:
            now = self.clock()
            self._connections += 1
            if self._connections == 1 and self.retries == 0:
                log.info("connected to %s", self.url)
            else:
                log.info(
                    "connected to %s (after %.0f s down, %d failed attempts)",
                    self.url,
                    now - self.since,
                    self.retries,
                )
            self.connected, self.since = True, now
            self.retries, self.last_error, self._logged_error = 0, None, None
            self._delay, self._next_attempt = None, None

    def down(self, reason: str) -> None:
        """The link closed (paho's ``on_disconnect``): lost, or a refused attempt ended."""
        with self._lock:
            if self._stopping:
                self.connected = False
                return
            if not self.connected:  # an attempt ended before it was accepted
                refusal = self.last_error if (self.last_error or "").startswith("refused") else None
                self._failed(refusal or reason)
                return
            self.connected, self.since = False, self.clock()
            self.last_error = self._logged_error = reason
            delay = self._backoff()
            self._last_logged = self.since
            log.warning(
                "lost the connection to %s (%s); retrying in %.0f s", self.url, reason, delay
            )

    def stopped(self) -> None:
        """The daemon closed the link itself."""
        with self._lock:
            if self.connected:
                log.info("disconnecting from %s (stopping)", self.url)
            self._stopping = True
            self.connected, self._next_attempt = False, None

    # ------------------------------------------------------------- reading

    def status(self) -> dict[str, Any]:
        """The ``connection`` part of ``GET /v1/status``."""
        with self._lock:
            now = self.clock()
            next_in = None if self._next_attempt is None else max(0.0, self._next_attempt - now)
            return {
                "connected": self.connected,
                "broker": self.url,
                "since": _iso(self.since),
                "for_s": round(now - self.since, 1),
                "retries": self.retries,
                "last_error": self.last_error,
                "next_attempt_in_s": None if next_in is None else round(next_in, 1),
            }

    def _backoff(self) -> float:
        """paho's wait before its next attempt, advanced as paho advances it."""
        if self._delay is None:
            self._delay = self.min_delay_s
        else:
            self._delay = min(self._delay * 2, self.max_delay_s)
        self._next_attempt = self.clock() + self._delay
        return self._delay


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
