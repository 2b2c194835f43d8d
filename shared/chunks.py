"""Chunking with per-chunk sha256 (the hashes travel in the signed manifest)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

from shared.protocol import MAX_CHUNK_BYTES

DEFAULT_CHUNK_SIZE = 16 * 2**10  # bytes


def chunk_count(length: int, chunk_size: int) -> int:
    return max(1, -(-length // chunk_size))


def chunk_hashes(data: bytes, chunk_size: int = DEFAULT_CHUNK_SIZE) -> list[str]:
    """The sha256 (hex) of each chunk of ``data``."""
    if not 0 < chunk_size <= MAX_CHUNK_BYTES:
        raise ValueError(f"chunk_size must be in 1..{MAX_CHUNK_BYTES}, got {chunk_size}")
    return [hashlib.sha256(c).hexdigest() for c in iter_chunks(data, chunk_size)]


def iter_chunks(data: bytes, chunk_size: int) -> Iterator[bytes]:
    if not data:
        yield b""
        return
    for off in range(0, len(data), chunk_size):
        yield data[off : off + chunk_size]


def chunk_span(index: int, length: int, chunk_size: int) -> tuple[int, int]:
    """(offset, size) of chunk ``index`` in a file of ``length`` bytes."""
    off = index * chunk_size
    if index < 0 or off >= max(length, 1):
        raise IndexError(f"chunk {index} out of range for {length} bytes")
    return off, min(chunk_size, length - off)


def chunk_ok(data: bytes, expected_sha256: str) -> bool:
    return hashlib.sha256(data).hexdigest() == expected_sha256
