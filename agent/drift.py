"""The on-device drift sketch: a Predictor row observer (agent/predictor.py ``RowObserver``).

:class:`DriftRecorder` bins every row the active model sees on the bin edges of that
model's baseline (from its signed manifest) and keeps count/mean/M2 per feature and the
predicted classes; the device drains it at every tick and the core merges the ticks of a
telemetry window into one ``drift`` message (shared/drift.py has the format and maths).

Cost per predict call (``python -m bench drift_observer``): a copy of the rows into a
buffer; every FLUSH_ROWS rows (and at each drain) the buffer is binned at once with one
broadcast comparison against all edges and one ``bincount``, and two reductions for the
moments: no Python loop over features or rows. Measured here: ~2 us per one-row call,
~0.7 us per row in batches (docs/drift.md). Moments are kept as sums of deviations from a reference
(the "shifted data" method: stable while the live mean stays near the baseline) and
turned into mean/M2 once per drain.

Images and windows (inputs ``[rows, H, W(, C)]`` or ``[rows, T, C]``) are flattened to
``[rows, H*W*C]``: the hub's baseline for such a model is over the flattened values. Rows
whose width does not match the baseline are counted (:attr:`DriftRecorder.mismatched_rows`,
logged once per model version), never sketched. A regressor's output (``value``) is
sketched as the baseline's ``scores`` histogram.

Confidence: when the baseline has a calibration table (shared/calibration.py), each
flush also counts the rows' top-class probability (the max of the class-score output the
table names, ``probabilities`` for the hub's models) on the table's bins, for the hub's
accuracy estimate. It is done with the rest of the binning, off the per-call path; calls
whose outputs lack that output are counted in :attr:`DriftRecorder.skipped_confidence`.

Thread safety: one lock around the buffer, the binning and the drain (an uncontended
lock costs ~0.1 us), so no row is lost or counted twice.
"""

from __future__ import annotations

import json
import logging
import math
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from shared.calibration import confidence_counts
from shared.drift import Baseline, DriftError, DriftSketch

log = logging.getLogger(__name__)

FLUSH_ROWS = 256  # rows buffered before they are binned (16 KiB at 16 features)
# values (rows x features) buffered before they are binned: an image's rows are wide, and
# binning makes a temporary of values x bins bytes (<= 4 MiB at 256 bins)
FLUSH_VALUES = 16_384
BASELINE_FILE = "baseline.json"  # beside the model file: survives restarts and rollbacks

Array = npt.NDArray[Any]
_isfinite = math.isfinite


class ModelSketch(NamedTuple):
    """A sketch and the model version whose baseline it was made on."""

    model: str
    version: int
    sketch: DriftSketch


class _Layout:
    """A baseline compiled for vectorised binning."""

    def __init__(self, baseline: Baseline) -> None:
        self.baseline = baseline
        n_feat = len(baseline.edges)
        width = max(len(e) for e in baseline.edges) + 1  # bins + underflow + overflow
        # lower[j, i]: the left edge of bin i of feature j; NaN pads shorter features
        # (x >= NaN is False, so a pad never counts). idx = #(x >= left edges) + (x > last):
        # 0 underflow (NaN too), 1..B the bins ([e_i, e_i+1), last one closed), B+1 overflow.
        self.lower = np.full((n_feat, width - 2), np.nan)
        for j, e in enumerate(baseline.edges):
            self.lower[j, : len(e) - 1] = e[:-1]
        self.upper = np.array([e[-1] for e in baseline.edges])
        self.width = width
        self.offsets = np.arange(n_feat) * width
        self.n_feat = n_feat
        self.ref_mean = np.array([float(np.mean(e)) for e in baseline.edges])
        self.sizes = [len(e) + 1 for e in baseline.edges]
        self.n_out = len(baseline.output_shares)
        self.out_edges = baseline.output_edges
        self.calibration = baseline.calibration  # None: no confidence counts
        self.flush_rows = max(1, min(FLUSH_ROWS, FLUSH_VALUES // n_feat))


class _Accumulator:
    __slots__ = ("bins", "conf", "n", "out", "rows", "s1", "s2")

    def __init__(self, layout: _Layout) -> None:
        self.rows = 0
        self.bins = np.zeros(layout.n_feat * layout.width, dtype=np.int64)
        self.n = np.zeros(layout.n_feat, dtype=np.int64)
        self.s1 = np.zeros(layout.n_feat)  # sum of (x - ref_mean)
        self.s2 = np.zeros(layout.n_feat)  # sum of (x - ref_mean)**2
        self.out = np.zeros(layout.n_out, dtype=np.int64)
        cal = layout.calibration
        self.conf = None if cal is None else np.zeros(cal.bins, dtype=np.int64)


class DriftRecorder:
    """Accumulates a :class:`DriftSketch` of the active model's rows (a RowObserver)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._key: tuple[str, int] | None = None
        self._layout: _Layout | None = None
        self._acc: _Accumulator | None = None
        self._xs: list[Array] = []  # rows not binned yet
        self._outs: list[dict[str, Array]] = []  # their outputs
        self._buffered = 0  # rows in _xs
        self._out_name: str | None = None  # the output that gives classes or scores
        self.skipped_outputs = 0  # calls whose outputs gave no class or score
        self.skipped_confidence = 0  # calls without the class scores the calibration names
        self.mismatched_rows = 0  # rows whose width is not the baseline's: not sketched
        self._warned = False  # a mismatch logged for the active version

    def activate(self, model: str, version: int, baseline: Mapping[str, Any] | None) -> None:
        """Sketch ``model`` ``version`` from now on (rows of the previous one are dropped).

        A missing or malformed baseline switches sketching off (logged), never raises.
        """
        layout = None
        if baseline:
            try:
                layout = _Layout(Baseline.from_manifest(baseline))
            except DriftError as e:
                log.warning("drift: %s v%d has an unusable baseline: %s", model, version, e)
        with self._lock:
            self._key = (model, version) if layout else None
            self._layout = layout
            self._acc = _Accumulator(layout) if layout else None
            self._xs, self._outs, self._buffered, self._out_name = [], [], 0, None
            self._warned = False

    def observe(self, model: str, version: int, x: Array, outputs: dict[str, Array]) -> None:
        """Buffer the rows (a copy: the caller may reuse its array); bin every FLUSH_ROWS."""
        layout = self._layout
        if layout is None or (model, version) != self._key:
            return  # no baseline, or a call that started before a swap
        if x.ndim != 2:
            x = x.reshape(len(x), -1) if x.ndim > 2 else x.reshape(1, -1)
        if x.shape[1] != layout.n_feat:
            self._mismatch(model, version, x.shape[1], layout.n_feat, len(x))
            return
        with self._lock:
            if self._layout is not layout or self._acc is None:
                return
            self._xs.append(x.copy())
            self._outs.append(outputs)
            self._buffered += x.shape[0]
            if self._buffered >= layout.flush_rows:
                self._flush(layout, self._acc)

    def _mismatch(self, model: str, version: int, width: int, n_feat: int, rows: int) -> None:
        with self._lock:
            self.mismatched_rows += rows
            warned, self._warned = self._warned, True
        if not warned:
            log.warning(
                "drift: %s v%d sees rows of %d values, its baseline has %d features: "
                "not sketched (counted in mismatched_rows)",
                model,
                version,
                width,
                n_feat,
            )

    def _flush(self, layout: _Layout, acc: _Accumulator) -> None:
        """Bin the buffered rows into ``acc`` (caller holds the lock)."""
        if not self._xs:
            return
        xs, outs = self._xs, self._outs
        x = np.concatenate(xs) if len(xs) > 1 else xs[0]
        self._xs, self._outs, self._buffered = [], [], 0
        rows = x.shape[0]
        idx = (x[:, :, None] >= layout.lower).sum(axis=2) + (x > layout.upper)
        acc.bins += np.bincount((idx + layout.offsets).ravel(), minlength=len(acc.bins))
        d = x - layout.ref_mean  # float64
        s1 = d.sum(axis=0)
        if _isfinite(s1.dot(s1)):
            acc.s2 += np.einsum("ij,ij->j", d, d)
            acc.n += rows
        else:  # NaN or inf among the rows: moments over the finite values only
            ok = np.isfinite(d)
            d = np.where(ok, d, 0.0)
            s1 = d.sum(axis=0)
            acc.s2 += (d * d).sum(axis=0)
            acc.n += ok.sum(axis=0)
        acc.s1 += s1
        acc.rows += rows
        out = self._output_counts(layout, outs, rows)
        if out is not None:
            acc.out += out
        if acc.conf is not None:
            self._count_confidence(layout, acc.conf, xs, outs, rows)

    def _count_confidence(
        self,
        layout: _Layout,
        conf: Array,
        xs: list[Array],
        outs: list[dict[str, Array]],
        rows: int,
    ) -> None:
        """Top-class probabilities of the flushed calls onto the calibration bins; a call
        without class scores of one row each is skipped (and counted)."""
        cal = layout.calibration
        assert cal is not None
        name = cal.output
        try:  # the usual case, at ~0.1 us a call: every call has them
            scores = np.concatenate([o[name] for o in outs]) if len(outs) > 1 else outs[0][name]
            usable = scores.ndim == 2 and len(scores) == rows and scores.shape[1]
        except (KeyError, ValueError):
            usable = False
        if not usable:  # call by call
            good = [
                s
                for x, o in zip(xs, outs, strict=True)
                if (s := o.get(name)) is not None
                and s.ndim == 2
                and len(s) == len(x)
                and s.shape[1]
            ]
            self.skipped_confidence += len(outs) - len(good)
            if not good:
                return
            scores = np.concatenate(good)
        conf += confidence_counts(scores, cal.edges)

    def _output_counts(
        self, layout: _Layout, outs: list[dict[str, Array]], rows: int
    ) -> Array | None:
        if self._out_name is None or any(self._out_name not in o for o in outs):
            self._out_name = _pick_output(layout, outs[0])
        name = self._out_name
        if name is None:
            self.skipped_outputs += len(outs)
            return None
        v = np.concatenate([o[name] for o in outs])
        if len(v) != rows:
            self.skipped_outputs += len(outs)
            return None
        if layout.baseline.output_kind == "classes":
            if v.ndim == 2:
                v = v.argmax(axis=1)
            v = v[(v >= 0) & (v < layout.n_out)]
            return np.bincount(v, minlength=layout.n_out)
        score = v.reshape(rows, -1)[:, 0]
        e = layout.out_edges
        idx = (score[:, None] >= e[:-1]).sum(axis=1) + (score > e[-1])
        return np.bincount(idx, minlength=layout.n_out)

    def observe_labels(self, predicted: Array, labels: Array) -> None:
        """Labels do not enter the sketch (data capture uses them)."""

    def drain(self) -> ModelSketch | None:
        """The sketch of the rows since the last drain (None if none), and a fresh start."""
        with self._lock:
            layout, acc, key = self._layout, self._acc, self._key
            if layout is None or acc is None or key is None:
                return None
            self._flush(layout, acc)
            if acc.rows == 0:
                return None
            self._acc = _Accumulator(layout)
        n = acc.n
        safe = np.maximum(n, 1)
        mean_dev = acc.s1 / safe
        m2 = np.maximum(acc.s2 - acc.s1 * mean_dev, 0.0)
        grid = acc.bins.reshape(layout.n_feat, layout.width)
        sketch = DriftSketch(
            rows=acc.rows,
            counts=tuple(grid[j, : layout.sizes[j]].copy() for j in range(layout.n_feat)),
            n=n,
            mean=np.where(n > 0, layout.ref_mean + mean_dev, 0.0),
            m2=np.where(n > 0, m2, 0.0),
            output_kind=layout.baseline.output_kind,
            output_counts=acc.out,
            confidence=acc.conf,
        )
        return ModelSketch(key[0], key[1], sketch)


def save_baseline(model_dir: Path, baseline: Mapping[str, Any]) -> None:
    """Keep a model version's baseline beside its file (rollback and restart need it)."""
    (model_dir / BASELINE_FILE).write_text(json.dumps(dict(baseline)))


def load_baseline(model_dir: Path) -> dict[str, Any] | None:
    """The baseline saved by :func:`save_baseline`, or None."""
    try:
        data = json.loads((model_dir / BASELINE_FILE).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _pick_output(layout: _Layout, outputs: dict[str, Array]) -> str | None:
    """The output that gives classes (a label, else class scores) or a score."""
    if layout.baseline.output_kind == "classes":
        for name, v in outputs.items():  # a label output (int, [rows]) is cheapest
            if v.ndim == 1 and v.dtype.kind in "iu":
                return name
        for name, v in outputs.items():
            if v.ndim == 2 and v.shape[1] == layout.n_out and v.dtype.kind == "f":
                return name
        return None
    value = outputs.get("value")  # a regressor's output (ADR 0014)
    if value is not None and value.dtype.kind == "f":
        return "value"
    for name, v in outputs.items():
        if v.dtype.kind == "f" and v.ndim >= 1:
            return name
    return None
