"""Validate one device-to-hub message: the one decoder every consumer of device messages
uses (the hub's link, hub/transport/inbound.py, and the ingest workers' fast subscriber),
so they accept and refuse the same things."""

from __future__ import annotations

import functools
import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import Final

from shared import protocol
from shared.protocol import ProtocolError

log = logging.getLogger(__name__)

DATED_KINDS: Final = frozenset({"telemetry", "drift"})  # kept by their dates (retention)
MAX_CLOCK_SKEW_S: Final = 300.0  # seconds a device's clock may run ahead of the hub's
TOPIC_CACHE_SIZE = 2**16  # topics remembered parsed (~0.3 KB each): a fleet's busiest ones
# the same few topics recur for every message of a device; a bad one is not cached (raises)
_parse_topic = functools.lru_cache(maxsize=TOPIC_CACHE_SIZE)(protocol.parse_topic)


def decode_device_message(
    topic: str,
    payload: bytes,
    revoked: frozenset[str] = frozenset(),
    clock: Callable[[], float] = time.time,
) -> tuple[str, str, protocol.Message | protocol.UploadChunk]:
    """Validate one device-to-hub message: ``(device id, topic kind, message)``.

    A binary chunk on ``upload`` decodes to an ``UploadChunk``; anything else must be an
    envelope of a type its topic allows.

    Raises:
        ProtocolError: a bad topic or payload, a revoked device, or a telemetry or drift
            window dated more than ``MAX_CLOCK_SKEW_S`` ahead of the hub's clock.
    """
    device_id, kind = _parse_topic(topic)
    if kind not in protocol.DEVICE_TO_HUB:
        raise ProtocolError("unexpected_topic", topic)
    if device_id in revoked:
        raise ProtocolError("revoked_device", f"{device_id} is revoked")
    if kind == "upload" and payload[:4] == protocol.UPLOAD_MAGIC:
        return device_id, kind, protocol.decode_upload_chunk(payload)
    # (JSON on `upload` is refused here: that topic allows no message type)
    message = protocol.decode(payload, expect=protocol.TOPIC_TYPES[kind])
    if kind in DATED_KINDS:
        dated = max(message.ts, float(message.body.get("end", 0.0)))
        ahead = dated - clock()
        if ahead > MAX_CLOCK_SKEW_S:
            # A window dated in the future escapes retention for as long (issue 11, item 4).
            raise ProtocolError("future_window", f"{device_id} {kind} dated {ahead:.0f} s ahead")
    return device_id, kind, message


def count_drop(dropped: Counter[str], reason: str, detail: str) -> None:
    """Count a dropped device message; log the first of each reason (the rest are counted)."""
    if dropped[reason] == 0:
        log.warning("hub: dropped a message (%s): %s (further ones are counted)", reason, detail)
    dropped[reason] += 1
