"""Binary messages: blobs (hub → device) and upload chunks (device → hub).

Neither is an envelope. Both are a 4-byte magic, a big-endian u32 header length, a JSON
header, then raw bytes (docs/protocol.md, "Blobs" and "Upload chunks").

A blob (``blob`` topic, :data:`BLOB_MAGIC`) answers a fetch:
  chunk: {"kind": "chunk", "req": r, "target": name, "index": i}
  meta:  {"kind": "meta", "req": r, "files": [[name, length], ...]}  (bytes concatenated)
  error: {"kind": "error", "req": r, "reason": code, "detail": text}

An upload chunk (``upload`` topic, :data:`UPLOAD_MAGIC`) carries a header
{"capture": id, "index": i} and at most MAX_CHUNK_BYTES raw bytes. The hub checks it
against the sha256 the upload manifest lists.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from shared.bodies import MAX_CHUNK_BYTES, MAX_UPLOAD_BYTES, is_nonneg_int, is_short_str
from shared.protocol_error import ProtocolError

MAX_BLOB_BYTES: Final = 1 * 2**20  # bytes; a chunk (<=64 KiB) or a metadata batch
MAX_BLOB_HEADER: Final = 16 * 2**10  # bytes
BLOB_MAGIC: Final = b"EFB1"
UPLOAD_MAGIC: Final = b"EFU1"
_HDR = struct.Struct(">4sI")

# --------------------------------------------------------------------------- blobs


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
    header, data = _split_frame(payload, BLOB_MAGIC, "bad_blob")
    if not isinstance(header, dict) or not is_short_str(header.get("req")):
        raise ProtocolError("bad_blob", "header must be an object with a 'req'")
    _check_blob_header(header, data)
    return Blob(header, data)


def _check_blob_header(header: Mapping[str, Any], data: bytes) -> None:
    """The fields each kind of blob needs, and its data against them."""
    kind = header.get("kind")
    if kind == "chunk":
        if not (is_short_str(header.get("target")) and is_nonneg_int(header.get("index"))):
            raise ProtocolError("bad_blob", "chunk header needs 'target' and 'index'")
        if len(data) > MAX_CHUNK_BYTES:
            raise ProtocolError("bad_blob", f"chunk of {len(data)} bytes > {MAX_CHUNK_BYTES}")
    elif kind == "meta":
        files = header.get("files")
        if not (
            isinstance(files, list)
            and all(
                isinstance(f, list) and len(f) == 2 and is_short_str(f[0]) and is_nonneg_int(f[1])
                for f in files
            )
            and sum(f[1] for f in files) == len(data)
        ):
            raise ProtocolError("bad_blob", "meta header 'files' does not match its data")
    elif kind == "error":
        if not is_short_str(header.get("reason")):
            raise ProtocolError("bad_blob", "error header needs a 'reason'")
    else:
        raise ProtocolError("bad_blob", f"unknown blob kind {kind!r}")


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
    header, data = _split_frame(payload, UPLOAD_MAGIC, "bad_upload")
    if not (
        isinstance(header, dict)
        and is_short_str(header.get("capture"))
        and is_nonneg_int(header.get("index"))
        and header["index"] < MAX_UPLOAD_BYTES // MAX_CHUNK_BYTES
    ):
        raise ProtocolError("bad_upload", "header needs 'capture' and an in-range 'index'")
    if len(data) > MAX_CHUNK_BYTES:
        raise ProtocolError("too_large", f"upload chunk of {len(data)} bytes")
    return UploadChunk(str(header["capture"]), int(header["index"]), data)


# --------------------------------------------------------------------------- framing


def _split_frame(payload: bytes, magic: bytes, reason: str) -> tuple[Any, bytes]:
    """The parsed JSON header and the raw data of one frame.

    Raises:
        ProtocolError: with ``reason`` for a short frame, a wrong magic, a header length
            out of range or a header that is not JSON.
    """
    if len(payload) < _HDR.size:
        raise ProtocolError(reason, "shorter than its fixed header")
    got, hlen = _HDR.unpack_from(payload)
    if got != magic:
        raise ProtocolError(reason, f"bad magic {got!r}")
    if hlen > MAX_BLOB_HEADER or _HDR.size + hlen > len(payload):
        raise ProtocolError(reason, f"header length {hlen} out of range")
    try:
        header = json.loads(payload[_HDR.size : _HDR.size + hlen])
    except (ValueError, RecursionError) as e:
        raise ProtocolError(reason, f"header is not JSON: {e}") from e
    return header, payload[_HDR.size + hlen :]
