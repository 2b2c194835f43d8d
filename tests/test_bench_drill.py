"""``python -m bench drill`` run small: 40 devices, an 8 s link loss, real Mosquitto
restarted twice, the hub process SIGKILLed once, devices crashing and getting corrupted
chunks, spools small enough to overflow. The goals that hold at any size must hold here:
every device converges, no command runs twice, no device installs twice, and every
telemetry window a device produced is at the hub, still in its spool, or counted as
dropped by its spool."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.drill import process_faults
from hub.transport.broker import Mosquitto

ROOT = Path(__file__).resolve().parents[1]
DEVICES = 40


def test_the_leader_is_killed_between_the_broker_restarts() -> None:
    args = argparse.Namespace(broker_restarts=2, leader_kills=1)
    schedule = process_faults(args, reference_s=20.0)
    assert [kind for _at, kind in schedule] == ["broker_restart", "leader_kill", "broker_restart"]
    assert [at for at, _kind in schedule] == [4.0, 10.0, 16.0]  # 0.2 T, then 0.3 T apart


@pytest.mark.slow
@pytest.mark.broker
def test_a_small_drill_converges_and_loses_nothing() -> None:
    if not Mosquitto.available():
        pytest.fail("the mosquitto binary is missing")
    args = ["--devices", str(DEVICES), "--link-loss-s", "8", "--corrupt-p", "0.05"]
    # 1 s windows and spools of 2,500 bytes (~6 idle windows, a drift sketch is ~1.8 KB):
    # an 8 s link loss overflows them, so the drops must account for what is missing
    args += ["--window-s", "1", "--spool-bytes", "2500", "--infer-share", "0.5"]
    args += ["--hidden", "256", "--timeout", "100", "--json"]
    run = subprocess.run(
        [sys.executable, "-m", "bench", "drill", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert run.stdout, run.stderr[-3000:]
    r = json.loads(run.stdout)
    assert run.returncode == 0, (r, run.stderr[-3000:])

    assert r["reported_devices"] == DEVICES
    assert r["converged"]["all"] == f"{DEVICES}/{DEVICES}"
    assert r["converged"]["share"] == 1.0
    assert r["seconds"] > 0 and r["reference_seconds"] > 0
    assert r["ratio"] == pytest.approx(r["seconds"] / r["reference_seconds"], abs=0.01)

    faults = r["faults"]
    assert faults["device"]["crash_mid_download"] == 4  # 10% of each worker's 20
    assert faults["device"]["disconnect"] == 2  # 5% of 20, at least one per worker
    assert faults["device"]["corrupt_chunks"] >= 1
    assert r["converged"]["crashed"] == "4/4"
    assert r["converged"]["lost_link"] == "2/2"
    process = [(p["kind"], p.get("mode")) for p in faults["process"]]
    assert process == [
        ("broker_restart", None),
        ("leader_kill", "restart"),
        ("broker_restart", None),
    ]

    c = r["commands"]
    assert c["executed"] >= 2 * DEVICES  # v1 and v2 to every device, at least
    assert c["executed_twice"] == 0
    assert c["devices_deployed_twice"] == 0

    t, drift = r["telemetry"], r["drift"]
    assert t["produced"] > DEVICES  # every device reported throughout
    assert drift["produced"] > 0  # and those that infer sent drift sketches
    assert t["spool_dropped"] > 0  # the bound was reached
    assert t["unaccounted"] == 0 and t["seq_reused"] == 0
    assert t["missing"] + drift["missing"] <= t["spool_dropped"]
    for w in (t, drift):
        assert w["accepted"] + w["pending_in_spools"] + w["missing"] == w["produced"]
    assert r["hub"]["drill"]["converged"] == DEVICES
    assert r["met"] is True
