"""The closed loop says why it left a drift alert alone (hub/loop.py, docs/loop.md): a
fleet alert naming no device, an alert whose device fell silent.

A real hub (SQLite, or PostgreSQL under EF_TEST_DB=postgresql) with a real Mosquitto and
a model it trained; its maintenance waits its default minute, so the test sweeps the
drift alerts by hand when it wants them swept (``DriftMonitor.sweep``, what the
maintenance runs). Drift windows go through the hub's own ingest (tests/test_alerts.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import pytest
from test_alerts import drift_window
from test_api_auth import Stage, start_stage, stop_stage
from test_drift_silence import SILENCE_S, alert_of
from waiting import wait_for

from hub import pipeline_config
from hub.access.keys import Role
from hub.store.tables import DriftAlert, session
from hub.transport.broker import Mosquitto

pytestmark = pytest.mark.broker


@pytest.fixture(scope="module")
def stage(mosquitto: Mosquitto, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stage]:
    """A hub whose maintenance waits its default minute: the test sweeps by hand."""
    s = start_stage(mosquitto, tmp_path_factory.mktemp("skips"))
    s.hub.build_and_publish(pipeline_config(name="press", n_train=600, hidden=(16,)))
    r = s.as_role(Role.operator).put("/drift/policies/press", json={"silence_s": SILENCE_S})
    assert r.status_code == 200, r.text
    yield s
    stop_stage(s)


def test_the_loop_records_once_why_it_skipped_each_alert(
    stage: Stage, caplog: pytest.LogCaptureFixture
) -> None:
    """A fleet alert naming no device, and a device alert gone stale: each gets one
    ``skipped`` run with its reason however often the loop ticks, a log line and an
    audit record; nothing is captured from or deployed to them."""
    caplog.set_level(logging.INFO, logger="hub.loop")  # the loop's own thread ticks too
    hub = stage.hub
    operator, viewer = stage.as_role(Role.operator), stage.as_role(Role.viewer)
    # the capture outlasts the silence: one run while the alert is open, none after
    policy = {"enabled": True, "gather_s": 0, "cooldown_s": 0, "capture_s": SILENCE_S + 2}
    with session(hub.engine) as s:  # a fleet whose merge drifts with no device standing
        fleet = DriftAlert(  # out: what drift.py opens naming none (docs/drift.md)
            model="press", version=1, scope="fleet", scope_id="*",
            devices=[], features=["temp_c"],
        )  # fmt: skip
        s.add(fleet)
        s.commit()
        s.refresh(fleet)
    assert operator.put("/loop/policies/press", json=policy).status_code == 200
    hub.datasets.grace_s = 0.5  # seconds after the capture for uploads to arrive
    try:
        for _ in range(3):  # several ticks: one record per alert and reason
            hub.loop.tick()
        # (the next drift evaluation clears that fleet alert: no window drifted in fact)
        for seq in range(2):
            drift_window(hub, "gone-1", seq, shifted=True)
        hub.loop.tick()  # an open alert naming its device: a run starts, as ever
        wait_for(lambda: time.time() - alert_of(stage, "gone-1")["updated_at"] > SILENCE_S, 10,
                 "the silence")  # fmt: skip
        hub.drift.sweep()  # what the hub's maintenance does every maintenance_s
        gone = alert_of(stage, "gone-1")
        assert gone["state"] == "stale"

        def run_ended() -> bool:  # the silent device never answered its capture
            hub.loop.tick()
            runs = viewer.get("/loop/runs", params={"model": "press"}).json()
            return all(r["stage"] in ("failed", "skipped") for r in runs)

        wait_for(run_ended, 15, "the capture run to fail")
        for _ in range(3):
            hub.loop.tick()
        runs = viewer.get("/loop/runs", params={"model": "press"}).json()
        skipped = {r["id"]: r for r in runs if r["stage"] == "skipped"}
        assert set(skipped) == {f"skip-{fleet.id}-no_device", f"skip-{gone['id']}-stale"}
        named_none = skipped[f"skip-{fleet.id}-no_device"]
        assert named_none["detail"] == (
            f"no_device: fleet alert {fleet.id} (*) names no device to capture from or deploy to"
        )
        assert named_none["devices"] == [] and named_none["ended_at"] is not None
        silent = skipped[f"skip-{gone['id']}-stale"]
        assert silent["detail"] == gone["stale_reason"]
        assert silent["alerts"] == [gone["id"]] and silent["devices"] == ["gone-1"]
        started = [r for r in runs if r["stage"] != "skipped"]
        assert [r["alerts"] for r in started] == [[gone["id"]]]  # while it was open only
        assert viewer.get(f"/loop/runs/{silent['id']}").json()["steps"][0]["step"] == "skipped"
        lines = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
        assert len(lines) == 2, lines  # logged once each, not every tick
        assert len(stage.audit(action="loop.skipped")) == 2
    finally:
        operator.put("/loop/policies/press", json={"enabled": False})
