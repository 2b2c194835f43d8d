"""What the hub asks devices about their capture uploads, and what it tells them (ADR 0039).

The hub asks a device again for what its upload lacks: the chunks that did not come, or
the manifest itself when a device's capture should have ended and no manifest came (it
was lost with a broker restart). It asks after a quiet interval, backing off (1, 2, 4,
8 quiet intervals), a bounded number of times without anything coming; and it tells the
device the outcome of its upload (``upload_done``) so that it deletes its copy. Both are
plain requests on the device's own ``cmd`` topic, which only the hub may write (the
broker's ACL), and name only that device's own capture: nothing to sign (ADR 0039).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from hub.ml.data.capture_uploads import MAX_ASK_BACKOFF, Upload

__all__ = ["MAX_UPLOAD_ASKS", "UPLOAD_QUIET_S", "SendRequest", "UploadAsks"]

log = logging.getLogger(__name__)

UPLOAD_QUIET_S: Final = 10.0  # seconds without a chunk before the hub asks for the rest
MAX_UPLOAD_ASKS: Final = 8  # asks with nothing coming, then the upload fails
MAX_ASKED_CHUNKS: Final = 256  # chunk indices in one ask (the protocol's bound)
SendRequest = Callable[[str, str, Mapping[str, Any]], None]  # (device, type, body)
Key = tuple[str, str]  # (capture id, device id)


@dataclass
class _ManifestAsk:
    asks: int
    next_ask: float


class UploadAsks:
    """The hub's asks and outcome notices to devices, and when each is due.

    Not thread-safe: its owner (hub/ml/data/captures.py ``Datasets``) holds its lock.

    Args:
        send_request: publishes a plain request on a device's ``cmd`` topic; None: the
            hub never asks (and never tells).
        counts: where ``upload_asks``, ``manifest_asks`` are counted.
    """

    def __init__(self, send_request: SendRequest | None, counts: Counter[str]) -> None:
        self.send_request = send_request
        self.counts = counts
        self.quiet_s = UPLOAD_QUIET_S
        self.max_asks = MAX_UPLOAD_ASKS
        self._manifests: dict[Key, _ManifestAsk] = {}

    def exhausted(self, upload: Upload) -> bool:
        """Whether ``upload`` had its asks, with no chunk coming since."""
        return upload.asks >= self.max_asks

    def chunks(self, key: Key, upload: Upload, now: float) -> None:
        """Ask the device for (up to 256 of) the chunks its upload lacks."""
        missing = upload.missing()
        if self.send_request is None or not missing:
            return
        upload.asked(now, self.quiet_s)
        self.counts["upload_asks"] += 1
        log.info("capture %s: asking %s for %d chunk(s)", key[0], key[1], len(missing))
        body = {"capture": key[0], "chunks": missing[:MAX_ASKED_CHUNKS]}
        self.send_request(key[1], "upload_ask", body)

    def manifest(self, key: Key, due_from: float, now: float) -> None:
        """Ask for the manifest of an upload that should have started by ``due_from``
        (plus a quiet interval) and has not; at most ``max_asks`` times, backing off."""
        state = self._manifests.get(key)
        if state is None:
            state = self._manifests[key] = _ManifestAsk(0, due_from + self.quiet_s)
        if self.send_request is None or now < state.next_ask or state.asks >= self.max_asks:
            return
        state.asks += 1
        state.next_ask = now + self.quiet_s * min(2**state.asks, MAX_ASK_BACKOFF)
        self.counts["manifest_asks"] += 1
        log.info("capture %s: asking %s for its upload's manifest", key[0], key[1])
        self.send_request(key[1], "upload_ask", {"capture": key[0]})

    def done(self, key: Key, status: str, reason: str | None = None) -> None:
        """Tell the device its upload has an outcome: it may delete its copy."""
        self._manifests.pop(key, None)
        if self.send_request is None:
            return
        body = {"capture": key[0], "status": "verified" if status == "verified" else "failed"}
        if reason:
            body["reason"] = reason
        self.send_request(key[1], "upload_done", body)

    def forget(self, key: Key) -> None:
        """The manifest came (or the capture ended): no more asks for it."""
        self._manifests.pop(key, None)
