"""Points in time as an operator types them in a query: epoch seconds, ISO 8601, or
relative to now.

``1796551200``, ``2026-12-06T10:00:00Z`` (no zone: UTC), ``-10m`` / ``-2h`` / ``-1d``
(also ``s`` and ``w``), and ``now``. :func:`parse_instant` turns each into epoch seconds
and raises :class:`InstantError`, whose message names the accepted forms, for the rest.
"""

from __future__ import annotations

import math
import re
import time
from datetime import UTC, datetime

__all__ = ["FORMS", "InstantError", "parse_instant"]

FORMS = "epoch seconds (1796551200), ISO 8601 (2026-12-06T10:00:00Z) or relative (-10m, -2h, -1d)"
UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 7 * 86400.0}  # seconds each
_RELATIVE = re.compile(r"-(\d+(?:\.\d+)?)([smhdw])")


class InstantError(ValueError):
    """A value that is none of the accepted forms (``FORMS``)."""

    def __init__(self, name: str, value: str) -> None:
        super().__init__(f"{name}: {value[:64]!r} is not a time: give {FORMS}")
        self.name = name
        self.value = value


def parse_instant(name: str, value: str | None, now: float | None = None) -> float | None:
    """``value`` in epoch seconds (None stays None); ``name`` is the parameter, for errors.

    Raises:
        InstantError: not one of the accepted forms, or before 1970.
    """
    if value is None:
        return None
    text = value.strip()
    now = time.time() if now is None else now
    if text == "now":
        return now
    if m := _RELATIVE.fullmatch(text):
        return now - float(m[1]) * UNITS[m[2]]
    try:
        seconds = float(text)
    except ValueError:
        seconds = _iso(name, value, text)
    if not math.isfinite(seconds) or seconds < 0:
        raise InstantError(name, value)
    return seconds


def _iso(name: str, value: str, text: str) -> float:
    try:
        when = datetime.fromisoformat(text)
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        return when.timestamp()
    except (ValueError, OverflowError) as e:  # not ISO 8601, or out of datetime's range
        raise InstantError(name, value) from e
