"""Drift in a rehearsal: covariate and concept shifts on a schedule, live accuracy per window.

A scenario (simulator/scenario.py) lists ``[[drift]]`` tables::

    [[drift]]
    kind = "concept"            # or "covariate"
    at_s = 20                   # seconds after the rollout starts
    share = 0.25                # of the fleet, picked with the scenario's seed
    # devices = ["sim-00003"]   # or name them (then no share)
    speed_krpm = [4.0, 5.0]     # concept: the new regime's speed band (krpm)
    signatures = { imbalance = "misalignment", misalignment = "imbalance" }

    [[drift]]
    kind = "covariate"
    at_s = 20
    share = 0.1
    scale = { band_1x = 1.8 }   # covariate: per-feature x * scale + offset
    offset = { temp_c = 12.0 }

``covariate`` changes what the sensors read (shared/sensors.py ``Shift``): the labels
keep their meaning, so a model may or may not suffer. ``concept`` moves the device into a
new operating regime (``Regime``): its speed leaves the training range (visible to a
PSI/JS detector) and there the named classes show each other's signatures, so the
deployed model calls them wrongly until it is retrained on labelled rows of the regime.

:class:`DriftSchedule` picks the devices (seeded), changes their sensor streams at
``at_s`` on the fleet's loop and, through the fleet's label taps, records every labelled
inference per device and per window (:class:`AccuracyLog`); :meth:`DriftSchedule.summary`
gives live accuracy before and after each drift, drifted against stationary devices.

Exceptions::

    DriftError(field, message)   a drift table that is not valid
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from shared.sensors import CLASSES, FEATURES, Regime, SensorStream, Shift

__all__ = ["KINDS", "AccuracyLog", "DriftError", "DriftSchedule", "DriftSpec"]

KINDS = ("covariate", "concept")
COMMON = ("kind", "at_s", "share", "devices")
PARAMS = {"covariate": ("scale", "offset"), "concept": ("speed_krpm", "signatures")}
ROUND = 4  # decimals of the accuracies in summaries


class DriftError(ValueError):
    """A drift table that is not valid: ``field`` names what is wrong."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True)
class DriftSpec:
    """One ``[[drift]]`` table, validated.

    Attributes:
        kind: "covariate" or "concept".
        at_s: seconds after the clock starts (the rollout's start in a scenario).
        share: fraction of the fleet hit (0..1], seeded choice; ``None`` with ``devices``.
        devices: device ids hit; ``None`` with ``share``. Neither: every device.
        shift: the covariate shift (kind covariate).
        regime: the new operating regime (kind concept).
    """

    kind: str
    at_s: float = 0.0
    share: float | None = None
    devices: tuple[str, ...] | None = None
    shift: Shift | None = None
    regime: Regime | None = None

    @classmethod
    def from_table(cls, table: Mapping[str, Any]) -> DriftSpec:
        """Raises: DriftError naming the first bad field."""
        kind = table.get("kind")
        if kind not in KINDS:
            raise DriftError("kind", f"must be one of {', '.join(KINDS)}, got {kind!r}")
        for key in table:
            if key not in COMMON and key not in PARAMS[kind]:
                allowed = ", ".join([*COMMON[1:], *PARAMS[kind]])
                raise DriftError(key, f"unknown field for {kind} (allowed: {allowed})")
        at_s = table.get("at_s", 0.0)
        if not _is_number(at_s) or at_s < 0:
            raise DriftError("at_s", f"must be >= 0 seconds, got {at_s!r}")
        share, devices = table.get("share"), table.get("devices")
        if share is not None and devices is not None:
            raise DriftError("share", "give share or devices, not both")
        if share is not None and (not _is_number(share) or not 0 < share <= 1):
            raise DriftError("share", f"must be within (0, 1], got {share!r}")
        if devices is not None and (
            not isinstance(devices, list)
            or not devices
            or not all(isinstance(d, str) and d for d in devices)
        ):
            raise DriftError("devices", "must be a non-empty list of device ids")
        spec = cls(
            kind,
            float(at_s),
            None if share is None else float(share),
            None if devices is None else tuple(devices),
        )
        if kind == "covariate":
            return _with(spec, shift=_shift(table))
        return _with(spec, regime=_regime(table))

    def apply(self, stream: SensorStream) -> None:
        """Drift ``stream`` from its next rows on (what a device's sensors read)."""
        if self.shift is not None:
            stream.shift = self.shift
        if self.regime is not None:
            stream.regime = self.regime

    def pick(self, device_ids: Sequence[str], seed: int) -> list[str]:
        """The devices this drift hits, in ``device_ids`` order (seeded: same every run).

        Raises:
            DriftError: a named device is not in the fleet.
        """
        if self.devices is not None:
            missing = sorted(set(self.devices) - set(device_ids))
            if missing:
                raise DriftError("devices", f"not in the fleet: {', '.join(missing)}")
            return [d for d in device_ids if d in set(self.devices)]
        if self.share is None:
            return list(device_ids)
        n = max(1, round(self.share * len(device_ids)))
        chosen = set(random.Random(seed).sample(list(device_ids), n))
        return [d for d in device_ids if d in chosen]


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _with(spec: DriftSpec, **fields: Any) -> DriftSpec:
    return DriftSpec(**{**spec.__dict__, **fields})


def _shift(table: Mapping[str, Any]) -> Shift:
    if "scale" not in table and "offset" not in table:
        raise DriftError("scale", "a covariate drift needs scale or offset (or both)")
    out: dict[str, tuple[float, ...] | None] = {}
    for name, identity in (("scale", 1.0), ("offset", 0.0)):
        raw = table.get(name)
        if raw is None:
            out[name] = None
            continue
        if not isinstance(raw, dict) or not raw:
            raise DriftError(name, "must be a table of feature = number")
        values = [identity] * len(FEATURES)
        for feature, v in raw.items():
            if feature not in FEATURES:
                raise DriftError(f"{name}.{feature}", f"unknown feature (one of {FEATURES})")
            if not _is_number(v):
                raise DriftError(f"{name}.{feature}", f"must be a number, got {v!r}")
            values[FEATURES.index(feature)] = float(v)
        out[name] = tuple(values)
    return Shift(scale=out["scale"], offset=out["offset"])


def _regime(table: Mapping[str, Any]) -> Regime:
    default = Regime()
    speed = table.get("speed_krpm", list(default.speed_krpm))
    if not isinstance(speed, list) or len(speed) != 2 or not all(_is_number(v) for v in speed):
        raise DriftError("speed_krpm", f"must be [low, high] in krpm, got {speed!r}")
    signatures = list(default.signatures)
    raw = table.get("signatures")
    if raw is not None:
        if not isinstance(raw, dict):
            raise DriftError("signatures", "must be a table of class = class whose signature")
        signatures = list(range(len(CLASSES)))
        for label, shown in raw.items():
            for v in (label, shown):
                if v not in CLASSES:
                    raise DriftError(f"signatures.{label}", f"{v!r} is not one of {CLASSES}")
            signatures[CLASSES.index(label)] = CLASSES.index(shown)
    try:
        return Regime((float(speed[0]), float(speed[1])), tuple(signatures))
    except ValueError as e:
        field = "speed_krpm" if "speed" in str(e) else "signatures"
        raise DriftError(field, str(e)) from e


class AccuracyLog:
    """Labelled inferences per device and per window (the fleet's label tap feeds it).

    Thread-safe: the fleet's loop records, another thread may read.
    """

    def __init__(self, window_s: float, t0: float | None = None) -> None:
        self.window_s = window_s  # s
        self.t0 = time.monotonic() if t0 is None else t0
        # device -> window index -> [labelled, correct]
        self._counts: dict[str, dict[int, list[int]]] = {}
        self._lock = threading.Lock()

    def record(self, device_id: str, predicted: npt.NDArray[Any], y: npt.NDArray[Any]) -> None:
        """Count one labelled inference call now (a label tap: see ``Fleet.label_taps``)."""
        w = int((time.monotonic() - self.t0) // self.window_s)
        with self._lock:
            cell = self._counts.setdefault(device_id, {}).setdefault(w, [0, 0])
            cell[0] += len(y)
            cell[1] += int(np.count_nonzero(predicted == y))

    def windows(self) -> int:
        """How many windows have rows in them (from window 0 to the last one)."""
        with self._lock:
            last = max((max(ws) for ws in self._counts.values() if ws), default=-1)
        return last + 1

    def per_device(self) -> dict[str, list[float | None]]:
        """Accuracy per device per window (``None``: no labelled rows in that window)."""
        n = self.windows()
        with self._lock:
            return {
                d: [
                    round(ws[w][1] / ws[w][0], ROUND) if w in ws and ws[w][0] else None
                    for w in range(n)
                ]
                for d, ws in sorted(self._counts.items())
            }

    def accuracy(self, devices: Sequence[str], first: int, last: int) -> float | None:
        """Pooled accuracy of ``devices`` over windows ``first..last`` (inclusive)."""
        labelled = correct = 0
        with self._lock:
            for d in devices:
                for w, (n, c) in self._counts.get(d, {}).items():
                    if first <= w <= last:
                        labelled += n
                        correct += c
        return round(correct / labelled, ROUND) if labelled else None


class DriftSchedule:
    """The scenario's drifts: which devices, when, and live accuracy around them.

    Args:
        specs: the ``[[drift]]`` tables.
        seed: the scenario's seed (each drift picks with ``seed`` and its index).
        window_s: accuracy window (the fleet's telemetry window), seconds.
    """

    def __init__(self, specs: Sequence[DriftSpec], seed: int, window_s: float) -> None:
        self.specs = tuple(specs)
        self.seed = seed
        self.accuracy = AccuracyLog(window_s)
        self.targets: list[list[str]] = []
        self.started: dict[int, float] = {}  # drift index -> seconds after arm() it struck
        self.device_ids: list[str] = []

    def arm(self, fleet: Any) -> DriftSchedule:
        """Start the clock (t = 0 now), pick the devices and schedule every drift.

        ``fleet`` is a ``simulator.fleet.Fleet`` whose loop may already run.

        Raises:
            DriftError: a named device is not in the fleet.
        """
        devices = {d.device_id: d for d in fleet.devices}
        self.device_ids = list(devices)
        self.targets = [
            s.pick(self.device_ids, self.seed * 1_000 + i) for i, s in enumerate(self.specs)
        ]
        self.accuracy.t0 = time.monotonic()
        fleet.label_taps.append(lambda dev, p, y: self.accuracy.record(dev.device_id, p, y))
        for i, spec in enumerate(self.specs):
            hit = [devices[d] for d in self.targets[i]]
            fleet.loop.call_soon_threadsafe(
                lambda i=i, s=spec, h=hit: fleet.loop.call_later(
                    max(0.0, s.at_s - (time.monotonic() - self.accuracy.t0)),
                    lambda: self._strike(i, s, h),
                )
            )
        return self

    def _strike(self, i: int, spec: DriftSpec, devices: list[Any]) -> None:
        for d in devices:
            spec.apply(d.stream)
        self.started[i] = round(time.monotonic() - self.accuracy.t0, 3)

    def drifted(self) -> set[str]:
        """Every device some drift hits."""
        return {d for t in self.targets for d in t}

    def summary(self) -> dict[str, Any]:
        """JSON-able: per drift, live accuracy before/after of drifted and stationary
        devices; per device, accuracy per window.

        "before" pools the windows that end before the drift struck, "after" the windows
        that start after it (the window it struck in belongs to neither).
        """
        log, w = self.accuracy, self.accuracy.window_s
        last = log.windows() - 1
        hit_any = self.drifted()
        stationary = [d for d in self.device_ids if d not in hit_any]
        drifts = []
        for i, spec in enumerate(self.specs):
            t = self.started.get(i)
            row: dict[str, Any] = {
                "kind": spec.kind,
                "at_s": spec.at_s,
                "struck_s": t,
                "devices": self.targets[i] if self.targets else [],
            }
            if t is not None:
                before, after = math.floor(t / w) - 1, math.floor(t / w) + 1
                for name, group in (("drifted", self.targets[i]), ("stationary", stationary)):
                    row[name] = {
                        "accuracy_before": log.accuracy(group, 0, before),
                        "accuracy_after": log.accuracy(group, after, last),
                    }
            drifts.append(row)
        return {
            "window_s": w,
            "windows": last + 1,
            "drifts": drifts,
            "stationary_devices": len(stationary),
            "accuracy_per_window": log.per_device(),
        }
