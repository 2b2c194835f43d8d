"""Drift sketches and drift maths, shared by the agent (which fills sketches) and the hub
(which merges and scores them). numpy only; docs/drift.md describes the wire format.

A :class:`DriftSketch` summarises the rows one device saw in one window, on the bin
edges of the model's baseline (the ``baseline`` field of the signed manifest, built by
hub/ml/pipeline.py ``baseline_stats``):

- per input feature: counts on the baseline's bins plus an underflow bin (``x <
  edges[0]``, and NaN, which compares false with every edge) and an overflow bin (``x >
  edges[-1]``); bins follow numpy.histogram (``[e_i, e_i+1)``, the last one closed), and
  count / mean / M2 of the finite values (Chan et al.'s parallel merge);
- outputs: counts per predicted class, or a score histogram (with underflow / overflow)
  for a model that is not a classifier; and, when the baseline has a calibration table
  (shared/calibration.py), counts of the rows' top-class probability on its bins, from
  which the hub estimates accuracy without labels. Optional both ways: a sketch without
  them (an older agent) merges with one that has them.

Sketches merge by adding counts (and merging moments), so the hub can combine windows
and devices exactly: merging is associative and commutative.

Maths: :func:`psi` (population stability index) and :func:`js` (Jensen-Shannon
*distance*, base 2, in [0, 1]) of observed counts against the baseline's reference
shares, whose underflow and overflow shares are 0.

Exceptions::

    DriftError(detail)      a malformed sketch or baseline, or sketches that do not merge
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from shared.calibration import MAX_CONFIDENCE_BINS, Calibration

MAX_FEATURES: Final = 1024  # input features a sketch may describe
MAX_BINS: Final = 256  # bins per feature or output histogram (underflow/overflow excluded)
MAX_CLASSES: Final = 1024  # output classes
MAX_COUNT: Final = 2**63  # counts stay below it: a SQL BIGINT holds them
PSI_EPSILON: Final = 1e-4  # share given to an empty bin in PSI (as Evidently does)

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]


class DriftError(ValueError):
    """A malformed sketch or baseline, or two sketches that do not merge."""


# --------------------------------------------------------------------------- baseline


@dataclass(frozen=True)
class Baseline:
    """The parts of a manifest's ``baseline`` that drift needs, checked.

    Attributes:
        names: feature names, in input column order.
        edges: per feature, the strictly increasing bin edges (bins + 1 of them).
        shares: per feature, reference shares of [underflow, bins..., overflow].
        output_kind: ``"classes"`` or ``"scores"``.
        output_classes: class names (``classes``), empty for scores.
        output_edges: score histogram edges (``scores``), empty for classes.
        output_shares: reference shares of the classes, or of [underflow, bins..., overflow].
        calibration: a classifier's hold-out accuracy per confidence bin (None: the
            baseline has none, as before it existed, or the model is not a classifier).
    """

    names: tuple[str, ...]
    edges: tuple[FloatArray, ...]
    shares: tuple[FloatArray, ...]
    output_kind: str
    output_classes: tuple[str, ...]
    output_edges: FloatArray
    output_shares: FloatArray
    calibration: Calibration | None = None

    @classmethod
    def from_manifest(cls, baseline: Mapping[str, Any]) -> Baseline:
        """Read ``Manifest.baseline``.

        Raises:
            DriftError: missing or inconsistent fields.
        """
        try:
            feats = baseline["features"]
            if not isinstance(feats, list) or not 0 < len(feats) <= MAX_FEATURES:
                raise DriftError(f"baseline needs 1..{MAX_FEATURES} features")
            names, edges, shares = [], [], []
            for f in feats:
                e = _edges(f["edges"])
                h = np.asarray(f["hist"], dtype=np.float64)
                if h.shape != (len(e) - 1,) or not np.isfinite(h).all() or (h < 0).any():
                    raise DriftError(f"feature {f.get('name')!r}: hist does not fit its edges")
                names.append(str(f["name"]))
                edges.append(e)
                shares.append(np.concatenate(([0.0], h, [0.0])))
            out = baseline["outputs"]
            oh = np.asarray(out["hist"], dtype=np.float64)
            if not np.isfinite(oh).all() or (oh < 0).any():
                raise DriftError("outputs: hist must be non-negative numbers")
            if "classes" in out:
                classes = tuple(map(str, out["classes"]))
                if not 0 < len(classes) <= MAX_CLASSES or oh.shape != (len(classes),):
                    raise DriftError("outputs: hist must have one share per class")
                cal = out.get("calibration")
                return cls(
                    tuple(names),
                    tuple(edges),
                    tuple(shares),
                    "classes",
                    classes,
                    np.zeros(0),
                    oh,
                    None if cal is None else Calibration.from_manifest(cal),
                )
            if "calibration" in out:
                raise DriftError("outputs: a calibration table is for classifiers only")
            oe = _edges(out["edges"])
            if oh.shape != (len(oe) - 1,):
                raise DriftError("outputs: hist does not fit its edges")
            return cls(
                tuple(names),
                tuple(edges),
                tuple(shares),
                "scores",
                (),
                oe,
                np.concatenate(([0.0], oh, [0.0])),
            )
        except DriftError:
            raise
        except (KeyError, TypeError, ValueError) as e:
            raise DriftError(f"malformed baseline: {type(e).__name__}: {e}") from e

    def empty_sketch(self) -> DriftSketch:
        """A sketch of no rows with this baseline's layout."""
        n_out, cal = len(self.output_shares), self.calibration
        return DriftSketch(
            rows=0,
            counts=tuple(np.zeros(len(e) + 1, dtype=np.int64) for e in self.edges),
            n=np.zeros(len(self.edges), dtype=np.int64),
            mean=np.zeros(len(self.edges)),
            m2=np.zeros(len(self.edges)),
            output_kind=self.output_kind,
            output_counts=np.zeros(n_out, dtype=np.int64),
            confidence=None if cal is None else np.zeros(cal.bins, dtype=np.int64),
        )


def _edges(raw: Any) -> FloatArray:
    e = np.asarray(raw, dtype=np.float64)
    if e.ndim != 1 or not 2 <= len(e) <= MAX_BINS + 1:
        raise DriftError(f"edges must list 2..{MAX_BINS + 1} numbers")
    if not np.isfinite(e).all() or (np.diff(e) <= 0).any():
        raise DriftError("edges must be finite and strictly increasing")
    return e


# --------------------------------------------------------------------------- sketch


@dataclass(frozen=True, eq=False)
class DriftSketch:
    """One window's (or a merge of windows') summary of inputs and outputs.

    Attributes:
        rows: rows observed.
        counts: per feature, int64 counts of [underflow, bins..., overflow]; each sums
            to ``rows``.
        n / mean / m2: per feature, count, mean and sum of squared deviations of the
            finite values.
        output_kind: ``"classes"`` or ``"scores"``.
        output_counts: per class, or [underflow, bins..., overflow] of the scores; sums
            to at most ``rows`` (a row whose output could not be read is not counted).
        confidence: per bin of the baseline's calibration table, rows whose top-class
            probability fell in it (sums to at most ``rows``); None: not counted.
    """

    rows: int
    counts: tuple[IntArray, ...]
    n: IntArray
    mean: FloatArray
    m2: FloatArray
    output_kind: str
    output_counts: IntArray
    confidence: IntArray | None = None

    def merge(self, other: DriftSketch) -> DriftSketch:
        """The sketch of both sets of rows.

        Raises:
            DriftError: the two do not have the same layout (other baseline edges).
        """
        if (
            self.output_kind != other.output_kind
            or len(self.counts) != len(other.counts)
            or any(a.shape != b.shape for a, b in zip(self.counts, other.counts, strict=True))
            or self.output_counts.shape != other.output_counts.shape
            or (
                self.confidence is not None
                and other.confidence is not None
                and self.confidence.shape != other.confidence.shape
            )
        ):
            raise DriftError("sketches of different layouts do not merge")
        n = self.n + other.n
        safe = np.where(n > 0, n, 1).astype(np.float64)
        delta = other.mean - self.mean
        mean = np.where(n > 0, self.mean + delta * (other.n / safe), 0.0)
        m2 = self.m2 + other.m2 + delta * delta * (self.n * (other.n / safe))
        return DriftSketch(
            rows=self.rows + other.rows,
            counts=tuple(a + b for a, b in zip(self.counts, other.counts, strict=True)),
            n=n,
            mean=mean,
            m2=np.where(n > 0, m2, 0.0),
            output_kind=self.output_kind,
            output_counts=self.output_counts + other.output_counts,
            confidence=_add(self.confidence, other.confidence),
        )

    def std(self) -> FloatArray:
        """Per-feature population standard deviation (0 where there are no values)."""
        return np.sqrt(np.where(self.n > 0, self.m2 / np.maximum(self.n, 1), 0.0))

    def to_dict(self) -> dict[str, Any]:
        """The JSON-able wire form (the ``sketch`` of a ``drift`` message)."""
        outputs: dict[str, Any] = {"kind": self.output_kind, "counts": self.output_counts.tolist()}
        if self.confidence is not None:
            outputs["confidence"] = self.confidence.tolist()
        return {
            "rows": self.rows,
            "features": [
                {"counts": c.tolist(), "n": int(n), "mean": float(mu), "m2": float(m2)}
                for c, n, mu, m2 in zip(self.counts, self.n, self.mean, self.m2, strict=True)
            ],
            "outputs": outputs,
        }

    @classmethod
    def from_dict(cls, data: Any) -> DriftSketch:
        """Parse and check the wire form.

        Raises:
            DriftError: anything malformed: counts that are not non-negative ints or do
                not add up to ``rows``, non-finite moments, sizes beyond the limits.
        """
        if not isinstance(data, Mapping):
            raise DriftError("a sketch is an object")
        rows: Any = data.get("rows")
        feats: Any = data.get("features")
        outs: Any = data.get("outputs")
        if not _count(rows):
            raise DriftError("rows must be a non-negative int")
        if not isinstance(feats, list) or not 0 < len(feats) <= MAX_FEATURES:
            raise DriftError(f"features must list 1..{MAX_FEATURES} features")
        counts, ns, means, m2s = [], [], [], []
        for i, f in enumerate(feats):
            if not isinstance(f, Mapping):
                raise DriftError(f"feature {i} is not an object")
            c = _counts(f.get("counts"), MAX_BINS + 2, f"feature {i}")
            if len(c) < 3 or int(c.sum()) != rows:
                raise DriftError(f"feature {i}: needs >= 3 counts adding up to rows")
            n: Any = f.get("n")
            mean: Any = f.get("mean")
            m2: Any = f.get("m2")
            if not _count(n) or n > rows or not _finite(mean) or not _finite(m2) or m2 < 0:
                raise DriftError(f"feature {i}: n, mean, m2 must be 0<=n<=rows, finite, m2>=0")
            counts.append(c)
            ns.append(n)
            means.append(float(mean))
            m2s.append(float(m2))
        if not isinstance(outs, Mapping) or outs.get("kind") not in ("classes", "scores"):
            raise DriftError("outputs must be an object of kind 'classes' or 'scores'")
        oc = _counts(outs.get("counts"), max(MAX_CLASSES, MAX_BINS + 2), "outputs")
        if int(oc.sum()) > rows:
            raise DriftError("outputs: more counts than rows")
        conf = None
        if outs.get("confidence") is not None:
            conf = _counts(outs["confidence"], MAX_CONFIDENCE_BINS, "outputs.confidence")
            if outs["kind"] != "classes" or int(conf.sum()) > rows:
                raise DriftError("outputs: confidence counts are a classifier's, at most rows")
        return cls(
            rows=rows,
            counts=tuple(counts),
            n=np.asarray(ns, dtype=np.int64),
            mean=np.asarray(means, dtype=np.float64),
            m2=np.asarray(m2s, dtype=np.float64),
            output_kind=str(outs["kind"]),
            output_counts=oc,
            confidence=conf,
        )

    def fits(self, baseline: Baseline) -> bool:
        """Whether this sketch was made on ``baseline``'s layout (confidence counts, when
        there are any, on its calibration bins)."""
        cal = baseline.calibration
        return (
            self.output_kind == baseline.output_kind
            and len(self.counts) == len(baseline.shares)
            and all(len(c) == len(s) for c, s in zip(self.counts, baseline.shares, strict=True))
            and len(self.output_counts) == len(baseline.output_shares)
            and (self.confidence is None or (cal is not None and len(self.confidence) == cal.bins))
        )


def _add(a: IntArray | None, b: IntArray | None) -> IntArray | None:
    """Confidence counts of a merge: a sketch without them adds nothing."""
    if a is None or b is None:
        one = b if a is None else a
        return None if one is None else one.copy()
    return a + b


def merge_all(sketches: Sequence[DriftSketch]) -> DriftSketch:
    """Merge one or more sketches (left to right).

    Raises:
        DriftError: none given, or layouts differ.
    """
    if not sketches:
        raise DriftError("nothing to merge")
    out = sketches[0]
    for s in sketches[1:]:
        out = out.merge(s)
    return out


def _count(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and 0 <= x < MAX_COUNT


def _finite(x: Any) -> bool:
    if not isinstance(x, (int, float)) or isinstance(x, bool):
        return False
    try:
        return math.isfinite(x)
    except OverflowError:
        return False


def _counts(raw: Any, limit: int, what: str) -> IntArray:
    if not isinstance(raw, list) or not 0 < len(raw) <= limit or not all(map(_count, raw)):
        raise DriftError(f"{what}: counts must list 1..{limit} non-negative ints")
    return np.asarray(raw, dtype=np.int64)


# --------------------------------------------------------------------------- maths


def _shares(counts: npt.ArrayLike) -> FloatArray:
    c = np.asarray(counts, dtype=np.float64)
    total = c.sum()
    if c.ndim != 1 or total <= 0:
        raise DriftError("observed counts must be a non-empty histogram")
    shares: FloatArray = c / total
    return shares


def psi(expected_shares: npt.ArrayLike, observed_counts: npt.ArrayLike) -> float:
    """Population stability index of observed counts against reference shares.

    ``sum((o - e) * ln(o / e))`` over bins, with both shares floored at
    :data:`PSI_EPSILON` so an empty bin (like the reference's underflow and overflow)
    stays finite: a bin holding all rows where the reference has none scores about 9.2.

    Raises:
        DriftError: shapes differ, or no rows were observed.
    """
    e = np.maximum(np.asarray(expected_shares, dtype=np.float64), PSI_EPSILON)
    o = _shares(observed_counts)
    if e.shape != o.shape:
        raise DriftError(f"{len(o)} observed bins against {len(e)} reference shares")
    o = np.maximum(o, PSI_EPSILON)
    return float(np.sum((o - e) * np.log(o / e)))


def js(expected_shares: npt.ArrayLike, observed_counts: npt.ArrayLike) -> float:
    """Jensen-Shannon *distance* (the square root of the divergence), base 2: in [0, 1].

    As scipy's ``jensenshannon(p, q, base=2)``. Both sides are normalised; empty bins
    need no epsilon (``0 * log 0 = 0``).

    Raises:
        DriftError: shapes differ, or no rows were observed.
    """
    p = np.asarray(expected_shares, dtype=np.float64)
    q = _shares(observed_counts)
    if p.shape != q.shape or p.sum() <= 0:
        raise DriftError(f"{len(q)} observed bins against {len(p)} reference shares")
    p = p / p.sum()
    m = (p + q) / 2
    div = 0.0
    for a in (p, q):
        nz = a > 0
        div += 0.5 * float(np.sum(a[nz] * np.log2(a[nz] / m[nz])))
    return math.sqrt(min(max(div, 0.0), 1.0))


@dataclass(frozen=True)
class Score:
    """PSI and JS distance of one feature (or of the outputs)."""

    psi: float
    js: float


OUTPUTS: Final = "__outputs__"  # the key of the outputs' score in score_sketch's result


def score_sketch(baseline: Baseline, sketch: DriftSketch) -> dict[str, Score]:
    """PSI and JS per feature (by name) and of the outputs (key :data:`OUTPUTS`).

    The outputs are left out when no output was counted.

    Raises:
        DriftError: the sketch is empty or not on the baseline's layout.
    """
    if not sketch.fits(baseline):
        raise DriftError("the sketch does not fit the baseline's bins")
    if sketch.rows == 0:
        raise DriftError("an empty sketch has no drift score")
    out = {
        name: Score(psi(ref, c), js(ref, c))
        for name, ref, c in zip(baseline.names, baseline.shares, sketch.counts, strict=True)
    }
    if sketch.output_counts.sum() > 0 and baseline.output_shares.sum() > 0:
        ref = baseline.output_shares
        out[OUTPUTS] = Score(psi(ref, sketch.output_counts), js(ref, sketch.output_counts))
    return out
