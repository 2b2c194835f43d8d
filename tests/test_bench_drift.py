"""A smoke run of ``python -m bench drift``: a tiny fleet, a real Mosquitto and hub."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from hub.transport.broker import Mosquitto

ROOT = Path(__file__).resolve().parents[1]
FIELDS = (
    "detection_delay_windows",
    "false_alarm_rate",
    "accuracy_before",
    "accuracy_after_drift",
    "accuracy_after_loop",
    "adwin_delay_windows",
    "adwin_false_alarm_rate",
    "stationary_accuracy_before",
    "stationary_accuracy_after",
)


@pytest.mark.slow
@pytest.mark.broker
def test_drift_smoke_run_reports_the_figures() -> None:
    if not Mosquitto.available():
        pytest.fail("the mosquitto binary is missing")
    args = ["--devices", "10", "--share", "0.2", "--before", "3", "--after", "3", "--json"]
    run = subprocess.run(
        [sys.executable, "-m", "bench", "drift", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    report = json.loads(run.stdout)
    assert [f for f in FIELDS if f not in report] == []
    assert report["devices"] == 10 and report["drifted_devices"] == 2
    assert report["devices_running_model"] == 10
    assert len(report["drift"]["devices"]) == 2
    # The concept shift costs the drifted devices accuracy; the others keep theirs.
    assert report["accuracy_before"] > 0.8
    assert report["accuracy_after_drift"] < report["accuracy_before"] - 0.1
    assert report["stationary_accuracy_after"] > report["stationary_accuracy_before"] - 0.08
    assert 0 <= report["adwin_false_alarm_rate"] <= 1
    # The hub's detector names both drifted devices. The false-alarm goal (<= 1%) is
    # measured by the 200-device bench; here 8 stationary devices give only ~24
    # device-windows, so one group or fleet alert that lists a stationary device's noisy
    # window already counts 4%: the smoke run only bounds it loosely.
    assert report["detected_devices"] == 2 and report["detection_delay_windows"] <= 3
    assert report["false_alarm_rate"] <= 0.25
    # The closed loop: captured, retrained, and put a model back on the drifted devices
    # that wins their accuracy back; every step is in the audit log.
    loop = report["loop"]
    assert loop["runs"] and loop["runs"][0]["drifted_devices"] == 2, loop
    assert {"capture", "retrain", "deploy"} <= set(loop["runs"][0]["steps_s"]), loop
    assert loop["audit"][:3] == ["loop.capture", "loop.retrain", "loop.deploy"], loop
    assert report["accuracy_after_loop"] > report["accuracy_before"] - 0.05
