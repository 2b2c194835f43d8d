"""Group and fleet drift: buckets of merged sketches, and who drove a scope's shift.

Helpers of :class:`hub.telemetry.drift.DriftMonitor`'s scope evaluation: which devices
of an exceeding bucket carry its shift (:func:`carriers`), the scores as stored, and a
scope's devices by tag.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
from sqlmodel import Session, col, select

from hub.store.tables import DeviceTag, DriftWindow
from shared.drift import (
    OUTPUTS,
    PSI_EPSILON,
    Baseline,
    DriftSketch,
    merge_all,
    score_sketch,
)

# When no device of an exceeding scope bucket exceeds on its own, a device carries the
# bucket's shift if its own shift along it is at least this share of the scope's average
# (:func:`carriers`) ...
CARRIER_SHARE: Final = 0.5


CARRIER_Z: Final = 3.0  # ... and this many standard deviations above what baseline rows give


@dataclass(frozen=True)
class Bucket:
    """A scope's time bucket that exceeded: enough of a window for :meth:`_apply_rule`."""

    ts: float
    version: int
    scores: dict[str, Any]
    devices: list[str]  # the devices that drove it


class OwnSketches:
    """One :meth:`DriftMonitor.evaluate_scopes` pass's per-device buckets: each device's
    merged windows of one time bucket and version, and their scores, made once and
    shared by the fleet and every group the device is in."""

    def __init__(self) -> None:
        self._sketches: dict[tuple[str, int, int], DriftSketch | None] = {}
        self._scores: dict[tuple[str, int, int], dict[str, Any]] = {}

    def sketch(
        self,
        device: str,
        bucket: int,
        version: int,
        baseline: Baseline,
        windows: Sequence[DriftWindow],
    ) -> DriftSketch | None:
        """The device's windows merged (those on the baseline's layout); None: no rows."""
        key = (device, bucket, version)
        if key not in self._sketches:
            fits = [sk for w in windows if (sk := DriftSketch.from_dict(w.sketch)).fits(baseline)]
            merged = merge_all(fits) if fits else None
            self._sketches[key] = merged if merged is not None and merged.rows > 0 else None
        return self._sketches[key]

    def scores(self, device: str, bucket: int, version: int, baseline: Baseline) -> dict[str, Any]:
        key = (device, bucket, version)
        if key not in self._scores:
            sketch = self._sketches[key]
            assert sketch is not None
            self._scores[key] = scores_json(baseline, sketch)
        return self._scores[key]


def carriers(
    baseline: Baseline,
    scope: DriftSketch,
    devices: Mapping[str, DriftSketch],
    features: Iterable[str],
) -> set[str]:
    """The devices carrying a scope bucket's shift when none exceeds on its own.

    PSI splits over the devices of a merge: with ``o``/``e`` the scope's observed and
    the reference shares of one feature and ``g = ln(o / e)`` (both floored as in PSI),
    ``sum_i (o_i - e_i) g_i`` is the row-weighted mean over devices of each device's
    ``c_d = sum_i (o_d,i - e_i) g_i``: its own shift projected on the scope's. Rows drawn
    from the baseline give ``c_d`` a mean of 0 and a variance of ``var_e(g) / rows``
    (no small-sample bias, unlike a device's own PSI). A device carries the shift when,
    on some drifted feature, ``c_d`` is at least CARRIER_SHARE of the scope's mean and
    CARRIER_Z standard deviations above 0. Every term of the mean is >= 0, so one device
    at least is at or above it; the significance test may still leave none.
    """
    out: set[str] = set()
    for name in features:
        if name == OUTPUTS:
            ref, counts = baseline.output_shares, {d: s.output_counts for d, s in devices.items()}
            total = scope.output_counts
        else:
            j = baseline.names.index(name)
            ref, counts = baseline.shares[j], {d: s.counts[j] for d, s in devices.items()}
            total = scope.counts[j]
        if ref.sum() <= 0 or total.sum() <= 0:
            continue
        e = ref / ref.sum()
        g = np.log(np.maximum(total / total.sum(), PSI_EPSILON) / np.maximum(e, PSI_EPSILON))
        mean = float(np.sum((total / total.sum() - e) * g))
        var = max(float(np.sum(e * g * g)) - float(np.sum(e * g)) ** 2, 0.0)
        for d, c in counts.items():
            rows = int(c.sum())
            if rows == 0:
                continue
            contribution = float(np.sum((c / rows - e) * g))
            if contribution >= max(CARRIER_SHARE * mean, CARRIER_Z * math.sqrt(var / rows)):
                out.add(d)
    return out


def scores_json(baseline: Baseline, sketch: DriftSketch) -> dict[str, Any]:
    return {
        name: {"psi": round(sc.psi, 6), "js": round(sc.js, 6)}
        for name, sc in score_sketch(baseline, sketch).items()
    }


def drifted_names(scores: Mapping[str, Any]) -> list[str]:
    return [n for n in scores if n != OUTPUTS]


def tags_of(s: Session, devices: set[str]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = defaultdict(set)
    if not devices:
        return out
    for row in s.exec(select(DeviceTag).where(col(DeviceTag.device_id).in_(devices))):
        out[row.tag].add(row.device_id)
    return out
