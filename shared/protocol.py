"""The hub–agent wire protocol (DESIGN §3, docs/protocol.md): its envelope, and its public face.

Topics: ``ef/v1/dev/{device_id}/{kind}``. Every JSON message is an envelope
``{"v": 1, "type": ..., "id": ..., "ts": ..., "body": {...}}``; blobs (``blob`` topic)
are a small binary header followed by raw bytes. :func:`decode` validates an envelope
and the body of its type and raises :class:`ProtocolError` with a ``reason`` naming
what is wrong, so a receiver can count and drop bad input without crashing.

This module holds the envelope (:func:`encode`, :func:`decode`); the other parts live
beside it, and callers import every public name from here::

    shared/protocol_error.py  ProtocolError and its reasons
    shared/topics.py          topic names, who publishes each kind, the types each carries
    shared/bodies.py          the schema of each message type's body, and its limits
    shared/frames.py          binary messages: blobs and upload chunks

Exceptions::

    ProtocolError(reason, detail)
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from shared.bodies import (
    BODY_SCHEMAS,
    LATENCY_BUCKETS,
    MAX_CAPTURE_ROWS,
    MAX_CAPTURE_S,
    MAX_CAPTURE_WINDOWS,
    MAX_CHUNK_BYTES,
    MAX_UINT,
    MAX_UPLOAD_ARRAYS,
    MAX_UPLOAD_BYTES,
    STAGES,
    TERMINAL_STAGES,
    UPLOAD_DTYPES,
    Check,
    is_number,
    is_text,
    validate_body,
)
from shared.frames import (
    BLOB_MAGIC,
    MAX_BLOB_BYTES,
    MAX_BLOB_HEADER,
    UPLOAD_MAGIC,
    Blob,
    UploadChunk,
    decode_blob,
    decode_upload_chunk,
    encode_blob,
    encode_meta_blob,
    encode_upload_chunk,
    split_meta_blob,
)
from shared.protocol_error import ProtocolError
from shared.topics import (
    BINARY_DEVICE_TO_HUB,
    DEVICE_TO_HUB,
    FANOUT_REQ,
    FANOUT_ROOT,
    HUB_TO_DEVICE,
    KINDS,
    ROOT,
    TOPIC_TYPES,
    UNSIGNED_COMMANDS,
    fanout_topic,
    is_device_id,
    is_fanout_topic,
    parse_topic,
    topic,
)

__all__ = [
    "BINARY_DEVICE_TO_HUB",
    "BLOB_MAGIC",
    "BODY_SCHEMAS",
    "DEVICE_TO_HUB",
    "FANOUT_REQ",
    "FANOUT_ROOT",
    "HUB_TO_DEVICE",
    "KINDS",
    "LATENCY_BUCKETS",
    "MAX_BLOB_BYTES",
    "MAX_BLOB_HEADER",
    "MAX_CAPTURE_ROWS",
    "MAX_CAPTURE_S",
    "MAX_CAPTURE_WINDOWS",
    "MAX_CHUNK_BYTES",
    "MAX_JSON_BYTES",
    "MAX_UINT",
    "MAX_UPLOAD_ARRAYS",
    "MAX_UPLOAD_BYTES",
    "ROOT",
    "STAGES",
    "TERMINAL_STAGES",
    "TOPIC_TYPES",
    "UNSIGNED_COMMANDS",
    "UPLOAD_DTYPES",
    "UPLOAD_MAGIC",
    "VERSION",
    "Blob",
    "Check",
    "Message",
    "ProtocolError",
    "UploadChunk",
    "decode",
    "decode_blob",
    "decode_upload_chunk",
    "encode",
    "encode_blob",
    "encode_meta_blob",
    "encode_upload_chunk",
    "fanout_topic",
    "is_device_id",
    "is_fanout_topic",
    "is_number",
    "new_id",
    "parse_topic",
    "split_meta_blob",
    "topic",
]

VERSION: Final = 1
MAX_JSON_BYTES: Final = 256 * 2**10  # bytes; larger JSON messages are refused

# The codec stays in this module rather than beside the other parts: tests substitute
# new_id and _fast_loads on shared.protocol, so encode and decode must look them up here.
_json_decode = json.JSONDecoder().decode  # json.loads(str) with default options
_fast_loads: Callable[[bytes], Any] | None
try:  # the hub's extra installs orjson: ~4x faster on a telemetry envelope
    from orjson import JSONDecodeError as _FastJSONError
    from orjson import loads as _fast_loads
except ImportError:  # a device: the standard library only
    _fast_loads = None
_NOT_PARSED: Final = object()
# A run of 19+ digits may not fit 64 bits: json decides. Found with two C passes (a
# regex scan costs ~5 µs on a telemetry message; this ~0.3).
_DIGITS_AS_ZERO: Final = bytes(48 if 48 <= b <= 57 else 46 for b in range(256))  # 0-9 -> "0"
_LONG_RUN: Final = b"0" * 19


def _long_digits(payload: bytes) -> bool:
    return _LONG_RUN in payload.translate(_DIGITS_AS_ZERO)


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
    validate_body(msg_type, body)
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
    env = _parse_json(payload)
    if not isinstance(env, dict):
        raise ProtocolError("bad_envelope", "not a JSON object")
    if type(env.get("v")) is not int or env.get("v") != VERSION:
        raise ProtocolError("bad_version", f"v={env.get('v')!r}, this side speaks {VERSION}")
    msg_type, msg_id, body = env.get("type"), env.get("id"), env.get("body")
    ts: float = env.get("ts")  # type: ignore[assignment]  # checked below
    if not isinstance(msg_type, str) or msg_type not in BODY_SCHEMAS:
        raise ProtocolError("bad_envelope", f"unknown type {msg_type!r}")
    if expect is not None and msg_type not in expect:
        raise ProtocolError("unexpected_type", f"{msg_type!r} not allowed here")
    if not isinstance(msg_id, str) or not 0 < len(msg_id) <= 64 or not is_text(msg_id):
        raise ProtocolError("bad_envelope", "id must be a non-empty string of <= 64 chars")
    if not is_number(ts):
        raise ProtocolError("bad_envelope", "ts must be a number (seconds since the epoch)")
    if not isinstance(body, dict):
        raise ProtocolError("bad_envelope", "body must be an object")
    validate_body(msg_type, body)
    return Message(msg_type, msg_id, float(ts), body)  # ts checked by is_number


def _parse_json(payload: bytes) -> Any:
    """The JSON value of ``payload``, as ``json.loads`` would parse it.

    Raises:
        ProtocolError: reason ``bad_json``.
    """
    env: Any = _NOT_PARSED
    if _fast_loads is not None and not _long_digits(payload):
        # orjson accepts a subset of what json accepts (strict RFC 8259: no NaN, no
        # lone surrogates) and parses it to the same values, but for integers beyond
        # 64 bits (a float to it): those, and anything it refuses, go to json below,
        # which decides, so the outcome is the same (tests/test_fuzz.py checks)
        try:
            env = _fast_loads(payload)
        except _FastJSONError:
            env = _NOT_PARSED
    try:
        if env is not _NOT_PARSED:
            pass
        elif payload[:1] == b"{" and payload[1:2] != b"\x00":
            # what json.loads(bytes) does for UTF-8 (no BOM, not UTF-16/32), minus
            # its encoding detection (~0.5 µs of ~10 for a telemetry message)
            env = _json_decode(payload.decode("utf-8", "surrogatepass"))
        else:
            env = json.loads(payload)
    except (ValueError, RecursionError) as e:  # JSONDecodeError, UnicodeDecodeError, and
        # the int-digits limit (a number of more than 4300 digits) are ValueErrors
        raise ProtocolError("bad_json", str(e)[:200]) from e
    return env
