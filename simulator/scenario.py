"""Scenarios: a rollout to rehearse on this machine, with faults on a schedule.

A scenario file (TOML, examples in simulator/scenarios/) names a seed, a fleet, a model
to train, a rollout and a list of faults (simulator/faultspec.py)::

    name = "flaky-network"
    seed = 7
    timeout_s = 120                 # give up on the rollout after this (default 300)
    duration_s = 60                 # run on this long after the rollout starts (default 0)

    [broker]
    persistence = true              # sessions survive a broker restart (default false)

    [fleet]
    devices = 12
    rows_per_s = 40                 # inference rate per device (default 10)
    fetch_timeout_s = 3             # agent: re-ask after this long without progress
    classes = { gw-a = 8, gw-b = 4 }  # counts, or fractions summing to 1
    runtimes = { gw-b = "tflite" }  # classes that run LiteRT (default: onnxruntime)

    [model]
    name = "vibration"
    baseline = true                 # first install an older version everywhere
    train = { n_train = 1000, hidden = [256, 256], probation_s = 1 }

    [rollout]                       # the hub's rollout spec, model/version filled in
    max_failure_ratio = 0.5

    [[fault]]
    kind = "crash_mid_download"
    count = 2
    at_s = 0

    [[drift]]                       # simulator/drift.py: covariate or concept shift
    kind = "concept"
    at_s = 20
    share = 0.25

    [rows]                          # the operator's data instead of the sensor stream
    file = "wine.csv"               # CSV (header row) or NPZ (x, y); relative to this file
    label = "cultivar"              # a CSV's label column (NPZ: the array, default y)
    late_share = 0.3                # labels reported later, by prediction id (default 0)
    late_after_s = 2.0              # how much later (s, default 2)
    passes = 2                      # play every row this many times (default: until the end)

With ``[rows]`` the rehearsal uploads the file as a dataset named after the model and
trains the model on it (``model.train`` adds to that: ``kind``, ``task`` ...), and every
device infers on the file's rows (simulator/rows.py, simulator/player.py); ``[[drift]]``,
which shifts the built-in sensor stream, does not go with it.

This module reads and validates the file (:func:`load_scenario`). What happens once the
rollout starts (faults, drift, following the rollout, the summary) is
simulator/timeline.py; the stage it needs (a private Mosquitto, the hub as a child
process) is set up outside the simulator, by edgefleet/rehearsal.py
(``edgefleet sim run --scenario FILE``), which composes the hub and the simulator.

Exceptions::

    ScenarioError      a scenario file that is not valid (one line naming the field), or
                       a stage that could not be set up (broker, hub, baseline)
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from simulator.drift import DriftError, DriftSpec
from simulator.faultspec import FaultError, FaultSpec
from simulator.rows import RowsError, RowSource, load_rows

__all__ = [
    "FleetSpec",
    "ModelSpec",
    "RowsSpec",
    "Scenario",
    "ScenarioError",
    "load_scenario",
    "parse_scenario",
]

ROLLOUT_FIELDS: dict[str, tuple[type | tuple[type, ...], bool]] = {
    # field: (type, nullable)
    "model": (str, False),
    "version": (int, True),
    "devices": (list, True),
    "device_class": (str, True),
    "canary": (int, False),
    "waves": (int, False),
    "rate_per_min": ((int, float), True),
    "max_failure_ratio": ((int, float), False),
    "min_sample": (int, False),
    "device_timeout_s": ((int, float), False),
    "retries": (int, False),
    "seed": (str, True),  # shuffles the waves; default: the scenario's seed
}


class ScenarioError(ValueError):
    """A scenario that cannot be run; the message is one line naming what is wrong."""


# Makes the error for a field: fail("fleet.devices", "must be >= 1, got 0").
Fail = Callable[[str, str], ScenarioError]


@dataclass(frozen=True)
class FleetSpec:
    devices: int
    classes: tuple[tuple[str, int], ...] = ()  # (class, count); empty: all "sim-gateway"
    rows_per_s: float = 10.0  # inference rate of each device
    fetch_timeout_s: float = 10.0  # agent: no progress for this long, ask again
    window_s: float = 5.0  # telemetry window
    # (class, runtime) for classes that run another runtime than onnxruntime
    runtimes: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class ModelSpec:
    name: str = "vibration"
    baseline: bool = False  # install an older version on every device first
    train: Mapping[str, Any] = field(default_factory=dict)  # passed to client.train


@dataclass(frozen=True)
class RowsSpec:
    """``[rows]``: devices infer on a dataset file's rows, and the model is trained on it."""

    file: Path
    source: RowSource  # the file, read (and checked) when the scenario is
    label: str | None = None
    late_share: float = 0.0  # of the labels, reported later by prediction id
    late_after_s: float = 2.0  # how much later (s)
    passes: int | None = None  # plays of every row per device; None: until the end


@dataclass(frozen=True)
class Scenario:
    name: str
    seed: int
    fleet: FleetSpec
    model: ModelSpec
    rollout: Mapping[str, Any]
    faults: tuple[FaultSpec, ...] = ()
    timeout_s: float = 300.0  # for the rollout to finish
    # The broker keeps sessions and queued messages across a restart (Mosquitto
    # persistence). Off: the hub's development config, where a restart loses them.
    broker_persistence: bool = False
    drifts: tuple[DriftSpec, ...] = ()  # [[drift]] tables (simulator/drift.py)
    # Keep the fleet running at least this long after the rollout starts (s), e.g. to
    # watch live accuracy after a drift.
    duration_s: float = 0.0
    rows: RowsSpec | None = None  # [rows]: the operator's data instead of the sensor stream


def load_scenario(path: Path) -> Scenario:
    """Read and validate a scenario file.

    Raises:
        ScenarioError: unreadable, not TOML, or not a valid scenario (the message names
            the file and the field).
    """
    try:
        data = tomllib.loads(Path(path).read_text())
    except OSError as e:
        raise ScenarioError(f"{path}: cannot read: {e.strerror or e}") from e
    except tomllib.TOMLDecodeError as e:
        raise ScenarioError(f"{path}: not valid TOML: {e}") from e
    return parse_scenario(data, source=str(path), base_dir=Path(path).parent)


def parse_scenario(
    data: Mapping[str, Any], source: str = "scenario", base_dir: Path | None = None
) -> Scenario:
    """Validate a scenario given as a dict (as TOML parses it).

    Args:
        base_dir: where a relative ``rows.file`` is (default: the working directory).

    Raises:
        ScenarioError: ``"{source}: {field}: {what is wrong}"``.
    """

    def fail(where: str, what: str) -> ScenarioError:
        return ScenarioError(f"{source}: {where}: {what}")

    top = {"name", "seed", "timeout_s", "duration_s", "broker", "fleet", "model", "rollout"}
    top |= {"fault", "drift", "rows"}
    _only(data, top, "", fail)
    name = data.get("name", Path(source).stem)
    if not isinstance(name, str) or not name:
        raise fail("name", f"must be a non-empty string, got {name!r}")
    seed = _get(data, "seed", int, fail, required=True)
    timeout_s = _get(data, "timeout_s", (int, float), fail, default=300.0)
    if timeout_s <= 0:
        raise fail("timeout_s", f"must be > 0 seconds, got {timeout_s}")
    broker = _table(data, "broker", fail, required=False)
    _only(broker, {"persistence"}, "broker.", fail)
    persistence = _get(broker, "persistence", bool, fail, where="broker.", default=False)
    fleet = _parse_fleet(_table(data, "fleet", fail, required=True), fail)
    model = _parse_model(_table(data, "model", fail, required=False), fail)
    rollout = _parse_rollout(_table(data, "rollout", fail, required=False), fail)
    raw_faults = data.get("fault", [])
    if not isinstance(raw_faults, list):
        raise fail("fault", "must be a list of [[fault]] tables")
    faults = []
    for i, table in enumerate(raw_faults):
        if not isinstance(table, dict):
            raise fail(f"fault[{i}]", "must be a table")
        try:
            faults.append(FaultSpec.from_table(table))
        except FaultError as e:
            raise fail(f"fault[{i}].{e.field}", e.message) from e
    classes = {c for c, _n in fleet.classes}
    for i, spec in enumerate(faults):
        if spec.device_class is not None and spec.device_class not in classes:
            raise fail(
                f"fault[{i}].device_class",
                f"no class {spec.device_class!r} in fleet.classes ({', '.join(sorted(classes))})",
            )
    drifts = _parse_drifts(data.get("drift", []), fleet.devices, fail)
    duration_s = _get(data, "duration_s", (int, float), fail, default=0.0)
    if duration_s < 0:
        raise fail("duration_s", f"must be >= 0 seconds, got {duration_s}")
    rows = None
    if "rows" in data:
        rows = _parse_rows(_table(data, "rows", fail, required=True), base_dir, fail)
        if drifts:
            raise fail("drift", "shifts the built-in sensor stream: not with [rows]")
    return Scenario(
        name,
        seed,
        fleet,
        model,
        rollout,
        tuple(faults),
        float(timeout_s),
        persistence,
        drifts,
        float(duration_s),
        rows,
    )


def _parse_rows(t: Mapping[str, Any], base_dir: Path | None, fail: Fail) -> RowsSpec:
    w = "rows."
    _only(t, {"file", "label", "late_share", "late_after_s", "passes"}, w, fail)
    file = Path(_get(t, "file", str, fail, where=w, required=True))
    if not file.is_absolute() and base_dir is not None:
        file = base_dir / file
    label = _get(t, "label", str, fail, where=w)
    late_share = _get(t, "late_share", (int, float), fail, where=w, default=0.0)
    if not 0 <= late_share <= 1:
        raise fail("rows.late_share", f"must be within 0..1, got {late_share}")
    late_after_s = _get(t, "late_after_s", (int, float), fail, where=w, default=2.0)
    if late_after_s < 0:
        raise fail("rows.late_after_s", f"must be >= 0 seconds, got {late_after_s}")
    passes = _get(t, "passes", int, fail, where=w)
    if passes is not None and passes < 1:
        raise fail("rows.passes", f"must be >= 1, got {passes}")
    try:
        source = load_rows(file, label)
    except RowsError as e:
        raise fail("rows.file", str(e)) from e
    return RowsSpec(file, source, label, float(late_share), float(late_after_s), passes)


def _parse_drifts(raw: Any, devices: int, fail: Fail) -> tuple[DriftSpec, ...]:
    if not isinstance(raw, list):
        raise fail("drift", "must be a list of [[drift]] tables")
    ids = [f"sim-{i:05d}" for i in range(devices)]  # the ids _start_fleet gives
    out = []
    for i, table in enumerate(raw):
        if not isinstance(table, dict):
            raise fail(f"drift[{i}]", "must be a table")
        try:
            spec = DriftSpec.from_table(table)
            spec.pick(ids, 0)
        except DriftError as e:
            raise fail(f"drift[{i}].{e.field}", e.message) from e
        out.append(spec)
    return tuple(out)


def _only(table: Mapping[str, Any], allowed: set[str], where: str, fail: Fail) -> None:
    for key in table:
        if key not in allowed:
            raise fail(f"{where}{key}", f"unknown field (allowed: {', '.join(sorted(allowed))})")


def _get(
    table: Mapping[str, Any],
    key: str,
    kind: type | tuple[type, ...],
    fail: Fail,
    *,
    where: str = "",
    required: bool = False,
    default: Any = None,
) -> Any:
    if key not in table:
        if required:
            raise fail(f"{where}{key}", "missing")
        return default
    value = table[key]
    if (isinstance(value, bool) and kind is not bool) or not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise fail(f"{where}{key}", f"must be {names}, got {value!r}")
    return value


def _table(data: Mapping[str, Any], key: str, fail: Fail, *, required: bool) -> dict[str, Any]:
    value = data.get(key)
    if value is None:
        if required:
            raise fail(key, "missing (a [" + key + "] table)")
        return {}
    if not isinstance(value, dict):
        raise fail(key, "must be a table")
    return value


def _parse_fleet(t: Mapping[str, Any], fail: Fail) -> FleetSpec:
    w = "fleet."
    _only(
        t, {"devices", "classes", "runtimes", "rows_per_s", "fetch_timeout_s", "window_s"}, w, fail
    )
    devices = _get(t, "devices", int, fail, where=w, required=True)
    if devices < 1:
        raise fail("fleet.devices", f"must be >= 1, got {devices}")
    for key in ("rows_per_s", "fetch_timeout_s", "window_s"):
        v = _get(t, key, (int, float), fail, where=w)
        if v is not None and v <= 0:
            raise fail(f"fleet.{key}", f"must be > 0, got {v}")
    classes = _parse_classes(t.get("classes", {}), devices, fail)
    runtimes = _parse_runtimes(t.get("runtimes", {}), {c for c, _ in classes}, fail)
    return FleetSpec(
        devices,
        classes,
        float(t.get("rows_per_s", 10.0)),
        float(t.get("fetch_timeout_s", 10.0)),
        float(t.get("window_s", 5.0)),
        runtimes,
    )


def _parse_runtimes(raw: Any, classes: set[str], fail: Fail) -> tuple[tuple[str, str], ...]:
    if not isinstance(raw, dict):
        raise fail("fleet.runtimes", "must be a table of class = runtime")
    for name, runtime in raw.items():
        if name not in classes:
            known = ", ".join(sorted(classes)) or "none"
            raise fail(f"fleet.runtimes.{name}", f"no such class in fleet.classes ({known})")
        if runtime not in ("onnxruntime", "tflite"):
            raise fail(f"fleet.runtimes.{name}", f"onnxruntime or tflite, got {runtime!r}")
    return tuple(sorted(raw.items()))


def _parse_classes(raw: Any, devices: int, fail: Fail) -> tuple[tuple[str, int], ...]:
    if not isinstance(raw, dict):
        raise fail("fleet.classes", "must be a table of class = count or fraction")
    if not raw:
        return ()
    values = list(raw.values())
    for name, v in raw.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0:
            raise fail(f"fleet.classes.{name}", f"must be a count or a fraction > 0, got {v!r}")
    if all(isinstance(v, int) for v in values):
        if sum(values) != devices:
            raise fail("fleet.classes", f"counts sum to {sum(values)}, not fleet.devices={devices}")
        return tuple((str(k), int(v)) for k, v in raw.items())
    if any(isinstance(v, int) and v > 1 for v in values) or any(v > 1 for v in values):
        raise fail("fleet.classes", "give all counts (integers) or all fractions (0..1)")
    if not math.isclose(sum(values), 1.0, abs_tol=1e-6):
        raise fail("fleet.classes", f"fractions sum to {sum(values):g}, not 1")
    # Largest remainder: counts that sum to the fleet exactly.
    exact = [(str(k), float(v) * devices) for k, v in raw.items()]
    counts = {k: math.floor(x) for k, x in exact}
    left = devices - sum(counts.values())
    for k, _x in sorted(exact, key=lambda e: e[1] - math.floor(e[1]), reverse=True)[:left]:
        counts[k] += 1
    return tuple((k, counts[k]) for k, _x in exact if counts[k] > 0)


def _parse_model(t: Mapping[str, Any], fail: Fail) -> ModelSpec:
    _only(t, {"name", "baseline", "train"}, "model.", fail)
    name = _get(t, "name", str, fail, where="model.", default="vibration")
    baseline = _get(t, "baseline", bool, fail, where="model.", default=False)
    train = _get(t, "train", dict, fail, where="model.", default={})
    if "name" in train:
        raise fail("model.train.name", "set the model's name as model.name")
    return ModelSpec(name, baseline, dict(train))


def _parse_rollout(t: Mapping[str, Any], fail: Fail) -> dict[str, Any]:
    _only(t, set(ROLLOUT_FIELDS), "rollout.", fail)
    for key, (kind, nullable) in ROLLOUT_FIELDS.items():
        if key in t and not (nullable and t[key] is None):
            _get(t, key, kind, fail, where="rollout.")
    checks: tuple[tuple[str, Callable[[float], bool], str], ...] = (
        ("canary", lambda v: v >= 0, ">= 0"),
        ("waves", lambda v: v >= 1, ">= 1"),
        ("rate_per_min", lambda v: v > 0, "> 0"),
        ("max_failure_ratio", lambda v: 0 <= v <= 1, "within 0..1"),
        ("min_sample", lambda v: v >= 0, ">= 0"),
        ("device_timeout_s", lambda v: v > 0, "> 0 seconds"),
        ("retries", lambda v: v >= 0, ">= 0"),
    )
    for key, ok, what in checks:
        if t.get(key) is not None and not ok(t[key]):
            raise fail(f"rollout.{key}", f"must be {what}, got {t[key]}")
    devices = t.get("devices")
    if devices is not None and not all(isinstance(d, str) for d in devices):
        raise fail("rollout.devices", "must be a list of device ids")
    return dict(t)
