"""The drift baseline shipped in the manifest: per-feature quantile bins and class shares.

Devices bin their live rows on these edges (agent/drift.py) and the hub scores the
sketches against them (hub/telemetry/drift.py). The pipeline computes them once, from the
training rows and the scores of the exact bytes that ship.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from hub.ml.errors import PipelineError
from shared.sensors import CLASSES, FEATURES

__all__ = ["baseline_stats"]


def baseline_stats(
    x: npt.ArrayLike,
    probabilities: npt.ArrayLike,
    bins: int,
    *,
    features: Sequence[str] = FEATURES,
    classes: Sequence[str] = CLASSES,
    task: str = "classification",
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
    return {"n": len(xa), "features": stats, "outputs": _outputs(pa, qs, classes, task)}


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
