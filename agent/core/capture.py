"""Data capture (docs/capture.md): sample a model's live rows, then upload them.

A signed ``capture`` command starts one capture at a time, measured in seconds or in
telemetry windows; the adapter samples rows (:class:`~agent.events.StartCapture`) until
the core asks it to finish, and the core uploads what it returns: the manifest first,
then the chunks the hub checks against it. Each step is reported on ``capture``.
"""

from __future__ import annotations

from typing import Any

from agent import capture as capture_msgs
from agent.core.context import CoreContext
from agent.core.state import Capture
from agent.core.uploads import Uploads
from agent.events import CaptureEnded, FinishCapture, Outbox, Publish, StartCapture
from shared import protocol
from shared.protocol import ProtocolError
from shared.reasons import Reason


class Captures:
    """The capture in progress (``ctx.state.capture``) and its commands."""

    def __init__(self, ctx: CoreContext) -> None:
        self.ctx = ctx
        self.uploads = Uploads(ctx)  # kept on disk until the hub has them all
        if (capture := ctx.state.capture) is not None:
            capture.ending = False  # restarted mid-capture: its end must be asked again

    def status(
        self,
        out: Outbox,
        info: dict[str, Any],
        status: str,
        now: float,
        reason: Reason | None = None,
        detail: str = "",
        rows: int | None = None,
    ) -> None:
        """Publish a ``capture_status`` for ``info`` (``capture``, ``model``)."""
        code = reason.value if reason else None
        payload = capture_msgs.status_message(
            info["capture"], info["model"], status, now, reason=code, detail=detail, rows=rows
        )
        out.add(Publish(self.ctx.topic("capture"), payload))

    def on_command(self, body: dict[str, Any], now: float, out: Outbox) -> None:
        """A verified capture command: start it, unless one is running."""
        if "duration_s" not in body and "windows" not in body:
            why = "a capture needs duration_s or windows"
            self.status(out, body, "refused", now, Reason.COMMAND_INVALID, why)
            return
        if (running := self.ctx.state.capture) is not None:
            why = f"capture {running.id} is in progress"
            self.status(out, body, "failed", now, Reason.BUSY, why)
            return
        duration = body.get("duration_s")
        capture = Capture(
            id=body["capture"],
            model=body["model"],
            max_rows=int(body["max_rows"]),
            seed=int(body.get("seed", 0)),
            ends_at=now + float(duration) if duration is not None else None,
            windows=body.get("windows"),
        )
        self.ctx.state.capture = capture
        out.add(StartCapture(capture.id, capture.model, capture.max_rows, capture.seed))
        self.status(out, body, "started", now)
        self.ctx.persist(out)

    def check(self, now: float, out: Outbox) -> None:
        """Ask the adapter to finish a capture that is due (once); expire kept uploads."""
        self.uploads.expire(now, out)
        capture = self.ctx.state.capture
        if capture is None or capture.ending:
            return
        if capture.due(now):
            capture.ending = True
            out.add(FinishCapture(capture.id))

    def on_ended(self, ev: CaptureEnded, out: Outbox) -> None:
        """The adapter's sample: upload it, or say why there is nothing to upload."""
        capture = self.ctx.state.capture
        if capture is None or capture.id != ev.capture:
            return
        self.ctx.state.capture = None
        self.ctx.persist(out)
        info = {"capture": capture.id, "model": capture.model}
        if ev.data is None or ev.rows == 0:
            why = f"no row of {capture.model} was predicted"
            self.status(out, info, "failed", ev.now, Reason.CAPTURE_EMPTY, why, rows=0)
            return
        try:
            manifest = capture_msgs.upload_manifest(capture.id, capture.model, ev)
            protocol.encode("upload_manifest", manifest, ts=ev.now)  # within its limits
        except (ProtocolError, ValueError) as e:
            self.status(out, info, "failed", ev.now, Reason.UPLOAD_INVALID, str(e))
            return
        no_room = self.uploads.room_for(len(ev.data))
        if no_room is not None:
            self.ctx.counts["uploads_no_room"] += 1
            self.status(out, info, "failed", ev.now, Reason.UPLOAD_NO_ROOM, no_room)
            return
        # Kept on disk first, then the manifest, then the chunks: the hub checks each
        # chunk against the manifest, and asks again for any it lacks.
        self.uploads.keep_and_send(manifest, ev.data, ev.now, out)
        self.status(out, info, "uploaded", ev.now, rows=ev.rows)
