"""Drift alerts of devices that fall silent go stale, and come back when the device does
(hub/telemetry/drift_silence.py, docs/drift.md); the loop's skips: tests/test_loop_skips.py.

Real parts: a hub (SQLite, or PostgreSQL under EF_TEST_DB=postgresql) with a real
Mosquitto and a model it trained, served by uvicorn, its maintenance (which sweeps the
drift alerts) every 0.2 s; drift and telemetry windows go through the hub's own
validation and ingest, as tests/test_alerts.py feeds them; the webhook receiver is a real
HTTP server that checks the signature (tests/alert_receiver.py). The silence a policy
allows is cut to 3 s so the test waits seconds, not the default 900.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from typing import Any

import pytest
from test_alerts import FAST, device_drift, drift_window, receiver, report
from test_api_auth import Stage, start_stage, stop_stage
from waiting import wait_for

from hub import pipeline_config
from hub.access.keys import Role
from hub.transport.broker import Mosquitto

pytestmark = pytest.mark.broker

SILENCE_S = 3.0  # the policy's silence_s here (default 900: three idle heartbeats)


@pytest.fixture(scope="module")
def stage(mosquitto: Mosquitto, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stage]:
    s = start_stage(mosquitto, tmp_path_factory.mktemp("silence"), alerts=FAST, maintenance_s=0.2)
    s.hub.build_and_publish(pipeline_config(name="press", n_train=600, hidden=(16,)))
    r = s.as_role(Role.operator).put("/drift/policies/press", json={"silence_s": SILENCE_S})
    assert r.status_code == 200 and r.json()["silence_s"] == SILENCE_S, r.text
    yield s
    stop_stage(s)


def alert_of(stage: Stage, device_id: str) -> dict[str, Any]:
    alerts = stage.as_role(Role.viewer).get("/drift/alerts", params={"model": "press"}).json()
    [alert] = [a for a in alerts if a["scope"] == "device" and a["scope_id"] == device_id]
    return dict(alert)


def heartbeat(stage: Stage, device_id: str, seq: int) -> None:
    """An idle device's zero telemetry window (ADR 0034), through the ingest."""
    now = time.time()
    body = {
        "seq": seq, "start": now - 1, "end": now, "model": "press", "version": 1,
        "count": 0, "errors": 0, "latency_us": {"p50": 0.0, "p95": 0.0, "p99": 0.0},
    }  # fmt: skip
    report(stage.hub, device_id, "telemetry", "telemetry", body)


def metric(stage: Stage, name: str, **labels: str) -> float | None:
    text = stage.as_role(Role.viewer).get("/metrics").text
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    m = re.search(rf"^{name}\{{{re.escape(wanted)}\}} (\S+)$", text, re.M)
    return float(m.group(1)) if m else None


def test_a_silent_devices_alert_goes_stale_then_follows_its_windows_when_it_is_back(
    stage: Stage,
) -> None:
    hub, viewer = stage.hub, stage.as_role(Role.viewer)
    with receiver(stage, "silence-room", kinds=["drift"], models=["press"]) as hook:
        for seq in range(2):
            drift_window(hub, "quiet-1", seq, shifted=True)
        assert alert_of(stage, "quiet-1")["state"] == "open"
        wait_for(lambda: device_drift(hook, "quiet-1"), 10, "the firing alert")

        # the device says nothing more: after the silence, the alert is stale, with why
        wait_for(lambda: alert_of(stage, "quiet-1")["state"] == "stale", 10, "a stale alert")
        stale = alert_of(stage, "quiet-1")
        assert stale["stale_reason"].startswith("stale: device quiet-1 silent since 20")
        assert stale["cleared_at"] is None
        listed = viewer.get("/drift/alerts", params={"state": "stale"}).json()
        assert stale["id"] in [a["id"] for a in listed]
        assert metric(stage, "edgefleet_drift_alerts_stale", model="press", scope="device") == 1
        wait_for(lambda: len(device_drift(hook, "quiet-1")) == 2, 10, "the stale alert sent")
        said = device_drift(hook, "quiet-1")[1]
        assert said["status"] == "resolved" and said["annotations"]["state"] == "stale"
        assert said["annotations"]["reason"] == stale["stale_reason"]
        assert said["annotations"]["summary"] == "press: drift on device quiet-1 stale"

        # it is back, still drifting: the same alert, open again; then calm: cleared
        drift_window(hub, "quiet-1", 2, shifted=True)
        back = alert_of(stage, "quiet-1")
        assert (back["id"], back["state"], back["stale_reason"]) == (stale["id"], "open", None)
        for seq in range(3, 6):
            drift_window(hub, "quiet-1", seq, shifted=False)
        assert alert_of(stage, "quiet-1")["state"] == "cleared"
        wait_for(lambda: len(device_drift(hook, "quiet-1")) == 4, 10, "resumed and cleared")
        sent = device_drift(hook, "quiet-1")
    assert [(a["status"], a["annotations"]["state"]) for a in sent] == [
        ("firing", "open"), ("resolved", "stale"), ("firing", "open"), ("resolved", "cleared"),
    ]  # fmt: skip
    assert len({a["fingerprint"] for a in sent}) == 1  # one alert, as a receiver groups it
    events = viewer.get("/drift/events", params={"model": "press"}).json()
    mine = [e for e in events if e["alert_id"] == stale["id"]]
    assert [e["kind"] for e in mine] == ["raised", "stale", "resumed", "cleared"]
    assert mine[1]["detail"] == stale["stale_reason"]
    assert mine[2]["detail"] == "device quiet-1 reports again"


def test_idle_heartbeats_keep_an_alert_open(stage: Stage) -> None:
    """A device that stops inferring still sends a zero window per heartbeat: it is not
    silent, and its alert stays open (no drift window to judge it by either)."""
    for seq in range(2):
        drift_window(stage.hub, "idle-1", seq, shifted=True)
    deadline = time.monotonic() + 2 * SILENCE_S
    seq = 0
    while time.monotonic() < deadline:
        heartbeat(stage, "idle-1", seq)
        seq += 1
        time.sleep(SILENCE_S / 5)  # heartbeats well inside the silence allowed
    alert = alert_of(stage, "idle-1")
    assert (alert["state"], alert["stale_reason"]) == ("open", None)
    wait_for(lambda: alert_of(stage, "idle-1")["state"] == "stale", 10, "stale once silent")
