"""Labelled rows for the pipeline: the built-in generator's, or any X and y, split in two.

A ``Dataset`` holds training rows (the quantizer calibrates on some of them too) and
held-out rows (evaluation, the gate and the golden rows of the health check). Rows the
devices captured are kept apart, in hub/ml/data/captures.py; a retrain adds them here.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from hub.ml.config import PipelineConfig
from hub.ml.errors import PipelineError
from shared.sensors import CLASSES, FEATURES, generate

__all__ = [
    "BUILTIN",
    "Dataset",
    "FloatRows",
    "IntLabels",
    "builtin_dataset",
    "calibration_rows",
    "dataset_from_arrays",
    "holdout_indices",
    "split_arrays",
]

FloatRows = npt.NDArray[np.float32]
IntLabels = npt.NDArray[np.int64]
TASKS: Final = ("classification", "regression")
BUILTIN: Final = "builtin:vibration"  # the generator of shared/sensors.py, as a dataset name


@dataclass(frozen=True)
class Dataset:
    """Labelled rows: training rows (also calibration) and held-out rows.

    Rows are ``[features]`` (tabular) or any fixed ``row_shape`` (images ``[H, W(, C)]``,
    windows ``[T, C]``); ``features`` names the values of a flattened row. Labels are
    class indices into ``classes`` (classification) or float32 targets (regression, with
    ``classes`` empty).
    """

    x_train: FloatRows
    y_train: npt.NDArray[Any]
    x_holdout: FloatRows
    y_holdout: npt.NDArray[Any]
    features: tuple[str, ...]
    classes: tuple[str, ...]
    task: str = "classification"
    split: dict[str, Any] = field(default_factory=dict)  # how the rows were split

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise PipelineError(f"task must be one of {', '.join(TASKS)}, got {self.task!r}")
        width = len(self.features)
        for part, x, y in (
            ("train", self.x_train, self.y_train),
            ("holdout", self.x_holdout, self.y_holdout),
        ):
            flat = int(np.prod(x.shape[1:])) if x.ndim >= 2 else -1
            if x.dtype != np.float32 or x.ndim < 2 or flat != width or len(x) == 0:
                raise PipelineError(
                    f"{part} rows must be float32 [n>0, ...] of {width} values each,"
                    f" got {x.dtype} {x.shape}"
                )
            if not np.isfinite(x).all():
                raise PipelineError(f"{part} rows contain NaN or infinity")
            self._check_labels(part, x, y)
        if self.is_classifier and len(np.unique(self.y_train)) != len(self.classes):
            raise PipelineError(f"the training rows must contain all {len(self.classes)} classes")

    def _check_labels(self, part: str, x: FloatRows, y: npt.NDArray[Any]) -> None:
        if self.is_classifier:
            k = len(self.classes)
            if y.dtype != np.int64 or y.shape != (len(x),):
                raise PipelineError(
                    f"{part} labels must be int64 [{len(x)}], got {y.dtype} {y.shape}"
                )
            if y.min() < 0 or y.max() >= k:
                raise PipelineError(f"{part} labels must be class indices 0..{k - 1}")
        elif y.dtype != np.float32 or y.shape != (len(x),) or not np.isfinite(y).all():
            raise PipelineError(f"{part} targets must be finite float32 [{len(x)}]")

    @property
    def is_classifier(self) -> bool:
        return self.task == "classification"

    @property
    def row_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.x_train.shape[1:])

    @property
    def kind(self) -> str:
        """``tabular`` for rows of features, else ``image`` or ``window``."""
        if len(self.row_shape) == 1:
            return "tabular"
        return str(self.split.get("kind", "image"))


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


def split_arrays(
    x: npt.NDArray[np.float32],
    y: npt.NDArray[Any],
    *,
    task: str,
    classes: Sequence[str] = (),
    features: Sequence[str] | None = None,
    holdout_fraction: float = 0.2,
    seed: int = 7,
    kind: str = "tabular",
) -> Dataset:
    """A seeded hold-out split: stratified by class for a classifier, random otherwise.

    The split is recorded on the dataset (seed, fraction, whether stratified, and the
    sha256 of the held-out row indices), so a lineage can say what judged a model.

    Raises:
        PipelineError: too few rows for the split, or rows and labels that do not fit.
    """
    n = len(x)
    hold = holdout_indices(
        y, stratified=task == "classification", holdout_fraction=holdout_fraction, seed=seed
    )
    if len(hold) >= n:
        raise PipelineError(f"{n} rows leave none to train on after a hold-out of {len(hold)}")
    mask = np.zeros(n, dtype=bool)
    mask[hold] = True
    width = int(np.prod(x.shape[1:]))
    names = tuple(features) if features is not None else tuple(f"x{i}" for i in range(width))
    split = {
        "seed": seed,
        "holdout_fraction": holdout_fraction,
        "stratified": task == "classification",
        "holdout_rows": int(mask.sum()),
        "train_rows": int(n - mask.sum()),
        "holdout_sha256": hashlib.sha256(np.flatnonzero(mask).astype("<i8").tobytes()).hexdigest(),
        "kind": kind,
    }
    return Dataset(
        x[~mask], y[~mask], x[mask], y[mask], names, tuple(classes), task=task, split=split
    )


def holdout_indices(
    y: npt.NDArray[Any], *, stratified: bool, holdout_fraction: float, seed: int
) -> npt.NDArray[np.intp]:
    """The sorted row indices a seeded split holds out (what ``split_arrays`` keeps apart
    and records the sha256 of, as ``holdout_sha256``: ``sha256`` of them as ``<i8``).

    Args:
        y: the labels: class indices when ``stratified``.
        stratified: each class in its share (a classifier), else rows at random.

    Raises:
        PipelineError: ``holdout_fraction`` is not within (0, 1).
    """
    if not 0 < holdout_fraction < 1:
        raise PipelineError("holdout_fraction must be within (0, 1)")
    n_hold = max(1, round(len(y) * holdout_fraction))
    rng = np.random.default_rng(seed)
    if stratified:
        return _stratified_holdout(y, n_hold, rng)
    return np.sort(rng.permutation(len(y))[:n_hold])


def _stratified_holdout(
    y: npt.NDArray[Any], n_hold: int, rng: np.random.Generator
) -> npt.NDArray[np.intp]:
    """About ``n_hold`` row indices with each class in its share, at least one of each."""
    picked = []
    share = n_hold / len(y)
    for c in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == c))
        take = min(len(members) - 1, max(1, round(len(members) * share)))
        picked.append(members[:take])
    return np.sort(np.concatenate(picked))


def calibration_rows(x: FloatRows, n: int, seed: int) -> FloatRows:
    """``n`` training rows picked at random (all of them when there are fewer)."""
    if n >= len(x):
        return x
    pick = np.random.default_rng(seed).choice(len(x), size=n, replace=False)
    return x[np.sort(pick)]
