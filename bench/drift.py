"""Drift on a share of a simulated fleet: how fast the hub sees it, how often it cries
wolf, what it costs in live accuracy, and what the closed loop wins back.

The parts are real: a private Mosquitto (hub/transport/broker.py), the hub in this process (``Hub``:
SQLite, trust repository, registry, ingest), a model trained, int8-quantised and signed by
the hub's pipeline on the built-in dataset, and N virtual devices (simulator/fleet.py) that
run it on their own labelled sensor streams, one window of telemetry and drift sketches
every ``--window-s``. ``--before`` windows after the model is active everywhere, a concept
shift (simulator/drift.py, shared/sensors.py ``Regime``: a faster speed band where
imbalance and misalignment show each other's signatures) strikes ``--share`` of the
devices (seeded choice); the run goes on for ``--after`` windows.

Each device infers ``--rows-per-s`` rows (in calls of ``--batch``), so a 5 s window holds
600 rows: PSI over a baseline's 10 bins has a small-sample bias of about (bins - 1) /
rows (0.2 at 45 rows, the hub's default threshold), so windows of a few dozen rows make a
PSI detector cry wolf on stationary devices; the hub judges no window under its policy's
``min_rows`` (500 by default, docs/drift.md).

Figures (one JSON object with ``--json``):

- ``accuracy_before`` / ``accuracy_after_drift``: live accuracy (predictions against the
  generator's labels) of the drifted devices, pooled over the windows before the drift and
  over the windows after the one it struck in. ``stationary_accuracy_*``: the others.
- ``detection_delay_windows``: per drifted device, windows from the drift start to the
  first open alert of the hub's drift detector that names it (the alert's ``opened_at``;
  alerts are polled every POLL_S), ``ceil`` of the elapsed time over the window; the
  median over drifted devices (``first_detection_windows``: the fastest).
- ``false_alarm_rate``: (alert, stationary device it covers) pairs, per stationary
  device-window observed. An alert covers its device (device scope) and the devices it
  names while open (any scope: a group or fleet alert names the devices that drove it,
  not every device that reported; docs/drift.md), so a stationary device is a false
  alarm only when an alert names it. A group or fleet alert's list follows its time
  buckets, so a device named after the alert opened counts from when it was first named.
- ``adwin_delay_windows``: river's ``ADWIN`` (default delta 0.002) as a reference, run
  after the fact on the same stream: one detector per drifted device reads that device's
  per-row prediction errors (1 wrong, 0 right; it needs the labels, which the hub's
  detector does not) from the model's activation on, in order. Its first detection at or
  after the drift start becomes windows as ``ceil((t_row - t_drift) / window_s)`` with
  ``t_row`` the time the row's batch was inferred; the median over drifted devices.
  ``adwin_false_alarm_rate``: its detections on stationary devices per device-window.
- ``accuracy_after_loop``: the drifted devices' live accuracy over ``--after`` windows
  once the hub's closed loop (hub/loop.py, turned on for the model before the drift:
  alert -> capture from the alerted devices -> retrain on the training rows plus the
  captured labelled rows -> canary rollout to those devices) has a new model active on
  all of them; ``None`` if it did not. ``loop`` says what each run did and when, and the
  audit records it wrote.

Run from the checkout::

    python -m bench drift [--devices 200] [--share 0.05] [--window-s 5] [--before 8]
                          [--after 8] [--rows-per-s 120] [--batch 25] [--json]
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

log = logging.getLogger("bench.drift")

GOALS = {"detection_delay_windows": 2, "false_alarm_rate": 0.01, "accuracy_points": 2.0}
MODEL_NAME = "bench-drift"
SEED = 3
POLL_S = 0.25  # s: between polls of the hub's alerts and of the fleet
ONLINE_TIMEOUT_S = 120.0  # s: for every device to connect and be known online to the hub
DEPLOY_TIMEOUT_S = 180.0  # s: for the model (or the loop's model) to be active
LOOP_TIMEOUT_S = 600.0  # s: for the loop's run to end, from the end of the drift windows
CAPTURE_ROWS = 2000  # per drifted device: the loop's capture
LOOP_QUIET_S = 20.0  # s: every loop run ended and none started for this long: give up
DEVICE_DIR = "/dev/shm"  # tmpfs for the devices' state (see bench/rollout.py)
# p95 single-row latency the health check allows (µs): hundreds of devices share two
# cores here, and a device refusing the model for a slow check is not what this measures.
LATENCY_BUDGET_US = 100_000.0


# ----------------------------------------------------------------- the hub side


def open_alerts(hub: Any) -> list[dict[str, Any]]:
    """The hub's open drift alerts (hub/telemetry/drift.py), each a dict with ``id``, ``opened_at``
    (epoch s), ``scope``, the device of a device-scope alert (``device``) and the devices
    it names (``devices``: for a group or fleet alert, those that drove it)."""
    from hub.telemetry.drift_policy import open_alerts as hub_alerts

    return [
        {
            "id": a.id,
            "opened_at": a.opened_at,
            "scope": a.scope,
            "device": a.scope_id if a.scope == "device" else None,
            "devices": list(a.devices),
        }
        for a in hub_alerts(hub.engine, MODEL_NAME)
    ]


def alert_devices(alert: dict[str, Any]) -> frozenset[str]:
    """The devices an alert covers: its device (device scope) and the devices whose
    windows exceeded (any scope)."""
    out = {str(d) for d in alert.get("devices") or ()}
    for key in ("device", "device_id"):
        if alert.get(key):
            out.add(str(alert[key]))
    if alert.get("scope") == "device" and alert.get("key"):
        out.add(str(alert["key"]))
    return frozenset(out)


def enable_loop(hub: Any, model: str, args: argparse.Namespace) -> None:
    """Turn the model's closed-loop policy on (hub/loop.py), as an operator would.

    The devices sample for the ``--after`` windows in which the drift is measured, so the
    capture does not cut that measurement short; the cool-down outlasts the run, so one
    drift makes one run.
    """
    from hub.loop import PolicySettings

    hub.loop.set_policy(
        model,
        PolicySettings(
            enabled=True,
            capture_rows=CAPTURE_ROWS,
            capture_s=args.after * args.window_s,
            canary_percent=50.0,
            waves=1,
            cooldown_s=3600.0,
        ),
        by="bench",
    )


# ----------------------------------------------------------------------------- the run


class StreamLog:
    """Per device, (t, errors) of every labelled inference call (a fleet label tap)."""

    def __init__(self) -> None:
        self.rows: dict[str, list[tuple[float, npt.NDArray[np.bool_]]]] = {}
        self._lock = threading.Lock()

    def tap(self, dev: Any, predicted: npt.NDArray[Any], y: npt.NDArray[Any]) -> None:
        with self._lock:
            self.rows.setdefault(dev.device_id, []).append((time.monotonic(), predicted != y))


def adwin_delays(
    log_: StreamLog, devices: Sequence[str], t_from: float, t_drift: float, window_s: float
) -> tuple[list[int | None], int]:
    """Run one ADWIN per device on its per-row errors from ``t_from`` on.

    Returns:
        (per device: windows from ``t_drift`` to its first detection at or after it, or
        None; detections before ``t_drift`` summed over the devices)
    """
    from river.drift import ADWIN

    delays: list[int | None] = []
    early = 0
    for d in devices:
        adwin, found = ADWIN(), None  # type: ignore[no-untyped-call]
        for t, errors in log_.rows.get(d, []):
            if t < t_from:
                continue
            for e in errors:
                adwin.update(float(e))  # type: ignore[no-untyped-call]
                if adwin.drift_detected:
                    if t < t_drift:
                        early += 1
                    elif found is None:
                        found = max(1, math.ceil((t - t_drift) / window_s))
            if found is not None:
                break
        delays.append(found)
    return delays, early


def _say(text: str) -> None:
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def _wait(what: str, done: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: timed out after {timeout:.0f} s")
        time.sleep(POLL_S)


def _active_on(fleet: Any, ids: Sequence[str], version: int) -> bool:
    return all(_version(d) == version for d in _pick(fleet, ids))


class AlertWatch:
    """Polls :func:`open_alerts`; keeps, per alert, when it first named each device it
    covers: its opening for those named when first seen, else the poll that saw the
    device added (a group or fleet alert's device list changes while it is open)."""

    def __init__(self, hub: Any) -> None:
        self.hub = hub
        self.named: dict[str, dict[str, float]] = {}  # alert id -> device -> t first named

    def poll(self) -> None:
        now, wall = time.monotonic(), time.time()
        for a in open_alerts(self.hub):
            key = str(a.get("id", json.dumps(a, sort_keys=True, default=str)))
            named = self.named.get(key)
            if named is None:
                opened = a.get("opened_at")  # epoch s; else: when this poll first saw it
                t = now - (wall - opened) if isinstance(opened, (int, float)) else now
                named = self.named[key] = {}
            else:
                t = now
            for device in alert_devices(a):
                named.setdefault(device, min(t, now))


def _measure(hub: Any, model: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    from bench.rollout import deploy, online_devices
    from shared.sensors import Regime
    from simulator.drift import DriftSchedule, DriftSpec
    from simulator.fleet import Fleet, FleetConfig

    n, w = args.devices, args.window_s
    fleet = Fleet(
        FleetConfig(
            devices=n,
            host=hub.broker.host,
            port=hub.broker.port,
            work_dir=args.device_dir / "devices",
            pinned_root=hub.trust.pinned_root(),
            seed=SEED,
            rows_per_s=args.rows_per_s,
            batch=args.batch,
            window_s=w,
            fetch_timeout_s=10.0,
        )
    ).start()
    ids = [d.device_id for d in fleet.devices]
    stream = StreamLog()
    fleet.label_taps.append(stream.tap)
    thread = fleet.loop.start_thread()
    try:
        _wait("fleet online", lambda: online_devices(hub, "sim-") >= n, ONLINE_TIMEOUT_S)
        dep = deploy(hub, model["name"], model["version"])
        _wait("deploy", lambda: hub.rollouts.status(dep).finished, DEPLOY_TIMEOUT_S)
        running = sum(_active_on(fleet, [d], model["version"]) for d in ids)
        enable_loop(hub, model["name"], args)
        _say(f"fleet  {running}/{n} devices run {model['name']} v{model['version']}")
        # The default regime (shared/sensors.py Regime): imbalance <-> misalignment at 4-5 krpm.
        spec = DriftSpec("concept", at_s=args.before * w, share=args.share, regime=Regime())
        schedule = DriftSchedule([spec], SEED, w).arm(fleet)
        t0 = schedule.accuracy.t0
        drifted = schedule.targets[0]
        watch = AlertWatch(hub)
        end = t0 + (args.before + 1 + args.after) * w
        while time.monotonic() < end:
            watch.poll()
            time.sleep(POLL_S)
        t_drift = t0 + (schedule.started.get(0) or spec.at_s)
        summary = schedule.summary()
        loop = _after_loop(hub, fleet, schedule, drifted, args)
    finally:
        fleet.loop.stop()
        thread.join(10)
        fleet.close()
    report = _figures(summary, watch, stream, ids, drifted, t0, t_drift, loop["accuracy"], args)
    from hub.access.audit import AuditLog

    audit = AuditLog(hub.engine).query(actor=f"loop-policy:{MODEL_NAME}")
    loop["audit"] = [r.action for r in reversed(audit)]  # oldest first
    report["loop"] = loop
    report["devices_running_model"] = running
    # What reached the hub (to tell "no drift messages" from "no alert" when a figure is null).
    report["hub_counts"] = {
        k: dict(getattr(obj, "counts", {}))
        for k, obj in (("mqtt", hub.mqtt), ("ingest", getattr(hub, "ingest", None)))
    }
    return report


def _after_loop(
    hub: Any, fleet: Any, schedule: Any, drifted: list[str], args: argparse.Namespace
) -> dict[str, Any]:
    """Wait until the hub's loop (alert -> capture -> retrain -> canary) has a new model
    active on every drifted device, then measure their live accuracy over ``--after``
    windows on it. Gives up when every run the loop started has ended and a drifted
    device is still on the old version, or after LOOP_TIMEOUT_S."""
    first_version = min(v for d in fleet.devices if (v := _version(d)) is not None)

    def upgraded() -> bool:
        return all((_version(d) or 0) > first_version for d in _pick(fleet, drifted))

    deadline = time.monotonic() + LOOP_TIMEOUT_S
    quiet_since: float | None = None
    while time.monotonic() < deadline and not upgraded():
        runs = hub.loop.runs(MODEL_NAME)
        idle = bool(runs) and all(r.stage in ("done", "failed") for r in runs)
        quiet_since = (quiet_since or time.monotonic()) if idle else None
        if quiet_since is not None and time.monotonic() - quiet_since > LOOP_QUIET_S:
            break  # every run ended and none started since
        time.sleep(POLL_S)
    runs = list(reversed(hub.loop.runs(MODEL_NAME)))  # oldest first
    out: dict[str, Any] = {
        "accuracy": None,
        "runs": [
            {
                "stage": r.stage,
                "detail": r.detail,
                "devices": len(r.devices),
                "drifted_devices": len(set(r.devices) & set(drifted)),
                "version": r.version,
                "steps_s": {st["step"]: round(st["ts"] - r.created_at, 1) for st in r.steps},
            }
            for r in runs
        ],
    }
    if not upgraded():
        out["why"] = "the loop did not put a new model on every drifted device"
        return out
    log_ = schedule.accuracy
    first = int((time.monotonic() - log_.t0) // log_.window_s) + 1
    time.sleep((args.after + 1) * args.window_s)
    out["accuracy"] = log_.accuracy(drifted, first, first + args.after - 1)
    out["version"] = max(_version(d) or 0 for d in _pick(fleet, drifted))
    return out


def _pick(fleet: Any, ids: Sequence[str]) -> list[Any]:
    want = set(ids)
    return [d for d in fleet.devices if d.device_id in want]


def _version(device: Any) -> int | None:
    active = device.device.predictor.active
    return None if active is None else int(active[1])


def _median(values: Sequence[int | None]) -> float | None:
    found = [v for v in values if v is not None]
    return float(statistics.median(found)) if found else None


def _figures(
    summary: dict[str, Any],
    watch: AlertWatch,
    stream: StreamLog,
    ids: list[str],
    drifted: list[str],
    t0: float,
    t_drift: float,
    after_loop: float | None,
    args: argparse.Namespace,
) -> dict[str, Any]:
    w = args.window_s
    stationary = [d for d in ids if d not in set(drifted)]
    windows = summary["windows"]
    row = summary["drifts"][0]
    # Hub detector: first sighting per drifted device, false alarms on stationary ones.
    first_alert: dict[str, float] = {}
    false_alarms = 0
    for named in watch.named.values():
        for device, t in named.items():
            if device in drifted and t >= t_drift:
                first_alert[device] = min(first_alert.get(device, t), t)
            elif device not in drifted:
                false_alarms += 1  # one per (alert, stationary device)
    delays = [
        max(1, math.ceil((first_alert[d] - t_drift) / w)) if d in first_alert else None
        for d in drifted
    ]
    # ADWIN on the same stream.
    adwin, _early = adwin_delays(stream, drifted, t0, t_drift, w)
    _late, adwin_false = adwin_delays(stream, stationary, t0, math.inf, w)
    device_windows = max(1, len(stationary) * windows)
    acc_before = row["drifted"]["accuracy_before"]
    return {
        "devices": len(ids),
        "drifted_devices": len(drifted),
        "window_s": w,
        "windows": windows,
        "drift": {"kind": "concept", "struck_s": row["struck_s"], "devices": drifted},
        "detector": "hub drift alerts (device, group and fleet scopes)",
        "detection_delay_windows": _median(delays),
        "first_detection_windows": min((d for d in delays if d is not None), default=None),
        "detected_devices": sum(1 for d in delays if d is not None),
        "false_alarm_rate": round(false_alarms / device_windows, 5),
        "accuracy_before": acc_before,
        "accuracy_after_drift": row["drifted"]["accuracy_after"],
        "accuracy_after_loop": after_loop,
        "stationary_accuracy_before": row["stationary"]["accuracy_before"],
        "stationary_accuracy_after": row["stationary"]["accuracy_after"],
        "adwin_delay_windows": _median(adwin),
        "adwin_detected_devices": sum(1 for d in adwin if d is not None),
        "adwin_false_alarm_rate": round(adwin_false / device_windows, 5),
        "adwin_reads": "per-row prediction errors (0/1) of each device, from activation on",
        "goals": GOALS,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    from hub import Hub, HubConfig, pipeline_config
    from hub.transport.broker import Mosquitto

    work = Path(tempfile.mkdtemp(prefix="bench-drift-"))
    args.device_dir = Path(tempfile.mkdtemp(prefix="bench-drift-", dir=args.device_dir))
    broker = Mosquitto(work / "broker").start()
    hub = None
    try:
        hub = Hub(HubConfig(data_dir=work / "hub", broker_url=broker.address.url)).start()
        config = pipeline_config(
            name=MODEL_NAME,
            probation_s=0.0,
            probation_min_inferences=0,
            latency_budget_us=LATENCY_BUDGET_US,
        )
        model = dict(hub.build_and_publish(config))
        _say(f"model  {model['name']} v{model['version']} trained and signed")
        report = _measure(hub, model, args)
    finally:
        if hub is not None:
            hub.stop()
        broker.stop()
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(args.device_dir, ignore_errors=True)
    report["python"] = platform.python_version()
    report["cpus"] = len(os.sched_getaffinity(0))
    return report


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench drift",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--devices", type=int, default=200)
    parser.add_argument("--share", type=float, default=0.05, help="of the devices, drifted")
    parser.add_argument("--window-s", type=float, default=5.0, help="telemetry window, s")
    parser.add_argument("--before", type=int, default=8, help="windows before the drift")
    parser.add_argument("--after", type=int, default=8, help="windows after it")
    parser.add_argument("--rows-per-s", type=float, default=120.0, help="per device")
    parser.add_argument("--batch", type=int, default=25, help="rows per inference call")
    parser.add_argument(
        "--device-dir",
        type=Path,
        default=Path(DEVICE_DIR) if os.path.isdir(DEVICE_DIR) else None,
        help=f"where the simulated devices keep their files (default {DEVICE_DIR})",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    if not 0 < args.share <= 1 or args.devices < 2 or args.before < 2 or args.after < 2:
        parser.error("need 0 < --share <= 1, --devices >= 2, --before >= 2, --after >= 2")
    logging.basicConfig(level=logging.WARNING)
    report = run(args)
    if args.json:
        print(json.dumps(report))
    else:
        for k, v in report.items():
            print(f"{k:<28} {json.dumps(v)}")
    return 0
