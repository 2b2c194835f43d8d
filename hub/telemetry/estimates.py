"""Estimated accuracy where labels never come: confidence-based performance estimation.

Each stored drift window (``DriftWindow.sketch``, the wire form) of a classifier whose
baseline has a calibration table carries ``outputs.confidence``: the window's rows per
bin of the model's top-class probability (shared/calibration.py). Counts add up over
windows and devices, so for any scope (a device, a group, the fleet), model version and
time range the hub sums them and reads

    estimated_accuracy = sum_b counts_b * accuracy_b / sum_b counts_b

against that version's table; ``estimated_rows`` is the sum of the counts. Windows count
by their ``ts`` (the window's end) in ``[start, end)``. A window whose counts do not fit
the version's table (another number of bins) is left out (the ingest counted it as a
``layout_mismatch``, hub/telemetry/drift.py); a version without
a table (built before it existed, or whose scores are not probabilities) or without
counts (devices running an older agent) has no estimate.

The estimate holds while the model's confidence keeps its hold-out meaning: under
covariate shift it follows the measured accuracy, under concept drift (P(y | x) changes,
the confidence does not) it cannot (docs/drift.md).

Exceptions::

    EstimateRangeError   a range holding more drift windows than one estimate reads
                         (hub/telemetry/queries.py answers it as a TelemetryQueryError)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
from sqlmodel import Session, col, select

from hub.store.tables import DriftWindow
from shared.calibration import Calibration

__all__ = ["CalibrationSource", "ConfidenceSum", "EstimateRangeError", "estimated_performance"]

MAX_ESTIMATE_WINDOWS: Final = 500_000  # drift windows one estimate may read
ROUND: Final = 6  # decimals of an estimated accuracy, as of a measured one

CalibrationSource = Callable[[int], Calibration | None]  # version -> its table, if any


class EstimateRangeError(ValueError):
    """More drift windows than one estimate reads; the message says so."""


@dataclass
class ConfidenceSum:
    """Confidence counts of one model version, summed over windows."""

    counts: np.ndarray[Any, np.dtype[np.int64]]
    devices: set[str] = field(default_factory=set)

    def figures(self, calibration: Calibration) -> dict[str, Any] | None:
        """``estimated_accuracy``, ``estimated_rows`` and ``estimated_devices``; None
        when no row was counted."""
        estimate = calibration.estimate(self.counts)
        if estimate is None:
            return None
        return {
            "estimated_accuracy": round(estimate, ROUND),
            "estimated_rows": int(self.counts.sum()),
            "estimated_devices": len(self.devices),
        }


def estimated_performance(
    s: Session,
    model: str,
    version: int | None,
    devices: Sequence[str] | None,
    start: float,
    end: float,
    calibration: CalibrationSource,
) -> dict[int, dict[str, Any]]:
    """Per version of ``model`` (only ``version`` when given): the estimated accuracy
    of the rows ``devices`` (None: the whole fleet) sketched in windows that ended in
    ``[start, end)``.

    Raises:
        EstimateRangeError: the range holds more than MAX_ESTIMATE_WINDOWS windows.
    """
    confidence = col(DriftWindow.sketch)[("outputs", "confidence")]
    query = select(DriftWindow.device_id, DriftWindow.version, confidence).where(
        DriftWindow.model == model, DriftWindow.ts >= start, DriftWindow.ts < end
    )
    if version is not None:
        query = query.where(DriftWindow.version == version)
    if devices is not None:
        if not devices:
            return {}
        query = query.where(col(DriftWindow.device_id).in_(list(devices)))
    rows = s.exec(query.limit(MAX_ESTIMATE_WINDOWS + 1)).all()
    if len(rows) > MAX_ESTIMATE_WINDOWS:
        raise EstimateRangeError(
            f"more than {MAX_ESTIMATE_WINDOWS} drift windows: narrow the range"
        )
    tables: dict[int, Calibration | None] = {}
    sums: dict[int, ConfidenceSum] = {}
    for device_id, v, counts in rows:
        if not counts:
            continue  # an older agent's window, or one of a version without a table
        if v not in tables:
            tables[v] = calibration(v)
        table = tables[v]
        if table is None:
            continue
        if not isinstance(counts, list) or len(counts) != table.bins:
            continue
        acc = sums.get(v)
        if acc is None:
            acc = sums[v] = ConfidenceSum(np.zeros(table.bins, dtype=np.int64))
        acc.counts += np.asarray(counts, dtype=np.int64)
        acc.devices.add(device_id)
    out = {}
    for v, acc in sums.items():
        table = tables[v]
        figures = None if table is None else acc.figures(table)
        if figures is not None:
            out[v] = figures
    return out
