"""Answers to devices' fetches: TUF metadata and model chunks, straight from memory.

Fetches are answered on the MQTT thread (no SQL on that path). The link needs only two
small interfaces: where chunks come from (the registry, hub/ml/registry.py) and where
the signed metadata comes from (the TUF repository, hub/trust/repository.py).

Bounds (issue 11, items 2 and 8): chunks are answered only for a target the device was
told to install (hub/transport/entitlements.py), each chunk once per fetch and at most
``MAX_FETCH_CHUNKS`` of them; and each device has a budget of fetches and bytes per
second (a token bucket), beyond which its fetches are dropped and counted.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Protocol

from hub.transport.entitlements import Entitlements
from shared import protocol

TIMESTAMP_MIN_REMAINING_S = 3600.0  # re-sign the timestamp when it expires sooner
# Chunks one fetch may name: the agent keeps 8 in flight (agent/core/config.py
# chunk_window); 64 leaves room for larger windows, far under the 256 the schema allows.
MAX_FETCH_CHUNKS: Final = 64
FETCHES_PER_S: Final = 20.0  # a device's sustained fetch rate (burst: FETCH_BURST)
FETCH_BURST: Final = 40.0
BYTES_PER_S: Final = 4 * 2**20  # a device's sustained answer bytes per second (burst: 2x)


class ChunkSource(Protocol):
    def chunk(self, target: str, index: int) -> bytes | None:
        """Chunk ``index`` of the target file ``target``; None if there is no such chunk."""
        ...


class MetadataSource(Protocol):
    def refresh_timestamp(self, min_remaining_s: float) -> bool:
        """Re-sign the timestamp role if it expires within ``min_remaining_s``."""
        ...

    def metadata_for(self, device_root_version: int) -> list[tuple[str, bytes]]:
        """Every root newer than ``root_version``, then timestamp, snapshot, targets."""
        ...


@dataclass
class _Bucket:
    fetches: float
    bytes: float
    at: float


class FetchAnswers:
    """What answers a device's ``fetch_meta`` or ``fetch_chunks``, within its bounds.

    ``entitlements`` None answers any target (a test rig that has no deployments).
    """

    def __init__(
        self,
        chunks: ChunkSource,
        metadata: MetadataSource,
        entitlements: Entitlements | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.chunks = chunks
        self.metadata = metadata
        self.entitlements = entitlements
        self.clock = clock
        self.refused: Counter[str] = Counter()  # not_deployed, over_budget
        self._buckets: dict[str, _Bucket] = {}
        self._lock = threading.Lock()

    def answer(self, device_id: str, message: protocol.Message) -> list[tuple[bytes, str]]:
        if not self._take(device_id, fetches=1.0, nbytes=0.0):
            self.refused["over_budget"] += 1
            return []
        if message.type == "fetch_chunks":
            target = str(message.body["target"])
            if self.entitlements is not None and not self.entitlements.allowed(device_id, target):
                self.refused["not_deployed"] += 1
                header = {
                    "kind": "error",
                    "req": str(message.body["req"]),
                    "reason": "not_found",
                    "detail": f"{target!r} was not deployed to this device",
                }
                return [(protocol.encode_blob(header), "fetch_errors")]
        blobs = answer_fetch(self.chunks, self.metadata, message)
        if not self._take(device_id, fetches=0.0, nbytes=float(sum(len(b) for b, _ in blobs))):
            self.refused["over_budget"] += 1
            return []
        return blobs

    def _take(self, device_id: str, *, fetches: float, nbytes: float) -> bool:
        """Spend from the device's bucket; False (nothing spent) when it cannot pay."""
        now = self.clock()
        with self._lock:
            b = self._buckets.get(device_id)
            if b is None:
                b = self._buckets[device_id] = _Bucket(FETCH_BURST, 2.0 * BYTES_PER_S, now)
            dt, b.at = max(0.0, now - b.at), now
            b.fetches = min(FETCH_BURST, b.fetches + dt * FETCHES_PER_S)
            b.bytes = min(2.0 * BYTES_PER_S, b.bytes + dt * BYTES_PER_S)
            if b.fetches < fetches or (nbytes and b.bytes <= 0):
                return False
            b.fetches -= fetches
            b.bytes -= nbytes  # may go below 0 once: the next answers wait for it to refill
            return True


def answer_fetch(
    chunks: ChunkSource, metadata: MetadataSource, message: protocol.Message
) -> list[tuple[bytes, str]]:
    """The blobs that answer one fetch, each with the counter it adds to.

    Metadata: every root newer than the device's, then timestamp, snapshot and targets
    (the timestamp re-signed first if it is close to expiry). Chunks: each one asked
    for, or an error blob naming the first that does not exist.
    """
    body = message.body
    req = str(body["req"])
    if message.type == "fetch_meta":
        metadata.refresh_timestamp(TIMESTAMP_MIN_REMAINING_S)
        files = metadata.metadata_for(int(body["root_version"]))
        return [(protocol.encode_meta_blob(req, files), "meta_sent")]
    target = str(body["target"])
    out: list[tuple[bytes, str]] = []
    for index in list(dict.fromkeys(body["chunks"]))[:MAX_FETCH_CHUNKS]:  # each chunk once
        data = chunks.chunk(target, int(index))
        if data is None:
            header: dict[str, str | int] = {
                "kind": "error",
                "req": req,
                "reason": "not_found",
                "detail": f"no chunk {index} of {target!r}",
            }
            out.append((protocol.encode_blob(header), "fetch_errors"))
            return out
        header = {"kind": "chunk", "req": req, "target": target, "index": int(index)}
        out.append((protocol.encode_blob(header, data), "chunks_sent"))
    return out
