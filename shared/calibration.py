"""Estimated accuracy from confidence: the calibration table and the confidence counts.

Confidence-based performance estimation (CBPE, as NannyML names it): a classifier's
accuracy where true labels never come is estimated from how confident it is. The hub
bins the shipped model's top-class probability (the max of its class scores) on the
hold-out rows and records, per bin, how often the prediction was right: the
**calibration table**, in the signed baseline's ``outputs.calibration``
(hub/ml/baseline.py builds it). A device counts its own rows' top-class probabilities on
the same bin edges (agent/drift.py), into the drift sketch's optional
``outputs.confidence`` (shared/drift.py), which merges by adding. The hub then estimates

    accuracy ~= sum_b counts_b * accuracy_b / sum_b counts_b

over any merge of sketches (hub/telemetry/estimates.py). It holds while the model's
confidence keeps its hold-out meaning: P(y | x) unchanged (covariate shift). When the
relationship between inputs and labels changes and the confidence does not (concept
drift), the estimate cannot see it; docs/drift.md has the measured figures.

Binning (:func:`confidence_bins`, the one rule both sides use): bin i is ``[e_i,
e_i+1)``, the last one closed; a top-class probability below ``e_0`` = 0 goes to the
first bin and one above ``e_B`` = 1 to the last (float rounding of a softmax); a NaN is
not counted.

Exceptions::

    CalibrationError(detail)   a malformed calibration table (a ValueError, which
                               shared/drift.py ``Baseline.from_manifest`` reports as a
                               DriftError)
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt

__all__ = [
    "MAX_CONFIDENCE_BINS",
    "SCORES_OUTPUT",
    "Calibration",
    "CalibrationError",
    "confidence_bins",
    "confidence_counts",
]

MAX_CONFIDENCE_BINS: Final = 256  # bins of a calibration table (and of a sketch's counts)
MAX_OUTPUT_NAME: Final = 128  # characters of the class-score output's name
SCORES_OUTPUT: Final = "probabilities"  # the class-score output when a table names none
FEW_CLASSES: Final = 16  # up to this many classes, top_class goes column by column

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


class CalibrationError(ValueError):
    """A calibration table that is not valid."""


@dataclass(frozen=True, eq=False)
class Calibration:
    """A model's hold-out accuracy per bin of its top-class probability.

    Attributes:
        output: the model output holding the class scores ([rows, classes]).
        edges: B + 1 strictly increasing bin edges, from 0 to 1.
        accuracy: per bin, the accuracy the estimate credits a row with (in [0, 1]).
        rows: per bin, the hold-out rows it was measured on.
    """

    output: str
    edges: FloatArray
    accuracy: FloatArray
    rows: IntArray

    @property
    def bins(self) -> int:
        return len(self.accuracy)

    @classmethod
    def from_manifest(cls, table: Any) -> Calibration:
        """Read ``baseline["outputs"]["calibration"]``.

        Raises:
            CalibrationError: missing or inconsistent fields, sizes beyond the limits.
        """
        if not isinstance(table, Mapping):
            raise CalibrationError("calibration must be an object")
        output = table.get("output", SCORES_OUTPUT)
        if not isinstance(output, str) or not 0 < len(output) <= MAX_OUTPUT_NAME:
            raise CalibrationError(f"calibration output must be a name of 1..{MAX_OUTPUT_NAME}")
        edges = _numbers(table.get("edges"), MAX_CONFIDENCE_BINS + 1, "edges")
        if len(edges) < 2 or (np.diff(edges) <= 0).any() or edges[0] != 0 or edges[-1] != 1:
            raise CalibrationError("calibration edges must rise strictly from 0 to 1")
        accuracy = _numbers(table.get("accuracy"), MAX_CONFIDENCE_BINS, "accuracy")
        if len(accuracy) != len(edges) - 1 or (accuracy < 0).any() or (accuracy > 1).any():
            raise CalibrationError("calibration accuracy needs one share in [0, 1] per bin")
        rows_raw = table.get("rows", [0] * len(accuracy))
        if (
            not isinstance(rows_raw, list)
            or len(rows_raw) != len(accuracy)
            or not all(_count(r) for r in rows_raw)
        ):
            raise CalibrationError("calibration rows needs one non-negative int per bin")
        return cls(output, edges, accuracy, np.asarray(rows_raw, dtype=np.int64))

    def to_json(self) -> dict[str, Any]:
        """The ``outputs.calibration`` object of a baseline."""
        return {
            "output": self.output,
            "edges": [float(e) for e in self.edges],
            "accuracy": [float(a) for a in self.accuracy],
            "rows": [int(r) for r in self.rows],
        }

    def estimate(self, counts: npt.ArrayLike) -> float | None:
        """Expected accuracy of rows counted on these bins (None when none were).

        Raises:
            CalibrationError: ``counts`` is not one count per bin.
        """
        c = np.asarray(counts, dtype=np.float64)
        if c.shape != (self.bins,):
            raise CalibrationError(f"{c.shape} confidence counts for {self.bins} bins")
        total = float(c.sum())
        return float(c @ self.accuracy) / total if total > 0 else None


def top_class(scores: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """Each row's largest class score ([rows, classes] -> [rows]; NaN stays NaN).

    With a few classes, column by column: numpy's max along a short last axis costs
    ~10 us for 256 rows of 4 classes, np.maximum over the 4 columns ~2 us.
    """
    top: npt.NDArray[Any]
    if 0 < scores.shape[1] <= FEW_CLASSES:
        top = functools.reduce(np.maximum, scores.T)
    else:
        top = scores.max(axis=1)
    return top


def confidence_bins(top: npt.NDArray[Any], edges: FloatArray) -> IntArray:
    """The bin of each top-class probability in ``top`` (no NaN in it; module docstring):
    the number of inner edges at or below it."""
    idx: IntArray = np.searchsorted(edges[1:-1], top, side="right")
    return idx


def confidence_counts(scores: npt.NDArray[Any], edges: FloatArray) -> IntArray:
    """Per bin of ``edges``, the rows of ``scores`` ([rows, classes > 0]) whose top-class
    probability falls in it (module docstring: bins, out-of-range values, NaN)."""
    top = top_class(scores)
    if not math.isfinite(top.sum()):
        top = top[top == top]  # NaN != NaN: an unreadable row is not counted
    counts = np.bincount(confidence_bins(top, edges), minlength=len(edges) - 1)
    return counts.astype(np.int64, copy=False)


def _numbers(raw: Any, limit: int, what: str) -> FloatArray:
    if not isinstance(raw, list) or not 0 < len(raw) <= limit:
        raise CalibrationError(f"calibration {what} must list 1..{limit} numbers")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in raw):
        raise CalibrationError(f"calibration {what} must be numbers")
    try:
        out = np.asarray(raw, dtype=np.float64)
    except OverflowError as e:  # an int beyond float64
        raise CalibrationError(f"calibration {what} must be finite") from e
    if not np.isfinite(out).all():
        raise CalibrationError(f"calibration {what} must be finite")
    return out


def _count(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and 0 <= x < 2**63
