"""The drift baseline shipped in the manifest: per-feature quantile bins and class shares,
and a classifier's calibration table.

Devices bin their live rows on these edges (agent/drift.py) and the hub scores the
sketches against them (hub/telemetry/drift.py). The pipeline computes them once, from the
training rows and the scores of the exact bytes that ship.

The calibration table (shared/calibration.py) is computed on the **hold-out** rows, which
the model never trained on (on its training rows it is more often right than its
confidence says): per bin of the top-class probability, the share of right predictions.
Devices count their rows' confidence on the same bins and the hub estimates accuracy
from those counts where no labels come (hub/telemetry/estimates.py).

- Bins: CONFIDENCE_BINS = 20 equal-width bins over [0, 1], the same for every model (a
  reader compares tables at a glance). A softmax's top class is at least 1/k, so a
  binary model uses the upper 10 bins and a 4-class one the upper 15; 20 keeps a binary
  model's table from collapsing to 5 bins, and 20 counts per sketch cost ~60 bytes of JSON.
  Measured on the built-in model and the simulator's drifts, 10 or 20 bins move the
  estimate by < 0.005 (docs/drift.md).
- Sparse bins: a bin's accuracy is ``(right + PRIOR_ROWS * conf) / (rows + PRIOR_ROWS)``
  with ``conf`` the bin's mean top-class probability on the hold-out (its midpoint when
  no hold-out row fell in it): an empty bin takes the model at its word, one with a few
  rows leans on it, and one with hundreds of rows reads its own hold-out accuracy (the
  prior moves it by PRIOR_ROWS / (rows + PRIOR_ROWS) of the gap, ~2% at 1,000 rows).
- Only for scores that are probabilities: finite, in [0, 1] and each row summing to 1
  within PROBABILITY_TOLERANCE (an int8 softmax is off by ~0.004). A model whose scores
  are logits ships no table, and gets no estimate.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from hub.ml.errors import PipelineError
from shared.calibration import SCORES_OUTPUT, Calibration, confidence_bins
from shared.sensors import CLASSES, FEATURES

__all__ = ["CONFIDENCE_BINS", "PRIOR_ROWS", "baseline_stats", "calibration_table"]

log = logging.getLogger(__name__)

CONFIDENCE_BINS: Final = 20  # equal-width bins of the top-class probability over [0, 1]
PRIOR_ROWS: Final = 20  # hold-out rows' weight given to a bin's own mean confidence
PROBABILITY_TOLERANCE: Final = 0.02  # |row sum - 1| (and range slack) of probabilities

Holdout = tuple[npt.ArrayLike, npt.ArrayLike]  # (class scores [n, k], labels [n])


def baseline_stats(
    x: npt.ArrayLike,
    probabilities: npt.ArrayLike,
    bins: int,
    *,
    features: Sequence[str] = FEATURES,
    classes: Sequence[str] = CLASSES,
    task: str = "classification",
    holdout: Holdout | None = None,
    scores_output: str = SCORES_OUTPUT,
) -> dict[str, Any]:
    """Reference statistics for drift, JSON-able.

    Per feature: ``edges`` (bins+1 quantiles of ``x``, strictly increasing, float32
    values), ``hist`` (proportion of rows per bin, numpy.histogram convention: bins are
    [e_i, e_i+1) and the last one is closed, so every row of ``x`` falls in one), ``mean``
    and ``std``. A live row below ``edges[0]`` or above ``edges[-1]`` belongs in the
    agent's underflow / overflow bins, whose reference share is 0. Outputs: the share of
    rows whose argmax is each class, or for a regressor (``probabilities`` then holds
    its values, [n]) quantile ``edges`` of the value and the share in each bin.
    Image and window rows are flattened: one feature per value.

    With ``holdout`` (a classifier's class scores on its hold-out rows, and their
    labels), the outputs also get ``calibration`` (:func:`calibration_table`) naming
    ``scores_output``, when those scores are probabilities.

    Raises:
        PipelineError: shapes or names do not fit, or values are not finite.
    """
    xa = np.asarray(x, dtype=np.float32)
    xa = xa.reshape(len(xa), -1) if xa.ndim > 2 else xa
    pa = np.asarray(probabilities, dtype=np.float64)
    if xa.ndim != 2 or xa.shape[1] != len(features) or len(xa) == 0:
        raise PipelineError(f"x must be [n>0, {len(features)}], got {xa.shape}")
    if task != "classification":
        pa = pa.reshape(len(xa), -1)[:, 0] if pa.size == len(xa) else pa
    elif pa.shape != (len(xa), len(classes)):
        raise PipelineError(f"probabilities must be [{len(xa)}, {len(classes)}], got {pa.shape}")
    if bins < 1 or not np.isfinite(xa).all():
        raise PipelineError("baseline needs bins >= 1 and finite rows")
    qs = np.linspace(0.0, 1.0, bins + 1)
    stats = []
    for j, name in enumerate(features):
        col = xa[:, j]
        edges = _strictly_increasing(np.quantile(col, qs).astype(np.float32))
        counts, _ = np.histogram(col, bins=edges.astype(np.float64))
        stats.append(
            {
                "name": str(name),
                "edges": [float(e) for e in edges],
                "hist": [float(c) / len(col) for c in counts],
                "mean": float(np.mean(col, dtype=np.float64)),
                "std": float(np.std(col, dtype=np.float64)),
            }
        )
    outputs = _outputs(pa, qs, classes, task)
    # the output these statistics are of: devices find it by this name when it is not
    # ``probabilities`` or ``value`` (a .tflite file's tensors are named by TensorFlow)
    outputs["output"] = scores_output
    if holdout is not None and task == "classification":
        table = calibration_table(*holdout, output=scores_output)
        if table is not None:
            outputs["calibration"] = table
    return {"n": len(xa), "features": stats, "outputs": outputs}


def calibration_table(
    scores: npt.ArrayLike,
    labels: npt.ArrayLike,
    *,
    output: str = SCORES_OUTPUT,
    bins: int = CONFIDENCE_BINS,
) -> dict[str, Any] | None:
    """Hold-out accuracy per bin of the top-class probability (module docstring).

    Args:
        scores: the shipped model's class scores on the hold-out rows, [n, classes].
        labels: their true class indices, [n].
        output: the model output the scores came from (devices read the same one).
        bins: equal-width bins over [0, 1].

    Returns:
        ``{"output", "edges", "accuracy", "rows"}``, or None when ``scores`` are not
        probabilities (logged).

    Raises:
        PipelineError: shapes do not fit, or no rows.
    """
    p = np.asarray(scores, dtype=np.float32)
    y = np.asarray(labels).reshape(-1)
    if p.ndim != 2 or len(p) != len(y) or len(p) == 0 or not 1 <= bins <= 256:
        raise PipelineError(f"calibration needs scores [n>0, k] for n labels, got {p.shape}")
    tol = PROBABILITY_TOLERANCE
    sums = p.sum(axis=1, dtype=np.float64)
    if (
        not np.isfinite(p).all()
        or p.min() < -tol
        or p.max() > 1 + tol
        or (abs(sums - 1) > tol).any()
    ):
        log.info("no calibration table: the %r scores are not probabilities", output)
        return None
    edges = np.linspace(0.0, 1.0, bins + 1).round(6)  # 0.15, not 0.15000000000000002
    top = p.max(axis=1)
    idx = confidence_bins(top, edges)  # as the devices bin their rows
    rows = np.bincount(idx, minlength=bins)
    right = np.bincount(idx, weights=p.argmax(axis=1) == y, minlength=bins)
    conf_sum = np.bincount(idx, weights=top.astype(np.float64), minlength=bins)
    conf = np.where(rows > 0, conf_sum / np.maximum(rows, 1), (edges[:-1] + edges[1:]) / 2)
    accuracy = (right + PRIOR_ROWS * conf) / (rows + PRIOR_ROWS)
    table = Calibration(output, edges, np.clip(accuracy.round(6), 0.0, 1.0), rows)
    return table.to_json()


def _outputs(
    pa: npt.NDArray[np.float64], qs: npt.NDArray[np.float64], classes: Sequence[str], task: str
) -> dict[str, Any]:
    if task == "classification":
        predicted = np.bincount(pa.argmax(axis=1), minlength=len(classes))
        return {
            "classes": [str(c) for c in classes],
            "hist": [float(c) / len(pa) for c in predicted],
        }
    if pa.shape != (len(pa),) or not np.isfinite(pa).all():
        raise PipelineError(f"regression outputs must be finite [{len(pa)}], got {pa.shape}")
    edges = _strictly_increasing(np.quantile(pa, qs).astype(np.float32))
    counts, _ = np.histogram(pa, bins=edges.astype(np.float64))
    return {"edges": [float(e) for e in edges], "hist": [float(c) / len(pa) for c in counts]}


def _strictly_increasing(edges: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """Nudge tied quantiles (a constant or discrete feature) up by one float32 step each."""
    out = edges.copy()
    for i in range(1, len(out)):
        if out[i] <= out[i - 1]:
            out[i] = np.nextafter(out[i - 1], np.float32(np.inf))
    return out
