"""Telemetry windows: inference statistics and drift sketches, per model, per window.

Every ``window_s`` seconds the core closes the open window: for each installed model a
``telemetry`` message with the next sequence number (persisted first, so a seq is never
reused) and, if the model saw rows, a ``drift`` message with its merged sketch under the
same seq. A device with several models sends one of each per model and window; a device
with none, one ``telemetry`` message naming no model.

Idle windows coalesce (``heartbeat_s``, docs/telemetry.md): a model's windows with no
call and no label are not sent one by one; one zero window covering the quiet span goes
every ``heartbeat_s`` (a heartbeat), or just before the next window with figures. The
messages of a model still tile time without overlap, and seqs stay gapless.
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

# (start, end, figures: None for the closing window's own, version) of one message
Span = tuple[float, float, InferenceStats | None, int | None]


def _has_figures(w: InferenceStats) -> bool:
    """Whether a window holds anything to report: calls, or labels (late ones too)."""
    return bool(w.count or w.labelled or w.versions)


class TelemetryWindows:
    """The open telemetry window of one device: each model's figures apart."""

    def __init__(self, ctx: CoreContext) -> None:
        self.ctx = ctx
        self._stats: dict[str | None, InferenceStats] = {}  # model (None: untagged) -> figures
        self._start: float | None = None
        self._drift: dict[str, ModelSketch] = {}  # the open window's sketch of each model
        # model -> (version, end of its last message): where its unreported span starts
        self._reported: dict[str | None, tuple[int | None, float]] = {}
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
        naming no model on a device with none; a ``drift`` message beside each.

        A model's window with nothing in it is held back (see :meth:`_spans`)."""
        state = self.ctx.state
        stats, self._stats = self._stats, {}
        models: list[tuple[str | None, int | None]] = [
            (name, m["version"]) for name, m in state.models.items()
        ] or [(None, None)]
        first = models[0][0]
        untagged = stats.pop(None, None)
        if untagged is not None:
            stats.setdefault(first, InferenceStats()).merge(untagged)
        drifts, self._drift = self._drift, {}
        bodies: list[tuple[dict[str, Any], bool]] = []  # (body, the window's own figures?)
        for model, version in models:
            window = stats.get(model) or InferenceStats()
            d = drifts.get(model) if model is not None else None
            busy = _has_figures(window) or (d is not None and d.sketch.rows > 0)
            for span in self._spans(model, version, start, ev.now, busy):
                span_start, span_end, figures, span_version = span
                body: dict[str, Any] = {
                    "seq": state.seq,
                    "start": span_start,
                    "end": span_end,
                    "model": model,
                    "version": span_version,
                    # labels of this version at the top level, of others in ``other_versions``
                    **(figures or window).summary(model, span_version),
                    "cpu_pct": ev.cpu_pct,
                    "rss_bytes": ev.rss_bytes,
                }
                if self.spool_dropped is not None:
                    body["spool_dropped"] = self.spool_dropped
                state.seq += 1
                bodies.append((body, figures is None))
        self._reported = {m: v for m, v in self._reported.items() if (m, v[0]) in models}
        if state.capture is not None:
            state.capture.window_closed()  # a capture measured in windows (docs/capture.md)
        self._start = ev.now
        if not bodies and state.capture is None:
            return  # an idle window: nothing sent, no seq used, nothing to persist
        # (a capture measured in windows counted this one down: its state is persisted)
        # persist the next seq first: a crash between the two loses this window at worst,
        # never reuses its seq for the next one (which the hub would drop as a duplicate)
        self.ctx.persist(out)
        for body, own in bodies:
            telemetry = protocol.encode("telemetry", body, ts=ev.now)
            out.add(Publish(self.ctx.topic("telemetry"), telemetry))
            if body["model"] is not None and own:  # the window's sketch, not a gap's
                self._publish_drift(out, drifts.pop(body["model"], None), body["seq"], ev.now)

    def _spans(
        self, model: str | None, version: int | None, start: float, end: float, busy: bool
    ) -> list[Span]:
        """The messages a model's closing window ``[start, end)`` makes: ``(start, end,
        figures, version)``, figures None for the window's own, an empty InferenceStats
        for a zero window.

        Idle windows coalesce: nothing is sent for a window with no figures while the
        model's last message (this version's) is younger than ``heartbeat_s``; then one
        zero window (the heartbeat) covers the whole quiet span. When figures come back,
        a zero window first covers the quiet span held back so far, then the window
        itself goes as always: the messages of a model tile time, each inference counted
        once in the window it happened in. The first window of a model version (and the
        first since the core started) is always sent, after a zero window that closes
        the quiet span the version before held back, under that version.
        """
        last = self._reported.get(model)
        spans: list[Span] = []
        if last is not None and last[0] != version:
            if last[1] < start:
                spans.append((last[1], start, InferenceStats(), last[0]))
            last = None
        if last is None or self.ctx.config.heartbeat_s <= self.ctx.config.window_s:
            spans.append((start, end, None, version))
        elif busy:
            if last[1] < start:
                spans.append((last[1], start, InferenceStats(), version))
            spans.append((start, end, None, version))
        elif end - last[1] >= self.ctx.config.heartbeat_s:
            spans.append((last[1], end, None, version))
        if spans:
            self._reported[model] = (version, end)
        return spans

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
