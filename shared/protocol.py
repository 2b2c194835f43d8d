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
import math
import re
import struct
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from shared.drift import DriftError, DriftSketch
from shared.latency import N_BUCKETS

VERSION: Final = 1
ROOT: Final = "ef/v1/dev"
MAX_JSON_BYTES: Final = 256 * 2**10  # bytes; larger JSON messages are refused
MAX_BLOB_BYTES: Final = 1 * 2**20  # bytes; a chunk (<=64 KiB) or a metadata batch
MAX_CHUNK_BYTES: Final = 64 * 2**10  # bytes (DESIGN §8: keeps the broker's memory flat)

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
)
DEVICE_TO_HUB: Final = frozenset(
    {"state", "events", "telemetry", "drift", "fetch", "capture", "upload"}
)
BINARY_DEVICE_TO_HUB: Final = frozenset({"upload"})  # raw chunks: no JSON type allowed
HUB_TO_DEVICE: Final = frozenset({"cmd", "blob"})

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


_DEVICE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")  # fullmatch: no "\n" at the end

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
    "refused",  # a command the device would not act on (bad signature, expired, replayed)
)
TERMINAL_STAGES: Final = frozenset({"healthy", "rolled_back", "failed", "refused"})


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
    if not isinstance(msg_id, str) or not 0 < len(msg_id) <= 64 or not _text(msg_id):
        raise ProtocolError("bad_envelope", "id must be a non-empty string of <= 64 chars")
    if not is_number(ts):
        raise ProtocolError("bad_envelope", "ts must be a number (seconds since the epoch)")
    if not isinstance(body, dict):
        raise ProtocolError("bad_envelope", "body must be an object")
    _validate_body(msg_type, body)
    return Message(msg_type, msg_id, float(ts), body)  # ts checked by is_number


# Message types allowed on each topic kind.
TOPIC_TYPES: Final[Mapping[str, frozenset[str]]] = {
    "state": frozenset({"state"}),
    "events": frozenset({"event"}),
    "telemetry": frozenset({"telemetry"}),
    "drift": frozenset({"drift"}),
    "fetch": frozenset({"fetch_meta", "fetch_chunks"}),
    "cmd": frozenset({"deploy", "rollback", "capture"}),
    "capture": frozenset({"capture_status", "upload_manifest"}),
    "upload": frozenset(),  # binary chunks only (decode_upload_chunk)
}


# --------------------------------------------------------------------------- body schemas
# A schema maps a field to (checker, required). Checkers are tiny predicates: the messages
# are small and frequent, so this stays cheaper than a general validation library.

Check = Callable[[Any], bool]
MAX_UINT: Final = 2**63  # unsigned fields stay below it: a SQL BIGINT holds them
_SURROGATE: Final = re.compile("[\ud800-\udfff]")


def is_number(x: Any) -> bool:
    """A finite JSON number (not a bool, not NaN or infinite, and one a float can hold)."""
    if type(x) is float:  # the common case first: the hub checks ~10 numbers a message
        return math.isfinite(x)
    if not isinstance(x, (int, float)) or isinstance(x, bool):
        return False
    try:
        return math.isfinite(x)
    except OverflowError:  # an int beyond a float's range
        return False


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _nonneg_int(x: Any) -> bool:
    if type(x) is int:  # the common case first (bool is not int here)
        return 0 <= x < MAX_UINT
    return _is_int(x) and 0 <= x < MAX_UINT


def _text(x: str) -> bool:
    """No lone surrogates (JSON escapes can carry them; no database or UTF-8 can)."""
    return x.isascii() or not _SURROGATE.search(x)


def _short_str(x: Any) -> bool:
    return isinstance(x, str) and 0 < len(x) <= 256 and _text(x)


def _opt_str(x: Any) -> bool:
    return x is None or (isinstance(x, str) and len(x) <= 4096 and _text(x))


def _one_of(*values: str) -> Check:
    return lambda x: x in values


def _models_map(x: Any) -> bool:
    return isinstance(x, dict) and all(
        _short_str(k) and isinstance(v, dict) and _nonneg_int(v.get("version"))
        for k, v in x.items()
    )


def _last_event(x: Any) -> bool:
    """A state message's ``last``: the device's latest deployment event, for reconciliation."""
    return (
        isinstance(x, dict)
        and _short_str(x.get("deployment"))
        and _short_str(x.get("model"))
        and _nonneg_int(x.get("version"))
        and x.get("stage") in STAGES
        and _opt_str(x.get("reason"))
        and is_number(x.get("ts"))
    )


def _latency(x: Any) -> bool:
    # unrolled (no generator): the hub checks one in every telemetry window
    return (
        isinstance(x, dict)
        and is_number(x.get("p50"))
        and is_number(x.get("p95"))
        and is_number(x.get("p99"))
    )


LATENCY_BUCKETS: Final = N_BUCKETS  # shared/latency.py: buckets of a LatencyHistogram


_HIST_KEYS: Final = frozenset(str(i) for i in range(LATENCY_BUCKETS))


def _latency_hist(x: Any) -> bool:
    """A sparse latency histogram: ``{"bucket": count}``, buckets 0..LATENCY_BUCKETS-1.

    Set operations, not a loop per bucket: the hub checks one in every telemetry window.
    """
    if not isinstance(x, dict) or not x.keys() <= _HIST_KEYS:
        return False
    counts = x.values()
    return not counts or (
        set(map(type, counts)) == {int} and min(counts) >= 0 and max(counts) < MAX_UINT
    )


def _chunk_list(x: Any) -> bool:
    return (
        isinstance(x, list) and 0 < len(x) <= 256 and all(_nonneg_int(i) and i < 2**20 for i in x)
    )


def _obj(x: Any) -> bool:
    return isinstance(x, dict)


def _drift_sketch(x: Any) -> bool:
    """A well-formed drift sketch (shared/drift.py checks counts, moments and sizes)."""
    try:
        DriftSketch.from_dict(x)
    except DriftError:
        return False
    return True


def _opt_number(x: Any) -> bool:
    return x is None or is_number(x)


# Data capture (docs/capture.md): limits a receiver checks before it trusts a size.
MAX_CAPTURE_ROWS: Final = 100_000  # rows one capture command may ask for
MAX_CAPTURE_S: Final = 7 * 86400.0  # seconds a capture may run
MAX_CAPTURE_WINDOWS: Final = 10_000  # telemetry windows a capture may run
MAX_UPLOAD_BYTES: Final = 16 * 2**20  # bytes of one device's upload (<= 256 chunks of 64 KiB)
MAX_UPLOAD_ARRAYS: Final = 16  # arrays in an upload's schema
UPLOAD_DTYPES: Final = frozenset({"float32", "float64", "int32", "int64"})  # little-endian
_HEX64: Final = re.compile(r"[0-9a-f]{64}")


def _sha256_hex(x: Any) -> bool:
    return isinstance(x, str) and bool(_HEX64.fullmatch(x))


def _array_spec(x: Any) -> bool:
    """``{"name": short, "dtype": one of UPLOAD_DTYPES, "shape": [uint, ...]}``."""
    return (
        isinstance(x, dict)
        and set(x) == {"name", "dtype", "shape"}
        and _short_str(x["name"])
        and x["dtype"] in UPLOAD_DTYPES
        and isinstance(x["shape"], list)
        and 1 <= len(x["shape"]) <= 4
        and all(_nonneg_int(d) and d <= MAX_UPLOAD_BYTES for d in x["shape"])
    )


def _upload_schema(x: Any) -> bool:
    return (
        isinstance(x, list)
        and 0 < len(x) <= MAX_UPLOAD_ARRAYS
        and all(_array_spec(a) for a in x)
        and len({a["name"] for a in x}) == len(x)
    )


def _chunk_hashes(x: Any) -> bool:
    limit = MAX_UPLOAD_BYTES // MAX_CHUNK_BYTES
    return isinstance(x, list) and 0 < len(x) <= limit and all(_sha256_hex(h) for h in x)


def _bounded(check: Check, low: float, high: float) -> Check:
    return lambda x: check(x) and low <= x <= high


_COMMAND_FIELDS: Final[Mapping[str, tuple[Check, bool]]] = {
    "device": (_short_str, False),
    "expires": (is_number, False),
    "root_version": (_nonneg_int, False),
}

BODY_SCHEMAS: Final[Mapping[str, Mapping[str, tuple[Check, bool]]]] = {
    "state": {
        "status": (_one_of("online", "offline"), True),
        "device_class": (_short_str, False),
        "runtime": (_short_str, False),
        "agent_version": (_short_str, False),
        "root_version": (_nonneg_int, False),
        "models": (_models_map, False),
        # the latest deployment event the device reported: an outcome lost while the
        # hub was away is read back from this retained message (docs/rollouts.md)
        "last": (_last_event, False),
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
        "start": (is_number, True),
        "end": (is_number, True),
        "model": (_opt_str, False),
        "version": (lambda x: x is None or _nonneg_int(x), False),
        "count": (_nonneg_int, True),
        "errors": (_nonneg_int, True),
        "latency_us": (_latency, True),
        "latency_hist": (_latency_hist, False),  # sparse {bucket: count} (docs/protocol.md)
        "spool_dropped": (_nonneg_int, False),  # windows the device's spool dropped, ever
        "labelled": (_nonneg_int, False),
        "correct": (_nonneg_int, False),
        "cpu_pct": (_opt_number, False),
        "rss_bytes": (lambda x: x is None or _nonneg_int(x), False),
    },
    "drift": {
        "seq": (_nonneg_int, True),
        "model": (_short_str, True),
        "version": (_nonneg_int, True),
        "sketch": (_drift_sketch, True),
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
    # deploy and rollback also carry the fields shared/director.py signs: optional here
    # so that an unsigned or stripped command is refused by the director check, by name
    "deploy": {
        "deployment": (_short_str, True),
        "model": (_short_str, True),
        "version": (_nonneg_int, True),
        "target": (_short_str, True),
        **_COMMAND_FIELDS,
    },
    "rollback": {
        "deployment": (_short_str, True),
        "model": (_short_str, True),
        "version": (_nonneg_int, True),
        **_COMMAND_FIELDS,
    },
    # a signed command, like deploy (docs/capture.md)
    "capture": {
        "capture": (_short_str, True),
        "model": (_short_str, True),
        "max_rows": (_bounded(_nonneg_int, 1, MAX_CAPTURE_ROWS), True),
        "duration_s": (_bounded(is_number, 0.001, MAX_CAPTURE_S), False),
        "windows": (_bounded(_nonneg_int, 1, MAX_CAPTURE_WINDOWS), False),
        "seed": (_nonneg_int, False),
        **_COMMAND_FIELDS,
    },
    "capture_status": {
        "capture": (_short_str, True),
        "model": (_short_str, True),
        "status": (_one_of("started", "uploaded", "failed", "refused"), True),
        "reason": (_opt_str, False),
        "detail": (_opt_str, False),
        "rows": (_nonneg_int, False),
    },
    "upload_manifest": {
        "capture": (_short_str, True),
        "model": (_short_str, True),
        "version": (_nonneg_int, True),
        "rows": (_bounded(_nonneg_int, 1, MAX_CAPTURE_ROWS), True),
        "labelled": (_bounded(_nonneg_int, 0, MAX_CAPTURE_ROWS), True),
        "schema": (_upload_schema, True),
        "length": (_bounded(_nonneg_int, 1, MAX_UPLOAD_BYTES), True),
        "sha256": (_sha256_hex, True),
        "chunk_size": (_bounded(_nonneg_int, 1, MAX_CHUNK_BYTES), True),
        "chunks": (_chunk_hashes, True),
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
    except (ValueError, RecursionError) as e:
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


# --------------------------------------------------------------------------- uploads
# A capture upload chunk (device -> hub, on `upload`): UPLOAD_MAGIC, a big-endian u32
# header length, a JSON header {"capture": id, "index": i}, then at most MAX_CHUNK_BYTES
# raw bytes. The hub checks it against the sha256 the upload manifest lists.

UPLOAD_MAGIC: Final = b"EFU1"


@dataclass(frozen=True)
class UploadChunk:
    capture: str
    index: int
    data: bytes


def encode_upload_chunk(capture: str, index: int, data: bytes) -> bytes:
    """One upload chunk; ``data`` of at most MAX_CHUNK_BYTES.

    Raises:
        ProtocolError: ``too_large`` for a longer chunk.
    """
    if len(data) > MAX_CHUNK_BYTES:
        raise ProtocolError("too_large", f"upload chunk of {len(data)} bytes")
    head = json.dumps({"capture": capture, "index": index}, separators=(",", ":")).encode()
    return _HDR.pack(UPLOAD_MAGIC, len(head)) + head + data


def decode_upload_chunk(payload: bytes) -> UploadChunk:
    """Parse an upload chunk.

    Raises:
        ProtocolError: reason ``bad_upload`` (or ``too_large``).
    """
    if len(payload) > MAX_CHUNK_BYTES + MAX_BLOB_HEADER + _HDR.size:
        raise ProtocolError("too_large", f"upload chunk message of {len(payload)} bytes")
    if len(payload) < _HDR.size:
        raise ProtocolError("bad_upload", "shorter than its fixed header")
    magic, hlen = _HDR.unpack_from(payload)
    if magic != UPLOAD_MAGIC:
        raise ProtocolError("bad_upload", f"bad magic {magic!r}")
    if hlen > MAX_BLOB_HEADER or _HDR.size + hlen > len(payload):
        raise ProtocolError("bad_upload", f"header length {hlen} out of range")
    try:
        header = json.loads(payload[_HDR.size : _HDR.size + hlen])
    except (ValueError, RecursionError) as e:
        raise ProtocolError("bad_upload", f"header is not JSON: {e}") from e
    data = payload[_HDR.size + hlen :]
    if not (
        isinstance(header, dict)
        and _short_str(header.get("capture"))
        and _nonneg_int(header.get("index"))
        and header["index"] < MAX_UPLOAD_BYTES // MAX_CHUNK_BYTES
    ):
        raise ProtocolError("bad_upload", "header needs 'capture' and an in-range 'index'")
    if len(data) > MAX_CHUNK_BYTES:
        raise ProtocolError("too_large", f"upload chunk of {len(data)} bytes")
    return UploadChunk(str(header["capture"]), int(header["index"]), data)
