"""The agent core on its own: events in, actions out. No broker, no files, no clock."""

from __future__ import annotations

import json
from typing import Any

import pytest
from manifests import make_target
from securesystemslib.signer import CryptoSigner
from trust_refresh import handle_trusting

from agent.core import AgentCore, CoreConfig
from agent.events import (
    Activate,
    CheckStagedChunks,
    Connected,
    Discard,
    Done,
    MessageArrived,
    MetadataVerified,
    Prune,
    Publish,
    Refused,
    RollBack,
    RunHealthCheck,
    StagedChunks,
    Tick,
    VerifyAndStage,
    VerifyMetadata,
    WriteChunk,
)
from agent.telemetry import InferenceStats, StatsRecorder
from shared import protocol
from shared.director import DirectorKeys, sign_command
from shared.reasons import Reason
from shared.trust import VerifiedTarget

DEV = "dev-1"
CHUNK = 1024


DIRECTOR = CryptoSigner.generate_ed25519()
KEYS = DirectorKeys({DIRECTOR.public_key.keyid: DIRECTOR.public_key})


def cmd(msg_type: str, **body: Any) -> MessageArrived:
    payload = sign_command(
        [DIRECTOR], msg_type, body, device_id=DEV, now=0.0, ttl_s=3600, root_version=1
    )
    return MessageArrived("cmd", payload, 0.0)


def deploy(version: int, deployment: str = "d1") -> MessageArrived:
    return cmd(
        "deploy",
        deployment=deployment,
        model="m",
        version=version,
        target=f"m/{version}/model.onnx",
    )


def events(actions: list[Any]) -> list[dict[str, Any]]:
    return [
        json.loads(a.payload)["body"]
        for a in actions
        if isinstance(a, Publish) and a.topic.endswith("/events")
    ]


def fetches(actions: list[Any]) -> list[dict[str, Any]]:
    return [
        json.loads(a.payload)
        for a in actions
        if isinstance(a, Publish) and a.topic.endswith("/fetch")
    ]


def chunk_blob(req: str, target: str, index: int, data: bytes) -> MessageArrived:
    header = {"kind": "chunk", "req": req, "target": target, "index": index}
    return MessageArrived("blob", protocol.encode_blob(header, data), 1.0)


class Harness:
    """Drives a core through a deployment the way the adapter would."""

    def __init__(self, core: AgentCore | None = None, device_class: str = "gw") -> None:
        self.core = core or AgentCore(
            CoreConfig(DEV, device_class, chunk_window=4), director_keys=KEYS
        )

    def to_chunks(
        self, version: int, data: bytes, **overrides: Any
    ) -> tuple[VerifiedTarget, list[Any]]:
        acts = self.core.handle(deploy(version, deployment=f"d{version}"))
        req = fetches(acts)[0]["body"]["req"]
        meta_blob = protocol.encode_meta_blob(req, [("timestamp.json", b"{}")])
        verify = self.core.handle(MessageArrived("blob", meta_blob, 0.5))
        assert any(isinstance(a, VerifyMetadata) for a in verify)
        target = make_target(version, data, **overrides)
        return target, acts + verify + self.core.handle(MetadataVerified(req, target, 1, 1.0))

    def download(self, version: int, data: bytes) -> tuple[VerifiedTarget, list[Any]]:
        target, acts = self.to_chunks(version, data)
        all_acts = list(acts)
        pieces = [data[i : i + CHUNK] for i in range(0, len(data), CHUNK)]
        for i, piece in enumerate(pieces):
            all_acts += self.core.handle(chunk_blob("r", target.name, i, piece))
        return target, all_acts

    def install(self, version: int, data: bytes, now: float = 2.0) -> list[Any]:
        _, acts = self.download(version, data)
        acts += self.core.handle(Done("file", now))
        acts += self.core.handle(Done("health", now))
        acts += self.core.handle(Done("activate", now))
        stats = InferenceStats()
        stats.count = 100
        acts += self.core.handle(Tick(now + 10, stats))
        return acts


def test_deploy_walks_every_stage_to_healthy() -> None:
    h = Harness()
    data = bytes(range(256)) * 10  # 2560 bytes: 3 chunks
    acts = h.install(1, data)
    stages = [e["stage"] for e in events(acts)]
    assert stages == ["received", "downloading", "verified", "staged", "activated", "healthy"]
    assert sum(isinstance(a, WriteChunk) for a in acts) == 3
    assert any(isinstance(a, VerifyAndStage) for a in acts)
    assert any(isinstance(a, RunHealthCheck) for a in acts)
    assert any(isinstance(a, Activate) for a in acts)
    assert h.core.installed("m")["version"] == 1  # type: ignore[index]
    assert h.core.job is None
    state = json.loads(h.core.state_message(3.0))["body"]
    assert state["models"]["m"]["version"] == 1


def test_chunks_requested_within_window() -> None:
    h = Harness()
    data = b"x" * (CHUNK * 10)
    _, acts = h.to_chunks(1, data)
    first = fetches(acts)[-1]["body"]  # after the metadata request
    assert first["chunks"] == [0, 1, 2, 3]  # chunk_window=4


def test_corrupt_chunk_is_rerequested_then_refused() -> None:
    h = Harness()
    data = b"y" * (CHUNK * 2)
    target, _ = h.to_chunks(1, data)
    acts: list[Any] = []
    for _ in range(3):
        acts += h.core.handle(chunk_blob("r", target.name, 0, b"z" * CHUNK))
    assert not any(isinstance(a, WriteChunk) for a in acts)
    failed = events(acts)[-1]
    assert failed["stage"] == "failed"
    assert failed["reason"] == Reason.CHUNK_HASH_MISMATCH.value
    assert any(isinstance(a, Discard) for a in acts)
    assert h.core.job is None


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"device_classes": ("other-class",)}, Reason.WRONG_DEVICE_CLASS),
        ({"runtime": "tflite"}, Reason.WRONG_RUNTIME),
        ({"model": "other"}, Reason.MANIFEST_MISMATCH),
    ],
)
def test_manifest_refusals(overrides: dict[str, Any], reason: Reason) -> None:
    h = Harness()
    _, acts = h.to_chunks(1, b"a" * 100, **overrides)
    ev = events(acts)[-1]
    assert (ev["stage"], ev["reason"]) == ("failed", reason.value)
    assert not any(isinstance(a, WriteChunk) for a in acts)


def test_older_version_refused_before_download() -> None:
    h = Harness()
    h.install(2, b"b" * 100)
    acts = h.core.handle(deploy(1, deployment="old"))
    ev = events(acts)[-1]
    assert (ev["stage"], ev["reason"]) == ("failed", Reason.VERSION_ROLLBACK.value)
    assert not fetches(acts)


def test_trust_refusal_is_reported_and_nothing_installed() -> None:
    h = Harness()
    h.core.handle(deploy(1))
    acts = h.core.handle(Refused("metadata", Reason.BAD_SIGNATURE, "targets not signed", 1.0))
    ev = events(acts)[-1]
    assert (ev["stage"], ev["reason"]) == ("failed", Reason.BAD_SIGNATURE.value)
    assert h.core.installed("m") is None


def test_health_check_failure_keeps_previous_version() -> None:
    h = Harness()
    h.install(1, b"c" * 100)
    _, acts = h.download(2, b"d" * 100)
    acts = h.core.handle(Done("file", 5.0))
    acts += h.core.handle(Refused("health", Reason.HEALTH_CHECK_FAILED, "golden differs", 5.0))
    ev = events(acts)[-1]
    assert (ev["stage"], ev["reason"]) == ("failed", Reason.HEALTH_CHECK_FAILED.value)
    assert h.core.installed("m")["version"] == 1  # type: ignore[index]
    discard = next(a for a in acts if isinstance(a, Discard))
    assert discard.version == 2


def test_probation_errors_roll_back_to_previous() -> None:
    h = Harness()
    h.install(1, b"e" * 100)
    _, _ = h.download(2, b"f" * 100)
    h.core.handle(Done("file", 20.0))
    h.core.handle(Done("health", 20.0))
    acts = h.core.handle(Done("activate", 20.0))
    assert events(acts)[-1]["stage"] == "activated"
    bad = InferenceStats()
    bad.count, bad.nonfinite = 50, 20
    acts = h.core.handle(Tick(26.0, bad))
    rb = [a for a in acts if isinstance(a, RollBack)]
    assert rb and rb[0].to_version == 1
    ev = events(acts)[-1]
    assert (ev["stage"], ev["reason"], ev["version"], ev["from_version"]) == (
        "rolled_back",
        Reason.PROBATION_FAILED.value,
        1,
        2,
    )
    assert h.core.installed("m")["version"] == 1  # type: ignore[index]


def test_probation_waits_for_traffic() -> None:
    h = Harness()
    h.install(1, b"g" * 100)
    h.download(2, b"h" * 100)
    h.core.handle(Done("file", 0.0))
    h.core.handle(Done("health", 0.0))
    h.core.handle(Done("activate", 0.0))
    few = InferenceStats()
    few.count = 3
    assert not events(h.core.handle(Tick(6.0, few)))  # past probation_s, too few inferences
    enough = InferenceStats()
    enough.count = 20
    assert events(h.core.handle(Tick(7.0, enough)))[-1]["stage"] == "healthy"


def test_rollback_command_to_version_in_history() -> None:
    h = Harness()
    h.install(1, b"i" * 100)
    h.install(2, b"j" * 100)
    acts = handle_trusting(h.core, cmd("rollback", deployment="rb", model="m", version=1), KEYS)
    assert any(isinstance(a, RollBack) and a.to_version == 1 for a in acts)
    assert events(acts)[-1]["stage"] == "rolled_back"
    acts = handle_trusting(h.core, cmd("rollback", deployment="rb2", model="m", version=7), KEYS)
    ev = events(acts)[-1]
    assert (ev["stage"], ev["reason"]) == ("failed", Reason.VERSION_ROLLBACK.value)


def test_rollback_during_probation_is_that_jobs_outcome() -> None:
    """A halted rollout rolls back a device still in probation: one rolled_back event,
    no 'failed (busy)' for the job the rollback ends."""
    h = Harness()
    h.install(1, b"i" * 100)
    _, acts = h.download(2, b"j" * 100)
    h.core.handle(Done("file", 3.0))
    h.core.handle(Done("health", 3.0))
    h.core.handle(Done("activate", 3.0))
    assert h.core.job is not None and h.core.job["phase"] == "probation"

    acts = handle_trusting(h.core, cmd("rollback", deployment="d2", model="m", version=1), KEYS)

    assert [(e["stage"], e["version"], e.get("from_version")) for e in events(acts)] == [
        ("rolled_back", 1, 2)
    ]
    installed = h.core.installed("m")
    assert h.core.job is None and installed is not None and installed["version"] == 1


def test_rollbacks_wait_for_one_trust_refresh_and_are_refused_if_it_fails() -> None:
    h = Harness()
    h.install(1, b"i" * 100)
    h.install(2, b"j" * 100)
    first = h.core.handle(cmd("rollback", deployment="rb", model="m", version=1))
    second = h.core.handle(cmd("rollback", deployment="rb2", model="m", version=1))
    # nothing happens yet; one fetch_meta serves both
    assert not events(first + second) and not any(isinstance(a, RollBack) for a in first)
    assert [f["type"] for f in fetches(first + second)] == ["fetch_meta"]
    assert h.core.installed("m") is not None
    # the hub's metadata does not verify (e.g. expired): both are refused by that reason
    refused = h.core.handle(Refused("trust", Reason.EXPIRED_METADATA, "timestamp", 3.0))
    assert [(e["stage"], e["reason"]) for e in events(refused)] == [
        ("refused", "expired_metadata"),
        ("refused", "expired_metadata"),
    ]
    installed = h.core.installed("m")
    assert installed is not None and installed["version"] == 2


def test_a_held_command_times_out_when_the_hub_never_answers() -> None:
    h = Harness()
    h.install(1, b"i" * 100)
    h.install(2, b"j" * 100)
    h.core.handle(cmd("rollback", deployment="rb", model="m", version=1))
    assert not events(h.core.handle(Tick(30.0)))  # 4 x fetch_timeout_s (10 s) not yet
    late = events(h.core.handle(Tick(50.0)))
    assert [(e["stage"], e["reason"]) for e in late] == [("refused", "fetch_timeout")]


def test_resume_after_restart_asks_only_missing_chunks() -> None:
    h = Harness()
    data = b"k" * (CHUNK * 6)
    target, _ = h.to_chunks(1, data)
    for i in (0, 1, 2):
        h.core.handle(chunk_blob("r", target.name, i, data[i * CHUNK : (i + 1) * CHUNK]))
    saved = json.loads(json.dumps(h.core.state))
    # A new process: the core is built from the persisted state.
    core = AgentCore(CoreConfig(DEV, "gw", chunk_window=4), saved, director_keys=KEYS)
    acts = core.handle(Connected(50.0))
    check = next(a for a in acts if isinstance(a, CheckStagedChunks))
    assert check.claimed == frozenset(range(6))  # every slot: the file is the record
    acts = core.handle(StagedChunks(frozenset({0, 2}), 50.0))  # chunk 1 was lost on disk
    asked = fetches(acts)[0]["body"]["chunks"]
    assert asked == [1, 3, 4, 5]


def test_fetch_timeout_retries_then_fails() -> None:
    h = Harness(
        AgentCore(
            CoreConfig(DEV, "gw", fetch_timeout_s=1.0, max_fetch_retries=2), director_keys=KEYS
        )
    )
    h.core.handle(deploy(1))
    retries = 0
    acts: list[Any] = []
    for t in range(1, 60):
        acts = h.core.handle(Tick(float(t)))
        retries += len(fetches(acts))
        if events(acts):
            break
    assert retries == 2
    ev = events(acts)[-1]
    assert (ev["stage"], ev["reason"]) == ("failed", Reason.FETCH_TIMEOUT.value)


@pytest.mark.parametrize(
    "payload",
    [b"", b"not json", b"[]", b'{"v":1}', b'{"v":2,"type":"deploy"}', b"\xff\xfe", b"{" * 5000],
)
def test_malformed_commands_are_counted_and_dropped(payload: bytes) -> None:
    h = Harness()
    assert h.core.handle(MessageArrived("cmd", payload, 0.0)) == []
    assert sum(h.core.dropped.values()) == 1


def test_malformed_blob_dropped() -> None:
    h = Harness()
    h.core.handle(deploy(1))
    assert h.core.handle(MessageArrived("blob", b"EFB1\x00\x00\xff\xffjunk", 0.0)) == []
    assert h.core.dropped["bad_blob"] == 1


def test_telemetry_windows_carry_sequence_numbers() -> None:
    h = Harness(AgentCore(CoreConfig(DEV, "gw", window_s=10), director_keys=KEYS))
    s = InferenceStats()
    s.count = 7
    h.core.handle(Tick(0.0, s))
    sent = []
    for t in (5.0, 10.0, 15.0, 20.0):
        sent += [
            json.loads(a.payload)["body"]
            for a in h.core.handle(Tick(t, s))
            if isinstance(a, Publish) and a.topic.endswith("/telemetry")
        ]
    assert [b["seq"] for b in sent] == [0, 1]
    assert sent[0]["count"] == 21  # the ticks at 0, 5 and 10 s


def test_labels_count_for_the_version_that_predicted_in_the_window() -> None:
    h = Harness(AgentCore(CoreConfig(DEV, "gw", window_s=10), director_keys=KEYS))
    h.install(2, bytes(range(256)), now=0.0)  # "m" v2 is active
    recorder = StatsRecorder()
    recorder.record_labels(10, 7, model="m", version=2)
    recorder.record_labels(5, 1, model="m", version=1)  # late labels of the version before
    recorder.record_errors("r", 3, 4, 2.0, 1.5)  # a regressor's
    recorder.record_labels(2, 2)  # no version named: the window's model
    acts = h.core.handle(Tick(25.0, recorder.drain()))
    (body,) = [
        json.loads(a.payload)["body"]
        for a in acts
        if isinstance(a, Publish) and a.topic.endswith("/telemetry")
    ]
    assert (body["model"], body["version"], body["labelled"], body["correct"]) == ("m", 2, 12, 9)
    assert body["other_versions"] == [
        {"model": "m", "version": 1, "labelled": 5, "correct": 1},
        {
            "model": "r",
            "version": 3,
            "labelled": 4,
            "correct": 0,
            "abs_err_sum": 2.0,
            "sq_err_sum": 1.5,
        },
    ]


def test_duplicate_deploy_reports_progress_and_reinstall_reports_healthy() -> None:
    h = Harness()
    h.core.handle(deploy(1))
    again = h.core.handle(deploy(1))  # the same intent in a new command (a re-send)
    # it does not start over: it says where the job stands
    assert not fetches(again)
    assert [(e["stage"], e["detail"]) for e in events(again)] == [
        ("received", "in progress (meta)")
    ]
    h2 = Harness()
    h2.install(1, b"l" * 100)
    ev = events(h2.core.handle(deploy(1, deployment="again")))
    assert ev[-1]["stage"] == "healthy"


def test_an_outcome_is_also_in_the_retained_state() -> None:
    """An event the hub missed (no subscription during a broker restart) is read back
    from the retained state, so the state is re-published when a job ends."""
    h = Harness()
    acts = h.install(1, b"l" * 100)
    states = [
        json.loads(a.payload)["body"]
        for a in acts
        if isinstance(a, Publish) and a.topic.endswith("/state") and a.retain
    ]
    last = states[-1]["last"]
    assert (last["deployment"], last["version"], last["stage"]) == ("d1", 1, "healthy")
    assert states[-1]["models"]["m"]["version"] == 1
    # and after a restart the first thing said on connect carries it as well
    restarted = AgentCore(h.core.config, h.core.state, director_keys=KEYS)
    hello = restarted.handle(Connected(now=50.0))
    body = json.loads(next(a for a in hello if isinstance(a, Publish)).payload)["body"]
    assert body["last"]["stage"] == "healthy"


def test_prune_keeps_active_and_previous() -> None:
    h = Harness()
    h.install(1, b"m" * 100)
    h.install(2, b"n" * 100)
    acts = h.install(3, b"o" * 100)
    prune = next(a for a in acts if isinstance(a, Prune))
    assert prune.keep == (2, 3)


def test_offline_state_names_no_models() -> None:
    h = Harness()
    h.install(1, b"p" * 100)
    body = json.loads(h.core.state_message(9.0, status="offline"))["body"]
    assert body["status"] == "offline" and "models" not in body


def test_restart_between_check_and_activation_checks_again() -> None:
    h = Harness()
    h.download(1, b"q" * 100)
    h.core.handle(Done("file", 1.0))
    h.core.handle(Done("health", 1.0))  # now "activating"
    core = AgentCore(
        CoreConfig(DEV, "gw"), json.loads(json.dumps(h.core.state)), director_keys=KEYS
    )
    acts = core.handle(Connected(2.0))
    assert any(isinstance(a, RunHealthCheck) for a in acts)
    acts = core.handle(Done("health", 2.0))
    assert any(isinstance(a, Activate) for a in acts)
