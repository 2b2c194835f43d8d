"""Answers to devices' fetches: TUF metadata and model chunks, straight from memory.

Fetches are answered on the MQTT thread (no SQL on that path). The link needs only two
small interfaces: where chunks come from (the registry, hub/ml/registry.py) and where
the signed metadata comes from (the TUF repository, hub/trust/repository.py).
"""

from __future__ import annotations

from typing import Protocol

from shared import protocol

TIMESTAMP_MIN_REMAINING_S = 3600.0  # re-sign the timestamp when it expires sooner


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


class FetchAnswers:
    """What answers a device's ``fetch_meta`` or ``fetch_chunks``."""

    def __init__(self, chunks: ChunkSource, metadata: MetadataSource) -> None:
        self.chunks = chunks
        self.metadata = metadata

    def answer(self, message: protocol.Message) -> list[tuple[bytes, str]]:
        return answer_fetch(self.chunks, self.metadata, message)


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
    for index in body["chunks"]:
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
