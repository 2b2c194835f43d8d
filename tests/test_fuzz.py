"""100,000+ random and mutated payloads against every message parser of the agent and hub.

The contract (docs/protocol.md, "Bad input"): a receiver counts a bad message under a
reason and drops it, or answers it with a refusal event. It never raises, never changes
what is installed, and never stops the messages behind it. Targets:

- ``shared/protocol.py``: ``decode`` for every topic kind, ``decode_blob``,
  ``split_meta_blob``, ``parse_topic``;
- ``agent/core/``: ``AgentCore.handle(MessageArrived)`` idle with models installed, and
  mid-job in the ``meta``, ``chunks`` and ``probation`` phases;
- ``agent/device.py``: ``Device.message`` over a real store on disk;
- ``hub/transport/link.py``: ``MqttLink._on_message`` with paho messages, real ``Ingest`` on SQLite
  behind it, and the ingest writer with hostile report bodies.

Payloads come from tests/fuzzing.py (a seeded mutation fuzzer, for volume) and from
hypothesis strategies (for structure), all with fixed seeds. Every test runs a fixed
number of cases and asserts it did; ``test_zz_total`` prints the count per target.

Bugs this fuzzer found have a ``test_regression_*`` test each. There is no list of
tolerated bugs: any exception a receiver lets out, in any case, fails its test with the
input that caused it.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fuzzing import (  # tests/fuzzing.py
    BLOB_HEADERS,
    BLOB_REASONS,
    DECODE_REASONS,
    DEVICE_ID,
    DOC_BODIES,
    JSON_VALUES,
    CommandSpec,
    Fuzzer,
    blob_seeds,
    check_blob,
    check_message,
    command_seeds,
    dump_json,
    envelopes,
    hostile_body,
    mutate_metadata,
    random_topic,
    report_seeds,
)
from hypothesis import HealthCheck as Health
from hypothesis import given, settings
from hypothesis import strategies as st
from manifests import make_target, manifest
from models import make_log_onnx  # tests/models.py
from pg_schemas import hub_engine
from securesystemslib.signer import CryptoSigner, SSlibKey  # type: ignore[attr-defined]
from sqlmodel import select

from agent.core import AgentCore, CoreConfig
from agent.device import Device
from agent.events import Done, MessageArrived, MetadataVerified, Publish, Tick
from agent.runtime import OnnxBackend, SessionCache
from agent.store import DeviceStore
from agent.telemetry import InferenceStats
from hub import make_ingest, serve_devices
from hub.ingest.writer import Ingest
from hub.ml.registry import Registry
from hub.store.artifacts import ArtifactStore
from hub.store.tables import ModelVersion, Telemetry, session
from hub.transport.broker import BrokerAddress
from hub.transport.decode import MAX_CLOCK_SKEW_S
from hub.transport.fetch import FetchAnswers
from hub.transport.link import MqttLink
from hub.trust.repository import TrustRepository
from shared import protocol
from shared.director import CommandError, DirectorKeys, verify_command
from shared.manifest import Manifest, TensorSpec
from shared.protocol import ProtocolError
from shared.reasons import Reason
from shared.trust import VerifiedTarget

pytestmark = pytest.mark.slow

# Cases per test; they add up to more than MIN_TOTAL (checked in test_zz_total).
DECODE_CASES = 30_000
BLOB_CASES = 14_000
TOPIC_CASES = 4_000
CORE_CASES = 6_000  # per core state (4 states)
DEVICE_CASES = 2_400  # per device state (3 states)
DEVICE_ROUND = 60  # cases on one copy of the device's files, then a fresh copy
METADATA_CASES = 600  # damaged TUF metadata for a device in the meta phase
HUB_CASES = 20_000
INGEST_CASES = 3_000
HYPOTHESIS_CASES = 500  # per hypothesis test (5 tests)
MIN_TOTAL = 100_000
CORE_PHASES = ("idle", "meta", "chunks", "probation")
DEVICE_PHASES = ("idle", "meta", "chunks")

PLANNED: dict[str, int] = {  # cases per target (one test, or one state of a test)
    "protocol.decode": DECODE_CASES,
    "protocol.decode_blob": BLOB_CASES,
    "protocol.parse_topic": TOPIC_CASES,
    "protocol.decode (hypothesis)": HYPOTHESIS_CASES,
    "protocol.decode_blob+parse_topic (hypothesis)": HYPOTHESIS_CASES,
    **{f"agent.core[{phase}]": CORE_CASES for phase in CORE_PHASES},
    "agent.core (hypothesis)": HYPOTHESIS_CASES,
    **{f"agent.device[{phase}]": DEVICE_CASES for phase in DEVICE_PHASES},
    "agent.device[meta, TUF]": METADATA_CASES,
    "hub._on_message": HUB_CASES,
    "hub._on_message (hypothesis)": HYPOTHESIS_CASES,
    "hub.ingest": INGEST_CASES,
}
# The test (pytest item name) that runs each target: test_zz_total tells a session that
# selected every one of them (the total must be reached) from a run on a subset.
TESTS: dict[str, str] = {
    "protocol.decode": "test_decode_takes_mutated_envelopes",
    "protocol.decode_blob": "test_decode_blob_takes_hostile_blobs",
    "protocol.parse_topic": "test_parse_topic_takes_random_topics",
    "protocol.decode (hypothesis)": "test_protocol_hypothesis_envelopes",
    "protocol.decode_blob+parse_topic (hypothesis)": "test_protocol_hypothesis_blobs_and_topics",
    **{f"agent.core[{p}]": f"test_core_takes_mutated_messages[{p}]" for p in CORE_PHASES},
    "agent.core (hypothesis)": "test_core_hypothesis_commands",
    **{f"agent.device[{p}]": f"test_device_takes_mutated_messages[{p}]" for p in DEVICE_PHASES},
    "agent.device[meta, TUF]": "test_device_verifies_mutated_metadata",
    "hub._on_message": "test_hub_takes_mutated_messages",
    "hub._on_message (hypothesis)": "test_hub_hypothesis_envelopes",
    "hub.ingest": "test_ingest_survives_hostile_report_bodies",
}
CASES: Counter[str] = Counter()  # cases run, by target

NOW = 1_000_000.0  # the devices' clock: signed commands are valid around it
DEV = "fz-dev"
REASONS = frozenset(r.value for r in Reason)
PHASES = frozenset({"meta", "chunks", "verify", "health", "activating", "probation"})


HYPOTHESIS = settings(
    max_examples=HYPOTHESIS_CASES,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=list(Health),
)


def record(target: str, ran: int) -> None:
    """Count the cases a test ran on a target; fewer than planned fails the test."""
    CASES[target] += ran
    assert ran >= PLANNED[target], f"{target}: {ran} cases run, {PLANNED[target]} planned"


@contextmanager
def case(target: str, what: str, payload: bytes) -> Iterator[None]:
    """One fuzz case: any exception, an assertion or an unhandled one, fails with the input."""
    try:
        yield
    except AssertionError as e:
        raise AssertionError(f"{target}: {e}\n  on {what} payload {payload[:400]!r}") from e
    except Exception as e:
        raise AssertionError(
            f"{target}: unhandled {type(e).__name__}: {str(e)[:300]}\n"
            f"  on {what} payload {payload[:400]!r}"
        ) from e


def fixed_signer(seed: bytes) -> CryptoSigner:
    """An Ed25519 signer from a fixed seed: the same signatures on every run."""
    private = Ed25519PrivateKey.from_private_bytes(seed.ljust(32, b"\0")[:32])
    return CryptoSigner(private, SSlibKey.from_crypto(private.public_key()))


DIRECTOR = fixed_signer(b"edgefleet fuzz director")
KEYS = DirectorKeys({DIRECTOR.public_key.keyid: DIRECTOR.public_key})
SPECS = [
    CommandSpec("deploy", "d3", "m", 3),  # the job in progress in the mid-job states
    CommandSpec("deploy", "d4", "m", 4),
    CommandSpec("deploy", "d1", "m", 1),  # older than installed
    CommandSpec("deploy", "d2", "m", 2),  # active
    CommandSpec("deploy", "x1", "other", 1),
    CommandSpec("rollback", "r1", "m", 1),
    CommandSpec("rollback", "r2", "m", 2),
    CommandSpec("rollback", "r9", "m", 9),  # not kept
]


# =========================================================================== protocol


def test_decode_takes_mutated_envelopes() -> None:
    corpus = [
        *(s for seeds in report_seeds(NOW).values() for s in seeds),
        *command_seeds([DIRECTOR], DEV, SPECS, now=NOW),
    ]
    fuzzer = Fuzzer("decode", corpus)
    kinds = sorted(protocol.TOPIC_TYPES)
    outcomes: Counter[str] = Counter()
    ran = 0
    for i in range(DECODE_CASES):
        payload = fuzzer.payload()
        kind = kinds[i % len(kinds)]
        ran += 1
        with case("decode", kind, payload):
            outcomes[decode_outcome(payload, kind)] += 1
    record("protocol.decode", ran)
    assert set(outcomes) >= DECODE_REASONS - {"too_large"} | {"ok"}, outcomes
    assert outcomes["ok"] > DECODE_CASES // 50, outcomes  # the valid path ran too


def decode_outcome(payload: bytes, kind: str) -> str:
    """Decode on a topic kind: the reason it was refused, or "ok" after the doc's checks."""
    expect = protocol.TOPIC_TYPES[kind]
    try:
        msg = protocol.decode(payload, expect=expect)
    except ProtocolError as e:
        assert e.reason in DECODE_REASONS, e.reason
        assert isinstance(e.detail, str)
        return e.reason
    check_message(msg, expect)
    return "ok"


def test_decode_blob_takes_hostile_blobs() -> None:
    chunks = [bytes([i]) * 700 for i in range(3)] + [b"tail"]
    meta = [("2.root.json", b'{"signed":{}}'), ("timestamp.json", b"{}"), ("targets.json", b"")]
    fuzzer = Fuzzer("blob", blob_seeds(f"{DEV}:7", "m/2/model.onnx", chunks, meta))
    outcomes: Counter[str] = Counter()
    ran = 0
    for _ in range(BLOB_CASES):
        payload = fuzzer.payload()
        ran += 1
        with case("decode_blob", "blob", payload):
            outcomes[blob_outcome(payload)] += 1
    record("protocol.decode_blob", ran)
    assert {"bad_blob", "chunk", "meta", "error"} <= set(outcomes), outcomes


def blob_outcome(payload: bytes) -> str:
    try:
        blob = protocol.decode_blob(payload)
    except ProtocolError as e:
        assert e.reason in BLOB_REASONS, e.reason
        return e.reason
    check_blob(blob)
    return blob.kind


def test_parse_topic_takes_random_topics() -> None:
    rng = random.Random("topics")
    outcomes: Counter[str] = Counter()
    ran = 0
    for _ in range(TOPIC_CASES):
        name = random_topic(rng)
        ran += 1
        with case("parse_topic", "topic", name.encode("utf-8", "surrogatepass")):
            outcomes[topic_outcome(name)] += 1
    record("protocol.parse_topic", ran)
    assert outcomes["ok"] > 0 and outcomes["bad_topic"] > 0, outcomes


def topic_outcome(name: str) -> str:
    try:
        device_id, kind = protocol.parse_topic(name)
    except ProtocolError as e:
        assert e.reason == "bad_topic", e.reason
        return e.reason
    assert name == f"{protocol.ROOT}/{device_id}/{kind}" and kind in protocol.KINDS
    # test_regression_device_id_trailing_newline: "press-17\n" is no device id
    assert DEVICE_ID.fullmatch(device_id), device_id
    return "ok"


def test_the_fast_json_parser_decides_as_json_does(monkeypatch: pytest.MonkeyPatch) -> None:
    """The hub parses with orjson when it is installed (shared/protocol.py): on mutated
    envelopes it must reach the very outcome the standard library reaches (the message,
    or the refusal's reason and detail), so a device and the hub never disagree."""
    if protocol._fast_loads is None:
        pytest.fail("orjson is missing: the hub extra installs it")
    corpus = [
        *(s for seeds in report_seeds(NOW).values() for s in seeds),
        *command_seeds([DIRECTOR], DEV, SPECS, now=NOW),
    ]
    fuzzer = Fuzzer("decode-parsers", corpus)
    fast_parser = protocol._fast_loads

    def outcome(payload: bytes, fast: bool) -> Any:
        monkeypatch.setattr(protocol, "_fast_loads", fast_parser if fast else None)
        try:
            m = protocol.decode(payload)
        except ProtocolError as e:
            return ("refused", e.reason, e.detail)
        return ("ok", m.type, m.id, m.ts, json.dumps(m.body, sort_keys=True))

    kinds: Counter[str] = Counter()
    for _ in range(3000):
        payload = fuzzer.payload()
        fast, slow = outcome(payload, True), outcome(payload, False)
        assert fast == slow, payload
        kinds[fast[0] if fast[0] == "ok" else fast[1]] += 1
    assert kinds["ok"] > 100 and kinds["bad_json"] > 100, kinds


def test_protocol_hypothesis_envelopes() -> None:
    ran = 0
    fields = {t: list(f) for t, f in DOC_BODIES.items()}

    @HYPOTHESIS
    @given(
        env=envelopes(sorted(DOC_BODIES), fields),
        kind=st.sampled_from(sorted(protocol.TOPIC_TYPES)),
    )
    def run(env: Any, kind: str) -> None:
        nonlocal ran
        ran += 1
        payload = dump_json(env)
        with case("decode (hypothesis)", kind, payload):
            decode_outcome(payload, kind)

    run()
    record("protocol.decode (hypothesis)", ran)


def test_protocol_hypothesis_blobs_and_topics() -> None:
    ran = 0

    @HYPOTHESIS
    @given(
        header=BLOB_HEADERS | JSON_VALUES,
        data=st.binary(max_size=80),
        topic=st.text(max_size=90)
        | st.builds(
            "{}/{}/{}".format,
            st.just(protocol.ROOT),
            st.text(max_size=70),
            st.sampled_from([*protocol.KINDS, "x"]),
        ),
    )
    def run(header: Any, data: bytes, topic: str) -> None:
        nonlocal ran
        ran += 1
        head = dump_json(header)
        payload = protocol.BLOB_MAGIC + len(head).to_bytes(4, "big") + head + data
        with case("decode_blob (hypothesis)", "blob", payload):
            blob_outcome(payload)
        with case("parse_topic (hypothesis)", "topic", topic.encode("utf-8", "surrogatepass")):
            topic_outcome(topic)

    run()
    record("protocol.decode_blob+parse_topic (hypothesis)", ran)


# =========================================================================== agent core

CORE_CHUNK = 256  # bytes per chunk of the core's models: 4 chunks each


def core_data(version: int) -> bytes:
    return bytes((version * 7 + i) % 251 for i in range(CORE_CHUNK * 3 + 17))


def core_target(version: int) -> VerifiedTarget:
    return make_target(version, core_data(version), CORE_CHUNK, health_probation_s=30)


def new_core(state: dict[str, Any] | None = None) -> AgentCore:
    return AgentCore(CoreConfig(DEV, "gw", chunk_window=4), state, director_keys=KEYS)


def command(spec: CommandSpec, salt: str) -> bytes:
    return command_seeds([DIRECTOR], DEV, [spec], now=NOW, salt=salt)[0]


def last_req(actions: list[Any]) -> str:
    fetches = [a for a in actions if isinstance(a, Publish) and a.topic.endswith("/fetch")]
    req: str = json.loads(fetches[-1].payload)["body"]["req"]
    return req


def chunk_blob(version: int, index: int) -> bytes:
    data = core_data(version)[index * CORE_CHUNK : (index + 1) * CORE_CHUNK]
    header = {"kind": "chunk", "req": "r", "target": f"m/{version}/model.onnx", "index": index}
    return protocol.encode_blob(header, data)


def core_to_chunks(core: AgentCore, version: int) -> None:
    spec = CommandSpec("deploy", f"d{version}", "m", version)
    acts = core.handle(MessageArrived("cmd", command(spec, "build"), NOW))
    req = last_req(acts)
    meta = protocol.encode_meta_blob(req, [("timestamp.json", b"{}")])
    core.handle(MessageArrived("blob", meta, NOW))
    core.handle(MetadataVerified(req, core_target(version), 1, NOW))


@pytest.fixture(scope="module")
def core_states() -> dict[str, str]:
    """The core's state (JSON) idle with v1 and v2 kept, and mid-job on v3 in each phase."""
    core = new_core()
    states: dict[str, str] = {}
    for version in (1, 2):
        core_to_chunks(core, version)
        for index in range(4):
            core.handle(MessageArrived("blob", chunk_blob(version, index), NOW))
        for step in ("file", "health", "activate"):
            core.handle(Done(step, NOW))
        stats = InferenceStats()
        stats.count = 100
        core.handle(Tick(NOW + 31, stats))
        assert core.job is None and core.installed("m")["version"] == version  # type: ignore[index]
    states["idle"] = json.dumps(core.state)
    acts = core.handle(
        MessageArrived("cmd", command(CommandSpec("deploy", "d3", "m", 3), "build"), NOW)
    )
    states["meta"] = json.dumps(core.state)
    req = last_req(acts)
    core.handle(MessageArrived("blob", protocol.encode_meta_blob(req, [("t", b"")]), NOW))
    core.handle(MetadataVerified(req, core_target(3), 1, NOW))
    core.handle(MessageArrived("blob", chunk_blob(3, 0), NOW))
    assert core.job is not None and core.job["phase"] == "chunks" and core.job["have"] == [0]
    states["chunks"] = json.dumps(core.state)
    for index in range(1, 4):
        core.handle(MessageArrived("blob", chunk_blob(3, index), NOW))
    for step in ("file", "health", "activate"):
        core.handle(Done(step, NOW))
    assert core.job is not None and core.job["phase"] == "probation"
    states["probation"] = json.dumps(core.state)
    return states


def core_corpus(state: dict[str, Any], salt: str) -> list[bytes]:
    job = state["job"]
    req = job["req"] if job else f"{DEV}:1"
    data = core_data(3)
    chunks = [data[i : i + CORE_CHUNK] for i in range(0, len(data), CORE_CHUNK)]
    chunks.append(b"\xee" * CORE_CHUNK)  # index 4: out of range
    return [
        *command_seeds([DIRECTOR], DEV, SPECS, now=NOW, salt=salt),
        *blob_seeds(req, "m/3/model.onnx", chunks, [("timestamp.json", b"{}"), ("a", b"xy")]),
        *(s for seeds in report_seeds(NOW).values() for s in seeds),
    ]


def pick_kind(rng: random.Random, payload: bytes) -> str:
    """Mostly the topic the payload was made for; sometimes another, or none the core knows."""
    roll = rng.random()
    if roll < 0.9:
        return "blob" if payload.startswith(protocol.BLOB_MAGIC) else "cmd"
    if roll < 0.95:
        return "cmd" if payload.startswith(protocol.BLOB_MAGIC) else "blob"
    return rng.choice(("state", "events", "telemetry", "drift", "fetch", "", "CMD", "cmd/x"))


def expected_drop(kind: str, payload: bytes) -> str | None:
    """The reason a receiver must count ``payload`` under, or None if it parses."""
    try:
        if kind == "blob":
            protocol.decode_blob(payload)
        elif kind == "cmd":
            protocol.decode(payload, expect=protocol.TOPIC_TYPES["cmd"])
        else:
            return "unexpected_topic"
    except ProtocolError as e:
        return e.reason
    return None


def check_published(topic: str, payload: bytes) -> protocol.Message:
    """What a device publishes, even answering garbage, is valid protocol on its topic."""
    kind = topic.rsplit("/", 1)[-1]
    assert topic == protocol.topic(DEV, kind), topic
    try:
        msg = protocol.decode(payload, expect=protocol.TOPIC_TYPES[kind])
    except ProtocolError as e:
        raise AssertionError(f"published an invalid {kind} message ({e}): {payload[:300]!r}") from e
    check_message(msg, protocol.TOPIC_TYPES[kind])
    if msg.type == "event" and msg.body.get("reason") is not None:
        assert msg.body["reason"] in REASONS, msg.body
    return msg


def check_core_state(core: AgentCore) -> None:
    """The state stays JSON and self-consistent; the core can still report it."""
    json.dumps(core.state, allow_nan=False)
    for entry in core.state["models"].values():
        assert entry["version"] in entry["versions"], entry
        assert all(str(v) in entry["files"] for v in entry["versions"]), entry
    job = core.job
    if job is not None:
        assert job["phase"] in PHASES, job["phase"]
        if job.get("target_info"):
            count = len(job["target_info"]["custom"]["chunks"])
            assert len(set(job["have"])) == len(job["have"]), job["have"]
            assert all(0 <= i < count for i in (*job["have"], *job["pending"])), job
    check_published(protocol.topic(DEV, "state"), core.state_message(NOW))


def is_authentic_rollback(kind: str, payload: bytes) -> bool:
    if kind != "cmd":
        return False
    msg = protocol.decode(payload, expect=protocol.TOPIC_TYPES["cmd"])
    try:
        verify_command(msg, payload, KEYS, device_id=DEV, now=NOW)
    except CommandError:
        return False
    return msg.type == "rollback"


def is_duplicate_chunk(state: dict[str, Any], kind: str, payload: bytes) -> bool:
    job = state["job"]
    if kind != "blob" or job is None or job["phase"] != "chunks":
        return False
    blob = protocol.decode_blob(payload)
    return (
        blob.kind == "chunk"
        and blob.header["target"] == job["target"]
        and blob.header["index"] in job["have"]
    )


def core_case(core: AgentCore, pristine: str, kind: str, payload: bytes) -> str:
    """Feed one message to a core in its pristine state: "dropped", "changed" (the state;
    the caller starts again from pristine) or "answered" (actions, no state change)."""
    dropped = Counter(core.dropped)
    models = json.dumps(core.state["models"], sort_keys=True)
    actions = core.handle(MessageArrived(kind, payload, NOW))
    after = json.dumps(core.state, allow_nan=False)
    new_drops = core.dropped - dropped
    reason = expected_drop(kind, payload)
    if reason is not None:
        assert new_drops == Counter({reason: 1}), (reason, new_drops)
        assert actions == [] and after == pristine, "a dropped message changed something"
        return "dropped"
    for action in actions:
        if isinstance(action, Publish):
            check_published(action.topic, action.payload)
    check_core_state(core)
    if json.dumps(core.state["models"], sort_keys=True) != models:
        assert is_authentic_rollback(kind, payload), "installed models changed"
    if not (actions or new_drops or after != pristine):
        assert is_duplicate_chunk(core.state, kind, payload), "silently ignored"
    return "changed" if after != pristine else "answered"


@pytest.mark.parametrize("phase", CORE_PHASES)
def test_core_takes_mutated_messages(core_states: dict[str, str], phase: str) -> None:
    pristine = core_states[phase]
    fuzzer = Fuzzer(f"core-{phase}", core_corpus(json.loads(pristine), phase))
    core = new_core(json.loads(pristine))
    outcomes: Counter[str] = Counter()
    ran = 0
    for _ in range(CORE_CASES):
        payload = fuzzer.payload()
        kind = pick_kind(fuzzer.rng, payload)
        ran += 1
        with case(f"core[{phase}]", kind, payload):
            outcome = core_case(core, pristine, kind, payload)
            outcomes[outcome] += 1
            if outcome == "changed":
                core = new_core(json.loads(pristine))
    record(f"agent.core[{phase}]", ran)
    # Valid commands and blobs got through too, and refusals were answered.
    assert outcomes["changed"] and outcomes["answered"] and outcomes["dropped"], outcomes


def test_core_hypothesis_commands(core_states: dict[str, str]) -> None:
    pristine = core_states["chunks"]
    core = new_core(json.loads(pristine))
    ran = 0
    fields = {
        t: [*DOC_BODIES[t], "device", "expires", "root_version"] for t in ("deploy", "rollback")
    }
    signatures = (
        st.lists(
            st.fixed_dictionaries(
                {
                    "keyid": st.sampled_from([DIRECTOR.public_key.keyid, "00"]) | JSON_VALUES,
                    "sig": st.text(max_size=130) | JSON_VALUES,
                }
            )
            | JSON_VALUES,
            max_size=3,
        )
        | JSON_VALUES
    )

    @HYPOTHESIS
    @given(env=envelopes(["deploy", "rollback"], fields), sigs=signatures)
    def run(env: Any, sigs: Any) -> None:
        nonlocal ran, core
        ran += 1
        if isinstance(env, dict):
            env["signatures"] = sigs
        payload = dump_json(env)
        with case("core[chunks] (hypothesis)", "cmd", payload):
            if core_case(core, pristine, "cmd", payload) == "changed":
                core = new_core(json.loads(pristine))

    run()
    record("agent.core (hypothesis)", ran)


# =========================================================================== device adapter

DEVICE_CHUNK = 512  # bytes per chunk of the device's models
DEVICE_SPECS = [
    CommandSpec("deploy", "d2", "m", 2),  # the job in progress in the mid-job states
    CommandSpec("deploy", "d3", "m", 3),  # not a signed target
    CommandSpec("deploy", "d1", "m", 1),  # active
    CommandSpec("rollback", "r1", "m", 1),
    CommandSpec("rollback", "r5", "m", 5),
]


def device_manifest(version: int, data: bytes) -> Manifest:
    """The manifest of tests/models.py's Log model: golden ones give log(1) = 0."""
    return manifest(
        version,
        data,
        DEVICE_CHUNK,
        outputs=(
            TensorSpec("label", "int64", (None,)),
            TensorSpec("probabilities", "float32", (None, 16)),
        ),
        classes=tuple("abcdefghijklmnop"),
        health_golden_inputs=((1.0,) * 16,),
        health_golden_outputs=((0.0,) * 16,),
        health_latency_budget_us=1e6,
        health_memory_budget_mb=1024,
        health_probation_s=0,  # healthy at once: the device is idle after the install
        health_probation_min_inferences=0,
        health_max_error_ratio=0.5,
    )


Outbox = list[tuple[str, bytes]]


def make_device(root: Path, outbox: Outbox, sessions: SessionCache, pinned: bytes | None) -> Device:
    return Device(
        CoreConfig(DEV, "gw", chunk_window=4),
        DeviceStore(root),
        publish=lambda topic, payload, _qos, _retain: outbox.append((topic, payload)),
        sessions=sessions,
        pinned_root=pinned,
        check_memory=False,
        clock=lambda: NOW,
    )


def serve(
    device: Device,
    outbox: Outbox,
    repo: TrustRepository,
    files: dict[str, bytes],
    chunks: set[int] | None = None,
) -> None:
    """Answer the device's fetches as the hub would, until it asks for nothing more."""
    while outbox:
        topic, payload = outbox.pop(0)
        if not topic.endswith("/fetch"):
            continue
        msg = protocol.decode(payload)
        req = msg.body["req"]
        if msg.type == "fetch_meta":
            body = msg.body
            files_for = repo.metadata_for(
                body["root_version"], body.get("target"), body.get("targets_version")
            )
            device.message("blob", protocol.encode_meta_blob(req, files_for))
            continue
        data = files[msg.body["target"]]
        for i in msg.body["chunks"]:
            if chunks is None or i in chunks:
                header = {"kind": "chunk", "req": req, "target": msg.body["target"], "index": i}
                piece = data[i * DEVICE_CHUNK : (i + 1) * DEVICE_CHUNK]
                device.message("blob", protocol.encode_blob(header, piece))


@dataclass
class DeviceWorld:
    root: Path  # a pristine copy of the device's files per phase: root / phase
    sessions: SessionCache
    corpus: dict[str, list[bytes]]
    signers: list[Any]  # the director's
    metadata: list[tuple[str, bytes]]  # what the hub sends a device at root version 1


@pytest.fixture(scope="module")
def device_world(tmp_path_factory: pytest.TempPathFactory) -> DeviceWorld:
    """A device with v1 installed by the real update path; then mid-job on v2."""
    tmp = tmp_path_factory.mktemp("device")
    repo = TrustRepository.open_or_init(tmp / "hub")
    # Chunks that differ from each other: one chunk's bytes never fit another index.
    v2 = b"".join(hashlib.sha256(bytes([i])).digest() for i in range(DEVICE_CHUNK * 4 // 32))
    files = {"m/1/model.onnx": make_log_onnx(), "m/2/model.onnx": v2}
    for name, data in files.items():
        repo.add_target(name, data, device_manifest(int(name.split("/")[1]), data).to_custom())
    signers = repo.director_signers()
    sessions = SessionCache(OnnxBackend())
    outbox: Outbox = []
    make_device(tmp / "fresh", [], sessions, repo.pinned_root())  # trusts its root only
    build = tmp / "build"
    device = make_device(build, outbox, sessions, repo.pinned_root())
    device.connected()
    deploy = CommandSpec("deploy", "d1", "m", 1)
    device.message("cmd", command_seeds(signers, DEV, [deploy], now=NOW, salt="build")[0])
    serve(device, outbox, repo, files)
    assert device.core.job is None, device.outcomes
    assert device.core.installed("m")["version"] == 1  # type: ignore[index]
    shutil.copytree(build, tmp / "idle")
    deploy = CommandSpec("deploy", "d2", "m", 2)
    device.message("cmd", command_seeds(signers, DEV, [deploy], now=NOW, salt="build")[0])
    shutil.copytree(build, tmp / "meta")
    serve(device, outbox, repo, files, chunks={0})
    assert device.core.job is not None and device.core.job["have"] == [0], device.outcomes
    shutil.copytree(build, tmp / "chunks")
    # Chunks 2 and 3 of the seeds never match their hashes: no download can complete, so
    # nothing may ever appear under models/ while the fuzzer runs.
    pieces = [v2[:DEVICE_CHUNK], v2[DEVICE_CHUNK : 2 * DEVICE_CHUNK], b"\xee" * DEVICE_CHUNK]
    pieces.append(b"\xee" * DEVICE_CHUNK)
    corpus = {}
    for phase in ("idle", "meta", "chunks"):
        state = json.loads((tmp / phase / "state.json").read_text())
        job = state["job"]
        req = job["req"] if job else f"{DEV}:{state['req'] + 1}"  # the next deploy's request
        corpus[phase] = [
            *command_seeds(signers, DEV, DEVICE_SPECS, now=NOW, salt=phase),
            *blob_seeds(req, "m/2/model.onnx", pieces, repo.metadata_for(1, "m/2/model.onnx")),
            *(s for seeds in report_seeds(NOW).values() for s in seeds),
        ]
    return DeviceWorld(tmp, sessions, corpus, signers, repo.metadata_for(1, "m/2/model.onnx"))


def model_files(root: Path) -> list[tuple[str, int]]:
    return sorted(
        (str(p.relative_to(root)), p.stat().st_size) for p in (root / "models").rglob("*")
    )


@pytest.mark.parametrize("phase", DEVICE_PHASES)
def test_device_takes_mutated_messages(
    device_world: DeviceWorld, tmp_path: Path, phase: str
) -> None:
    fuzzer = Fuzzer(f"device-{phase}", device_world.corpus[phase])
    outcomes: Counter[str] = Counter()  # events the device published: stage[:reason]
    ran = 0
    for start in range(0, DEVICE_CASES, DEVICE_ROUND):
        root = tmp_path / f"round-{start}"
        shutil.copytree(device_world.root / phase, root)
        installed = model_files(root)
        active = hashlib.sha256((root / "models/m/1/model.onnx").read_bytes()).hexdigest()
        outbox: Outbox = []
        device = make_device(root, outbox, device_world.sessions, None)
        for _ in range(min(DEVICE_ROUND, DEVICE_CASES - start)):
            payload = fuzzer.payload()
            kind = pick_kind(fuzzer.rng, payload)
            ran += 1
            with case(f"device[{phase}]", kind, payload):
                outbox.clear()
                device.message(kind, payload)
                for topic, published in outbox:
                    check_published(topic, published)
                assert model_files(root) == installed, "something was written under models/"
        check_core_state(device.core)
        outcomes.update(device.outcomes)
        assert device.core.installed("m")["version"] == 1  # type: ignore[index]
        assert _without_progress(json.loads((root / "state.json").read_text())) == (
            _without_progress(device.core.state)
        )
        assert hashlib.sha256((root / "models/m/1/model.onnx").read_bytes()).hexdigest() == active
        shutil.rmtree(root)
    record(f"agent.device[{phase}]", ran)
    assert outcomes["refused:bad_signature"] and outcomes["received"], outcomes


def _without_progress(state: dict[str, Any]) -> dict[str, Any]:
    """The state but a download's progress, which is not saved per chunk (the staging
    file is its record; a restart re-hashes it)."""
    job = state.get("job")
    if job is None:
        return {k: v for k, v in state.items() if k != "req"}
    job = {
        k: v
        for k, v in job.items()
        if k not in ("have", "pending", "req", "last_progress", "retries", "chunk_failures")
    }
    return {**{k: v for k, v in state.items() if k != "req"}, "job": job}


def meta_blob(req: str, files: list[tuple[str, bytes]]) -> bytes:
    """A meta blob as encode_meta_blob makes it, without its size check."""
    head = dump_json({"kind": "meta", "req": req, "files": [[n, len(b)] for n, b in files]})
    data = b"".join(b for _, b in files)
    return protocol.BLOB_MAGIC + len(head).to_bytes(4, "big") + head + data


def test_device_verifies_mutated_metadata(device_world: DeviceWorld, tmp_path: Path) -> None:
    """Damaged TUF metadata answering the device's own request: refused by reason."""
    root = tmp_path / "device"
    shutil.copytree(device_world.root / "fresh", root)
    installed = model_files(root)
    outbox: Outbox = []
    device = make_device(root, outbox, device_world.sessions, None)
    fuzzer = Fuzzer("metadata", [data for _, data in device_world.metadata])

    def deploy(n: int) -> str:
        spec = CommandSpec("deploy", f"tuf-{n}", "m", 2)
        signed = command_seeds(device_world.signers, DEV, [spec], now=NOW, salt="tuf")[0]
        device.message("cmd", signed)
        assert device.core.job is not None and device.core.job["phase"] == "meta"
        req: str = device.core.job["req"]
        return req

    outcomes: Counter[str] = Counter()
    ran = 0
    for i in range(METADATA_CASES):
        job = device.core.job
        req = job["req"] if job is not None and job["phase"] == "meta" else deploy(i)
        payload = meta_blob(req, mutate_metadata(fuzzer, device_world.metadata))
        ran += 1
        with case("device[meta] metadata", "blob", payload):
            outbox.clear()
            device.message("blob", payload)
            for topic, published in outbox:
                msg = check_published(topic, published)
                if msg.type == "event":
                    outcomes[f"{msg.body['stage']}:{msg.body.get('reason')}"] += 1
            assert model_files(root) == installed, "something was written under models/"
        if device.core.job is not None and device.core.job["phase"] == "chunks":
            # Verified: forget it, or TUF keeps its trusted copies and reads only timestamp.
            for name in ("timestamp.json", "snapshot.json", "targets.json", "model-m.json"):
                (device.store.trust_dir / name).unlink()
    record("agent.device[meta, TUF]", ran)
    trust = ("downloading:None", "failed:metadata_invalid", "failed:bad_signature")
    assert all(outcomes[k] for k in trust), outcomes
    # Nothing the fuzzer sent became trusted: the hub's real metadata still verifies.
    device.message("blob", meta_blob(deploy(-1), device_world.metadata))
    assert device.core.job is not None and device.core.job["phase"] == "chunks", outcomes


# =========================================================================== hub

HUB_DEVICES = ("dev-1", "press-17", "A" * 64, "a.b_c-d", "9")


@dataclass
class HubWorld:
    hub: MqttLink
    ingest: Ingest
    engine: Any


@pytest.fixture(scope="module")
def hub_world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubWorld]:
    """A hub that is never connected (its answers queue in paho), a real Ingest on SQLite."""
    tmp = tmp_path_factory.mktemp("hub")
    engine = hub_engine(tmp)
    repo = TrustRepository.open_or_init(tmp / "trust")
    artifacts = ArtifactStore(tmp / "artifacts")
    data = bytes(range(256)) * 10  # 3 chunks of 1024
    repo.add_target("m/1/model.onnx", data, {"model": "m"})
    with session(engine) as s:
        s.add(
            ModelVersion(
                name="m",
                version=1,
                sha256=artifacts.put(data),
                size_bytes=len(data),
                chunk_size=1024,
                target="m/1/model.onnx",
            )
        )
        s.commit()
    ingest = make_ingest(engine)
    ingest.start()
    hub = serve_devices(
        MqttLink(BrokerAddress("127.0.0.1", 1)),
        ingest,
        FetchAnswers(Registry(engine, artifacts, repo, 1024), repo),
    )
    yield HubWorld(hub, ingest, engine)
    ingest.stop()
    engine.dispose()


def mqtt_message(topic: str, payload: bytes) -> mqtt.MQTTMessage:
    """A message as paho delivers it. Topics are valid UTF-8: brokers refuse others."""
    msg = mqtt.MQTTMessage(mid=1, topic=topic.encode("utf-8", "replace"))
    msg.payload = payload
    return msg


def expected_hub_drop(topic: str, payload: bytes) -> str | None:
    try:
        _, kind = protocol.parse_topic(topic)
        if kind not in protocol.DEVICE_TO_HUB:
            return "unexpected_topic"
        message = protocol.decode(payload, expect=protocol.TOPIC_TYPES[kind])
    except ProtocolError as e:
        return e.reason
    if kind in ("telemetry", "drift"):  # dated: a window from the future is refused
        dated = max(message.ts, float(message.body.get("end", 0.0)))
        if dated > time.time() + MAX_CLOCK_SKEW_S:
            return "future_window"
    return None


def hub_case(hub: MqttLink, topic: str, payload: bytes) -> str:
    """One message through the hub's callback; its outcome, checked against the contract."""
    dropped, counts = Counter(hub.dropped), Counter(hub.counts)
    hub._on_message(None, None, mqtt_message(topic, payload))
    new_drops, new_counts = hub.dropped - dropped, hub.counts - counts
    # An internal_error is an exception the callback's last resort caught: never expected.
    reason = expected_hub_drop(topic, payload)
    assert not new_drops["internal_error"], "internal_error (the hub's log has the traceback)"
    if reason is not None:
        assert new_drops == Counter({reason: 1}) and not new_counts, (reason, new_drops)
        return reason
    kind = topic.rsplit("/", 1)[-1]
    assert not new_drops and new_counts[kind] == 1, (new_drops, new_counts)
    return "ok"


def hub_fuzzers(seed: str) -> dict[str, Fuzzer]:
    seeds = report_seeds(NOW)
    cmd = command_seeds([DIRECTOR], DEV, SPECS[:1], now=NOW)[0]
    return {kind: Fuzzer(f"{seed}-{kind}", [*payloads, cmd]) for kind, payloads in seeds.items()}


def test_hub_takes_mutated_messages(hub_world: HubWorld) -> None:
    hub = hub_world.hub
    fuzzers = hub_fuzzers("hub")
    kinds = sorted(fuzzers)
    rng = random.Random("hub-topics")
    outcomes: Counter[str] = Counter()
    ran, internal = 0, hub.dropped["internal_error"]
    for _ in range(HUB_CASES):
        kind = rng.choice(kinds)
        payload = fuzzers[kind].payload()
        if rng.random() < 0.9:
            topic = protocol.topic(rng.choice(HUB_DEVICES), kind)
        else:
            topic = random_topic(rng).encode("utf-8", "replace").decode()
        ran += 1
        with case("hub._on_message", topic, payload):
            outcomes[hub_case(hub, topic, payload)] += 1
    record("hub._on_message", ran)
    assert outcomes["ok"] > HUB_CASES // 50 and hub.counts["chunks_sent"] > 0, outcomes
    # The callback's last resort caught nothing (hub_case checks each case too).
    assert hub.dropped["internal_error"] == internal
    assert_writer_alive(hub_world, "after-hub-fuzz")


def test_hub_hypothesis_envelopes(hub_world: HubWorld) -> None:
    hub = hub_world.hub
    ran, internal = 0, hub.dropped["internal_error"]
    fields = {t: list(f) for t, f in DOC_BODIES.items()}

    @HYPOTHESIS
    @given(
        env=envelopes(sorted(DOC_BODIES), fields),
        kind=st.sampled_from(sorted(protocol.DEVICE_TO_HUB)),
        device=st.sampled_from(HUB_DEVICES),
    )
    def run(env: Any, kind: str, device: str) -> None:
        nonlocal ran
        ran += 1
        payload = dump_json(env)
        topic = protocol.topic(device, kind)
        with case("hub._on_message (hypothesis)", topic, payload):
            hub_case(hub, topic, payload)

    run()
    record("hub._on_message (hypothesis)", ran)
    assert hub.dropped["internal_error"] == internal


def body_allows(msg_type: str, field: str, value: Any) -> bool:
    check = DOC_BODIES.get(msg_type, {}).get(field)
    return check is not None and check[0](value)


def marker(seq: int) -> bytes:
    """A valid telemetry window of the marker device: it must land, whatever surrounds it."""
    body = {
        "seq": seq,
        "start": NOW,
        "end": NOW + 10,
        "count": 1,
        "errors": 0,
        "latency_us": {"p50": 1.0, "p95": 2.0, "p99": 3.0},
    }
    return protocol.encode("telemetry", body, ts=NOW)


def marker_seqs(engine: Any, device: str) -> set[int]:
    with session(engine) as s:
        rows = s.exec(select(Telemetry).where(Telemetry.device_id == device))
        return {row.seq for row in rows}


def assert_writer_alive(world: HubWorld, device: str) -> None:
    """A valid report put now must land in the database."""
    world.hub._on_message(None, None, mqtt_message(protocol.topic(device, "telemetry"), marker(0)))
    assert world.ingest.flush(60), "the ingest writer did not drain its queue"
    assert marker_seqs(world.engine, device) == {0}, "the ingest writer lost a valid report"


def test_ingest_survives_hostile_report_bodies(hub_world: HubWorld) -> None:
    """Reports that pass decode with values no database column takes, between valid ones."""
    hub, seeds = hub_world.hub, report_seeds(NOW)
    rng = random.Random("ingest")
    kinds = ["state", "events", "telemetry", "drift"]
    before = Counter(hub.counts)
    markers = set()
    ran = 0
    for i in range(INGEST_CASES):
        kind = kinds[i % len(kinds)]
        payload = hostile_body(rng, rng.choice(seeds[kind]), body_allows)
        topic = protocol.topic(f"fz-{i % 7}", kind)
        ran += 1
        with case("ingest", topic, payload):
            hub_case(hub, topic, payload)
        if i % 10 == 0:
            markers.add(i)
            hub._on_message(
                None, None, mqtt_message(protocol.topic("fz-marker", "telemetry"), marker(i))
            )
    accepted = Counter({k: hub.counts[k] - before[k] for k in kinds})
    record("hub.ingest", ran)
    assert sum(accepted.values()) > INGEST_CASES // 3, accepted  # most reached the writer
    assert hub_world.ingest.flush(120), "the ingest writer did not drain its queue"
    assert marker_seqs(hub_world.engine, "fz-marker") == markers, "valid reports were lost"
    assert_writer_alive(hub_world, "after-ingest-fuzz")


# =========================================================================== regressions
# Minimal reproducers of what this fuzzer found (all fixed). The volume tests hold the
# line too: none of these exceptions is tolerated there.

HUGE_INT = b"1" * 4301  # one digit past Python's default limit for parsing an int


@pytest.mark.parametrize(
    "payload",
    [
        HUGE_INT,
        b'{"v":1,"type":"state","id":"a","ts":0,"body":{"status":"online","n":' + HUGE_INT + b"}}",
    ],
    ids=["bare", "in-body"],
)
def test_regression_huge_int_literal(payload: bytes) -> None:
    """decode raised ValueError ("Exceeds the limit (4300 digits) for integer string
    conversion") from json.loads instead of ProtocolError."""
    with pytest.raises(ProtocolError):
        protocol.decode(payload)


def test_regression_huge_int_literal_in_blob_header() -> None:
    head = b'{"kind":"error","req":"r","reason":"x","n":' + HUGE_INT + b"}"
    with pytest.raises(ProtocolError) as e:
        protocol.decode_blob(protocol.BLOB_MAGIC + len(head).to_bytes(4, "big") + head)
    assert e.value.reason == "bad_blob"


def test_regression_huge_int_literal_is_dropped_by_receivers(hub_world: HubWorld) -> None:
    """The same payload raised out of AgentCore.handle and was an internal_error on the hub."""
    core = new_core()
    assert core.handle(MessageArrived("cmd", HUGE_INT, NOW)) == []
    assert sum(core.dropped.values()) == 1
    hub = hub_world.hub
    before = Counter(hub.dropped)
    hub._on_message(None, None, mqtt_message(protocol.topic("dev-1", "state"), HUGE_INT))
    assert sum((hub.dropped - before).values()) == 1
    assert hub.dropped["internal_error"] == before["internal_error"]


def test_regression_huge_integer_ts() -> None:
    """An integer ts past a float's range passed is_number, then float(ts) raised
    OverflowError out of decode."""
    payload = (
        b'{"v":1,"type":"state","id":"a","ts":1' + b"0" * 309 + b',"body":{"status":"online"}}'
    )
    with pytest.raises(ProtocolError) as e:
        protocol.decode(payload)
    assert e.value.reason == "bad_envelope"


@pytest.mark.parametrize(
    "extra", [b"NaN", b"Infinity", b"1e999", b'"\\ud800"'], ids=["nan", "inf", "1e999", "surrogate"]
)
def test_regression_command_not_canonical(extra: bytes) -> None:
    """A command with NaN, Infinity or a lone surrogate in any field decode lets through
    (unknown fields are ignored) and any signatures list: shared/director.py canonical()
    raised ValueError / UnicodeEncodeError out of AgentCore.handle."""
    payload = (
        b'{"v":1,"type":"rollback","id":"a","ts":0,'
        b'"body":{"deployment":"d","model":"m","version":1},"x":' + extra + b',"signatures":[1]}'
    )
    core = new_core()
    actions = core.handle(MessageArrived("cmd", payload, NOW))
    refused = [
        json.loads(a.payload)["body"]
        for a in actions
        if isinstance(a, Publish) and a.topic.endswith("/events")
    ]
    assert sum(core.dropped.values()) == 1 or [e["stage"] for e in refused] == ["refused"]


def test_regression_device_id_trailing_newline() -> None:
    """_DEVICE_ID ends in "$", which also matches before a final newline: a device could
    publish as "press-17\\n", a second device that prints like "press-17"."""
    assert not protocol.is_device_id("press-17\n")
    with pytest.raises(ProtocolError) as e:
        protocol.parse_topic("ef/v1/dev/press-17\n/state")
    assert e.value.reason == "bad_topic"


# =========================================================================== total


def test_zz_total(request: pytest.FixtureRequest, capsys: pytest.CaptureFixture[str]) -> None:
    """Print the cases run per target; when this session selected every fuzz test, each
    target ran its planned cases and together they are MIN_TOTAL or more."""
    assert set(TESTS) == set(PLANNED) and sum(PLANNED.values()) >= MIN_TOTAL
    for test in TESTS.values():  # a stale name would read as "not selected" below
        assert callable(globals().get(test.partition("[")[0])), test
    total = sum(CASES.values())
    with capsys.disabled():
        print(f"\nfuzz: {total} cases")
        for target, n in sorted(CASES.items()):
            print(f"  {target:48} {n:7}")
    module = request.node.module
    selected = {i.name for i in request.session.items if getattr(i, "module", None) is module}
    unselected = sorted(t for t in PLANNED if TESTS[t] not in selected)
    # A target whose test was selected but did not record its cases (failed, skipped or
    # errored) fails here too, whatever else was selected.
    short = {t: CASES[t] for t in PLANNED if TESTS[t] in selected and CASES[t] < PLANNED[t]}
    assert not short, f"fuzz tests selected but short of their planned cases: {short}"
    if unselected:
        pytest.skip(
            f"run on a subset: {len(unselected)} of {len(PLANNED)} fuzz targets not selected "
            f"in this session ({', '.join(unselected)}), so the {MIN_TOTAL:,} total is not "
            f"checked ({total:,} cases ran); run the whole file to check it"
        )
    assert total >= MIN_TOTAL, f"{total} fuzz cases, fewer than {MIN_TOTAL}"
