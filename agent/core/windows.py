"""Telemetry windows: inference statistics and drift sketches, per model, per window.

Every ``window_s`` seconds the core closes the open window: for each installed model a
``telemetry`` message with the next sequence number (persisted first, so a seq is never
reused) and, if the model saw rows, a ``drift`` message with its merged sketch under the
same seq. A device with several models sends one of each per model and window; a device
with none, one ``telemetry`` message naming no model.
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
    """The open telemetry window of one device: each model's figures apart."""

    def __init__(self, ctx: CoreContext) -> None:
        self.ctx = ctx
        self._stats: dict[str | None, InferenceStats] = {}  # model (None: untagged) -> figures
        self._start: float | None = None
        self._drift: dict[str, ModelSketch] = {}  # the open window's sketch of each model
        # windows the adapter's spool dropped for space, ever (agent/spool.py); reported
        # as ``spool_dropped`` in each telemetry body when the adapter sets it
        self.spool_dropped: int | None = None

    def on_tick(self, ev: Tick, out: Outbox) -> None:
        """Add the tick's figures to the window; close it when it is ``window_s`` old."""
        parts: dict[str | None, InferenceStats] = {m: v for m, v in (ev.model_stats or {}).items()}
        if ev.model_stats is None and ev.stats is not None:
            parts[None] = ev.stats  # one untagged figure: the device's first model's
        for model, stats in parts.items():
            self._stats.setdefault(model, InferenceStats()).merge(stats)
        for sketch in ev.sketches():
            self._merge_drift(sketch)
        if self._start is None:
            self._start = ev.now
        elif ev.now - self._start >= self.ctx.config.window_s:
            self._close(ev, out, self._start)

    def _close(self, ev: Tick, out: Outbox, start: float) -> None:
        """One ``telemetry`` message per installed model (each its own seq), or one
        naming no model on a device with none; a ``drift`` message beside each."""
        state = self.ctx.state
        stats, self._stats = self._stats, {}
        models: list[tuple[str | None, int | None]] = [
            (name, m["version"]) for name, m in state.models.items()
        ] or [(None, None)]
        first = models[0][0]
        untagged = stats.pop(None, None)
        if untagged is not None:
            stats.setdefault(first, InferenceStats()).merge(untagged)
        bodies = []
        for model, version in models:
            window = stats.get(model) or InferenceStats()
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
            bodies.append(body)
        if state.capture is not None:
            state.capture.window_closed()  # a capture measured in windows (docs/capture.md)
        # persist the next seq first: a crash between the two loses this window at worst,
        # never reuses its seq for the next one (which the hub would drop as a duplicate)
        self.ctx.persist(out)
        drifts, self._drift = self._drift, {}
        for body in bodies:
            telemetry = protocol.encode("telemetry", body, ts=ev.now)
            out.add(Publish(self.ctx.topic("telemetry"), telemetry))
            if body["model"] is not None:
                self._publish_drift(out, drifts.pop(body["model"], None), body["seq"], ev.now)
        self._start = ev.now

    def _merge_drift(self, part: ModelSketch) -> None:
        """Add a tick's sketch to its model's; another version starts it afresh."""
        d = self._drift.get(part.model)
        if d is None or d.version != part.version:
            self._drift[part.model] = part
            return
        try:
            self._drift[part.model] = ModelSketch(d.model, d.version, d.sketch.merge(part.sketch))
        except DriftError as e:  # same version, other layout: cannot happen, never crash
            self.ctx.drop("bad_drift_sketch", str(e))
            self._drift[part.model] = part

    def _publish_drift(self, out: Outbox, d: ModelSketch | None, seq: int, now: float) -> None:
        """One ``drift`` message per model that saw rows, with its telemetry's seq."""
        if d is None or d.sketch.rows == 0:
            return
        body = {"seq": seq, "model": d.model, "version": d.version, "sketch": d.sketch.to_dict()}
        try:
            payload = protocol.encode("drift", body, ts=now)
        except ProtocolError as e:  # too large for one message: the window goes unsketched
            self.ctx.drop("drift_not_sent", e.detail)
            return
        out.add(Publish(self.ctx.topic("drift"), payload))
