"""Two reads the dashboard needs and the API lacks.

Drift over time, for its charts: the windows of the last ``range_s`` seconds cut into
equal time buckets, each bucket's windows merged per model version and scored against
that version's baseline, as :meth:`DriftMonitor.report` scores a whole range. And the
groups (device tags) with their devices, for the fleet page."""

from __future__ import annotations

import time
from collections import defaultdict
from typing import Any

from sqlmodel import col, select

from hub.store.tables import DeviceTag, DriftWindow, session
from hub.telemetry.drift import MAX_RANGE_WINDOWS, DriftMonitor

BUCKETS_MAX = 120  # points per series


def drift_series(
    drift: DriftMonitor,
    model: str,
    device_id: str | None,
    range_s: float,
    buckets: int,
    now: float | None = None,
) -> dict[str, Any]:
    """Per bucket, of its version with the most rows: its end time, rows, devices and
    per-feature PSI/JS (null when no baseline fits or the bucket holds under the policy's
    ``min_rows`` rows); the policy's thresholds to draw beside them.

    Args:
        device_id: one device's windows; None: the fleet's.
    """
    end = time.time() if now is None else now
    start = end - range_s
    width = range_s / buckets
    with session(drift.engine) as s:
        q = select(DriftWindow).where(DriftWindow.model == model, DriftWindow.ts > start)
        if device_id is not None:
            q = q.where(DriftWindow.device_id == device_id)
        # newest first: past the cap, the oldest windows of a long range are left out
        newest = q.order_by(col(DriftWindow.ts).desc()).limit(MAX_RANGE_WINDOWS)
        windows = list(s.exec(newest))
    grouped: dict[int, dict[int, list[DriftWindow]]] = defaultdict(lambda: defaultdict(list))
    for w in windows:
        bucket = min(int((w.ts - start) // width), buckets - 1)
        grouped[bucket][w.version].append(w)
    policy = drift.policy(model)
    points = []
    for bucket, by_version in sorted(grouped.items()):
        # one line through time: in a bucket that spans a rollout, the version most rows
        # came from (each version is scored against its own baseline)
        version, ws = max(by_version.items(), key=lambda kv: sum(w.rows for w in kv[1]))
        merged = drift.merged(model, version, ws)
        rows = sum(w.rows for w in ws)
        point: dict[str, Any] = {
            "t": start + (bucket + 1) * width,
            "version": version,
            "rows": rows,
            "devices": len({w.device_id for w in ws}),
            "scores": None,
            "drifted": [],
        }
        if merged is not None:  # under min_rows: PSI/JS null, as in a drift report
            point |= policy.verdict(merged[0].rows, merged[1])
        points.append(point)
    return {
        "model": model,
        "device": device_id,
        "since": start,
        "until": end,
        "bucket_s": width,
        "psi_threshold": policy.psi_threshold,
        "js_threshold": policy.js_threshold,
        "min_rows": policy.min_rows,
        "points": points,
    }


def device_groups(engine: Any) -> dict[str, list[str]]:
    """Every group (device tag) and its devices, for the fleet page's versions per group."""
    out: dict[str, list[str]] = defaultdict(list)
    with session(engine) as s:
        for tag in s.exec(select(DeviceTag).order_by(col(DeviceTag.tag), col(DeviceTag.device_id))):
            out[tag.tag].append(tag.device_id)
    return dict(out)
