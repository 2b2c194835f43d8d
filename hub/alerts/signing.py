"""The webhook signature: HMAC-SHA256 over the timestamp and the body.

The hub sends ``X-Edgefleet-Timestamp: <unix seconds>`` and ``X-Edgefleet-Signature:
sha256=<hex>``, the hex HMAC-SHA256 of ``f"{timestamp}.".encode() + body`` keyed with the
receiver's secret. A receiver recomputes it over the raw body it got, compares in constant
time, and refuses a timestamp older than a few minutes (a replay); :func:`verify` is that
check, and docs/alerts.md shows it standalone.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Mapping
from typing import Final

from hub.alerts.errors import SignatureError

__all__ = ["SIGNATURE_HEADER", "TIMESTAMP_HEADER", "TOLERANCE_S", "sign", "signature", "verify"]

TIMESTAMP_HEADER: Final = "X-Edgefleet-Timestamp"
SIGNATURE_HEADER: Final = "X-Edgefleet-Signature"
TOLERANCE_S: Final = 300.0  # seconds a receiver accepts a timestamp off its clock


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """``sha256=<hex>`` of the HMAC-SHA256 of ``"{timestamp}." + body``."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"sha256={mac.hexdigest()}"


def sign(secret: str, body: bytes, timestamp: int | None = None) -> dict[str, str]:
    """The two headers that sign ``body`` now (or at ``timestamp``)."""
    ts = int(time.time()) if timestamp is None else timestamp
    return {TIMESTAMP_HEADER: str(ts), SIGNATURE_HEADER: signature(secret, ts, body)}


def verify(
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    now: float | None = None,
    tolerance_s: float = TOLERANCE_S,
) -> None:
    """Check a webhook as a receiver would.

    Args:
        headers: the request's headers (looked up case-insensitively).

    Raises:
        SignatureError: a header is missing or malformed, the timestamp is more than
            ``tolerance_s`` off ``now``, or the signature does not match.
    """
    lower = {k.lower(): v for k, v in headers.items()}
    ts_text, sig = lower.get(TIMESTAMP_HEADER.lower()), lower.get(SIGNATURE_HEADER.lower())
    if ts_text is None or sig is None:
        raise SignatureError("missing", "no timestamp or signature header")
    try:
        ts = int(ts_text)
    except ValueError as e:
        raise SignatureError("malformed", f"timestamp {ts_text[:20]!r} is not an integer") from e
    now = time.time() if now is None else now
    if abs(now - ts) > tolerance_s:
        raise SignatureError("stale", f"timestamp {ts} is {now - ts:.0f} s off: a replay?")
    if not hmac.compare_digest(signature(secret, ts, body), sig):
        raise SignatureError("mismatch", "the signature does not match the body")
