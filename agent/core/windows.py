"""Telemetry windows: inference statistics and drift sketches, one message each per window.

Every ``window_s`` seconds the core closes the open window: a ``telemetry`` message with
the next sequence number (persisted first, so a seq is never reused) and, if the window
saw rows, a ``drift`` message with the merged sketch under the same seq.
"""

from __future__ import annotations

from typing import Any

from agent.core.context import CoreContext
from agent.drift import ModelSketch
from agent.events import Outbox, Publish, Tick
from agent.telemetry import InferenceStats
from shared import protocol
from shared.drift import DriftError
from shared.protocol import ProtocolError


class TelemetryWindows:
    """The open telemetry window of one device."""

    def __init__(self, ctx: CoreContext) -> None:
        self.ctx = ctx
        self._stats: InferenceStats | None = None
        self._start: float | None = None
        self._drift: ModelSketch | None = None  # the open window's drift sketch
        # windows the adapter's spool dropped for space, ever (agent/spool.py); reported
        # as ``spool_dropped`` in each telemetry body when the adapter sets it
        self.spool_dropped: int | None = None

    def on_tick(self, ev: Tick, out: Outbox) -> None:
        """Add the tick's figures to the window; close it when it is ``window_s`` old."""
        if ev.stats is not None:
            if self._stats is None:
                self._stats = InferenceStats()
            self._stats.merge(ev.stats)
        if ev.drift is not None:
            self._merge_drift(ev.drift)
        if self._start is None:
            self._start = ev.now
        elif ev.now - self._start >= self.ctx.config.window_s:
            self._close(ev, out, self._start)

    def _close(self, ev: Tick, out: Outbox, start: float) -> None:
        state = self.ctx.state
        window = self._stats or InferenceStats()
        active = next(iter(state.models.items()), None)
        model, version = (active[0], active[1]["version"]) if active else (None, None)
        body: dict[str, Any] = {
            "seq": state.seq,
            "start": start,
            "end": ev.now,
            "model": model,
            "version": version,
            # labels of this version at the top level, of others in ``other_versions``
            **window.summary(model, version),
            "cpu_pct": ev.cpu_pct,
            "rss_bytes": ev.rss_bytes,
        }
        if self.spool_dropped is not None:
            body["spool_dropped"] = self.spool_dropped
        state.seq += 1
        if state.capture is not None:
            state.capture.window_closed()  # a capture measured in windows (docs/capture.md)
        # persist the next seq first: a crash between the two loses this window at worst,
        # never reuses its seq for the next one (which the hub would drop as a duplicate)
        self.ctx.persist(out)
        telemetry = protocol.encode("telemetry", body, ts=ev.now)
        out.add(Publish(self.ctx.topic("telemetry"), telemetry))
        self._publish_drift(out, body["seq"], ev.now)
        self._stats = None
        self._start = ev.now

    def _merge_drift(self, part: ModelSketch) -> None:
        """Add a tick's sketch to the window's; another model version starts it afresh."""
        d = self._drift
        if d is None or (d.model, d.version) != (part.model, part.version):
            self._drift = part
            return
        try:
            self._drift = ModelSketch(d.model, d.version, d.sketch.merge(part.sketch))
        except DriftError as e:  # same version, other layout: cannot happen, never crash
            self.ctx.drop("bad_drift_sketch", str(e))
            self._drift = part

    def _publish_drift(self, out: Outbox, seq: int, now: float) -> None:
        """One ``drift`` message per window that saw rows, with its telemetry's seq."""
        d, self._drift = self._drift, None
        if d is None or d.sketch.rows == 0:
            return
        body = {"seq": seq, "model": d.model, "version": d.version, "sketch": d.sketch.to_dict()}
        try:
            payload = protocol.encode("drift", body, ts=now)
        except ProtocolError as e:  # too large for one message: the window goes unsketched
            self.ctx.drop("drift_not_sent", e.detail)
            return
        out.add(Publish(self.ctx.topic("drift"), payload))
