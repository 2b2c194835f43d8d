"""Live model performance from labelled predictions: label figures per model version.

A telemetry window (a ``Telemetry`` row) carries the labels joined on the device in that
window: for the window's own ``model``/``version`` in its ``labelled``, ``correct``,
``abs_err_sum`` and ``sq_err_sum`` columns, and for other versions (labels that came
after a deployment or rollback) in ``other_versions``, as the agent sent them
(docs/protocol.md). :func:`label_parts` reads both; :class:`LabelSum` adds them up
exactly (counts and sums), so any range, device set or downsampled row merges to the
same figures: ``accuracy = correct / labelled`` for a classifier, ``mae =
abs_err_sum / labelled`` and ``rmse = sqrt(sq_err_sum / labelled)`` for a regressor.

A version is a classifier or a regressor: a window that carries error sums for it makes
it a regressor (its ``correct`` is then ignored).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from hub.store.tables import Telemetry

VersionKey = tuple[str | None, int | None]  # (model, version); None: a window of no model


@dataclass
class LabelSum:
    """Labels of one model version, summed over windows."""

    labelled: int = 0
    correct: int = 0
    abs_err_sum: float = 0.0
    sq_err_sum: float = 0.0
    regression: bool = False

    def add(self, other: LabelSum) -> None:
        self.labelled += other.labelled
        self.correct += other.correct
        self.abs_err_sum += other.abs_err_sum
        self.sq_err_sum += other.sq_err_sum
        self.regression = self.regression or other.regression

    @classmethod
    def from_fields(cls, fields: dict[str, Any]) -> LabelSum:
        """From an ``other_versions`` entry (validated by the ingest)."""
        regression = "abs_err_sum" in fields or "sq_err_sum" in fields
        return cls(
            labelled=int(fields.get("labelled", 0)),
            correct=0 if regression else int(fields.get("correct", 0)),
            abs_err_sum=float(fields.get("abs_err_sum", 0.0)),
            sq_err_sum=float(fields.get("sq_err_sum", 0.0)),
            regression=regression,
        )

    def fields(self) -> dict[str, Any]:
        """As stored: ``labelled`` and ``correct``, or ``labelled`` and the error sums."""
        if self.regression:
            return {
                "labelled": self.labelled,
                "abs_err_sum": self.abs_err_sum,
                "sq_err_sum": self.sq_err_sum,
            }
        return {"labelled": self.labelled, "correct": self.correct}

    def figures(self) -> dict[str, Any]:
        """What an operator reads: the task, labelled rows and accuracy or MAE / RMSE."""
        n = self.labelled
        if self.regression:
            return {
                "task": "regression",
                "labelled": n,
                "mae": _finite(self.abs_err_sum / n) if n else None,
                "rmse": _finite(math.sqrt(self.sq_err_sum / n)) if n else None,
            }
        return {
            "task": "classification",
            "labelled": n,
            "correct": self.correct,
            "accuracy": round(self.correct / n, 6) if n else None,
        }


def label_parts(row: Telemetry) -> Iterator[tuple[VersionKey, LabelSum]]:
    """The labels a stored window carries, per model version (none without labels)."""
    if row.labelled:
        regression = row.abs_err_sum is not None or row.sq_err_sum is not None
        yield (
            (row.model, row.version),
            LabelSum(
                labelled=row.labelled,
                correct=0 if regression else row.correct,
                abs_err_sum=row.abs_err_sum or 0.0,
                sq_err_sum=row.sq_err_sum or 0.0,
                regression=regression,
            ),
        )
    if row.other_versions:
        for entry in json.loads(row.other_versions):
            if entry.get("labelled"):
                yield (entry["model"], entry["version"]), LabelSum.from_fields(entry)


def other_versions_json(labels: dict[VersionKey, LabelSum], own: VersionKey) -> str | None:
    """The ``other_versions`` column of a downsampled row whose own version is ``own``."""
    entries = [
        {"model": model, "version": version, **s.fields()}
        for (model, version), s in sorted(labels.items(), key=lambda kv: str(kv[0]))
        if (model, version) != own and model is not None and version is not None
    ]
    return json.dumps(entries, separators=(",", ":")) if entries else None


def _finite(x: float) -> float | None:
    return round(x, 6) if math.isfinite(x) else None
