"""The core's persisted state, typed: files the older core wrote still load, resume, and
are written back unchanged; every phase change goes through the one transition table."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
from manifests import make_target

from agent.core import AgentCore, CoreConfig, DeviceState, Job, Phase, TransitionError, Trigger
from agent.core.phases import TRANSITIONS, next_phase
from agent.events import (
    Activate,
    CheckStagedChunks,
    Connected,
    Done,
    FinishCapture,
    MessageArrived,
    MetadataVerified,
    Prune,
    Publish,
    RunHealthCheck,
    StagedChunks,
    Tick,
    VerifyAndStage,
    VerifyMetadata,
    WriteChunk,
)
from agent.telemetry import InferenceStats
from shared import protocol

V1 = Path(__file__).parent / "data" / "agent_state_v1"
FILES = sorted(p.stem for p in V1.glob("*.json"))
DEV = "dev-1"
CHUNK = 1024


def model_data(version: int) -> bytes:
    """As tests/data/agent_state_v1/generate.py made each version's bytes."""
    return bytes((version * 7 + i) % 251 for i in range(2600))


def saved(name: str) -> bytes:
    return (V1 / f"{name}.json").read_bytes()


def restarted(name: str) -> AgentCore:
    """A core of today started on the file the older core saved."""
    return AgentCore(CoreConfig(DEV, "gw", chunk_window=4), json.loads(saved(name)))


def compact(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def events(actions: list[Any]) -> list[dict[str, Any]]:
    return [
        json.loads(a.payload)["body"]
        for a in actions
        if isinstance(a, Publish) and a.topic.endswith("/events")
    ]


def fetched(actions: list[Any]) -> list[dict[str, Any]]:
    return [
        json.loads(a.payload)["body"]
        for a in actions
        if isinstance(a, Publish) and a.topic.endswith("/fetch")
    ]


def chunk(version: int, index: int, now: float) -> MessageArrived:
    data = model_data(version)[index * CHUNK : (index + 1) * CHUNK]
    header = {"kind": "chunk", "req": "r", "target": f"m/{version}/model.onnx", "index": index}
    return MessageArrived("blob", protocol.encode_blob(header, data), now)


def traffic(count: int, errors: int = 0) -> InferenceStats:
    stats = InferenceStats()
    stats.count, stats.errors = count, errors
    return stats


def test_the_frozen_files_cover_every_phase_a_job_is_saved_in() -> None:
    phases = {json.loads(saved(n))["job"]["phase"] for n in FILES if json.loads(saved(n))["job"]}
    assert phases == {p.value for p in Phase}
    assert len(FILES) >= 9, FILES


@pytest.mark.parametrize("name", FILES)
def test_a_file_the_older_core_wrote_is_written_back_byte_for_byte(name: str) -> None:
    data = json.loads(saved(name))
    core = restarted(name)
    assert compact(core.state) == saved(name)
    if data["job"] is not None:
        job = Job.from_json(data["job"])
        assert compact(job.to_json()) == compact(data["job"])
        assert job.phase is Phase(data["job"]["phase"])
        assert compact(core.job) == compact(data["job"])
    else:
        assert core.job is None


def test_a_device_upgraded_mid_download_completes_it() -> None:
    core = restarted("chunks")
    acts = core.handle(Connected(100.0))
    check = next(a for a in acts if isinstance(a, CheckStagedChunks))
    assert check.claimed == frozenset({0, 1, 2})
    # the staging file still holds chunk 0: the rest is fetched, and nothing more
    acts = core.handle(StagedChunks(frozenset({0}), 100.5))
    assert [f["chunks"] for f in fetched(acts)] == [[1, 2]]
    acts = core.handle(chunk(2, 1, 101.0)) + core.handle(chunk(2, 2, 101.0))
    assert [a.offset for a in acts if isinstance(a, WriteChunk)] == [CHUNK, 2 * CHUNK]
    assert any(isinstance(a, VerifyAndStage) for a in acts)
    for step in ("file", "health", "activate"):
        acts += core.handle(Done(step, 102.0))
    acts += core.handle(Tick(110.0, traffic(100)))
    stages = [e["stage"] for e in events(acts)]
    assert stages == ["verified", "staged", "activated", "healthy"]
    assert next(a for a in acts if isinstance(a, Prune)).keep == (1, 2)
    installed = core.installed("m")
    assert core.job is None and installed is not None and installed["version"] == 2


def test_a_device_upgraded_before_its_metadata_arrived_asks_again() -> None:
    core = restarted("meta")
    before = json.loads(saved("meta"))["req"]
    (fetch,) = fetched(core.handle(Connected(100.0)))
    assert fetch["req"] == f"{DEV}:{before + 1}"
    meta = protocol.encode_meta_blob(fetch["req"], [("timestamp.json", b"{}")])
    assert any(isinstance(a, VerifyMetadata) for a in core.handle(MessageArrived("blob", meta, 1)))
    target = make_target(2, model_data(2))
    acts = core.handle(MetadataVerified(fetch["req"], target, 1, 101.0))
    assert [e["stage"] for e in events(acts)] == ["downloading"]
    assert [f["chunks"] for f in fetched(acts)] == [[0, 1, 2]]


@pytest.mark.parametrize(
    ("name", "expected"),
    [("verify", VerifyAndStage), ("health", RunHealthCheck), ("activating", RunHealthCheck)],
)
def test_a_device_upgraded_after_its_download_picks_up_the_step_it_was_in(
    name: str, expected: type
) -> None:
    core = restarted(name)
    assert any(isinstance(a, expected) for a in core.handle(Connected(100.0)))
    if expected is RunHealthCheck:
        assert core.job is not None and core.job["phase"] == "health"
        assert any(isinstance(a, Activate) for a in core.handle(Done("health", 101.0)))


def test_a_device_upgraded_on_probation_judges_it_with_the_traffic_it_had_counted() -> None:
    core = restarted("probation")  # 4 inferences, 1 error counted before the upgrade
    acts = core.handle(Tick(60.0, traffic(16, errors=1)))  # 2 in 20: over the 5% allowed
    rolled = [e for e in events(acts) if e["stage"] == "rolled_back"]
    assert [(e["version"], e["from_version"], e["reason"]) for e in rolled] == [
        (1, 2, "probation_failed")
    ]
    assert "2 errors in 20 inferences" in rolled[0]["detail"]


def test_a_first_install_on_probation_is_kept_when_it_fails() -> None:
    core = restarted("probation_first")
    acts = core.handle(Tick(30.0, traffic(10, errors=10)))
    assert [(e["stage"], e["reason"]) for e in events(acts)] == [("failed", "probation_failed")]
    installed = core.installed("m")
    assert core.job is None and installed is not None and installed["version"] == 1


def test_a_device_upgraded_after_a_rollback_still_reports_it() -> None:
    core = restarted("rolled_back")
    hello = next(a for a in core.handle(Connected(100.0)) if isinstance(a, Publish))
    body = json.loads(hello.payload)["body"]
    assert body["last"]["stage"] == "rolled_back" and body["models"]["m"]["version"] == 1


def test_a_device_upgraded_mid_capture_ends_it_after_its_windows() -> None:
    core = restarted("capture")  # two windows to go
    core.handle(Tick(100.0))
    assert not any(isinstance(a, FinishCapture) for a in core.handle(Tick(110.0)))
    assert FinishCapture("c1") in core.handle(Tick(120.0))


def test_a_job_saved_before_commands_were_signed_round_trips_without_keyids() -> None:
    data = json.loads(saved("chunks"))["job"]
    del data["keyids"]
    job = Job.from_json(data)
    assert job.keyids is None and compact(job.to_json()) == compact(data)


def test_keys_a_newer_agent_wrote_are_kept() -> None:
    data = {**json.loads(saved("rolled_back")), "future": {"x": 1}}
    assert compact(DeviceState.from_json(data).to_json()) == compact(data)


# ------------------------------------------------------------------ the transition table

PATH = [
    (Trigger.METADATA_VERIFIED, Phase.CHUNKS),
    (Trigger.CHUNKS_COMPLETE, Phase.VERIFY),
    (Trigger.FILE_STAGED, Phase.HEALTH),
    (Trigger.HEALTH_PASSED, Phase.ACTIVATING),
    (Trigger.ACTIVATED, Phase.PROBATION),
]


def test_the_update_path_is_the_table_s_only_way_forward() -> None:
    phase = Phase.META
    for trigger, expected in PATH:
        assert next_phase(phase, trigger) is expected
        phase = expected
    moves = {(p, t) for (p, t), q in TRANSITIONS.items() if q is not None and q is not p}
    back = (Phase.ACTIVATING, Trigger.RESTARTED)  # the checked session died with the process
    assert moves == {(p, t) for p, (t, _) in zip(Phase, PATH, strict=False)} | {back}


@pytest.mark.parametrize("phase", list(Phase))
def test_a_job_may_fail_in_every_phase_and_settle_only_on_probation(phase: Phase) -> None:
    assert next_phase(phase, Trigger.FAILED) is None
    for ending in (Trigger.SETTLED, Trigger.ROLLED_BACK):
        if phase is Phase.PROBATION:
            assert next_phase(phase, ending) is None
        else:
            with pytest.raises(TransitionError):
                next_phase(phase, ending)


@pytest.mark.parametrize(
    ("phase", "trigger"),
    [
        (Phase.META, Trigger.CHUNKS_COMPLETE),  # chunks before verified metadata
        (Phase.CHUNKS, Trigger.ACTIVATED),  # activated what was never checked
        (Phase.VERIFY, Trigger.HEALTH_PASSED),
        (Phase.PROBATION, Trigger.RESTARTED),
        (Phase.META, Trigger.FAILED),  # ends the job: not a move of Job.advance
    ],
)
def test_a_move_the_table_does_not_list_raises(phase: Phase, trigger: Trigger) -> None:
    job = Job("d", "m", 1, "m/1/model.onnx", keyids=[], phase=phase)
    with pytest.raises(TransitionError):
        job.advance(trigger)
    assert job.phase is phase


def test_only_an_ending_trigger_ends_a_job() -> None:
    state = DeviceState()
    state.job = Job("d", "m", 1, "m/1/model.onnx", keyids=[], phase=Phase.CHUNKS)
    with pytest.raises(TransitionError):
        state.end_job(Trigger.SETTLED)
    with pytest.raises(TransitionError):
        state.end_job(Trigger.CHUNKS_COMPLETE)
    state.end_job(Trigger.FAILED)
    assert state.job is None


def test_a_new_config_reaches_every_part_of_the_core() -> None:
    core = restarted("meta")
    core.config = dataclasses.replace(core.config, runtime="ai-edge-litert")
    (fetch,) = fetched(core.handle(Connected(100.0)))
    acts = core.handle(MetadataVerified(fetch["req"], make_target(2, model_data(2)), 1, 101.0))
    assert [(e["stage"], e["reason"]) for e in events(acts)] == [("failed", "wrong_runtime")]
    assert json.loads(core.state_message(102.0))["body"]["runtime"] == "ai-edge-litert"
