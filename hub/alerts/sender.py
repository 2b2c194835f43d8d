"""One POST of one alert to one receiver: signed, timed, its answer judged, never raising.

The body is the Alertmanager payload (hub/alerts/payload.py) and the signature headers
(hub/alerts/signing.py); ``X-Edgefleet-Delivery`` carries the delivery's id, the same on
every retry, so a receiver that got a message twice (the hub stopped before it recorded
the answer) can tell. Redirects are not followed and the answer's body is not read.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Final

import httpx

from hub.alerts.signing import sign

__all__ = ["DELIVERY_HEADER", "Outcome", "post"]

DELIVERY_HEADER: Final = "X-Edgefleet-Delivery"
USER_AGENT: Final = "edgefleet-hub-alerts/1"
RETRY_STATUSES: Final = frozenset({408, 429})  # 4xx worth another try (and every 5xx)
ERROR_MAX: Final = 200  # characters of an error kept


@dataclass(frozen=True)
class Outcome:
    """What one try got: an HTTP status, or an error before one came."""

    http_status: int | None
    error: str | None
    duration_ms: float

    @property
    def delivered(self) -> bool:
        return self.http_status is not None and 200 <= self.http_status < 300

    @property
    def retryable(self) -> bool:
        """Worth trying again: no answer, a 5xx, 408 or 429."""
        status = self.http_status
        return status is None or status >= 500 or status in RETRY_STATUSES


def post(
    client: httpx.Client, url: str, secret: str, body: bytes, delivery_id: int, timeout_s: float
) -> Outcome:
    """POST ``body`` to ``url``, signed with ``secret``."""
    headers = {
        "content-type": "application/json",
        "user-agent": USER_AGENT,
        DELIVERY_HEADER: str(delivery_id),
        **sign(secret, body),
    }
    start = time.perf_counter()
    try:
        with client.stream(
            "POST", url, content=body, headers=headers, timeout=timeout_s, follow_redirects=False
        ) as response:
            status = response.status_code
    except httpx.HTTPError as e:
        return Outcome(None, _describe(e), _ms(start))
    return Outcome(status, None, _ms(start))


def _describe(e: httpx.HTTPError) -> str:
    """The error's kind and message, without the URL (it may carry a token)."""
    text = f"{type(e).__name__}: {e}"
    try:
        url = str(e.request.url)
    except RuntimeError:  # an error raised before a request was made
        url = ""
    return (text.replace(url, "<url>") if url else text)[:ERROR_MAX]


def _ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000, 2)
