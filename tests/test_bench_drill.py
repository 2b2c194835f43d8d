"""``python -m bench drill`` run small: 40 devices, an 8 s link loss, real Mosquitto
restarted twice, two hub replicas over a PostgreSQL schema of the drill's own whose
leader is SIGKILLed once, devices crashing and getting corrupted chunks, spools small
enough to overflow. The goals that hold at any size must hold here: every device
converges, no command runs twice, no device installs twice, every telemetry window a
device produced is at the hub, still in its spool, or counted as dropped by its spool;
and the other replica takes over within 10 s, and the schema is gone afterwards.

One drill run serves the fail-over tests (it takes a minute or two). Its telemetry is
not counted as whole: the windows lost at the broker's restarts are a known broker
limitation (docs/drill.md, "What the drill found"): Mosquitto 2.0.11 does not restore a
persistent session's ``$share`` subscription from its persistence file, so the telemetry
the devices publish between the broker's restart and the replicas' re-subscribe has no
subscriber and is dropped after the broker acknowledged it. Two more drills check that
every window is accounted for: the fail-over without broker restarts, and one hub (no
``$share``) through both broker restarts and a SIGKILL."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import psycopg
import pytest

from bench.drill import process_faults
from hub.transport.broker import Mosquitto

ROOT = Path(__file__).resolve().parents[1]
DEVICES = 40
PG = "host=127.0.0.1 port=5432 user=postgres dbname=test"
TAKEOVER_LIMIT_S = 10.0


def test_the_leader_is_killed_between_the_broker_restarts() -> None:
    args = argparse.Namespace(broker_restarts=2, leader_kills=1)
    schedule = process_faults(args, reference_s=20.0)
    assert [kind for _at, kind in schedule] == ["broker_restart", "leader_kill", "broker_restart"]
    assert [at for at, _kind in schedule] == [4.0, 10.0, 16.0]  # 0.2 T, then 0.3 T apart


def run_drill(*extra: str) -> dict[str, Any]:
    """One small drill's report, with its exit status and the end of its log."""
    if not Mosquitto.available():
        pytest.fail("the mosquitto binary is missing")
    args = ["--devices", str(DEVICES), "--link-loss-s", "8", "--corrupt-p", "0.05"]
    # 1 s windows and spools of 2,500 bytes (~6 idle windows, a drift sketch is ~1.8 KB):
    # an 8 s link loss overflows them, so the drops must account for what is missing
    args += ["--window-s", "1", "--spool-bytes", "2500", "--infer-share", "0.5"]
    args += ["--hidden", "256", "--timeout", "100", "--json", *extra]
    run = subprocess.run(
        [sys.executable, "-m", "bench", "drill", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert run.stdout, run.stderr[-3000:]
    report: dict[str, Any] = json.loads(run.stdout)
    return {"report": report, "returncode": run.returncode, "log": run.stderr[-3000:]}


@pytest.fixture(scope="module")
def drill() -> dict[str, Any]:
    return run_drill()


@pytest.mark.slow
@pytest.mark.broker
@pytest.mark.postgres
def test_a_small_drill_converges_through_a_failover_and_runs_nothing_twice(
    drill: dict[str, Any],
) -> None:
    r = drill["report"]
    assert r["reported_devices"] == DEVICES
    assert r["converged"]["all"] == f"{DEVICES}/{DEVICES}", drill["log"]
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
        ("leader_kill", "failover"),
        ("broker_restart", None),
    ]
    kill = faults["leader_kill"]
    assert (kill["mode"], kill["replicas"], kill["database"]) == ("failover", 2, "postgresql")
    assert len(kill["kills"]) == 1
    k = kill["kills"][0]
    assert k["new_leader"] == 1 - k["killed_replica"]  # the other replica leads now
    assert 0 < k["takeover_s"] == kill["takeover_s"] <= TAKEOVER_LIMIT_S
    assert k["back_as"] == "follower" and k["back_s"] > 0  # the supervisor restarted it
    with psycopg.connect(PG) as c:
        left = c.execute(
            "SELECT 1 FROM information_schema.schemata WHERE schema_name = %s", (kill["schema"],)
        ).fetchall()
    assert left == []  # the drill dropped its schema

    c = r["commands"]
    assert c["executed"] >= 2 * DEVICES  # v1 and v2 to every device, at least
    assert c["executed_twice"] == 0
    assert c["devices_deployed_twice"] == 0
    assert r["hub"]["drill"]["converged"] == DEVICES

    t, drift = r["telemetry"], r["drift"]
    assert t["produced"] > DEVICES  # every device reported throughout
    assert drift["produced"] > 0  # and those that infer sent drift sketches
    assert t["spool_dropped"] > 0  # the bound was reached
    assert t["seq_reused"] == 0
    for w in (t, drift):
        assert w["accepted"] + w["pending_in_spools"] + w["missing"] == w["produced"]


def assert_every_window_accounted_for(drill: dict[str, Any]) -> None:
    r = drill["report"]
    assert r["converged"]["all"] == f"{DEVICES}/{DEVICES}", drill["log"]
    t, drift = r["telemetry"], r["drift"]
    assert t["unaccounted"] == 0, t["unaccounted_devices"]
    assert t["missing"] + drift["missing"] <= t["spool_dropped"]
    assert r["commands"]["executed_twice"] == 0
    assert r["met"] is True and drill["returncode"] == 0, drill["log"]


@pytest.mark.slow
@pytest.mark.broker
@pytest.mark.postgres
def test_every_window_is_accounted_for_through_a_failover() -> None:
    drill = run_drill("--broker-restarts", "0")
    assert drill["report"]["faults"]["leader_kill"]["mode"] == "failover"
    assert_every_window_accounted_for(drill)


@pytest.mark.slow
@pytest.mark.broker
def test_every_window_is_accounted_for_through_broker_restarts_and_a_hub_kill() -> None:
    drill = run_drill("--replicas", "1")
    kinds = [p["kind"] for p in drill["report"]["faults"]["process"]]
    assert kinds == ["broker_restart", "leader_kill", "broker_restart"]
    assert_every_window_accounted_for(drill)
