"""What the selector loop (simulator/mqttloop.py) does when something raises.

A user callback or timer that raises is counted (``LoopStats.callback_errors``), logged
once per function (timers, threadsafe calls) or once per client and kind (paho
callbacks), and the loop goes on. Failures of the loop's own I/O on a client are logged
once per client and kind too. Everything is logged on the loop's logger.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from simulator.mqttclient import Counters, Session

__all__ = ["CallbackGuard"]


class CallbackGuard:
    """Counts and logs (once) the exceptions of callbacks; loop thread only."""

    def __init__(self, counters: Counters, log: logging.Logger) -> None:
        self._counters = counters
        self._log = log
        self._errors: dict[tuple[str, str], int] = {}  # (kind, function) -> exceptions

    def call(self, fn: Callable[[], None], kind: str) -> None:
        """Call ``fn``; an exception is counted and logged once per (kind, function)."""
        try:
            fn()
        except Exception:
            self._counters.callback_errors += 1
            key = (kind, getattr(fn, "__qualname__", repr(fn)))
            n = self._errors[key] = self._errors.get(key, 0) + 1
            if n == 1:
                self._log.exception("%s %s raised (logged once, counted in stats)", kind, key[1])

    def session_call(self, s: Session, kind: str, fn: Callable[[], None]) -> None:
        """Call a client's callback ``fn``; an exception is counted and logged once."""
        try:
            fn()
        except Exception:
            self.callback_failed(s, kind)

    def callback_failed(self, s: Session, kind: str) -> None:
        """A client's callback raised (call from its ``except`` block)."""
        self._counters.callback_errors += 1
        if self._count(s, kind) == 1:
            self._log.exception("%s: %s raised (logged once, counted in stats)", s.client_id, kind)

    def note(self, s: Session, kind: str, what: str) -> None:
        """Something went wrong for a client that is not an exception (a refused CONNACK)."""
        if self._count(s, kind) == 1:
            self._log.warning("%s: %s (logged once per client)", s.client_id, what)

    def internal(self, s: Session, kind: str, e: Exception) -> None:
        """The loop's own I/O on a client failed."""
        if self._count(s, kind) == 1:
            self._log.error("%s: %s failed (logged once per client)", s.client_id, kind, exc_info=e)

    @staticmethod
    def _count(s: Session, kind: str) -> int:
        if s.errors is None:
            s.errors = {}
        n = s.errors[kind] = s.errors.get(kind, 0) + 1
        return n
