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

import time
from collections import Counter
from collections.abc import Callable
from typing import Final, Protocol

from hub.transport.budget import Budget, Budgets
from hub.transport.entitlements import Entitlements
from shared import protocol

TIMESTAMP_MIN_REMAINING_S = 3600.0  # re-sign the timestamp when it expires sooner
# Chunks one fetch may name: the agent keeps 8 in flight (agent/core/config.py
# chunk_window); 64 leaves room for larger windows, far under the 256 the schema allows.
MAX_FETCH_CHUNKS: Final = 64
FETCHES_PER_S: Final = 20.0  # a device's sustained fetch rate (burst: FETCH_BURST)
FETCH_BURST: Final = 40.0
BYTES_PER_S: Final = 4 * 2**20  # a device's sustained answer bytes per second (burst: 2x)
FETCH: Final = Budget(FETCHES_PER_S, FETCH_BURST, BYTES_PER_S, 2.0 * BYTES_PER_S)


class ChunkSource(Protocol):
    def chunk(self, target: str, index: int) -> bytes | None:
        """Chunk ``index`` of the target file ``target``; None if there is no such chunk."""
        ...


class MetadataSource(Protocol):
    def refresh_timestamp(self, min_remaining_s: float) -> bool:
        """Re-sign the timestamp role if it expires within ``min_remaining_s``."""
        ...

    def metadata_for(
        self,
        device_root_version: int,
        target: str | None = None,
        targets_version: int | None = None,
    ) -> list[tuple[str, bytes]]:
        """Every root newer than ``root_version``, then timestamp, snapshot, targets (not
        if the device has ``targets_version`` and it is current), and for ``target`` its
        model's delegated role and its manifest."""
        ...


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
        self.refused: Counter[str] = Counter()  # not_deployed, over_budget
        self.budgets = Budgets(FETCH, clock)

    def answer(self, device_id: str, message: protocol.Message) -> list[tuple[bytes, str]]:
        if not self.budgets.take(device_id):
            self.refused["over_budget"] += 1
            return []
        target = message.body.get("target")  # a fetch_meta without one: the top roles only
        if target is not None:
            target = str(target)
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
        if not self.budgets.take(device_id, 0.0, float(sum(len(b) for b, _ in blobs))):
            self.refused["over_budget"] += 1
            return []
        return blobs


def answer_fetch(
    chunks: ChunkSource, metadata: MetadataSource, message: protocol.Message
) -> list[tuple[bytes, str]]:
    """The blobs that answer one fetch, each with the counter it adds to.

    Metadata: every root newer than the device's, then timestamp, snapshot and targets
    (the timestamp re-signed first if it is close to expiry), and for the target named,
    its model's role and manifest (ADR 0037). Chunks: each one asked for, or an error
    blob naming the first that does not exist.
    """
    body = message.body
    req = str(body["req"])
    if message.type == "fetch_meta":
        metadata.refresh_timestamp(TIMESTAMP_MIN_REMAINING_S)
        target, known = body.get("target"), body.get("targets_version")
        files = metadata.metadata_for(
            int(body["root_version"]),
            str(target) if target is not None else None,
            int(known) if known is not None else None,
        )
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
