"""shared.trust against real tuf: a hub repository on disk, devices verifying its metadata."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import Metadata, Root

from hub.trust.repository import Expiry, TrustRepository
from shared.delegation import role_file, shard_name
from shared.reasons import Reason
from shared.trust import DeviceVerifier, TrustError, VerifiedTarget

MODEL_A = b"onnx model a " * 1000
MODEL_B = b"onnx model b " * 700
# floats on purpose: TUF's canonical JSON has none, the trust layer must carry them anyway
CUSTOM_A: dict[str, Any] = {
    "model": "a",
    "version": 3,
    "health": {"tolerance": 0.05, "golden_outputs": [[0.125, 1e-7]]},
    "baseline": {"edges": [-1.5, 0.0, 2.25]},
}
TOP = ["timestamp.json", "snapshot.json", "targets.json"]

Files = dict[str, bytes]


@pytest.fixture
def repo(tmp_path: Path) -> TrustRepository:
    repo = TrustRepository.open_or_init(tmp_path / "hub")
    repo.add_target("model-a.onnx", MODEL_A, CUSTOM_A)
    return repo


@pytest.fixture
def device(tmp_path: Path, repo: TrustRepository) -> DeviceVerifier:
    return DeviceVerifier(tmp_path / "device", repo.pinned_root())


def bundle(repo: TrustRepository, device: DeviceVerifier) -> Files:
    """What the hub sends for each of its targets, in one (each model's role, ADR 0037)."""
    files: Files = {}
    for name in repo.target_names():
        files.update(repo.metadata_for(device.root_version, name))
    return files


def refused(call: Callable[[], object]) -> Reason:
    with pytest.raises(TrustError) as info:
        call()
    return info.value.reason


# --------------------------------------------------------------------------- round trip


def test_device_verifies_a_target_and_gets_its_custom_fields_back(
    repo: TrustRepository, device: DeviceVerifier
) -> None:
    target = device.verify_metadata(bundle(repo, device), "model-a.onnx")

    assert target == VerifiedTarget(
        name="model-a.onnx",
        length=len(MODEL_A),
        sha256=hashlib.sha256(MODEL_A).hexdigest(),
        custom=CUSTOM_A,
    )
    assert device.root_version == 1


def test_reopened_repository_keeps_its_keys_and_adds_a_second_target(
    tmp_path: Path, repo: TrustRepository, device: DeviceVerifier
) -> None:
    device.verify_metadata(bundle(repo, device), "model-a.onnx")
    pinned = repo.pinned_root()

    reopened = TrustRepository.open_or_init(tmp_path / "hub")
    reopened.add_target("model-b.onnx", MODEL_B, {"model": "b"})

    assert reopened.pinned_root() == pinned
    assert reopened.target_names() == ["model-a.onnx", "model-b.onnx"]
    files = bundle(reopened, device)
    assert device.verify_metadata(files, "model-b.onnx").custom == {"model": "b"}
    assert device.verify_metadata(files, "model-a.onnx").custom == CUSTOM_A


def test_repository_layout_keeps_private_keys_private(
    repo: TrustRepository, tmp_path: Path
) -> None:
    keys = tmp_path / "hub" / "keys"
    assert sorted(p.name for p in keys.iterdir()) == [
        "director",
        "root",
        "snapshot",
        "targets",
        "timestamp",
    ]
    pems = list(keys.glob("*/*.pem"))
    assert len(pems) == 5
    assert {stat.S_IMODE(p.stat().st_mode) for p in pems} == {0o600}
    assert {stat.S_IMODE(p.stat().st_mode) for p in keys.iterdir()} == {0o700}
    names = {p.name for p in (tmp_path / "hub" / "metadata").iterdir()}
    shard = role_file(shard_name("model-a.onnx"))
    assert names == {"1.root.json", "root.json", *TOP, shard, "model-model-a.onnx.json"}
    root = json.loads(repo.pinned_root())["signed"]
    assert root["consistent_snapshot"] is False


def test_replacing_a_target_serves_the_new_file(
    repo: TrustRepository, device: DeviceVerifier
) -> None:
    device.verify_metadata(bundle(repo, device), "model-a.onnx")
    repo.add_target("model-a.onnx", MODEL_B, {"model": "a", "version": 4})

    target = device.verify_metadata(bundle(repo, device), "model-a.onnx")

    assert (target.length, target.custom["version"]) == (len(MODEL_B), 4)
    assert repo.target_names() == ["model-a.onnx"]


# --------------------------------------------------------------------------- verify_file


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        pytest.param(MODEL_A, None, id="exact"),
        pytest.param(
            MODEL_A[:100] + bytes([MODEL_A[100] ^ 1]) + MODEL_A[101:],
            Reason.HASH_MISMATCH,
            id="flipped-byte",
        ),
        pytest.param(MODEL_A + b"\0", Reason.LENGTH_MISMATCH, id="one-byte-longer"),
        pytest.param(MODEL_A[:-1], Reason.LENGTH_MISMATCH, id="one-byte-shorter"),
        pytest.param(b"", Reason.LENGTH_MISMATCH, id="empty"),
    ],
)
def test_verify_file(
    repo: TrustRepository,
    device: DeviceVerifier,
    tmp_path: Path,
    content: bytes,
    reason: Reason | None,
) -> None:
    target = device.verify_metadata(bundle(repo, device), "model-a.onnx")
    staged = tmp_path / "staged"
    staged.write_bytes(content)

    if reason is None:
        device.verify_file(target, staged)
    else:
        assert refused(lambda: device.verify_file(target, staged)) == reason


def test_verify_file_stops_reading_endless_data(
    repo: TrustRepository, device: DeviceVerifier
) -> None:
    target = device.verify_metadata(bundle(repo, device), "model-a.onnx")

    # /dev/zero never ends: only a capped read can return
    assert refused(lambda: device.verify_file(target, Path("/dev/zero"))) == Reason.LENGTH_MISMATCH


# --------------------------------------------------------------------------- refusals


def _replace_same_length(data: bytes, old: bytes, new: bytes) -> bytes:
    assert len(old) == len(new) and old in data
    return data.replace(old, new)


Attack = Callable[[Files, Files], Files]  # (good bundle, foreign repo's bundle) -> staged


ATTACKS: list[Any] = [
    pytest.param(
        lambda f, x: {**f, "timestamp.json": x["timestamp.json"]},
        "model-a.onnx",
        Reason.BAD_SIGNATURE,
        id="timestamp-from-another-repo",
    ),
    pytest.param(
        lambda f, x: {**f, **{n: x[n] for n in TOP}},
        "model-a.onnx",
        Reason.BAD_SIGNATURE,
        id="all-metadata-from-another-repo",
    ),
    pytest.param(
        lambda f, x: {
            **f,
            "targets.json": _replace_same_length(f["targets.json"], b"model-a", b"model-z"),
        },
        "model-z.onnx",
        Reason.BAD_SIGNATURE,
        id="targets-edited",
    ),
    pytest.param(
        lambda f, x: {**f, "timestamp.json": b"{this is not json"},
        "model-a.onnx",
        Reason.METADATA_INVALID,
        id="timestamp-not-json",
    ),
    pytest.param(
        lambda f, x: {**f, "targets.json": b"[" * len(f["targets.json"])},
        "model-a.onnx",
        Reason.METADATA_INVALID,
        id="targets-not-json",
    ),
    pytest.param(
        lambda f, x: {**f, "targets.json": f["targets.json"] + b" " * 10},
        "model-a.onnx",
        Reason.METADATA_INVALID,
        id="targets-longer-than-signed",
    ),
    pytest.param(
        lambda f, x: {**f, "timestamp.json": b" " * (16 * 2**10 + 1)},
        "model-a.onnx",
        Reason.METADATA_INVALID,
        id="timestamp-endless",
    ),
    pytest.param(
        lambda f, x: {n: b for n, b in f.items() if n != "snapshot.json"},
        "model-a.onnx",
        Reason.METADATA_INVALID,
        id="snapshot-missing",
    ),
    pytest.param(
        lambda f, x: f,
        "model-unknown.onnx",
        Reason.TARGET_NOT_FOUND,
        id="unknown-target",
    ),
]


@pytest.mark.parametrize(("attack", "target_name", "reason"), ATTACKS)
def test_device_refuses_bad_metadata_and_recovers(
    tmp_path: Path,
    repo: TrustRepository,
    device: DeviceVerifier,
    attack: Attack,
    target_name: str,
    reason: Reason,
) -> None:
    foreign = TrustRepository.open_or_init(tmp_path / "foreign")
    foreign.add_target("model-a.onnx", MODEL_A, CUSTOM_A)
    good = bundle(repo, device)

    staged = attack(dict(good), dict(foreign.metadata_for(0)))

    assert refused(lambda: device.verify_metadata(staged, target_name)) == reason
    # bad input leaves the device able to take the good metadata
    assert device.verify_metadata(good, "model-a.onnx").length == len(MODEL_A)


def test_device_refuses_older_metadata_after_seeing_newer(
    tmp_path: Path, repo: TrustRepository, device: DeviceVerifier
) -> None:
    old = bundle(repo, device)
    device.verify_metadata(old, "model-a.onnx")
    repo.add_target("model-b.onnx", MODEL_B, {"model": "b"})
    device.verify_metadata(bundle(repo, device), "model-b.onnx")

    assert refused(lambda: device.verify_metadata(old, "model-a.onnx")) == Reason.METADATA_ROLLBACK
    # the memory is on disk: a restarted agent (new verifier, same dir) refuses too
    restarted = DeviceVerifier(tmp_path / "device", repo.pinned_root())
    assert (
        refused(lambda: restarted.verify_metadata(old, "model-a.onnx")) == Reason.METADATA_ROLLBACK
    )
    # while a device that never saw the newer metadata takes the old set
    fresh = DeviceVerifier(tmp_path / "fresh", repo.pinned_root())
    assert fresh.verify_metadata(old, "model-a.onnx").custom == CUSTOM_A


def test_device_refuses_a_frozen_timestamp_until_the_hub_re_signs_it(tmp_path: Path) -> None:
    repo = TrustRepository.open_or_init(tmp_path / "hub", expiry=Expiry(timestamp=1))
    repo.add_target("model-a.onnx", MODEL_A, CUSTOM_A)
    device = DeviceVerifier(tmp_path / "device", repo.pinned_root())
    frozen = bundle(repo, device)
    device.verify_metadata(frozen, "model-a.onnx")  # lifetime is rounded up: >= 1 s left

    _sleep_until_expired(frozen["timestamp.json"])

    assert refused(lambda: device.verify_metadata(frozen, "model-a.onnx")) == (
        Reason.EXPIRED_METADATA
    )
    newcomer = DeviceVerifier(tmp_path / "newcomer", repo.pinned_root())
    assert refused(lambda: newcomer.verify_metadata(frozen, "model-a.onnx")) == (
        Reason.EXPIRED_METADATA
    )
    assert repo.refresh_timestamp(min_remaining_s=0) is True
    assert device.verify_metadata(bundle(repo, device), "model-a.onnx").custom == CUSTOM_A


def _sleep_until_expired(timestamp_json: bytes) -> None:
    expires = datetime.strptime(
        json.loads(timestamp_json)["signed"]["expires"], "%Y-%m-%dT%H:%M:%SZ"
    ).replace(tzinfo=UTC)
    time.sleep(max(0.0, (expires - datetime.now(UTC)).total_seconds()) + 0.05)


def test_refresh_timestamp_re_signs_only_when_close_to_expiry(
    repo: TrustRepository, device: DeviceVerifier
) -> None:
    before = bundle(repo, device)
    device.verify_metadata(before, "model-a.onnx")
    version = _version(before["timestamp.json"])

    assert repo.refresh_timestamp(min_remaining_s=3600) is False  # a day left
    assert repo.refresh_timestamp(min_remaining_s=2 * 86400) is True

    after = bundle(repo, device)
    assert _version(after["timestamp.json"]) == version + 1
    assert after["snapshot.json"] == before["snapshot.json"]
    device.verify_metadata(after, "model-a.onnx")
    # the re-signed timestamp is now the floor: the previous one is a replay
    assert refused(lambda: device.verify_metadata(before, "model-a.onnx")) == (
        Reason.METADATA_ROLLBACK
    )


def _version(metadata: bytes) -> int:
    return int(json.loads(metadata)["signed"]["version"])


# --------------------------------------------------------------------------- root chain


def _publish_root_v2(hub_dir: Path, *, signed_by_trusted_key: bool = True) -> None:
    """What key rotation will do, by hand: root v2 signed by the root key on disk."""
    meta = hub_dir / "metadata"
    root = Metadata[Root].from_bytes((meta / "root.json").read_bytes())
    root.signed.version += 1
    root.signed.expires = datetime.now(UTC).replace(microsecond=0) + timedelta(days=30)
    (pem,) = (hub_dir / "keys" / "root").glob("*.pem")
    key = load_pem_private_key(pem.read_bytes(), password=None)
    signer = CryptoSigner(key) if signed_by_trusted_key else CryptoSigner.generate_ed25519()
    root.sign(signer)
    data = root.to_bytes()
    (meta / "2.root.json").write_bytes(data)
    (meta / "root.json").write_bytes(data)


def test_metadata_for_lists_every_root_the_device_lacks(
    tmp_path: Path, repo: TrustRepository, device: DeviceVerifier
) -> None:
    assert [n for n, _ in repo.metadata_for(0)] == ["1.root.json", *TOP]
    assert [n for n, _ in repo.metadata_for(1)] == TOP
    device.verify_metadata(bundle(repo, device), "model-a.onnx")

    _publish_root_v2(tmp_path / "hub")
    repo = TrustRepository.open_or_init(tmp_path / "hub")

    assert repo.root_version == 2
    assert [n for n, _ in repo.metadata_for(0)] == ["1.root.json", "2.root.json", *TOP]
    assert [n for n, _ in repo.metadata_for(1)] == ["2.root.json", *TOP]
    assert [n for n, _ in repo.metadata_for(2)] == TOP
    device.verify_metadata(bundle(repo, device), "model-a.onnx")
    assert device.root_version == 2
    assert DeviceVerifier(tmp_path / "device").root_version == 2


def test_device_refuses_a_root_not_signed_by_the_root_it_trusts(
    tmp_path: Path, repo: TrustRepository, device: DeviceVerifier
) -> None:
    _publish_root_v2(tmp_path / "hub", signed_by_trusted_key=False)
    files = {
        "2.root.json": (tmp_path / "hub" / "metadata" / "2.root.json").read_bytes(),
        **bundle(repo, device),
    }

    assert refused(lambda: device.verify_metadata(files, "model-a.onnx")) == Reason.BAD_SIGNATURE
    assert device.root_version == 1


def test_device_without_a_trust_anchor_is_refused(tmp_path: Path) -> None:
    assert refused(lambda: DeviceVerifier(tmp_path / "a")) == Reason.METADATA_INVALID
    assert refused(lambda: DeviceVerifier(tmp_path / "b", b"{}")) == Reason.METADATA_INVALID
    assert not (tmp_path / "b" / "root.json").exists()


# --------------------------------------------------------------------------- hub side


def test_reopening_repairs_a_chain_cut_by_a_crash(
    tmp_path: Path, repo: TrustRepository, device: DeviceVerifier
) -> None:
    meta = tmp_path / "hub" / "metadata"
    old_timestamp = (meta / "timestamp.json").read_bytes()
    repo.add_target("model-b.onnx", MODEL_B, {"model": "b"})
    # a crash after snapshot.json was written and before timestamp.json was
    (meta / "timestamp.json").write_bytes(old_timestamp)

    reopened = TrustRepository.open_or_init(tmp_path / "hub")

    assert device.verify_metadata(bundle(reopened, device), "model-b.onnx").custom == {"model": "b"}


@pytest.mark.parametrize(
    ("name", "custom"),
    [
        pytest.param("", {}, id="empty-name"),
        pytest.param("x" * 257, {}, id="long-name"),
        pytest.param("m.onnx", {"tolerance": float("nan")}, id="nan"),
        pytest.param("m.onnx", {"when": datetime.now(UTC)}, id="not-json"),
    ],
)
def test_add_target_refuses_bad_input(
    repo: TrustRepository, name: str, custom: dict[str, Any]
) -> None:
    assert refused(lambda: repo.add_target(name, b"data", custom)) == Reason.METADATA_INVALID
    assert repo.target_names() == ["model-a.onnx"]


def test_expiry_must_be_positive() -> None:
    with pytest.raises(ValueError, match="timestamp"):
        Expiry(timestamp=0)


def test_devices_always_get_a_consistent_set_while_the_hub_writes(
    tmp_path: Path, repo: TrustRepository
) -> None:
    stop = threading.Event()
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            for i in range(8):
                repo.add_target(f"model-{i}.onnx", os.urandom(100), {"i": i})
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)
        finally:
            stop.set()

    thread = threading.Thread(target=writer)
    thread.start()
    checked = 0
    while not stop.is_set() or checked == 0:
        fresh = DeviceVerifier(tmp_path / f"device-{checked}", repo.pinned_root())
        fresh.verify_metadata(dict(repo.metadata_for(0, "model-a.onnx")), "model-a.onnx")
        checked += 1
    thread.join()

    assert errors == []
    assert len(repo.target_names()) == 9
