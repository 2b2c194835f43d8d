"""A model file's figures on held-out rows: quality, per-row latency and size.

Classifiers: accuracy, macro-F1 and the confusion matrix (rows: true class, columns:
predicted). Regressors: MAE, RMSE and R². Latency is the median of single-row runs in the
model's own runtime on one thread (onnxruntime or a TFLite interpreter, as a device runs
it; hub/ml/runner.py), after a warm-up, over up to ``LATENCY_ROWS`` held-out rows.
"""

from __future__ import annotations

import time
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from hub.ml.compatibility import scores_output, value_output
from hub.ml.errors import PipelineError
from hub.ml.runner import ModelRunner, open_runner
from hub.ml.training_data import Dataset

__all__ = ["LATENCY_ROWS", "headline", "model_outputs", "score"]

LATENCY_ROWS: Final = 200  # single-row runs timed per model
WARMUP_RUNS: Final = 20


def model_outputs(
    runner: ModelRunner, x: npt.NDArray[np.float32], task: str
) -> npt.NDArray[np.float32]:
    """Class scores [N, k] of a classifier, or values [N] of a regressor."""
    if task == "classification":
        return runner.run(x, scores_output(runner))
    values = runner.run(x, value_output(runner))
    return values.reshape(len(x), -1)[:, 0]


def score(model_bytes: bytes, data: Dataset, *, latency: bool = True) -> dict[str, Any]:
    """The model's figures on ``data``'s held-out rows (JSON-able).

    Raises:
        PipelineError: the model cannot be loaded or run on these rows.
    """
    runner = open_runner(model_bytes)
    out = model_outputs(runner, data.x_holdout, data.task)
    if len(out) != len(data.y_holdout):
        raise PipelineError(f"{len(out)} output rows for {len(data.y_holdout)} labels")
    figures = (
        _classification(out, data.y_holdout, len(data.classes))
        if data.is_classifier
        else _regression(out, data.y_holdout)
    )
    figures["size_bytes"] = len(model_bytes)
    if latency:
        figures["latency_us_per_row"] = _latency_us(runner, data.x_holdout)
    return figures


def headline(task: str, figures: dict[str, Any]) -> float:
    """The one figure gates compare: accuracy (higher is better) or MAE (lower is)."""
    return float(figures["accuracy"] if task == "classification" else figures["mae"])


def _classification(scores: npt.NDArray[np.float32], y: npt.NDArray[Any], k: int) -> dict[str, Any]:
    predicted = scores.argmax(axis=1)
    confusion = np.zeros((k, k), dtype=np.int64)
    np.add.at(confusion, (y, predicted), 1)
    tp = np.diag(confusion).astype(np.float64)
    precision = tp / np.maximum(confusion.sum(axis=0), 1)
    recall = tp / np.maximum(confusion.sum(axis=1), 1)
    both = precision + recall
    f1 = np.divide(2 * precision * recall, both, out=np.zeros_like(both), where=both > 0)
    return {
        "accuracy": float(np.mean(predicted == y)),
        "macro_f1": float(f1.mean()),
        "confusion": confusion.tolist(),
        "rows": len(y),
    }


def _regression(values: npt.NDArray[np.float32], y: npt.NDArray[Any]) -> dict[str, Any]:
    err = values.astype(np.float64) - y.astype(np.float64)
    ss_tot = float(np.sum((y - np.mean(y, dtype=np.float64)) ** 2))
    ss_res = float(np.sum(err**2))
    return {
        "mae": float(np.mean(np.abs(err))),
        "rmse": float(np.sqrt(np.mean(err**2))),
        "r2": 1.0 - ss_res / ss_tot if ss_tot > 0 else 0.0,
        "rows": len(y),
    }


def _latency_us(runner: ModelRunner, x: npt.NDArray[np.float32]) -> float:
    rows = x[: max(1, min(LATENCY_ROWS, len(x)))]
    for i in range(WARMUP_RUNS):
        runner.run_row(rows[i % len(rows)][None])
    times = []
    for row in rows:
        t0 = time.perf_counter_ns()
        runner.run_row(row[None])
        times.append(time.perf_counter_ns() - t0)
    return float(np.median(times)) / 1000.0
