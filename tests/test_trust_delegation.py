"""Per-model delegated targets roles (ADR 0037) under shard roles (ADR 0041): a device
fetches and verifies the metadata of its own model only, through real python-tuf on both
sides.

The hub's top-level targets delegates each model's pattern to a shard ``shard-<nn>``, which
delegates it to ``model-<name>``, all signed by the targets keys; each artefact's manifest
is a target of its own, its bytes sent beside the role.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from securesystemslib.signer import CryptoSigner
from tuf.api.metadata import Metadata, TargetFile
from update_rig import UpdateRig

from hub.ml.pipeline import BuiltModel
from hub.transport.entitlements import Entitlements
from hub.transport.fetch import FetchAnswers
from hub.trust.repository import Expiry, TrustRepository
from shared import protocol
from shared.delegation import bundle_name, manifest_target, role_file, shard_name
from shared.reasons import Reason
from shared.trust import DeviceVerifier, TrustError

A1, A2, B1 = "a/1/model.onnx", "a/2/model.onnx", "b/1/model.onnx"
TOP = ["timestamp.json", "snapshot.json", "targets.json"]
SHARD_A, SHARD_B = role_file(shard_name(A1)), role_file(shard_name(B1))


def manifest(model: str, version: int) -> dict[str, Any]:
    return {"model": model, "version": version, "baseline": {"edges": [-1.5, 0.0, 2.25]}}


@pytest.fixture
def repo(tmp_path: Path) -> TrustRepository:
    repo = TrustRepository.open_or_init(tmp_path / "hub")
    repo.add_target(A1, b"a one", manifest("a", 1))
    repo.add_target(B1, b"b one", manifest("b", 1))
    return repo


def device_at(tmp_path: Path, repo: TrustRepository, name: str = "device") -> DeviceVerifier:
    return DeviceVerifier(tmp_path / name, repo.pinned_root())


def refused(device: DeviceVerifier, files: dict[str, bytes], target: str) -> Reason:
    with pytest.raises(TrustError) as info:
        device.verify_metadata(files, target)
    return info.value.reason


def keys_of(tmp_path: Path, role: str) -> list[CryptoSigner]:
    folder = tmp_path / "hub" / "keys" / role
    return [
        CryptoSigner(load_pem_private_key(p.read_bytes(), password=None))
        for p in sorted(folder.glob("*.pem"))
    ]


def resign(data: bytes, signers: list[CryptoSigner], change: Any = None) -> bytes:
    md = Metadata.from_bytes(data)
    if change is not None:
        change(md.signed)
    md.signatures.clear()
    for s in signers:
        md.sign(s, append=True)
    return md.to_bytes()


def with_role(tmp_path: Path, files: dict[str, bytes], role: bytes) -> dict[str, bytes]:
    """``files`` serving ``role`` as model a's: the snapshot lists its version only (ADR
    0041), so a role of the same version and another length passes it and meets the
    signature check."""
    listed = json.loads(files["snapshot.json"])["signed"]["meta"]["model-a.json"]
    assert listed == {"version": Metadata.from_bytes(role).signed.version}
    return {**files, "model-a.json": role}


def test_a_device_verifies_a_target_through_its_models_role_and_reads_nothing_else(
    tmp_path: Path, repo: TrustRepository
) -> None:
    device = device_at(tmp_path, repo)
    files = dict(repo.metadata_for(device.root_version, A1))

    assert list(files) == [*TOP, SHARD_A, "model-a.json", bundle_name(manifest_target(A1))]
    target = device.verify_metadata(files, A1)

    assert (target.length, target.custom) == (len(b"a one"), manifest("a", 1))
    top = json.loads(files["targets.json"])["signed"]
    assert top["targets"] == {}  # the top-level role lists no target: it delegates
    shards = {r["name"]: r["paths"] for r in top["delegations"]["roles"]}
    assert sorted(p for paths in shards.values() for p in paths) == ["a/*/*", "b/*/*"]
    assert all(name.startswith("shard-") for name in shards)
    shard = json.loads(files[SHARD_A])["signed"]["delegations"]["roles"]
    assert {"name": "model-a", "paths": ["a/*/*"]}.items() <= shard[0].items()
    # what the device fetched and kept (tuf persists each role it downloads): model a's
    # role and its shard, never model b's role
    kept = sorted(p.name for p in (tmp_path / "device").glob("*.json"))
    assert kept == sorted(
        ["model-a.json", SHARD_A, "root.json", "snapshot.json", "targets.json", "timestamp.json"]
    )
    # and another model's target is not in what the hub sent for a
    assert refused(device, files, B1) == Reason.METADATA_INVALID


def test_without_a_target_the_hub_sends_the_top_roles_only(repo: TrustRepository) -> None:
    assert [n for n, _ in repo.metadata_for(1)] == TOP
    assert [n for n, _ in repo.metadata_for(1, "c/1/model.onnx")] == TOP  # unknown model


def test_a_second_version_changes_the_models_role_not_the_top_level_targets(
    tmp_path: Path, repo: TrustRepository
) -> None:
    device = device_at(tmp_path, repo)
    first = dict(repo.metadata_for(1, A1))
    device.verify_metadata(first, A1)
    repo.add_target(A2, b"a two", manifest("a", 2))

    second = dict(repo.metadata_for(1, A2))

    assert second["targets.json"] == first["targets.json"]
    assert second["model-a.json"] != first["model-a.json"]
    assert device.verify_metadata(second, A2).custom == manifest("a", 2)
    assert device.verify_metadata(dict(repo.metadata_for(1, A1)), A1).length == 5  # kept
    assert repo.target_names() == [A1, A2, B1]


def test_a_device_that_has_the_top_level_targets_is_not_sent_it_again(
    tmp_path: Path, repo: TrustRepository
) -> None:
    device = device_at(tmp_path, repo)
    device.verify_metadata(dict(repo.metadata_for(1, A1)), A1)
    repo.add_target(A2, b"a two", manifest("a", 2))
    trusted = device.trusted_targets()
    assert trusted is not None
    known = trusted[0]

    files = dict(repo.metadata_for(1, A2, known))

    assert "targets.json" not in files and "model-a.json" in files
    assert device.verify_metadata(files, A2).custom == manifest("a", 2)
    # a version it does not have (a new model was added since): sent whole
    repo.add_target("c/1/model.onnx", b"c one", manifest("c", 1))
    assert "targets.json" in dict(repo.metadata_for(1, A2, known))


def test_the_agent_says_which_targets_it_has_and_gets_the_rest(
    tmp_path: Path, built: BuiltModel
) -> None:
    """The real device and core, and the hub's real fetch answers: the second update's
    ``fetch_meta`` names the top-level targets version, and the answer leaves it out."""
    rig = UpdateRig(tmp_path, built)
    rig.publish()
    sent: list[list[str]] = []

    def spy(blob: bytes) -> bytes:
        parsed = protocol.decode_blob(blob)
        if parsed.kind == "meta":
            sent.append(list(protocol.split_meta_blob(parsed)))
        return blob

    rig.tamper = spy
    assert rig.deploy(1)[-1]["stage"] == "healthy"
    rig.publish()
    assert rig.deploy(2)[-1]["stage"] == "healthy"

    assert "targets.json" in sent[0] and "targets.json" not in sent[1], sent
    assert all("model-vibration.json" in names for names in sent)


def test_a_tampered_delegated_role_is_refused(tmp_path: Path, repo: TrustRepository) -> None:
    device = device_at(tmp_path, repo)
    files = dict(repo.metadata_for(1, A1))
    md = json.loads(files["model-a.json"])
    md["signed"]["targets"][A1]["hashes"]["sha256"] = "0" * 64  # same length, old signature
    tampered = json.dumps(md, separators=(",", ":")).encode()
    assert len(tampered) == len(files["model-a.json"])

    assert refused(device, {**files, "model-a.json": tampered}, A1) == Reason.BAD_SIGNATURE
    assert device.verify_metadata(files, A1).custom == manifest("a", 1)


@pytest.mark.parametrize("key", ["snapshot", "timestamp", "stranger"])
def test_a_delegated_role_signed_by_another_key_is_refused(
    tmp_path: Path, repo: TrustRepository, key: str
) -> None:
    """The snapshot and timestamp keys are trusted, but not for a model's role."""
    device = device_at(tmp_path, repo)
    files = dict(repo.metadata_for(1, A1))
    signers = [CryptoSigner.generate_ed25519()] if key == "stranger" else keys_of(tmp_path, key)

    forged = resign(files["model-a.json"], signers)

    assert refused(device, {**files, "model-a.json": forged}, A1) == Reason.BAD_SIGNATURE


def test_a_manifest_other_than_the_signed_one_is_refused(
    tmp_path: Path, repo: TrustRepository
) -> None:
    device = device_at(tmp_path, repo)
    files = dict(repo.metadata_for(1, A1))
    name = bundle_name(manifest_target(A1))
    other = files[name].replace(b'"version":1', b'"version":9')

    assert refused(device, {**files, name: other}, A1) == Reason.METADATA_MISMATCH
    missing = {k: v for k, v in files.items() if k != name}
    assert refused(device, missing, A1) == Reason.METADATA_INVALID


def test_rotating_the_targets_keys_re_signs_every_models_role(
    tmp_path: Path, repo: TrustRepository
) -> None:
    device = device_at(tmp_path, repo)
    device.verify_metadata(dict(repo.metadata_for(1, A1)), A1)
    old = keys_of(tmp_path, "targets")

    repo.rotate("targets", threshold=2, keys=2)

    files = dict(repo.metadata_for(device.root_version, A1))
    role = Metadata.from_bytes(files["model-a.json"])
    assert {s.keyid for s in role.signatures.values()} == {
        s.public_key.keyid for s in keys_of(tmp_path, "targets")
    }
    assert len(role.signatures) == 2
    assert device.verify_metadata(files, A1).custom == manifest("a", 1)
    # the thief of an old targets key can no longer sign a model's role (a device that
    # has this version of the role already would not even read it: a fresh one does)
    forged = resign(files["model-a.json"], old)
    fresh = device_at(tmp_path, repo, "fresh")
    assert refused(fresh, with_role(tmp_path, files, forged), A1) == Reason.BAD_SIGNATURE


def test_a_threshold_of_two_applies_to_the_models_roles(tmp_path: Path) -> None:
    repo = TrustRepository.open_or_init(tmp_path / "hub", thresholds={"targets": 2})
    repo.add_target(A1, b"a one", manifest("a", 1))
    files = dict(repo.metadata_for(1, A1))
    assert device_at(tmp_path, repo).verify_metadata(files, A1).length == len(b"a one")
    assert len(Metadata.from_bytes(files["model-a.json"]).signatures) == 2

    one_key = resign(files["model-a.json"], keys_of(tmp_path, "targets")[:1])

    fresh = device_at(tmp_path, repo, "fresh")
    assert refused(fresh, with_role(tmp_path, files, one_key), A1) == Reason.BAD_SIGNATURE


def test_refresh_expiring_re_signs_the_models_roles(tmp_path: Path) -> None:
    repo = TrustRepository.open_or_init(tmp_path / "hub", expiry=Expiry(targets=3600))
    repo.add_target(A1, b"a one", manifest("a", 1))
    before = Metadata.from_bytes(dict(repo.metadata_for(1, A1))["model-a.json"]).signed.version

    renewed = repo.refresh_expiring(fraction=2.0)  # everything counts as expiring

    assert "model-a" in renewed
    files = dict(repo.metadata_for(1, A1))
    assert Metadata.from_bytes(files["model-a.json"]).signed.version == before + 1
    assert device_at(tmp_path, repo).verify_metadata(files, A1).custom == manifest("a", 1)


def old_layout(tmp_path: Path) -> TrustRepository:
    """A repository as the hub wrote it before ADR 0037: every target in top-level
    targets, its manifest inline as ``{"json": <text>}``."""
    repo = TrustRepository.open_or_init(tmp_path / "hub")
    top = repo._targets.signed
    top.delegations = None
    for name, data, fields in [(A1, b"a one", manifest("a", 1)), (B1, b"b one", manifest("b", 1))]:
        target = TargetFile.from_data(name, data, ["sha256"])
        target.unrecognized_fields["custom"] = {"json": json.dumps(fields, sort_keys=True)}
        top.targets[name] = target
        repo._publish("targets")
    repo.close()
    return repo


def test_an_old_repository_is_upgraded_at_open_and_its_devices_follow(tmp_path: Path) -> None:
    old = old_layout(tmp_path)
    device = device_at(tmp_path, old)
    old_files = dict(old.metadata_for(1))
    assert device.verify_metadata(old_files, A1).custom == manifest("a", 1)  # inline
    old_version = json.loads(old_files["targets.json"])["signed"]["version"]

    repo = TrustRepository.open_or_init(tmp_path / "hub")  # the hub starts: upgrade

    assert repo.target_names() == [A1, B1]  # no version lost
    files = dict(repo.metadata_for(1, A1))
    assert json.loads(files["targets.json"])["signed"]["version"] == old_version + 1
    assert device.verify_metadata(files, A1).custom == manifest("a", 1)
    assert device.verify_metadata(dict(repo.metadata_for(1, B1)), B1).custom == manifest("b", 1)
    # the device kept its rollback memory: the old bundle is now a rollback
    assert refused(device, old_files, A1) == Reason.METADATA_ROLLBACK
    # a second start finds nothing to upgrade
    again = TrustRepository.open_or_init(tmp_path / "hub")
    assert dict(again.metadata_for(1, A1)) == files


def test_a_fetch_for_another_models_metadata_is_refused(repo: TrustRepository) -> None:
    """The hub sends a device the role of a target it was told to install only."""

    class NoChunks:
        def chunk(self, target: str, index: int) -> bytes | None:
            return None

    answers = FetchAnswers(NoChunks(), repo, Entitlements({("dev-1", A1)}))

    def ask(target: str) -> protocol.Blob:
        body = {"req": "r1", "root_version": 1, "target": target}
        message = protocol.decode(protocol.encode("fetch_meta", body, ts=0.0))
        [(blob, _)] = answers.answer("dev-1", message)
        return protocol.decode_blob(blob)

    mine = ask(A1)
    assert "model-a.json" in protocol.split_meta_blob(mine)
    theirs = ask(B1)
    assert (theirs.kind, theirs.header["reason"]) == ("error", "not_found")
    assert answers.refused["not_deployed"] == 1
