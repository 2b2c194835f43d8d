"""Capture uploads kept on disk until the hub has them all (docs/capture.md, ADR 0039).

A finished sample is written to disk (:class:`~agent.events.KeepUpload`) before its
manifest and chunks go out, and listed in the saved state, so it outlives a lost
connection, a broker restart and a restart of the agent. The hub asks again for what it
lacks (``upload_ask`` on ``cmd``: chunks, or the manifest when it lost that); the device
answers with exactly those chunks of its own kept upload, and never anything else: an
ask names a capture this device uploaded and chunk indices within it, or it is counted
and dropped. Each reconnect publishes the manifest of every kept upload again: that is
how the hub learns the device is back (and gets a manifest it lost). The copy is deleted
when the hub says it has an outcome (``upload_done``), or after ``upload_keep_s``. All
kept uploads together stay within ``upload_disk_bytes``: a sample that does not fit is
refused (``upload_no_room``).
"""

from __future__ import annotations

from typing import Any

from agent.core.context import CoreContext
from agent.core.state import PendingUpload
from agent.events import DropUpload, KeepUpload, Outbox, Publish, SendUploadChunks
from shared import protocol


class Uploads:
    """The kept uploads (``ctx.state.uploads``) and the hub's requests about them."""

    def __init__(self, ctx: CoreContext) -> None:
        self.ctx = ctx

    def room_for(self, length: int) -> str | None:
        """Why an upload of ``length`` bytes cannot be kept now, or None."""
        used = sum(u.length for u in self.ctx.state.uploads.values())
        bound = self.ctx.config.upload_disk_bytes
        if used + length > bound:
            return (
                f"the sample's {length} bytes do not fit the upload disk bound"
                f" ({used} of {bound} bytes kept for earlier uploads)"
            )
        return None

    def keep_and_send(self, manifest: dict[str, Any], data: bytes, now: float, out: Outbox) -> None:
        """Keep the upload on disk, then publish its manifest and every chunk."""
        capture = str(manifest["capture"])
        upload = PendingUpload(capture, manifest, now + self.ctx.config.upload_keep_s)
        self.ctx.state.keep_upload(upload)
        out.add(KeepUpload(capture, data))
        self.ctx.persist(out)
        self._publish_manifest(upload, now, out)
        self._send(upload, tuple(range(len(manifest["chunks"]))), out)

    def on_connected(self, now: float, out: Outbox) -> None:
        """Back online: announce each kept upload again (the hub asks for what it lacks)."""
        for upload in self.ctx.state.uploads.values():
            self._publish_manifest(upload, now, out)

    def on_request(self, msg: protocol.Message, now: float, out: Outbox) -> None:
        """An ``upload_ask`` or ``upload_done`` from the hub (ACL: only the hub writes cmd)."""
        capture = str(msg.body["capture"])
        upload = self.ctx.state.uploads.get(capture)
        if upload is None:
            why = f"{msg.type} for {capture}: this device keeps no upload of it"
            self.ctx.drop("unknown_upload", why)
            return
        if msg.type == "upload_done":
            self.forget(capture, out)
            self.ctx.counts[f"uploads_{msg.body['status']}"] += 1
            return
        if upload.asks >= self.ctx.config.max_upload_asks:
            self.ctx.drop("upload_asks_exceeded", f"{capture}: {upload.asks} asks answered")
            return
        upload.asks += 1
        if "chunks" not in msg.body:  # the hub lost the manifest: announce it again
            self.ctx.counts["upload_manifests_resent"] += 1
            self._publish_manifest(upload, now, out)
            return
        count = len(upload.manifest["chunks"])
        asked = list(dict.fromkeys(int(i) for i in msg.body["chunks"]))
        wanted = tuple(i for i in asked if i < count)
        if len(wanted) < len(asked):
            self.ctx.drop("bad_upload_ask", f"{capture}: chunks beyond its {count}")
        if not wanted:
            return
        self.ctx.counts["upload_chunks_resent"] += len(wanted)
        self._send(upload, wanted, out)

    def on_lost(self, capture: str, detail: str, now: float, out: Outbox) -> None:
        """The kept file cannot be read: forget it (the hub fails the upload in time)."""
        upload = self.ctx.state.uploads.get(capture)
        if upload is None:
            return
        self.ctx.drop("upload_lost", f"{capture}: {detail}")
        self.forget(capture, out)

    def expire(self, now: float, out: Outbox) -> None:
        """Delete uploads kept past ``upload_keep_s`` without the hub's word."""
        for capture in [c for c, u in self.ctx.state.uploads.items() if u.expires_at <= now]:
            self.ctx.counts["uploads_expired"] += 1
            self.forget(capture, out)

    def forget(self, capture: str, out: Outbox) -> None:
        if self.ctx.state.forget_upload(capture) is not None:
            out.add(DropUpload(capture))
            self.ctx.persist(out)

    def _publish_manifest(self, upload: PendingUpload, now: float, out: Outbox) -> None:
        payload = protocol.encode("upload_manifest", upload.manifest, ts=now)
        out.add(Publish(self.ctx.topic("capture"), payload))

    def _send(self, upload: PendingUpload, indices: tuple[int, ...], out: Outbox) -> None:
        size = int(upload.manifest["chunk_size"])
        topic = self.ctx.topic("upload")
        out.add(SendUploadChunks(upload.capture, topic, size, upload.length, indices))
