"""Telemetry reads: windows merged to a resolution, per device, group or fleet.

Windows (rows of ``Telemetry``, raw or already downsampled by hub/telemetry/retention.py) merge
exactly: counts add up, latency histograms add bucket by bucket (shared/latency.py), and
percentiles are read from the merged histogram, never averaged. A row stored without a
histogram (an older agent) makes its bucket's percentiles a count-weighted mean of the
windows' own, flagged ``"exact": false``. CPU is the mean over windows, RSS the maximum.
Labels are kept per model version (hub/telemetry/labels.py): a series point gives the
accuracy of its classifiers' labels and the MAE / RMSE of its regressors'; the
performance query gives them per version of one model, for a device, a group or the
fleet, beside a classifier's accuracy estimated from its devices' confidence counts
(hub/telemetry/estimates.py) where its baseline has a calibration table.

Exceptions::

    TelemetryQueryError   a range, resolution or size a query refuses (the API answers 422)
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from sqlalchemy import and_, or_
from sqlmodel import Session, col, select

from hub.store.tables import DeviceTag, Telemetry
from hub.telemetry.estimates import CalibrationSource, EstimateRangeError, estimated_performance
from hub.telemetry.labels import LabelSum, VersionKey, label_parts, other_versions_json
from shared.latency import LatencyHistogram

MAX_QUERY_ROWS: Final = 500_000  # windows one query may read; ask a coarser range past it
MAX_POINTS: Final = 10_000  # buckets one query may return
MIN_RESOLUTION_S: Final = 1.0  # seconds


class TelemetryQueryError(ValueError):
    """A query the hub will not run; the message says why."""


@dataclass
class WindowSum:
    """Several windows merged (one bucket of a series, or one downsampled row)."""

    start: float
    end: float = -math.inf
    windows: int = 0
    count: int = 0
    errors: int = 0
    labels: dict[VersionKey, LabelSum] = field(default_factory=dict)  # per model version
    cpu_sum: float = 0.0  # cpu_pct x windows, over the windows that reported it
    cpu_windows: int = 0
    rss_max: int | None = None
    spool_dropped: int | None = None
    hist: Counter[str] = field(default_factory=Counter)
    exact: bool = True
    pct_weighted: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])
    devices: set[str] = field(default_factory=set)
    model: str | None = None
    version: int | None = None
    last_end: float = -math.inf  # of the row that set model/version

    def add(self, row: Telemetry) -> None:
        """Merge one stored row (a raw window or a downsampled one)."""
        self.end = max(self.end, row.end)
        self.windows += row.windows
        self.count += row.count
        self.errors += row.errors
        for key, part in label_parts(row):
            self.labels.setdefault(key, LabelSum()).add(part)
        if row.cpu_pct is not None:
            self.cpu_sum += row.cpu_pct * row.windows
            self.cpu_windows += row.windows
        if row.rss_bytes is not None:
            self.rss_max = max(self.rss_max or 0, row.rss_bytes)
        if row.spool_dropped is not None:
            self.spool_dropped = max(self.spool_dropped or 0, row.spool_dropped)
        if row.latency_hist is not None:
            self.hist.update(json.loads(row.latency_hist))
        elif row.count:
            self.exact = False
        for i, p in enumerate((row.p50_us, row.p95_us, row.p99_us)):
            self.pct_weighted[i] += p * row.count
        self.devices.add(row.device_id)
        if row.end >= self.last_end:
            self.model, self.version, self.last_end = row.model, row.version, row.end

    def percentiles(self) -> tuple[float, float, float]:
        """p50, p95, p99 in microseconds (see the module docstring)."""
        if self.exact:
            h = LatencyHistogram.from_dict(self.hist)
            return (
                round(h.percentile(50), 3),
                round(h.percentile(95), 3),
                round(h.percentile(99), 3),
            )
        n = self.count or 1
        p50, p95, p99 = (round(p / n, 3) for p in self.pct_weighted)
        return p50, p95, p99

    def to_row(self, device_id: str, seq: int, resolution_s: float) -> Telemetry:
        """As one downsampled ``Telemetry`` row: its own version's labels in the columns,
        the other versions' in ``other_versions`` (labels of no model go with its own)."""
        p50, p95, p99 = self.percentiles()
        own = LabelSum()
        for (model, version), part in self.labels.items():
            if (model, version) == (self.model, self.version) or model is None:
                own.add(part)
        return Telemetry(
            device_id=device_id,
            seq=seq,
            start=self.start,
            end=self.end,
            model=self.model,
            version=self.version,
            count=self.count,
            errors=self.errors,
            p50_us=p50,
            p95_us=p95,
            p99_us=p99,
            labelled=own.labelled,
            correct=own.correct,
            abs_err_sum=own.abs_err_sum if own.regression else None,
            sq_err_sum=own.sq_err_sum if own.regression else None,
            other_versions=other_versions_json(self.labels, (self.model, self.version)),
            cpu_pct=self.cpu_sum / self.cpu_windows if self.cpu_windows else None,
            rss_bytes=self.rss_max,
            latency_hist=json.dumps(dict(self.hist), separators=(",", ":")) if self.exact else None,
            spool_dropped=self.spool_dropped,
            windows=self.windows,
            resolution_s=resolution_s,
        )

    def to_point(self) -> dict[str, Any]:
        """As one point of a series (the API's answer)."""
        p50, p95, p99 = self.percentiles()
        classes, values = LabelSum(), LabelSum(regression=True)
        for part in self.labels.values():
            (values if part.regression else classes).add(part)
        return {
            "start": self.start,
            "end": self.end,
            "windows": self.windows,
            "devices": len(self.devices),
            "count": self.count,
            "errors": self.errors,
            "error_ratio": round(self.errors / self.count, 6) if self.count else 0.0,
            "labelled": classes.labelled + values.labelled,
            "correct": classes.correct,
            "accuracy": classes.figures()["accuracy"],  # of the classifiers' labels
            "mae": values.figures()["mae"],  # of the regressors' labels
            "rmse": values.figures()["rmse"],
            "latency_us": {"p50": p50, "p95": p95, "p99": p99},
            "latency_exact": self.exact,
            "cpu_pct": round(self.cpu_sum / self.cpu_windows, 3) if self.cpu_windows else None,
            "rss_bytes_max": self.rss_max,
            "spool_dropped_max": self.spool_dropped,
        }


def merge_by_bucket(rows: Iterable[Telemetry], resolution_s: float) -> dict[int, WindowSum]:
    """Rows merged into buckets of ``resolution_s`` by their start time."""
    out: dict[int, WindowSum] = {}
    for row in rows:
        bucket = int(row.start // resolution_s)
        acc = out.get(bucket)
        if acc is None:
            acc = out[bucket] = WindowSum(start=bucket * resolution_s)
        acc.add(row)
    return out


def group_devices(s: Session, group: str) -> list[str]:
    """The devices carrying a tag (a group is a tag, hub/store/tables.py ``DeviceTag``)."""
    return list(s.exec(select(DeviceTag.device_id).where(DeviceTag.tag == group)).all())


def series(
    s: Session,
    devices: Sequence[str] | None,
    start: float,
    end: float,
    resolution_s: float,
) -> list[dict[str, Any]]:
    """Windows that started in ``[start, end)`` of ``devices`` (None: the whole fleet),
    merged per ``resolution_s`` bucket, oldest first.

    Raises:
        TelemetryQueryError: an empty range, a resolution too fine or giving too many
            points, or a range holding more than MAX_QUERY_ROWS windows.
    """
    if not end > start:
        raise TelemetryQueryError(f"empty range: end {end} <= start {start}")
    if resolution_s < MIN_RESOLUTION_S:
        raise TelemetryQueryError(f"resolution {resolution_s} s < {MIN_RESOLUTION_S} s")
    if (end - start) / resolution_s > MAX_POINTS:
        raise TelemetryQueryError(f"more than {MAX_POINTS} points: use a coarser resolution")
    # by start, as buckets are; "end >= start" lets the index on end narrow the scan
    query = select(Telemetry).where(
        Telemetry.end >= start, Telemetry.start >= start, Telemetry.start < end
    )
    if devices is not None:
        if not devices:
            return []
        query = query.where(col(Telemetry.device_id).in_(list(devices)))
    rows = s.exec(query.limit(MAX_QUERY_ROWS + 1)).all()
    if len(rows) > MAX_QUERY_ROWS:
        raise TelemetryQueryError(f"more than {MAX_QUERY_ROWS} windows: narrow the range")
    buckets = merge_by_bucket(rows, resolution_s)
    return [buckets[k].to_point() for k in sorted(buckets)]


def performance(
    s: Session,
    model: str,
    version: int | None,
    devices: Sequence[str] | None,
    start: float,
    end: float,
    calibration: CalibrationSource | None = None,
) -> list[dict[str, Any]]:
    """Live accuracy (classifier) or MAE / RMSE (regressor) of ``model`` per version, from
    the labels joined on ``devices`` (None: the whole fleet) in windows that started in
    ``[start, end)``; only ``version`` when given. Labels count for the version that made
    the prediction, whatever was active when they came (hub/telemetry/labels.py).

    With ``calibration`` (version -> its calibration table), a classifier's versions also
    get ``estimated_accuracy``, ``estimated_rows`` and ``estimated_devices`` from the
    drift windows' confidence counts (hub/telemetry/estimates.py). A version shows the
    figures it has: measured (``labelled``, ``correct``, ``accuracy``, ``devices``),
    estimated, or both.

    Raises:
        TelemetryQueryError: an empty range, or one holding more than MAX_QUERY_ROWS
            windows with labels (or drift windows).
    """
    if not end > start:
        raise TelemetryQueryError(f"empty range: end {end} <= start {start}")
    query = select(Telemetry).where(
        Telemetry.end >= start,
        Telemetry.start >= start,
        Telemetry.start < end,
        or_(
            and_(col(Telemetry.model) == model, col(Telemetry.labelled) > 0),
            col(Telemetry.other_versions).is_not(None),
        ),
    )
    if devices is not None:
        if not devices:
            return []
        query = query.where(col(Telemetry.device_id).in_(list(devices)))
    rows = s.exec(query.limit(MAX_QUERY_ROWS + 1)).all()
    if len(rows) > MAX_QUERY_ROWS:
        raise TelemetryQueryError(f"more than {MAX_QUERY_ROWS} windows: narrow the range")
    sums: dict[int, LabelSum] = {}
    reporters: dict[int, set[str]] = {}
    for row in rows:
        for (m, v), part in label_parts(row):
            if m != model or v is None or (version is not None and v != version):
                continue
            sums.setdefault(v, LabelSum()).add(part)
            reporters.setdefault(v, set()).add(row.device_id)
    measured = {v: {**sums[v].figures(), "devices": len(reporters[v])} for v in sums}
    estimated: dict[int, dict[str, Any]] = {}
    if calibration is not None:
        try:
            estimated = estimated_performance(s, model, version, devices, start, end, calibration)
        except EstimateRangeError as e:
            raise TelemetryQueryError(str(e)) from e
    return [
        {"version": v, "task": "classification", **measured.get(v, {}), **estimated.get(v, {})}
        for v in sorted(measured.keys() | estimated.keys())
    ]
