"""The hub–agent wire protocol (DESIGN §3, docs/protocol.md).

Topics: ``ef/v1/dev/{device_id}/{kind}``. Every JSON message is an envelope
``{"v": 1, "type": ..., "id": ..., "ts": ..., "body": {...}}``; blobs (``blob`` topic)
are a small binary header followed by raw bytes. :func:`decode` validates an envelope
and the body of its type and raises :class:`ProtocolError` with a ``reason`` naming
what is wrong, so a receiver can count and drop bad input without crashing.

Exceptions::

    ProtocolError(reason, detail)
"""

from __future__ import annotations

import json
import re
import struct
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

VERSION: Final = 1
ROOT: Final = "ef/v1/dev"
MAX_JSON_BYTES: Final = 256 * 2**10  # bytes; larger JSON messages are refused
MAX_BLOB_BYTES: Final = 1 * 2**20  # bytes; a chunk (<=64 KiB) or a metadata batch
MAX_CHUNK_BYTES: Final = 64 * 2**10  # bytes (DESIGN §8: keeps the broker's memory flat)

KINDS: Final = ("state", "events", "telemetry", "drift", "fetch", "cmd", "blob")
DEVICE_TO_HUB: Final = frozenset({"state", "events", "telemetry", "drift", "fetch"})
HUB_TO_DEVICE: Final = frozenset({"cmd", "blob"})

_DEVICE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")

# Deployment stages a device reports on `events`, in the order they happen.
STAGES: Final = (
    "received",
    "downloading",
    "verified",
    "staged",
    "activated",
    "healthy",
    "rolled_back",
    "failed",
)
TERMINAL_STAGES: Final = frozenset({"healthy", "rolled_back", "failed"})


class ProtocolError(ValueError):
    """A message that does not follow the protocol.

    Attributes:
        reason: a stable, short code (``bad_json``, ``bad_envelope``, ``bad_body``, ...).
        detail: what exactly was wrong, for the log line.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def is_device_id(device_id: str) -> bool:
    return bool(_DEVICE_ID.match(device_id))


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


# --------------------------------------------------------------------------- envelopes


@dataclass(frozen=True)
class Message:
    """A validated envelope."""

    type: str
    id: str
    ts: float
    body: Mapping[str, Any]


def new_id() -> str:
    return uuid.uuid4().hex


def encode(
    msg_type: str, body: Mapping[str, Any], *, ts: float, msg_id: str | None = None
) -> bytes:
    """Serialise an envelope; the body is validated first so a sender cannot emit junk.

    Raises:
        ProtocolError: the body does not match its type.
    """
    _validate_body(msg_type, body)
    env = {"v": VERSION, "type": msg_type, "id": msg_id or new_id(), "ts": ts, "body": body}
    data = json.dumps(env, separators=(",", ":"), allow_nan=False).encode()
    if len(data) > MAX_JSON_BYTES:
        raise ProtocolError("too_large", f"{len(data)} bytes > {MAX_JSON_BYTES}")
    return data


def decode(payload: bytes, *, expect: frozenset[str] | None = None) -> Message:
    """Parse and validate an envelope.

    Args:
        payload: the raw MQTT payload.
        expect: the message types allowed on the topic it came from.

    Raises:
        ProtocolError: anything wrong, with a stable ``reason``.
    """
    if len(payload) > MAX_JSON_BYTES:
        raise ProtocolError("too_large", f"{len(payload)} bytes > {MAX_JSON_BYTES}")
    try:
        env = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise ProtocolError("bad_json", str(e)[:200]) from e
    if not isinstance(env, dict):
        raise ProtocolError("bad_envelope", "not a JSON object")
    if env.get("v") != VERSION:
        raise ProtocolError("bad_version", f"v={env.get('v')!r}, this side speaks {VERSION}")
    msg_type, msg_id, body = env.get("type"), env.get("id"), env.get("body")
    ts: float = env.get("ts")  # type: ignore[assignment]  # checked below
    if not isinstance(msg_type, str) or msg_type not in BODY_SCHEMAS:
        raise ProtocolError("bad_envelope", f"unknown type {msg_type!r}")
    if expect is not None and msg_type not in expect:
        raise ProtocolError("unexpected_type", f"{msg_type!r} not allowed here")
    if not isinstance(msg_id, str) or not 0 < len(msg_id) <= 64:
        raise ProtocolError("bad_envelope", "id must be a non-empty string of <= 64 chars")
    if not _is_number(ts):
        raise ProtocolError("bad_envelope", "ts must be a number (seconds since the epoch)")
    if not isinstance(body, dict):
        raise ProtocolError("bad_envelope", "body must be an object")
    _validate_body(msg_type, body)
    return Message(msg_type, msg_id, float(ts), body)  # ts checked by _is_number


# Message types allowed on each topic kind.
TOPIC_TYPES: Final[Mapping[str, frozenset[str]]] = {
    "state": frozenset({"state"}),
    "events": frozenset({"event"}),
    "telemetry": frozenset({"telemetry"}),
    "drift": frozenset({"drift"}),
    "fetch": frozenset({"fetch_meta", "fetch_chunks"}),
    "cmd": frozenset({"deploy", "rollback"}),
}


# --------------------------------------------------------------------------- body schemas
# A schema maps a field to (checker, required). Checkers are tiny predicates: the messages
# are small and frequent, so this stays cheaper than a general validation library.

Check = Callable[[Any], bool]


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and x == x  # not NaN


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _nonneg_int(x: Any) -> bool:
    return _is_int(x) and x >= 0


def _short_str(x: Any) -> bool:
    return isinstance(x, str) and 0 < len(x) <= 256


def _opt_str(x: Any) -> bool:
    return x is None or (isinstance(x, str) and len(x) <= 4096)


def _one_of(*values: str) -> Check:
    return lambda x: x in values


def _models_map(x: Any) -> bool:
    return isinstance(x, dict) and all(
        _short_str(k) and isinstance(v, dict) and _nonneg_int(v.get("version"))
        for k, v in x.items()
    )


def _latency(x: Any) -> bool:
    return isinstance(x, dict) and all(_is_number(x.get(k)) for k in ("p50", "p95", "p99"))


def _chunk_list(x: Any) -> bool:
    return (
        isinstance(x, list) and 0 < len(x) <= 256 and all(_nonneg_int(i) and i < 2**20 for i in x)
    )


def _obj(x: Any) -> bool:
    return isinstance(x, dict)


def _opt_number(x: Any) -> bool:
    return x is None or _is_number(x)


BODY_SCHEMAS: Final[Mapping[str, Mapping[str, tuple[Check, bool]]]] = {
    "state": {
        "status": (_one_of("online", "offline"), True),
        "device_class": (_short_str, False),
        "runtime": (_short_str, False),
        "agent_version": (_short_str, False),
        "root_version": (_nonneg_int, False),
        "models": (_models_map, False),
    },
    "event": {
        "deployment": (_short_str, True),
        "model": (_short_str, True),
        "version": (_nonneg_int, True),
        "stage": (_one_of(*STAGES), True),
        "reason": (_opt_str, False),
        "detail": (_opt_str, False),
        "from_version": (lambda x: x is None or _nonneg_int(x), False),
    },
    "telemetry": {
        "seq": (_nonneg_int, True),
        "start": (_is_number, True),
        "end": (_is_number, True),
        "model": (_opt_str, False),
        "version": (lambda x: x is None or _nonneg_int(x), False),
        "count": (_nonneg_int, True),
        "errors": (_nonneg_int, True),
        "latency_us": (_latency, True),
        "labelled": (_nonneg_int, False),
        "correct": (_nonneg_int, False),
        "cpu_pct": (_opt_number, False),
        "rss_bytes": (lambda x: x is None or _nonneg_int(x), False),
    },
    "drift": {
        "seq": (_nonneg_int, True),
        "model": (_short_str, True),
        "version": (_nonneg_int, True),
        "sketch": (_obj, True),
    },
    "fetch_meta": {
        "req": (_short_str, True),
        "root_version": (_nonneg_int, True),
    },
    "fetch_chunks": {
        "req": (_short_str, True),
        "target": (_short_str, True),
        "chunks": (_chunk_list, True),
    },
    "deploy": {
        "deployment": (_short_str, True),
        "model": (_short_str, True),
        "version": (_nonneg_int, True),
        "target": (_short_str, True),
    },
    "rollback": {
        "deployment": (_short_str, True),
        "model": (_short_str, True),
        "version": (_nonneg_int, True),
    },
}


def _validate_body(msg_type: str, body: Mapping[str, Any]) -> None:
    schema = BODY_SCHEMAS.get(msg_type)
    if schema is None:
        raise ProtocolError("bad_envelope", f"unknown type {msg_type!r}")
    for field, (check, required) in schema.items():
        if field not in body:
            if required:
                raise ProtocolError("bad_body", f"{msg_type}: missing {field!r}")
            continue
        if not check(body[field]):
            raise ProtocolError("bad_body", f"{msg_type}: invalid {field!r}: {body[field]!r:.80}")


# --------------------------------------------------------------------------- blobs
# A blob is MAGIC, a big-endian u32 header length, a JSON header, then raw bytes.
#   chunk: {"kind": "chunk", "req": r, "target": name, "index": i}
#   meta:  {"kind": "meta", "req": r, "files": [[name, length], ...]}  (bytes concatenated)
#   error: {"kind": "error", "req": r, "reason": code, "detail": text}

BLOB_MAGIC: Final = b"EFB1"
_HDR = struct.Struct(">4sI")
MAX_BLOB_HEADER: Final = 16 * 2**10  # bytes


@dataclass(frozen=True)
class Blob:
    header: Mapping[str, Any]
    data: bytes

    @property
    def kind(self) -> str:
        return str(self.header["kind"])


def encode_blob(header: Mapping[str, Any], data: bytes = b"") -> bytes:
    head = json.dumps(header, separators=(",", ":")).encode()
    out = _HDR.pack(BLOB_MAGIC, len(head)) + head + data
    if len(out) > MAX_BLOB_BYTES:
        raise ProtocolError("too_large", f"blob of {len(out)} bytes > {MAX_BLOB_BYTES}")
    return out


def decode_blob(payload: bytes) -> Blob:
    """Parse a blob and check its header.

    Raises:
        ProtocolError: reason ``bad_blob`` (or ``too_large``).
    """
    if len(payload) > MAX_BLOB_BYTES:
        raise ProtocolError("too_large", f"blob of {len(payload)} bytes")
    if len(payload) < _HDR.size:
        raise ProtocolError("bad_blob", "shorter than its fixed header")
    magic, hlen = _HDR.unpack_from(payload)
    if magic != BLOB_MAGIC:
        raise ProtocolError("bad_blob", f"bad magic {magic!r}")
    if hlen > MAX_BLOB_HEADER or _HDR.size + hlen > len(payload):
        raise ProtocolError("bad_blob", f"header length {hlen} out of range")
    try:
        header = json.loads(payload[_HDR.size : _HDR.size + hlen])
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise ProtocolError("bad_blob", f"header is not JSON: {e}") from e
    data = payload[_HDR.size + hlen :]
    if not isinstance(header, dict) or not _short_str(header.get("req")):
        raise ProtocolError("bad_blob", "header must be an object with a 'req'")
    kind = header.get("kind")
    if kind == "chunk":
        if not (_short_str(header.get("target")) and _nonneg_int(header.get("index"))):
            raise ProtocolError("bad_blob", "chunk header needs 'target' and 'index'")
        if len(data) > MAX_CHUNK_BYTES:
            raise ProtocolError("bad_blob", f"chunk of {len(data)} bytes > {MAX_CHUNK_BYTES}")
    elif kind == "meta":
        files = header.get("files")
        if not (
            isinstance(files, list)
            and all(
                isinstance(f, list) and len(f) == 2 and _short_str(f[0]) and _nonneg_int(f[1])
                for f in files
            )
            and sum(f[1] for f in files) == len(data)
        ):
            raise ProtocolError("bad_blob", "meta header 'files' does not match its data")
    elif kind == "error":
        if not _short_str(header.get("reason")):
            raise ProtocolError("bad_blob", "error header needs a 'reason'")
    else:
        raise ProtocolError("bad_blob", f"unknown blob kind {kind!r}")
    return Blob(header, data)


def encode_meta_blob(req: str, files: list[tuple[str, bytes]]) -> bytes:
    """One blob carrying several metadata files (names and lengths in the header)."""
    header = {"kind": "meta", "req": req, "files": [[n, len(b)] for n, b in files]}
    return encode_blob(header, b"".join(b for _, b in files))


def split_meta_blob(blob: Blob) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    pos = 0
    for name, length in blob.header["files"]:
        out[name] = blob.data[pos : pos + length]
        pos += length
    return out
