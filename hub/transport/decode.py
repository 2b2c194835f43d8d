"""Validate one device-to-hub message: the one decoder every consumer of device messages
uses (the hub's link, hub/transport/inbound.py, and the ingest workers' fast subscriber),
so they accept and refuse the same things."""

from __future__ import annotations

import functools
import logging
from collections import Counter

from shared import protocol
from shared.protocol import ProtocolError

log = logging.getLogger(__name__)

TOPIC_CACHE_SIZE = 2**16  # topics remembered parsed (~0.3 KB each): a fleet's busiest ones
# the same few topics recur for every message of a device; a bad one is not cached (raises)
_parse_topic = functools.lru_cache(maxsize=TOPIC_CACHE_SIZE)(protocol.parse_topic)


def decode_device_message(
    topic: str, payload: bytes, revoked: frozenset[str] = frozenset()
) -> tuple[str, str, protocol.Message | protocol.UploadChunk]:
    """Validate one device-to-hub message: ``(device id, topic kind, message)``.

    A binary chunk on ``upload`` decodes to an ``UploadChunk``; anything else must be an
    envelope of a type its topic allows.

    Raises:
        ProtocolError: a bad topic or payload, or a revoked device, with its reason.
    """
    device_id, kind = _parse_topic(topic)
    if kind not in protocol.DEVICE_TO_HUB:
        raise ProtocolError("unexpected_topic", topic)
    if device_id in revoked:
        raise ProtocolError("revoked_device", f"{device_id} is revoked")
    if kind == "upload" and payload[:4] == protocol.UPLOAD_MAGIC:
        return device_id, kind, protocol.decode_upload_chunk(payload)
    # (JSON on `upload` is refused here: that topic allows no message type)
    return device_id, kind, protocol.decode(payload, expect=protocol.TOPIC_TYPES[kind])


def count_drop(dropped: Counter[str], reason: str, detail: str) -> None:
    """Count a dropped device message; log the first of each reason (the rest are counted)."""
    if dropped[reason] == 0:
        log.warning("hub: dropped a message (%s): %s (further ones are counted)", reason, detail)
    dropped[reason] += 1
