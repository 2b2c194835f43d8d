"""Evaluating a model file on held-out rows, the int8 gate, and the golden rows it ships.

The golden rows are the device's health check: held-out rows (every class in turn) and
the scores the exact bytes that ship give for them. Measured: the int8 model's
probabilities (steps of 1/255) are bit-identical between fused integer kernels and the
unfused path, 1 and 2 threads, one row and a batch.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from hub.ml.compatibility import scores_output
from hub.ml.errors import GateError, PipelineError
from hub.ml.runner import open_runner
from hub.ml.training_data import IntLabels

__all__ = ["SATURATED", "evaluate", "gate", "golden_indices", "spread_indices"]

SATURATED = 0.99  # a golden row's top score stays below this, so it tests more than 0/1


def evaluate(model_bytes: bytes, x: npt.ArrayLike, y: npt.ArrayLike) -> float:
    """Accuracy (0..1) of the model's class scores (argmax) on labelled rows.

    Raises:
        PipelineError: the model cannot be loaded or run on these rows.
    """
    runner = open_runner(model_bytes)
    scores = runner.run(np.asarray(x, dtype=np.float32), scores_output(runner))
    labels = np.asarray(y)
    if len(scores) != len(labels):
        raise PipelineError(f"{len(scores)} score rows for {len(labels)} labels")
    return float(np.mean(scores.argmax(axis=1) == labels))


def gate(accuracy_fp32: float, accuracy_int8: float, max_loss_points: float) -> None:
    """Refuse the int8 model if it lost more than ``max_loss_points`` percentage points.

    Raises:
        GateError: it did.
    """
    if (accuracy_fp32 - accuracy_int8) * 100 > max_loss_points:
        raise GateError(accuracy_fp32, accuracy_int8, max_loss_points)


def golden_indices(
    y: IntLabels, scores: npt.NDArray[np.float32], n: int, n_classes: int
) -> npt.NDArray[np.intp]:
    """``n`` rows taking classes in turn, so the health check sees every class, among
    rows the model is not saturated on (all rows if too few)."""
    pool = np.flatnonzero(scores.max(axis=1) < SATURATED)
    if len(pool) < n:
        pool = np.arange(len(y))
    rank = np.zeros(len(pool), dtype=np.int64)
    for c in range(n_classes):
        members = np.flatnonzero(y[pool] == c)
        rank[members] = np.arange(len(members))
    return pool[np.argsort(rank * n_classes + y[pool], kind="stable")[:n]]


def spread_indices(y: npt.NDArray[np.float32], n: int) -> npt.NDArray[np.intp]:
    """``n`` rows whose targets spread over the range (a regressor's golden rows)."""
    order = np.argsort(y, kind="stable")
    pick = np.linspace(0, len(order) - 1, num=min(n, len(order))).round().astype(np.intp)
    return np.sort(order[np.unique(pick)])
