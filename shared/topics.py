"""Topics: ``ef/v1/dev/{device_id}/{kind}`` (DESIGN §3, docs/protocol.md).

Which kinds exist, which side publishes each, and which message types each carries.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Final

from shared.protocol_error import ProtocolError

ROOT: Final = "ef/v1/dev"
# Fan-out (docs/protocol.md "Fan-out"): the hub publishes a target's chunks once on
# ``ef/v1/fan/{key}/blob``, which every device may read and none may write (the ACL).
FANOUT_ROOT: Final = "ef/v1/fan"
FANOUT_REQ: Final = "fan"  # the ``req`` of a fanned-out chunk's header
_FANOUT_KEY = re.compile(r"[0-9a-f]{8,64}")

KINDS: Final = (
    "state",
    "events",
    "telemetry",
    "drift",
    "fetch",
    "cmd",
    "blob",
    "capture",  # data capture status and the upload manifest (JSON, docs/capture.md)
    "upload",  # data capture chunks (binary, not an envelope)
    "renew",  # certificate renewal requests (shared/renewal.py, docs/protocol.md)
    "cert",  # the hub's renewal answers: a new certificate and CA bundle, or a refusal
)
DEVICE_TO_HUB: Final = frozenset(
    {"state", "events", "telemetry", "drift", "fetch", "capture", "upload", "renew"}
)
BINARY_DEVICE_TO_HUB: Final = frozenset({"upload"})  # raw chunks: no JSON type allowed
HUB_TO_DEVICE: Final = frozenset({"cmd", "blob", "cert"})
UNSIGNED_COMMANDS: Final = frozenset({"upload_ask", "upload_done"})  # on cmd, not signed

# Message types allowed on each topic kind.
TOPIC_TYPES: Final[Mapping[str, frozenset[str]]] = {
    "state": frozenset({"state"}),
    "events": frozenset({"event"}),
    "telemetry": frozenset({"telemetry"}),
    "drift": frozenset({"drift"}),
    "fetch": frozenset({"fetch_meta", "fetch_chunks"}),
    # upload_ask / upload_done: the hub's plain (unsigned) requests about a capture
    # upload, which the ACL lets only the hub write (docs/capture.md, ADR 0039)
    "cmd": frozenset({"deploy", "rollback", "capture", "upload_ask", "upload_done"}),
    "capture": frozenset({"capture_status", "upload_manifest"}),
    "upload": frozenset(),  # binary chunks only (decode_upload_chunk)
    "renew": frozenset({"renew_request"}),
    "cert": frozenset({"renew_answer", "renew_hint"}),
}

_DEVICE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")  # fullmatch: no "\n" at the end


def is_device_id(device_id: str) -> bool:
    """Whether ``device_id`` may name a device (and so a topic level)."""
    return isinstance(device_id, str) and bool(_DEVICE_ID.fullmatch(device_id))


def topic(device_id: str, kind: str) -> str:
    """The topic of one kind of message for one device."""
    if kind not in KINDS:
        raise ValueError(f"unknown topic kind {kind!r}")
    if not is_device_id(device_id):
        raise ValueError(f"invalid device id {device_id!r}")
    return f"{ROOT}/{device_id}/{kind}"


def parse_topic(name: str) -> tuple[str, str]:
    """Split ``ef/v1/dev/{id}/{kind}`` into ``(id, kind)``.

    Raises:
        ProtocolError: reason ``bad_topic``.
    """
    parts = name.split("/")
    if len(parts) != 5 or "/".join(parts[:3]) != ROOT:
        raise ProtocolError("bad_topic", f"not under {ROOT}/{{id}}/{{kind}}: {name!r}")
    device_id, kind = parts[3], parts[4]
    if kind not in KINDS or not is_device_id(device_id):
        raise ProtocolError("bad_topic", f"unknown kind or invalid id: {name!r}")
    return device_id, kind


def fanout_topic(key: str) -> str:
    """The fan-out topic of one round key (lower-case hex, 8..64 digits)."""
    if not isinstance(key, str) or not _FANOUT_KEY.fullmatch(key):
        raise ValueError(f"invalid fan-out key {key!r}")
    return f"{FANOUT_ROOT}/{key}/blob"


def is_fanout_topic(name: object) -> bool:
    """Whether ``name`` is a fan-out topic (what a deploy command may ask a device to read)."""
    if not isinstance(name, str):
        return False
    parts = name.split("/")
    return (
        len(parts) == 5
        and "/".join(parts[:3]) == FANOUT_ROOT
        and parts[4] == "blob"
        and bool(_FANOUT_KEY.fullmatch(parts[3]))
    )
