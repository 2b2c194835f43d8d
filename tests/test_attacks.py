"""One test per update attack (docs/security.md): the device refuses, says why, and keeps
serving the model it had.

Each row starts from a device serving v1 of a real int8 model, signed by a real TUF
repository, then runs one attack while the hub offers v2 (tests/update_rig.py). It
asserts the stage and the stable reason code the device reports on ``events``, that v1
still answers predictions, and that nothing of v2 reached ``models/``.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from attackers import (
    FAR_AHEAD,
    LITERT_CLASS,
    ONNX_CLASS,
    deploy_target,
    fast_forward_chain,
    publish_for,
    trusted_versions,
)
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from freezegun import freeze_time
from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import Metadata
from update_rig import UpdateRig

from agent.device import Device
from hub.ml.pipeline import BuiltModel
from hub.trust.repository import Expiry
from shared import protocol
from shared.reasons import Reason

pytestmark = pytest.mark.slow

DAY = 86400.0
ROLE = "model-vibration.json"  # the model's delegated role: it lists the targets (ADR 0037)
V1 = "vibration/1/model.onnx"


# --------------------------------------------------------------------------- the attacker


def stolen_keys(rig: UpdateRig, role: str) -> list[CryptoSigner]:
    """What an attacker who copied the hub's key files for ``role`` holds."""
    folder = rig.tmp / "hub" / "trust" / "keys" / role
    return [
        CryptoSigner(load_pem_private_key(p.read_bytes(), password=None))
        for p in sorted(folder.glob("*.pem"))
    ]


def resign(data: bytes, signers: list[CryptoSigner], change: Callable[[Any], None]) -> bytes:
    md = Metadata.from_bytes(data)
    change(md.signed)
    md.signatures.clear()
    for s in signers:
        md.sign(s, append=True)
    return md.to_bytes()


def on_meta(rig: UpdateRig, edit: Callable[[dict[str, bytes]], None]) -> None:
    """Let the attacker rewrite the metadata files of every meta blob the hub sends."""

    def tamper(blob: bytes) -> bytes:
        parsed = protocol.decode_blob(blob)
        if parsed.kind != "meta":
            return blob
        files = protocol.split_meta_blob(parsed)
        edit(files)
        return protocol.encode_meta_blob(parsed.header["req"], list(files.items()))

    rig.tamper = tamper


def on_chunks(rig: UpdateRig, edit: Callable[[int, bytes], bytes]) -> None:
    def tamper(blob: bytes) -> bytes:
        parsed = protocol.decode_blob(blob)
        if parsed.kind != "chunk":
            return blob
        return protocol.encode_blob(parsed.header, edit(parsed.header["index"], parsed.data))

    rig.tamper = tamper


def evil_target(signed: Any) -> None:
    """Point v2's target at other bytes (the attacker's model)."""
    target = signed.targets["vibration/2/model.onnx"]
    target.hashes["sha256"] = "00" * 32


def flip(data: bytes, at: int = 0) -> bytes:
    return data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1 :]


# --------------------------------------------------------------------------- the table


@dataclass(frozen=True)
class Attack:
    name: str
    run: Callable[[UpdateRig], list[dict[str, Any]]]  # returns the events it caused
    stage: str
    reason: Reason
    rig: dict[str, Any] | None = None  # UpdateRig options
    detail: str | None = None  # in the event's detail, where the reason alone is not enough


def tampered_model_file(rig: UpdateRig) -> list[dict[str, Any]]:
    path = rig.registry.store.path(hashlib.sha256(rig.built.model_bytes).hexdigest())
    path.chmod(0o644)
    path.write_bytes(flip(path.read_bytes(), 100))
    rig.registry.forget_cached()
    return rig.deploy(2)


def tampered_chunk(rig: UpdateRig) -> list[dict[str, Any]]:
    on_chunks(rig, lambda i, data: flip(data, 7) if i == 1 else data)
    return rig.deploy(2)


def tampered_metadata(rig: UpdateRig) -> list[dict[str, Any]]:
    def edit(files: dict[str, bytes]) -> None:  # same length, other hash, old signature
        md = json.loads(files[ROLE])
        hashes = md["signed"]["targets"]["vibration/2/model.onnx"]["hashes"]
        hashes["sha256"] = "0" * 64
        files[ROLE] = json.dumps(md, separators=(",", ":")).encode()

    on_meta(rig, edit)
    return rig.deploy(2)


def endless_data(rig: UpdateRig) -> list[dict[str, Any]]:
    on_chunks(rig, lambda i, data: data + b"\0" * 1024)
    return rig.deploy(2)


def fast_forward(rig: UpdateRig) -> list[dict[str, Any]]:
    """Valid metadata far ahead (timestamp, snapshot, targets), signed by the attacker's
    own Ed25519 key, to lock out later real updates (no key of the hub's)."""
    stranger = CryptoSigner.generate_ed25519()
    on_meta(rig, lambda files: fast_forward_chain(files, stranger))
    return rig.deploy(2)


def replay_old_bundle(rig: UpdateRig, at: datetime) -> list[dict[str, Any]]:
    old = dict(rig.trust.metadata_for(1, V1))  # what an eavesdropper recorded today
    on_meta(rig, lambda files: files.update(old))
    with freeze_time(at):
        return rig.deploy(2)


def frozen_timestamp(rig: UpdateRig) -> list[dict[str, Any]]:
    return replay_old_bundle(rig, datetime.now(UTC) + timedelta(days=2))


def frozen_snapshot(rig: UpdateRig) -> list[dict[str, Any]]:
    """Timestamps keep coming (the hub re-signs them), the snapshot is left to expire."""
    with freeze_time(datetime.now(UTC) + timedelta(days=3)):
        return rig.deploy(2)


def frozen_targets(rig: UpdateRig) -> list[dict[str, Any]]:
    with freeze_time(datetime.now(UTC) + timedelta(days=4)):
        return rig.deploy(2)


def mix_and_match(rig: UpdateRig) -> list[dict[str, Any]]:
    """Today's timestamp and snapshot with the model's targets role from another moment."""
    older_role = dict(rig.trust.metadata_for(1, V1))[ROLE]  # before v3 was published
    rig.publish()
    on_meta(rig, lambda files: files.update({ROLE: older_role}))
    return rig.deploy(2)


def metadata_rollback(rig: UpdateRig) -> list[dict[str, Any]]:
    """Replay metadata older than what the device has already seen (all still valid)."""
    older = dict(rig.trust.metadata_for(1, V1))
    rig.publish()  # v3
    assert [e["stage"] for e in rig.deploy(3)][-1] == "healthy"
    on_meta(rig, lambda files: files.update(older))
    rig.publish()  # v4: the device must see fresh metadata to get it
    return rig.deploy(4)


def model_version_rollback(rig: UpdateRig) -> list[dict[str, Any]]:
    """A signed deploy of a version older than the one installed."""
    rig.install(2)
    return rig.deploy(1, deployment="downgrade")


def rollback_outside_history(rig: UpdateRig) -> list[dict[str, Any]]:
    """A signed rollback to a version this device never had."""
    rig.publish()  # v3
    rig.install(3)
    return rig.send(rig.command("rollback", 2))


def wrong_device_class(rig: UpdateRig) -> list[dict[str, Any]]:
    """v3 signed by the hub for LiteRT boards only; its ONNX artefact, deployed to an
    ONNX device of another class (the runtime matches, the class does not)."""
    v3 = publish_for(rig, (LITERT_CLASS,))
    return rig.send(deploy_target(rig, v3, "onnxruntime"))


def wrong_runtime(rig: UpdateRig) -> list[dict[str, Any]]:
    """v3 signed by the hub for the device's class and a LiteRT one; its .tflite
    artefact, deployed to this ONNX device (the class matches, the runtime does not)."""
    v3 = publish_for(rig, (ONNX_CLASS, LITERT_CLASS))
    return rig.send(deploy_target(rig, v3, "tflite"))


def below_threshold_targets(rig: UpdateRig) -> list[dict[str, Any]]:
    """Every online key but one of the two targets keys is stolen."""
    targets_key = stolen_keys(rig, "targets")[:1]
    snapshot_keys, timestamp_keys = stolen_keys(rig, "snapshot"), stolen_keys(rig, "timestamp")

    def edit(files: dict[str, bytes]) -> None:
        files[ROLE] = resign(files[ROLE], targets_key, evil_target)
        size = len(files[ROLE])

        def point_snapshot(signed: Any) -> None:
            signed.meta[ROLE].length = size

        files["snapshot.json"] = resign(files["snapshot.json"], snapshot_keys, point_snapshot)
        size_s = len(files["snapshot.json"])

        def point_timestamp(signed: Any) -> None:
            signed.snapshot_meta.length = size_s

        files["timestamp.json"] = resign(files["timestamp.json"], timestamp_keys, point_timestamp)

    on_meta(rig, edit)
    return rig.deploy(2)


def below_threshold_root(rig: UpdateRig) -> list[dict[str, Any]]:
    """One of two root keys stolen: a new root handing every role to the attacker."""
    one_root_key = stolen_keys(rig, "root")[:1]
    attacker = CryptoSigner.generate_ed25519()

    def take_over(signed: Any) -> None:
        for role in ("root", "targets", "snapshot", "timestamp"):
            for keyid in list(signed.roles[role].keyids):
                signed.revoke_key(keyid, role)
            signed.add_key(attacker.public_key, role)
            signed.roles[role].threshold = 1
        signed.version += 1

    evil_root = resign(rig.trust.pinned_root(), one_root_key, take_over)
    on_meta(rig, lambda files: files.update({"2.root.json": evil_root}))
    return rig.deploy(2)


def revoked_key(rig: UpdateRig) -> list[dict[str, Any]]:
    """The targets key was stolen; the hub rotated it; the thief signs with the old one."""
    old = stolen_keys(rig, "targets")
    rig.trust.rotate("targets")
    assert [e["stage"] for e in rig.deploy(2)][-1] == "healthy"  # walks to root v2
    rig.publish()  # v3
    on_meta(rig, lambda f: f.update({ROLE: resign(f[ROLE], old, _noop)}))
    return rig.deploy(3)


def unknown_key(rig: UpdateRig) -> list[dict[str, Any]]:
    stranger = [CryptoSigner.generate_ed25519()]
    on_meta(rig, lambda f: f.update({ROLE: resign(f[ROLE], stranger, _noop)}))
    return rig.deploy(2)


def drop_request(rig: UpdateRig) -> list[dict[str, Any]]:
    """The hub (or the network) never answers: retry with backoff, then give up."""
    rig.hub_silent = True
    out = rig.deploy(2)
    for _ in range(120):
        out += rig.advance(5.0)
        if out[-1]["stage"] == "failed":
            break
    return out


# director: who may tell a device what to run


def unsigned_command(rig: UpdateRig) -> list[dict[str, Any]]:
    body = {
        "deployment": "x",
        "model": "vibration",
        "version": 2,
        "target": "vibration/2/model.onnx",
    }
    return rig.send(protocol.encode("deploy", body, ts=rig.clock.now))


def forged_command(rig: UpdateRig) -> list[dict[str, Any]]:
    """A real signature, but the target was changed after signing."""
    envelope = json.loads(rig.command("deploy", 2))
    envelope["body"]["target"] = "vibration/1/model.onnx"
    return rig.send(json.dumps(envelope).encode())


def command_by_unknown_key(rig: UpdateRig) -> list[dict[str, Any]]:
    return rig.send(rig.command("deploy", 2, signers=[CryptoSigner.generate_ed25519()]))


def command_for_another_device(rig: UpdateRig) -> list[dict[str, Any]]:
    return rig.send(rig.command("deploy", 2, device_id="dev-2"))


def expired_command(rig: UpdateRig) -> list[dict[str, Any]]:
    return rig.send(rig.command("deploy", 2, now=rig.clock.now - 7200, ttl_s=3600))


def replayed_command(rig: UpdateRig) -> list[dict[str, Any]]:
    """A recorded rollback, played again after the device moved on (and restarted)."""
    rollback = rig.command("rollback", 1, deployment="back")
    rig.install(2)
    assert rig.send(rollback)[-1]["stage"] == "rolled_back"
    rig.publish()
    rig.install(3)
    rig.device = Device(  # a restart: the replay memory is on disk
        rig.device.config,
        rig.device.store,
        publish=lambda topic, payload, _q, _r: rig.wire.append((topic, payload)),
        sessions=rig.sessions,
        check_memory=False,
        clock=rig.clock,
    )
    return rig.send(rollback)


def revoked_director_key(rig: UpdateRig) -> list[dict[str, Any]]:
    """The director key was stolen and rotated; the thief's command is refused once the
    device walks to the root that dropped the key (every deploy fetches metadata)."""
    old = stolen_keys(rig, "director")
    rig.trust.rotate("director")
    return rig.send(rig.command("deploy", 2, signers=old))


def rollback_by_revoked_director_key(rig: UpdateRig) -> list[dict[str, Any]]:
    """The director key was stolen and rotated; the thief sends a rollback, which needs
    no metadata of its own: the device walks to the newest root before it acts on it."""
    rig.install(2)
    old = stolen_keys(rig, "director")
    rig.trust.rotate("director")
    return rig.send(rig.command("rollback", 1, deployment="thief", signers=old))


def _noop(signed: Any) -> None:
    pass


ATTACKS = [
    Attack("arbitrary software: tampered model file", tampered_model_file, "failed",
           Reason.CHUNK_HASH_MISMATCH),
    Attack("arbitrary software: tampered chunk", tampered_chunk, "failed",
           Reason.CHUNK_HASH_MISMATCH),
    Attack("arbitrary software: tampered metadata", tampered_metadata, "failed",
           Reason.BAD_SIGNATURE),
    Attack("endless data", endless_data, "failed", Reason.LENGTH_MISMATCH),
    Attack("fast-forward", fast_forward, "failed", Reason.BAD_SIGNATURE,
           detail="timestamp was signed by 0/1 keys"),
    Attack("indefinite freeze: timestamp", frozen_timestamp, "failed", Reason.EXPIRED_METADATA,
           detail="timestamp.json is expired"),
    Attack("indefinite freeze: snapshot", frozen_snapshot, "failed", Reason.EXPIRED_METADATA,
           {"expiry": Expiry(snapshot=2 * DAY)}, detail="snapshot.json is expired"),
    Attack("indefinite freeze: targets", frozen_targets, "failed", Reason.EXPIRED_METADATA,
           {"expiry": Expiry(targets=3 * DAY)}, detail="New targets is expired"),
    Attack("mix-and-match", mix_and_match, "failed", Reason.METADATA_MISMATCH),
    Attack("metadata rollback", metadata_rollback, "failed", Reason.METADATA_ROLLBACK),
    Attack("model version rollback", model_version_rollback, "failed", Reason.VERSION_ROLLBACK),
    Attack("rollback outside local history", rollback_outside_history, "failed",
           Reason.VERSION_ROLLBACK),
    Attack("wrong software: device class", wrong_device_class, "failed",
           Reason.WRONG_DEVICE_CLASS, {"device_class": ONNX_CLASS}, detail="built for pi-litert"),
    Attack("wrong software: runtime", wrong_runtime, "failed", Reason.WRONG_RUNTIME,
           {"device_class": ONNX_CLASS}, detail="needs tflite"),
    Attack("key compromise below threshold: targets", below_threshold_targets, "failed",
           Reason.BAD_SIGNATURE, {"thresholds": {"targets": 2}}),
    Attack("key compromise below threshold: root", below_threshold_root, "failed",
           Reason.BAD_SIGNATURE, {"thresholds": {"root": 2}}),
    Attack("revoked key", revoked_key, "failed", Reason.BAD_SIGNATURE),
    Attack("unknown key", unknown_key, "failed", Reason.BAD_SIGNATURE),
    Attack("drop-request", drop_request, "failed", Reason.FETCH_TIMEOUT),
    Attack("director: unsigned command", unsigned_command, "refused", Reason.UNSIGNED_COMMAND),
    Attack("director: forged command", forged_command, "refused", Reason.BAD_SIGNATURE),
    Attack("director: unknown key", command_by_unknown_key, "refused", Reason.UNKNOWN_KEY),
    Attack("director: command for another device", command_for_another_device, "refused",
           Reason.WRONG_DEVICE),
    Attack("director: expired command", expired_command, "refused", Reason.COMMAND_EXPIRED),
    Attack("director: replayed command", replayed_command, "refused", Reason.COMMAND_REPLAYED),
    Attack("director: revoked key", revoked_director_key, "failed", Reason.UNKNOWN_KEY),
    Attack("director: rollback by a revoked key", rollback_by_revoked_director_key, "refused",
           Reason.UNKNOWN_KEY),
]  # fmt: skip


@pytest.mark.parametrize("attack", ATTACKS, ids=[a.name for a in ATTACKS])
def test_attack_is_refused(attack: Attack, built: BuiltModel, tmp_path: Path) -> None:
    rig = make_rig(tmp_path, built, **(attack.rig or {}))

    events = attack.run(rig)

    last = events[-1]
    assert (last["stage"], last.get("reason")) == (attack.stage, attack.reason.value), events
    assert attack.detail is None or attack.detail in last["detail"], last
    before = rig.serving_before  # what it served when the attack's command arrived
    assert before is not None and rig.serving() == before  # still serving, and answering
    # nothing newer than that reached models/, and no half-download is left in staging
    assert all(int(v) <= before for v in rig.installed_versions()), rig.installed_versions()
    assert not list((tmp_path / "device" / "staging").glob("*.part"))


def make_rig(tmp_path: Path, built: BuiltModel, **options: Any) -> UpdateRig:
    """A device serving the newest version published so far, with one more offered."""
    rig = UpdateRig(tmp_path, built, **options)
    rig.publish()
    rig.install(1)
    rig.publish()  # v2: what the attacks go after
    return rig


# --------------------------------------------------------------------------- recoveries


def test_slow_retrieval_times_out_and_resumes_where_it_stopped(
    built: BuiltModel, tmp_path: Path
) -> None:
    rig = make_rig(tmp_path, built)
    chunks_seen: list[int] = []
    stalled = {"on": True}

    def stall_after_two(blob: bytes) -> bytes | None:
        parsed = protocol.decode_blob(blob)
        if parsed.kind != "chunk":
            return blob
        if stalled["on"] and len(chunks_seen) >= 2:
            return None  # the stream stalls mid-download
        chunks_seen.append(parsed.header["index"])
        return blob

    rig.tamper = stall_after_two
    events = rig.deploy(2)
    assert events[-1]["stage"] == "downloading"
    stalled["on"] = False
    events += rig.advance(6.0)  # past fetch_timeout_s: the device asks again

    assert events[-1]["stage"] == "healthy"
    assert rig.serving() == 2
    assert sorted(chunks_seen) == sorted(set(chunks_seen))  # nothing fetched twice


def test_drop_request_backs_off_between_retries(built: BuiltModel, tmp_path: Path) -> None:
    rig = make_rig(tmp_path, built)
    rig.hub_silent = True
    rig.deploy(2)
    asked_at: list[float] = []
    for _ in range(200):
        before = rig.fetches
        events = rig.advance(1.0)
        if rig.fetches > before:
            asked_at.append(rig.clock.now)
        if events and events[-1]["stage"] == "failed":
            break
    gaps = [b - a for a, b in itertools.pairwise(asked_at)]
    assert gaps == sorted(gaps) and gaps[-1] >= 4 * gaps[0], gaps
    assert events[-1]["reason"] == Reason.FETCH_TIMEOUT
    assert rig.serving() == 1


def test_fast_forward_without_a_key_leaves_no_lock_out(built: BuiltModel, tmp_path: Path) -> None:
    """The refused fast-forward left the device's rollback memory as it was: the hub's
    next real update (its versions far below the attacker's) goes through."""
    rig = make_rig(tmp_path, built)
    trusted = trusted_versions(tmp_path / "device")
    assert fast_forward(rig)[-1]["reason"] == Reason.BAD_SIGNATURE

    assert trusted_versions(tmp_path / "device") == trusted
    assert max(trusted.values()) < FAR_AHEAD
    rig.tamper = None
    rig.publish()  # v3, signed by the hub's keys with its own version numbers
    assert rig.deploy(3)[-1]["stage"] == "healthy"
    assert rig.serving() == 3
    assert all(v < FAR_AHEAD for v in trusted_versions(tmp_path / "device").values())


def test_fast_forward_recovery_after_a_stolen_timestamp_key_is_rotated(
    built: BuiltModel, tmp_path: Path
) -> None:
    """A thief with the timestamp key pushes its version far ahead; after the hub rotates
    that key, TUF drops the inflated timestamp and the device updates again."""
    rig = make_rig(tmp_path, built)
    thief = stolen_keys(rig, "timestamp")

    def inflate(files: dict[str, bytes]) -> None:
        files["timestamp.json"] = resign(files["timestamp.json"], thief, _bump_far)

    on_meta(rig, inflate)
    assert rig.deploy(2)[-1]["stage"] == "healthy"  # accepted: the key was valid
    rig.tamper = None
    rig.publish()  # v3, with the hub's (lower) timestamp version
    assert rig.deploy(3)[-1]["reason"] == Reason.METADATA_ROLLBACK  # locked out

    rig.trust.rotate("timestamp")

    assert rig.deploy(3, deployment="after-rotation")[-1]["stage"] == "healthy"
    assert rig.serving() == 3


def _bump_far(signed: Any) -> None:
    signed.version += 1000
