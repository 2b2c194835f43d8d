"""Several models on one device, in the agent core alone: each is deployed, judged on
probation and rolled back on its own, telemetry is per model, and a deploy that would not
fit the memory budget is refused with ``no_room``. No broker, no files, no clock."""

from __future__ import annotations

import json
from typing import Any

from manifests import make_target
from test_core import DEV, KEYS, chunk_blob, cmd, events, fetches
from trust_refresh import handle_trusting

from agent.core import AgentCore, CoreConfig
from agent.core.budget import MEMORY_FACTOR, MIB
from agent.events import (
    Done,
    MessageArrived,
    MetadataVerified,
    Publish,
    RollBack,
    Tick,
)
from agent.telemetry import InferenceStats
from shared import protocol
from shared.reasons import Reason

CHUNK = 1024


def deploy(model: str, version: int) -> MessageArrived:
    return cmd(
        "deploy",
        deployment=f"{model}{version}",
        model=model,
        version=version,
        target=f"{model}/{version}/model.onnx",
    )


def stats(count: int, errors: int = 0) -> InferenceStats:
    s = InferenceStats()
    s.count, s.errors = count, errors
    return s


class Device:
    """A core, driven through deployments of named models as the adapter would."""

    def __init__(self, memory_budget_mb: float | None = None) -> None:
        config = CoreConfig(DEV, "gw", chunk_window=4, memory_budget_mb=memory_budget_mb)
        self.core = AgentCore(config, director_keys=KEYS)

    def meta(self, model: str, version: int, data: bytes, acts: list[Any]) -> list[Any]:
        """Answer the job's metadata fetch in ``acts`` with ``model`` v``version``."""
        req = fetches(acts)[0]["body"]["req"]
        meta_blob = protocol.encode_meta_blob(req, [("timestamp.json", b"{}")])
        acts = self.core.handle(MessageArrived("blob", meta_blob, 0.5))
        target = make_target(version, data, model=model)
        return acts + self.core.handle(MetadataVerified(req, target, 1, 1.0))

    def activate(self, model: str, version: int, data: bytes, now: float) -> list[Any]:
        """Deploy ``model`` v``version`` up to its activation (probation starts)."""
        acts = self.meta(model, version, data, self.core.handle(deploy(model, version)))
        target = f"{model}/{version}/model.onnx"  # as the deploy command names it
        for i in range(0, len(data), CHUNK):
            acts += self.core.handle(chunk_blob("r", target, i // CHUNK, data[i : i + CHUNK]))
        for step in ("file", "health", "activate"):
            acts += self.core.handle(Done(step, now))
        return acts

    def install(self, model: str, version: int, data: bytes, now: float) -> list[Any]:
        """Deploy ``model`` v``version`` to healthy (its own traffic on probation)."""
        acts = self.activate(model, version, data, now)
        return acts + self.core.handle(Tick(now + 10, model_stats={model: stats(100)}))

    def version(self, model: str) -> int:
        installed = self.core.installed(model)
        assert installed is not None
        return installed["version"]


def test_a_models_probation_rollback_leaves_the_other_model_alone() -> None:
    d = Device()
    d.install("anomaly", 1, b"a" * 100, 1.0)
    d.install("vibration", 1, b"v" * 100, 20.0)
    d.install("vibration", 2, b"w" * 100, 40.0)
    acts = d.activate("anomaly", 2, b"b" * 100, 60.0)
    assert events(acts)[-1]["stage"] == "activated"
    # vibration errs a lot; anomaly is clean: anomaly's probation sees only its own
    acts = d.core.handle(Tick(66.0, model_stats={"vibration": stats(50, 50), "anomaly": stats(50)}))
    assert events(acts)[-1]["stage"] == "healthy"
    assert not [a for a in acts if isinstance(a, RollBack)]
    assert (d.version("anomaly"), d.version("vibration")) == (2, 2)
    # a bad version of vibration is rolled back to vibration's previous one, only
    d.activate("vibration", 3, b"x" * 100, 80.0)
    acts = d.core.handle(Tick(86.0, model_stats={"vibration": stats(50, 20)}))
    assert [(a.model, a.to_version) for a in acts if isinstance(a, RollBack)] == [("vibration", 2)]
    ev = events(acts)[-1]
    assert (ev["stage"], ev["model"], ev["version"], ev["from_version"]) == (
        "rolled_back",
        "vibration",
        2,
        3,
    )
    assert (d.version("anomaly"), d.version("vibration")) == (2, 2)


def test_a_deploy_of_another_model_waits_and_never_displaces_the_running_job() -> None:
    d = Device()
    d.install("anomaly", 1, b"a" * 100, 1.0)
    d.activate("anomaly", 2, b"b" * 100, 20.0)  # on probation
    acts = d.core.handle(deploy("vibration", 1))
    ev = events(acts)
    assert [(e["model"], e["stage"]) for e in ev] == [("vibration", "received")]
    assert "waiting for deployment anomaly2 of anomaly" in ev[0]["detail"]
    assert not fetches(acts)  # nothing is downloaded for it yet
    assert d.core.job is not None and d.core.job["model"] == "anomaly"  # not superseded
    assert d.core.waiting == [{"deployment": "vibration1", "model": "vibration", "version": 1}]
    # anomaly's probation ends: then vibration's job starts, in the same step
    acts = d.core.handle(Tick(30.0, model_stats={"anomaly": stats(20)}))
    assert [(e["model"], e["stage"]) for e in events(acts)] == [
        ("anomaly", "healthy"),
        ("vibration", "received"),
    ]
    assert d.core.job is not None and d.core.job["model"] == "vibration"
    assert d.core.waiting == []
    d.meta("vibration", 1, b"v" * 100, acts)
    assert d.core.job["phase"] == "chunks"
    assert d.version("anomaly") == 2


def test_a_waiting_deploy_superseded_or_undone_by_a_rollback_is_answered() -> None:
    d = Device()
    d.install("vibration", 1, b"v" * 100, 1.0)
    d.install("vibration", 2, b"w" * 100, 20.0)
    d.activate("anomaly", 1, b"a" * 100, 40.0)  # a job of another model runs
    d.core.handle(deploy("vibration", 3))
    acts = d.core.handle(deploy("vibration", 4))  # the newer one waits instead
    assert [(e["deployment"], e["stage"], e.get("reason")) for e in events(acts)] == [
        ("vibration3", "failed", Reason.BUSY.value),
        ("vibration4", "received", None),
    ]
    # the operator rolls vibration back: the waiting deploy must not undo it later
    rollback = cmd("rollback", deployment="rb", model="vibration", version=1)
    acts = handle_trusting(d.core, rollback, KEYS)
    assert [(e["deployment"], e["stage"]) for e in events(acts)] == [
        ("vibration4", "failed"),
        ("rb", "rolled_back"),
    ]
    acts = d.core.handle(Tick(50.0, model_stats={"anomaly": stats(20)}))
    assert [(e["model"], e["stage"]) for e in events(acts)] == [("anomaly", "healthy")]
    assert d.core.job is None and d.version("vibration") == 1


def test_telemetry_and_state_name_every_model() -> None:
    d = Device()
    d.install("anomaly", 1, b"a" * 100, 1.0)
    d.install("vibration", 4, b"v" * 100, 20.0)
    d.core.handle(Tick(100.0))
    acts = d.core.handle(Tick(111.0, model_stats={"anomaly": stats(7), "vibration": stats(3, 1)}))
    windows = [
        json.loads(a.payload)["body"]
        for a in acts
        if isinstance(a, Publish) and a.topic.endswith("/telemetry")
    ]
    # both were quiet since the window that closed at 30 s: a zero window covers each
    # one's quiet span first (idle windows coalesce, agent/core/windows.py)
    gaps = [(w["model"], w["start"], w["end"], w["count"]) for w in windows if w["end"] < 111.0]
    assert sorted(gaps) == [("anomaly", 30.0, 100.0, 0), ("vibration", 30.0, 100.0, 0)]
    got = {(w["model"], w["version"]): (w["count"], w["errors"]) for w in windows if w["count"]}
    assert got == {("anomaly", 1): (7, 0), ("vibration", 4): (3, 1)}
    assert len({w["seq"] for w in windows}) == 4  # each its own sequence number
    state = protocol.decode(d.core.state_message(120.0)).body
    assert {m: v["version"] for m, v in state["models"].items()} == {"anomaly": 1, "vibration": 4}


def test_a_deploy_that_would_not_fit_the_memory_budget_is_refused() -> None:
    size = 4000  # bytes per model file
    budget = MEMORY_FACTOR * size * 2.5 / MIB  # two models fit, not three
    d = Device(memory_budget_mb=budget)
    d.install("anomaly", 1, b"a" * size, 1.0)
    d.install("vibration", 1, b"v" * size, 20.0)
    d.install("vibration", 2, b"w" * size, 40.0)  # replaces its own: still fits
    acts = d.meta("sound", 1, b"s" * size, d.core.handle(deploy("sound", 1)))
    ev = events(acts)[-1]
    assert (ev["model"], ev["stage"], ev["reason"]) == ("sound", "failed", Reason.NO_ROOM.value)
    assert "beside anomaly" in ev["detail"] and "budget" in ev["detail"]
    assert not [e for e in events(acts) if e["stage"] == "downloading"]  # nothing fetched
    assert d.core.installed("sound") is None
    assert (d.version("anomaly"), d.version("vibration")) == (1, 2)
