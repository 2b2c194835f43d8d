"""Scenarios: rehearse a rollout on this machine, with faults on a schedule.

A scenario file (TOML, examples in simulator/scenarios/) names a seed, a fleet, a model
to train, a rollout and a list of faults (simulator/faults.py)::

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

:func:`run_scenario` plays it: a private Mosquitto on a free port, the hub as a child
process (``edgefleet hub serve --dev``, so killing it is real), the fleet in this process
on one selector loop, the rollout, the faults at their times; it returns the summary
(see :func:`run_scenario`). ``edgefleet sim run --scenario FILE`` is its command line.

The rollout goes through one adapter (:func:`start_rollout`, :func:`rollout_status`);
everything else only reads the status it returns.

Exceptions::

    ScenarioError      a scenario file that is not valid (one line naming the field), or
                       a stage that could not be set up (broker, hub, baseline)
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgefleet.client import HubClient, HubClientError
from hub.access.keys import DEV_KEY
from hub.transport.broker import Mosquitto, free_port
from simulator.drift import DriftError, DriftSchedule, DriftSpec
from simulator.faults import FaultError, FaultInjector, FaultSpec
from simulator.fleet import DeviceEvent, Fleet, FleetConfig

__all__ = [
    "Scenario",
    "ScenarioError",
    "ScenarioResult",
    "load_scenario",
    "parse_scenario",
    "rollout_status",
    "run_scenario",
    "start_rollout",
]

HUB_START_TIMEOUT_S = 60.0  # s: from spawn to an answering /health
ONLINE_TIMEOUT_S = 60.0  # s: for the whole fleet to report online
BASELINE_TIMEOUT_S = 120.0  # s: for the baseline version to reach every device
POLL_S = 0.25  # s: between status polls
PROGRESS_EVERY_S = 1.0  # s: between progress lines
TERMINAL_ROLLOUT_STATES = frozenset({"completed", "halted", "aborted"})
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

Say = Callable[[str], None]


class ScenarioError(ValueError):
    """A scenario that cannot be run; the message is one line naming what is wrong."""


# --------------------------------------------------------------------------- the file


@dataclass(frozen=True)
class FleetSpec:
    devices: int
    classes: tuple[tuple[str, int], ...] = ()  # (class, count); empty: all "sim-gateway"
    rows_per_s: float = 10.0  # inference rate of each device
    fetch_timeout_s: float = 10.0  # agent: no progress for this long, ask again
    window_s: float = 5.0  # telemetry window


@dataclass(frozen=True)
class ModelSpec:
    name: str = "vibration"
    baseline: bool = False  # install an older version on every device first
    train: Mapping[str, Any] = field(default_factory=dict)  # passed to client.train


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
    return parse_scenario(data, source=str(path))


def parse_scenario(data: Mapping[str, Any], source: str = "scenario") -> Scenario:
    """Validate a scenario given as a dict (as TOML parses it).

    Raises:
        ScenarioError: ``"{source}: {field}: {what is wrong}"``.
    """

    def fail(where: str, what: str) -> ScenarioError:
        return ScenarioError(f"{source}: {where}: {what}")

    top = {"name", "seed", "timeout_s", "duration_s", "broker", "fleet", "model", "rollout"}
    top |= {"fault", "drift"}
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
    )


def _parse_drifts(raw: Any, devices: int, fail: Any) -> tuple[DriftSpec, ...]:
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


def _only(table: Mapping[str, Any], allowed: set[str], where: str, fail: Any) -> None:
    for key in table:
        if key not in allowed:
            raise fail(f"{where}{key}", f"unknown field (allowed: {', '.join(sorted(allowed))})")


def _get(
    table: Mapping[str, Any],
    key: str,
    kind: type | tuple[type, ...],
    fail: Any,
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


def _table(data: Mapping[str, Any], key: str, fail: Any, *, required: bool) -> dict[str, Any]:
    value = data.get(key)
    if value is None:
        if required:
            raise fail(key, "missing (a [" + key + "] table)")
        return {}
    if not isinstance(value, dict):
        raise fail(key, "must be a table")
    return value


def _parse_fleet(t: Mapping[str, Any], fail: Any) -> FleetSpec:
    w = "fleet."
    _only(t, {"devices", "classes", "rows_per_s", "fetch_timeout_s", "window_s"}, w, fail)
    devices = _get(t, "devices", int, fail, where=w, required=True)
    if devices < 1:
        raise fail("fleet.devices", f"must be >= 1, got {devices}")
    for key in ("rows_per_s", "fetch_timeout_s", "window_s"):
        v = _get(t, key, (int, float), fail, where=w)
        if v is not None and v <= 0:
            raise fail(f"fleet.{key}", f"must be > 0, got {v}")
    classes = _parse_classes(t.get("classes", {}), devices, fail)
    return FleetSpec(
        devices,
        classes,
        float(t.get("rows_per_s", 10.0)),
        float(t.get("fetch_timeout_s", 10.0)),
        float(t.get("window_s", 5.0)),
    )


def _parse_classes(raw: Any, devices: int, fail: Any) -> tuple[tuple[str, int], ...]:
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


def _parse_model(t: Mapping[str, Any], fail: Any) -> ModelSpec:
    _only(t, {"name", "baseline", "train"}, "model.", fail)
    name = _get(t, "name", str, fail, where="model.", default="vibration")
    baseline = _get(t, "baseline", bool, fail, where="model.", default=False)
    train = _get(t, "train", dict, fail, where="model.", default={})
    if "name" in train:
        raise fail("model.train.name", "set the model's name as model.name")
    return ModelSpec(name, baseline, dict(train))


def _parse_rollout(t: Mapping[str, Any], fail: Any) -> dict[str, Any]:
    _only(t, set(ROLLOUT_FIELDS), "rollout.", fail)
    for key, (kind, nullable) in ROLLOUT_FIELDS.items():
        if key in t and not (nullable and t[key] is None):
            _get(t, key, kind, fail, where="rollout.")
    checks = (
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


# --------------------------------------------------------------------------- the adapter


def start_rollout(client: HubClient, spec: Mapping[str, Any]) -> str:
    """Start the scenario's rollout on the hub (``POST /rollouts``); its id."""
    fields = dict(spec)
    return str(client.create_rollout(fields.pop("model"), **fields)["id"])


def rollout_status(client: HubClient, rollout_id: str) -> dict[str, Any]:
    """``GET /rollouts/{id}``: state, wave, counts per device state, failure ratio."""
    return client.rollout(rollout_id)


# --------------------------------------------------------------------------- the stage


class HubProcess:
    """``edgefleet hub serve --dev`` as a child process, so that SIGKILL is real."""

    def __init__(self, data_dir: Path, broker_url: str, port: int | None = None) -> None:
        self.data_dir = data_dir
        self.broker_url = broker_url
        self.port = port or free_port()
        self.log_path = data_dir.parent / "hub.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = HUB_START_TIMEOUT_S) -> HubProcess:
        """Spawn the hub and wait until its API answers.

        Raises:
            ScenarioError: it exited or did not answer in time (with its log's last line).
        """
        self.data_dir.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "edgefleet.cli", "hub", "serve", "--dev"]
        cmd += ["--data", str(self.data_dir), "--broker", self.broker_url]
        cmd += ["--port", str(self.port)]
        with open(self.log_path, "ab") as log_file:
            self._proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT)
        self.starts += 1
        deadline = time.monotonic() + timeout_s
        with HubClient(self.url, timeout=2.0) as probe:
            while True:
                if self._proc.poll() is not None:
                    raise ScenarioError(f"the hub exited at start: {self._log_tail()}")
                with contextlib.suppress(Exception):
                    probe.health()
                    return self
                if time.monotonic() > deadline:
                    self.stop()
                    raise ScenarioError(f"the hub did not answer in {timeout_s:g} s")
                time.sleep(0.1)

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, as after a power cut or the OOM killer."""
        if self._proc is not None and self._proc.poll() is None:
            os.kill(self._proc.pid, signal.SIGKILL)
            self._proc.wait()
        self._proc = None

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(15)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None

    def _log_tail(self) -> str:
        try:
            lines = self.log_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "(no log)"
        return lines[-1] if lines else "(empty log)"


class Stage:
    """The scenario's processes: a private Mosquitto and the hub."""

    def __init__(self, work_dir: Path, persistent_broker: bool = False) -> None:
        self.broker = Mosquitto(work_dir / "broker", persistence=persistent_broker)
        self.hub: HubProcess | None = None
        self.work_dir = work_dir

    def start(self) -> Stage:
        if not Mosquitto.available():
            raise ScenarioError("the mosquitto binary is not on PATH (apt-get install mosquitto)")
        self.broker.start()
        self.hub = HubProcess(self.work_dir / "hub", self.broker.address.url).start()
        return self

    def stop(self) -> None:
        if self.hub is not None:
            self.hub.stop()
        self.broker.stop()

    # Processes (simulator/faults.py)
    def restart_broker(self, down_s: float) -> None:
        self.broker.restart(down_s)

    def kill_hub(self) -> None:
        assert self.hub is not None
        self.hub.kill()

    def start_hub(self) -> None:
        assert self.hub is not None
        self.hub.start()


# --------------------------------------------------------------------------- running


@dataclass
class ScenarioResult:
    summary: dict[str, Any]
    fleet: Fleet  # closed; its devices' objects and state directories remain
    work_dir: Path


def run_scenario(
    scenario: Scenario, work_dir: Path | None = None, *, say: Say | None = None
) -> ScenarioResult:
    """Play a scenario end to end and summarise it.

    Args:
        scenario: from :func:`load_scenario`.
        work_dir: where the broker, hub and devices keep their files (default: a new
            temporary directory, kept for inspection; its path is in the summary).
        say: progress lines go here (default: stderr).

    Returns:
        the summary (JSON-able; see docs in the module) and the stopped fleet.

    Raises:
        ScenarioError: the stage could not be set up.
    """
    say = say or _stderr
    work = Path(work_dir or tempfile.mkdtemp(prefix=f"ef-scenario-{scenario.name}-"))
    work.mkdir(parents=True, exist_ok=True)
    stage = Stage(work, scenario.broker_persistence).start()
    assert stage.hub is not None
    client = HubClient(stage.hub.url, api_key=DEV_KEY)
    fleet: Fleet | None = None
    thread: threading.Thread | None = None
    try:
        say(f"stage  broker {stage.broker.address.url}, hub {stage.hub.url}, files in {work}")
        baseline, model = _train(client, scenario, say)
        fleet = _start_fleet(client, scenario, stage, work)
        thread = fleet.loop.start_thread()
        _wait_online(client, scenario.fleet.devices, say)
        if baseline is not None:
            _install_baseline(client, baseline, scenario.fleet.devices, say)
        injector = FaultInjector(scenario.faults, fleet, stage, seed=scenario.seed, say=say)
        spec = {
            "seed": f"scenario-{scenario.seed}",  # the same waves every run
            **scenario.rollout,
            "model": model["name"],
            "version": model["version"],
        }
        injector.arm()
        drift = DriftSchedule(scenario.drifts, scenario.seed, scenario.fleet.window_s)
        if scenario.drifts:
            drift.arm(fleet)
        rollout_id = start_rollout(client, spec)
        say(f"rollout {rollout_id}: {model['name']} v{model['version']}, {injector.planned()}")
        watch = _follow(client, rollout_id, scenario, injector, say)
        rows = _rollout_devices(client, rollout_id)
        _stop_loop(fleet, thread)
        summary = _summary(scenario, fleet, injector, watch, model, baseline, work, rows)
        if scenario.drifts:
            summary["drift"] = drift.summary()
    finally:
        if fleet is not None:
            _stop_loop(fleet, thread)
            fleet.close()
        client.close()
        stage.stop()
    return ScenarioResult(summary, fleet, work)


def _stop_loop(fleet: Fleet, thread: threading.Thread | None) -> None:
    fleet.loop.stop()
    if thread is not None:
        thread.join(10)


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _train(
    client: HubClient, scenario: Scenario, say: Say
) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    settings = {"name": scenario.model.name, **scenario.model.train}
    versions = []
    for _ in range(2 if scenario.model.baseline else 1):
        try:
            job = client.train(**settings)
            result: dict[str, Any] = client.wait_job(job["id"], timeout=300)["result"]
        except HubClientError as e:
            raise ScenarioError(f"model.train: the hub refused it: {e.message}") from e
        say(f"model  {result['name']} v{result['version']} trained, {result['size_bytes']} bytes")
        versions.append(result)
    return (versions[0] if len(versions) == 2 else None), versions[-1]


def _start_fleet(client: HubClient, scenario: Scenario, stage: Stage, work: Path) -> Fleet:
    root = client.enrol("scenario-image", client.create_enrol_token()["token"])["root"]
    f = scenario.fleet
    fleet = Fleet(
        FleetConfig(
            devices=f.devices,
            host=stage.broker.address.host,
            port=stage.broker.address.port,
            work_dir=work / "devices",
            pinned_root=root.encode(),
            device_classes=f.classes,
            seed=scenario.seed,
            rows_per_s=f.rows_per_s,
            window_s=f.window_s,
            fetch_timeout_s=f.fetch_timeout_s,
        )
    ).start()
    return fleet


def _wait_online(client: HubClient, n: int, say: Say) -> None:
    deadline = time.monotonic() + ONLINE_TIMEOUT_S
    while (online := len(client.devices(status="online"))) < n:
        if time.monotonic() > deadline:
            raise ScenarioError(f"only {online}/{n} devices came online in {ONLINE_TIMEOUT_S} s")
        time.sleep(POLL_S)
    say(f"fleet  {n} devices online")


def _install_baseline(client: HubClient, model: dict[str, Any], n: int, say: Say) -> None:
    dep = client.deploy(model["name"], model["version"])
    deadline = time.monotonic() + BASELINE_TIMEOUT_S
    while not (st := client.deployment(dep["id"], devices=False))["finished"]:
        if time.monotonic() > deadline:
            raise ScenarioError(f"the baseline did not reach every device: {st['stages']}")
        time.sleep(POLL_S)
    if st["converged"] != n:
        raise ScenarioError(f"the baseline failed on some devices: {st['reasons']}")
    say(f"base   {model['name']} v{model['version']} on all {n} devices")


@dataclass
class _Watch:
    status: dict[str, Any] | None = None
    seconds_to_converge: float | None = None
    halts: list[dict[str, Any]] = field(default_factory=list)
    hub_unreachable_s: float = 0.0
    timed_out: bool = False
    elapsed_s: float = 0.0
    t0: float = 0.0


def _follow(
    client: HubClient, rollout_id: str, scenario: Scenario, injector: FaultInjector, say: Say
) -> _Watch:
    """Poll the rollout, run the process faults when due, print progress, until it ends."""
    w = _Watch(t0=time.monotonic())
    next_line = 0.0
    while True:
        injector.run_due()
        t = injector.elapsed()
        before = time.monotonic()
        try:
            st = rollout_status(client, rollout_id)
        except Exception as e:  # the hub may be down: a fault of the scenario
            if not _is_unreachable(e):
                raise
            w.hub_unreachable_s += time.monotonic() - before + POLL_S
            if t >= next_line:
                say(f"t={t:6.1f}s  hub unreachable ({type(e).__name__})")
                next_line = t + PROGRESS_EVERY_S
            time.sleep(POLL_S)
            continue
        _note_halt(w, st, t)
        w.status = st
        if w.seconds_to_converge is None and st["devices"] and st["converged"] == st["devices"]:
            w.seconds_to_converge = round(t, 2)
        if t >= next_line:
            counts = " ".join(f"{k}={v}" for k, v in sorted(st["counts"].items()))
            say(
                f"t={t:6.1f}s  rollout {st['state']}  wave {st['wave']}/{st['waves']}  "
                f"healthy {st['converged']}/{st['devices']}  [{counts}]  "
                f"faults {dict(injector.counts)}"
            )
            next_line = t + PROGRESS_EVERY_S
        done = st["finished"] or st["state"] in TERMINAL_ROLLOUT_STATES
        if done and not injector.busy and t >= scenario.duration_s:
            break
        if t > max(scenario.timeout_s, scenario.duration_s):
            w.timed_out = True
            say(f"t={t:6.1f}s  gave up: the rollout did not finish in {scenario.timeout_s:g} s")
            break
        time.sleep(POLL_S)
    w.elapsed_s = round(injector.elapsed(), 2)
    say(
        f"t={w.elapsed_s:6.1f}s  rollout {w.status['state'] if w.status else '?'}: "
        f"{w.status['converged'] if w.status else 0}/{scenario.fleet.devices} healthy"
    )
    return w


def _rollout_devices(client: HubClient, rollout_id: str) -> list[dict[str, Any]]:
    """The hub's per-device rows of the rollout (empty if the hub cannot answer)."""
    try:
        return client.rollout_devices(rollout_id)
    except Exception as e:
        if not _is_unreachable(e):
            raise
        return []


def _is_unreachable(e: Exception) -> bool:
    import httpx

    if isinstance(e, HubClientError):
        return e.status >= 500
    return isinstance(e, (httpx.TransportError, OSError))


def _note_halt(w: _Watch, st: Mapping[str, Any], t: float) -> None:
    last = w.status["state"] if w.status else None
    if st["state"] in ("halted", "paused") and st["state"] != last:
        w.halts.append({"t_s": round(t, 2), "state": st["state"], "reason": st["halted_reason"]})


def _summary(
    scenario: Scenario,
    fleet: Fleet,
    injector: FaultInjector,
    watch: _Watch,
    model: dict[str, Any],
    baseline: dict[str, Any] | None,
    work: Path,
    rows: list[dict[str, Any]],
) -> dict[str, Any]:
    t0 = watch.t0
    events: list[DeviceEvent] = [e for d in fleet.devices for e in d.events if e.t >= t0]
    last: dict[str, DeviceEvent] = {}
    for e in sorted(events, key=lambda e: e.t):
        last[e.device_id] = e
    devs = fleet.devices
    versions = Counter(
        f"{a[0]}:{a[1]}" if (a := d.device.predictor.active) else "none" for d in devs
    )
    states = Counter(last[d.device_id].stage if d.device_id in last else "none" for d in devs)
    refusals = Counter(e.reason or "unknown" for e in events if e.stage in ("failed", "refused"))
    st = watch.status or {}
    planned = injector.planned()
    faults = {
        kind: {
            "planned": n,
            "injected": injector.counts.get(kind, 0),
            "devices": len(injector.devices_hit.get(kind, ())),
            **({"struck": injector.struck[kind]} if kind in injector.struck else {}),
        }
        for kind, n in planned.items()
    }
    dropped: Counter[str] = Counter()
    for d in fleet.devices:
        dropped.update(d.device.core.dropped)
    return {
        "scenario": scenario.name,
        "seed": scenario.seed,
        "devices": len(fleet.devices),
        "model": {
            "name": model["name"],
            "version": model["version"],
            "baseline_version": baseline["version"] if baseline else None,
        },
        "versions": dict(sorted(versions.items())),
        "states": dict(sorted(states.items())),
        "converged": st.get("converged", 0),
        "seconds_to_converge": watch.seconds_to_converge,
        "rollout": {
            "id": st.get("id"),
            "state": st.get("state"),
            "finished": st.get("finished", False),
            "timed_out": watch.timed_out,
            "wave": st.get("wave"),
            "waves": st.get("waves"),
            "counts": st.get("counts", {}),
            "failure_ratio": st.get("failure_ratio"),
            "halted_reason": st.get("halted_reason"),
            # devices the hub had to send the command again (reconciled or timed out)
            "resent": sum(1 for r in rows if r["attempts"] > 1),
            "rollbacks_sent": sum(1 for r in rows if r["rollback_at"] is not None),
        },
        "halts": watch.halts,
        "rollbacks": len({e.device_id for e in events if e.stage == "rolled_back"}),
        "refusals": dict(sorted(refusals.items())),
        "faults": faults,
        "crashes": [
            {
                "device": c["device"],
                "chunks_on_disk": len(c["persisted"]),
                "refetched": len(c["refetched"]),
            }
            for c in injector.crashes
        ],
        "hub_unreachable_s": round(watch.hub_unreachable_s, 1),
        "dropped_messages": dict(dropped),
        "elapsed_s": watch.elapsed_s,
        "work_dir": str(work),
    }
