"""What one hub replica wrote to SQL, another honours (ADR 0032): a device sent a deploy
by the leader may fetch its target from any replica, a device sent nothing may not (and
costs one query per ``MISS_TTL_S``), and a build left running by a killed replica is
marked failed once its heartbeat is stale, while a live replica's build is left alone."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import Engine, event
from waiting import wait_for

from hub.ml import jobs as jobs_module
from hub.ml.jobs import INTERRUPTED, STALE_S, Jobs
from hub.store.tables import Job, Rollout, RolloutDevice, make_engine, session, sqlite_url
from hub.transport import entitlements
from hub.transport.entitlements import load_entitlements


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    return make_engine(sqlite_url(tmp_path / "hub.db"))


def count_queries(engine: Engine) -> list[str]:
    seen: list[str] = []
    event.listen(engine, "before_cursor_execute", lambda *a: seen.append(a[2]))
    return seen


def test_a_deploy_the_leader_wrote_lets_its_device_fetch_from_another_replica(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    replica = load_entitlements(engine, shared=True)  # started before the rollout
    single = load_entitlements(engine)
    with session(engine) as s:  # the leader's rollout, made after the replica started
        s.add(Rollout(id="r1", model="m", version=2, target="m/2/model.onnx"))
        s.flush()
        s.add(RolloutDevice(rollout_id="r1", device_id="dev-1"))
        s.commit()
    assert replica.allowed("dev-1", "m/2/model.onnx")
    assert not single.allowed("dev-1", "m/2/model.onnx")  # one process: its own grants only
    assert not replica.allowed("dev-2", "m/2/model.onnx")  # not part of it
    assert not replica.allowed("dev-1", "m/1/model.onnx")  # not this version

    queries = count_queries(engine)
    for _ in range(20):  # a device asking again and again for what it was never sent
        assert not replica.allowed("dev-2", "m/2/model.onnx")
        assert replica.allowed("dev-1", "m/2/model.onnx")  # kept: no query
    assert queries == []
    monkeypatch.setattr(entitlements, "MISS_TTL_S", 0.0)
    assert not replica.allowed("dev-2", "m/2/model.onnx")
    assert queries  # asked again once the miss expired


def test_the_leader_fails_a_dead_replicas_build_and_spares_a_live_ones(engine: Engine) -> None:
    now = time.time()
    with session(engine) as s:
        s.add(Job(id="dead", kind="train", status="running", updated_at=now - STALE_S - 5))
        s.add(Job(id="live", kind="train", status="running", updated_at=now - 5))
        s.add(Job(id="done", kind="train", status="done", updated_at=now - 3600))
        s.commit()
    jobs = Jobs(engine, replica=True)  # a replica starting fails nobody's job
    try:
        assert jobs.get("dead").status == "running"  # type: ignore[union-attr]
        jobs.fail_orphans(STALE_S)  # what the leader's maintenance does
        dead, live, done = (jobs.get(i) for i in ("dead", "live", "done"))
        assert dead is not None and (dead.status, dead.error) == ("failed", INTERRUPTED)
        assert live is not None and live.status == "running"
        assert done is not None and done.status == "done"
    finally:
        jobs.shutdown()


def test_a_replica_keeps_its_running_build_fresh(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(jobs_module, "HEARTBEAT_S", 0.2)
    release = threading.Event()
    jobs = Jobs(engine, replica=True)
    try:
        job = jobs.submit("train", lambda progress: {"ok": release.wait(30)})
        wait_for(lambda: jobs.get(job.id).status == "running", 10, "running")  # type: ignore[union-attr]
        started = jobs.get(job.id).updated_at  # type: ignore[union-attr]
        time.sleep(1.0)  # no progress reported: only the heartbeat touches the row
        assert jobs.get(job.id).updated_at > started  # type: ignore[union-attr]
        jobs.fail_orphans(0.5)  # fresh: the leader leaves it running
        assert jobs.get(job.id).status == "running"  # type: ignore[union-attr]
        release.set()
        wait_for(lambda: jobs.get(job.id).status == "done", 10, "done")  # type: ignore[union-attr]
    finally:
        release.set()
        jobs.shutdown()
