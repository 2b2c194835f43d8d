"""Labelled rows for the pipeline: the built-in generator's, or any X and y, split in two.

A ``Dataset`` holds training rows (the quantizer calibrates on some of them too) and
held-out rows (evaluation, the gate and the golden rows of the health check). Rows the
devices captured are kept apart, in hub/ml/datasets.py; a retrain adds them here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from hub.ml.config import PipelineConfig
from hub.ml.errors import PipelineError
from shared.sensors import CLASSES, FEATURES, generate

__all__ = [
    "Dataset",
    "FloatRows",
    "IntLabels",
    "builtin_dataset",
    "calibration_rows",
    "dataset_from_arrays",
]

FloatRows = npt.NDArray[np.float32]
IntLabels = npt.NDArray[np.int64]


@dataclass(frozen=True)
class Dataset:
    """Labelled rows: training rows (also calibration) and held-out rows."""

    x_train: FloatRows
    y_train: IntLabels
    x_holdout: FloatRows
    y_holdout: IntLabels
    features: tuple[str, ...]
    classes: tuple[str, ...]

    def __post_init__(self) -> None:
        width, k = len(self.features), len(self.classes)
        for part, x, y in (
            ("train", self.x_train, self.y_train),
            ("holdout", self.x_holdout, self.y_holdout),
        ):
            if x.dtype != np.float32 or x.ndim != 2 or x.shape[1] != width or len(x) == 0:
                raise PipelineError(
                    f"{part} rows must be float32 [n>0, {width}], got {x.dtype} {x.shape}"
                )
            if y.dtype != np.int64 or y.shape != (len(x),):
                raise PipelineError(
                    f"{part} labels must be int64 [{len(x)}], got {y.dtype} {y.shape}"
                )
            if not np.isfinite(x).all():
                raise PipelineError(f"{part} rows contain NaN or infinity")
            if y.min() < 0 or y.max() >= k:
                raise PipelineError(f"{part} labels must be class indices 0..{k - 1}")
        if len(np.unique(self.y_train)) != k:
            raise PipelineError(f"the training rows must contain all {k} classes")


def builtin_dataset(config: PipelineConfig) -> Dataset:
    """The seeded sensor rows: one draw, split into training and held-out rows."""
    x, y = generate(config.n_train + config.n_holdout, seed=config.seed)
    n = config.n_train
    return Dataset(x[:n], y[:n], x[n:], y[n:], FEATURES, CLASSES)


def dataset_from_arrays(
    x: npt.ArrayLike,
    y: npt.ArrayLike,
    *,
    holdout_fraction: float = 0.25,
    seed: int = 7,
    features: Sequence[str] | None = None,
    classes: Sequence[str] | None = None,
) -> Dataset:
    """A dataset from X (rows of floats) and y (class indices 0..k-1), split at random.

    Raises:
        PipelineError: shapes, values or names do not fit together.
    """
    xa = np.asarray(x, dtype=np.float32)
    ya = np.asarray(y)
    if xa.ndim != 2 or ya.shape != (len(xa),):
        raise PipelineError(f"X must be [n, features] and y [n], got {xa.shape} and {ya.shape}")
    if not np.issubdtype(ya.dtype, np.integer):
        raise PipelineError(f"y must hold class indices (integers), got {ya.dtype}")
    if not 0 < holdout_fraction < 1:
        raise PipelineError("holdout_fraction must be within (0, 1)")
    n_holdout = max(1, round(len(xa) * holdout_fraction))
    order = np.random.default_rng(seed).permutation(len(xa))
    hold, tr = np.sort(order[:n_holdout]), np.sort(order[n_holdout:])
    k = int(ya.max()) + 1 if len(ya) else 0
    names_f = (
        tuple(features) if features is not None else tuple(f"x{i}" for i in range(xa.shape[1]))
    )
    names_c = tuple(classes) if classes is not None else tuple(str(i) for i in range(k))
    ya = ya.astype(np.int64)
    return Dataset(xa[tr], ya[tr], xa[hold], ya[hold], names_f, names_c)


def calibration_rows(x: FloatRows, n: int, seed: int) -> FloatRows:
    """``n`` training rows picked at random (all of them when there are fewer)."""
    if n >= len(x):
        return x
    pick = np.random.default_rng(seed).choice(len(x), size=n, replace=False)
    return x[np.sort(pick)]
