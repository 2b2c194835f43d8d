"""The closed loop's policy through the API (hub/loop.py, hub/api/routes/loop.py).

A real hub (SQLite, trust repository, a real Mosquitto) and a real trained model. The
whole loop, alert -> capture -> retrain -> canary, runs against a simulated fleet in
tests/test_bench_drift.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pg_schemas import hub_engine
from sqlmodel import select
from test_api_auth import Stage, start_stage, stop_stage
from waiting import wait_for

from hub import pipeline_config
from hub.access.keys import Role
from hub.ml.jobs import Jobs
from hub.store.tables import DriftAlert, Job, session
from hub.transport.broker import Mosquitto

pytestmark = pytest.mark.broker


@pytest.fixture(scope="module")
def stage(mosquitto: Mosquitto, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stage]:
    s = start_stage(mosquitto, tmp_path_factory.mktemp("loop"))
    s.hub.build_and_publish(pipeline_config(name="press", n_train=600, hidden=(16,)))
    yield s
    stop_stage(s)


def test_the_loop_is_off_until_an_operator_turns_it_on(stage: Stage) -> None:
    viewer, operator = stage.as_role(Role.viewer), stage.as_role(Role.operator)
    policy = viewer.get("/loop/policies/press").json()
    assert policy["enabled"] is False and policy["model"] == "press"

    wanted = {"enabled": True, "capture_rows": 500, "capture_s": 30, "canary_percent": 25}
    assert viewer.put("/loop/policies/press", json=wanted).status_code == 403
    r = operator.put("/loop/policies/press", json=wanted)
    assert r.status_code == 200, r.text
    shown = viewer.get("/loop/policies/press").json()
    assert shown["enabled"] is True and shown["capture_rows"] == 500
    assert shown["canary_percent"] == 25 and shown["gather_s"] == 10.0

    record = stage.audit(action="loop.policy.set", outcome="ok")[0]
    assert record["target"] == "press" and record["role"] == "operator"
    assert record["before"]["enabled"] is False and record["after"]["enabled"] is True


@pytest.mark.parametrize(
    ("model", "body", "status"),
    [
        ("no-such-model", {"enabled": True}, 404),
        ("press", {"capture_rows": 0}, 422),
        ("press", {"capture_s": -1}, 422),
        ("press", {"canary_percent": 101}, 422),
        ("press", {"enabled": "sometimes"}, 422),
    ],
)
def test_a_bad_policy_is_refused_with_a_reason(
    stage: Stage, model: str, body: dict[str, object], status: int
) -> None:
    r = stage.as_role(Role.operator).put(f"/loop/policies/{model}", json=body)
    assert r.status_code == status, r.text
    assert r.json()["detail"]


def test_without_drift_alerts_the_loop_starts_nothing(stage: Stage) -> None:
    stage.as_role(Role.operator).put("/loop/policies/press", json={"enabled": True})
    stage.hub.loop.tick()
    assert stage.as_role(Role.viewer).get("/loop/runs").json() == []
    r = stage.as_role(Role.viewer).get("/loop/runs/nope")
    assert r.status_code == 404 and "no loop run" in r.json()["detail"]


def test_a_job_left_running_by_a_stopped_hub_is_marked_failed(tmp_path: Path) -> None:
    """A loop run in its retrain step must not wait forever on a job no process runs."""
    engine = hub_engine(tmp_path)
    with session(engine) as s:
        s.add(Job(id="orphan", kind="retrain", status="running"))
        s.add(Job(id="finished", kind="train", status="done"))
        s.commit()
    jobs = Jobs(engine)  # what a restarted hub does
    try:
        orphan, finished = jobs.get("orphan"), jobs.get("finished")
        assert orphan is not None and orphan.status == "failed"
        assert orphan.error is not None and orphan.error.startswith("interrupted")
        assert finished is not None and finished.status == "done"
    finally:
        jobs.shutdown()
        engine.dispose()


def test_a_run_whose_capture_gets_nothing_fails_visibly_and_audited(stage: Stage) -> None:
    """A drift alert names a device that never answers the capture: the run fails at the
    capture's deadline, with the reason in the API and an audit record, and nothing is
    retrained or deployed."""
    operator, viewer = stage.as_role(Role.operator), stage.as_role(Role.viewer)
    policy = {"enabled": True, "capture_s": 0.5, "gather_s": 0, "cooldown_s": 0}
    assert operator.put("/loop/policies/press", json=policy).status_code == 200
    stage.hub.datasets.grace_s = 0.5  # seconds after the capture for uploads to arrive
    with session(stage.hub.engine) as s:  # what hub/telemetry/drift.py opens on a drifting device
        s.add(
            DriftAlert(
                model="press", version=1, scope="device", scope_id="ghost-1",
                devices=["ghost-1"], features=["speed_krpm"],
            )
        )  # fmt: skip
        s.commit()
    try:
        stage.hub.loop.tick()  # starts the run: a signed capture command to ghost-1
        [run] = viewer.get("/loop/runs").json()
        assert run["stage"] == "capturing" and run["devices"] == ["ghost-1"]

        wait_for(lambda: viewer.get(f"/loop/runs/{run['id']}").json()["stage"] == "failed", 15,
                 "the run to fail")  # fmt: skip
        failed = viewer.get(f"/loop/runs/{run['id']}").json()
        assert "capture" in failed["detail"] and failed["job_id"] is None
        assert failed["rollout_id"] is None
        assert [step["step"] for step in failed["steps"]] == ["capture", "failed"]
        record = stage.audit(action="loop.failed")[0]
        assert record["outcome"] == "error" and record["actor_name"] == "loop-policy:press"
        assert record["target"] == run["id"] and "capture" in record["detail"]
    finally:
        operator.put("/loop/policies/press", json={"enabled": False})
        with session(stage.hub.engine) as s:
            for a in s.exec(select(DriftAlert)):
                a.state = "cleared"
                s.add(a)
            s.commit()
