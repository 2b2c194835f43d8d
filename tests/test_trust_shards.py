"""Shard roles between top-level targets and the model roles (ADR 0041), through real
python-tuf on both sides: top-level targets stays one fixed set of shard delegations with a
pattern per model, the snapshot lists versions only, and a hub that runs ADR 0037's layout
(model roles delegated by top-level targets itself) moves to shards when it opens.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from tuf.api.metadata import Metadata, MetaFile

from hub.trust.repository import TrustRepository
from shared.delegation import SHARD_COUNT, SHARD_PREFIX, role_file, shard_name
from shared.reasons import Reason
from shared.trust import DeviceVerifier, TrustError

A1, A2, B1 = "a/1/model.onnx", "a/2/model.onnx", "b/1/model.onnx"


def manifest(model: str, version: int) -> dict[str, Any]:
    return {"model": model, "version": version}


def signed(files: dict[str, bytes], name: str) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(files[name])["signed"]
    return body


def test_top_level_targets_holds_a_fixed_number_of_shards_and_a_pattern_per_model(
    tmp_path: Path,
) -> None:
    repo = TrustRepository.open_or_init(tmp_path / "hub")
    names = [f"m{i:03d}/1/model.onnx" for i in range(3 * SHARD_COUNT)]
    repo.add_targets([(n, n.encode(), manifest(n[:4], 1)) for n in names])

    files = dict(repo.metadata_for(1, names[-1]))

    roles = signed(files, "targets.json")["delegations"]["roles"]
    assert len(roles) <= SHARD_COUNT and all(r["name"].startswith(SHARD_PREFIX) for r in roles)
    assert sorted(p for r in roles for p in r["paths"]) == sorted(f"{n[:4]}/*/*" for n in names)
    # the device reads its shard, which delegates only the models hashed to it
    shard = role_file(shard_name(names[-1]))
    under = [r["name"] for r in signed(files, shard)["delegations"]["roles"]]
    assert "model-" + names[-1][:4] in under and len(under) < len(names)
    assert all(shard_name(n.removeprefix("model-")) == shard[:-5] for n in under)
    device = DeviceVerifier(tmp_path / "device", repo.pinned_root())
    assert device.verify_metadata(files, names[-1]).custom == manifest(names[-1][:4], 1)


def test_the_snapshot_lists_each_delegated_roles_version_only(tmp_path: Path) -> None:
    repo = TrustRepository.open_or_init(tmp_path / "hub")
    repo.add_target(A1, b"a one", manifest("a", 1))
    files = dict(repo.metadata_for(1, A1))

    meta = signed(files, "snapshot.json")["meta"]

    assert meta == {
        "targets.json": {"version": 2, "length": len(files["targets.json"])},  # v2: model a
        role_file(shard_name(A1)): {"version": 1},
        "model-a.json": {"version": 1},
    }
    # the timestamp still signs the snapshot's length (one entry)
    assert signed(files, "timestamp.json")["meta"]["snapshot.json"]["length"] == len(
        files["snapshot.json"]
    )


def test_a_models_role_of_another_version_than_the_snapshot_lists_is_a_mix_and_match(
    tmp_path: Path,
) -> None:
    repo = TrustRepository.open_or_init(tmp_path / "hub")
    repo.add_target(A1, b"a one", manifest("a", 1))
    older = dict(repo.metadata_for(1, A1))["model-a.json"]
    repo.add_target(A2, b"a two", manifest("a", 2))
    files = dict(repo.metadata_for(1, A1))

    device = DeviceVerifier(tmp_path / "device", repo.pinned_root())
    with pytest.raises(TrustError) as info:
        device.verify_metadata({**files, "model-a.json": older}, A1)

    assert info.value.reason == Reason.METADATA_MISMATCH
    assert device.verify_metadata(files, A1).custom == manifest("a", 1)


def direct_layout(tmp_path: Path) -> TrustRepository:
    """A repository as ADR 0037's hub wrote it: top-level targets delegates each model's
    role itself; no shard."""
    repo = TrustRepository.open_or_init(tmp_path / "hub")
    repo.add_target(A1, b"a one", manifest("a", 1))
    repo.add_target(A2, b"a two", manifest("a", 2))
    repo.add_target(B1, b"b one", manifest("b", 1))
    top = repo._targets.signed
    assert top.delegations is not None
    top.delegations.roles = {}
    for name in [r for r in repo._models.roles if r.startswith(SHARD_PREFIX)]:
        shard = repo._models.roles.pop(name).signed.delegations
        assert shard is not None and shard.roles is not None
        top.delegations.roles.update(shard.roles)
        del repo._models.files[role_file(name)], repo._snapshot.signed.meta[role_file(name)]
        (tmp_path / "hub" / "metadata" / role_file(name)).unlink()
    repo._publish("targets")
    # ADR 0037's snapshot listed each role's length too
    for name, data in repo._models.files.items():
        version = repo._models.roles[name[: -len(".json")]].signed.version
        repo._snapshot.signed.meta[name] = MetaFile(version, length=len(data))
    snapshot = repo._sign(repo._snapshot, repo._signers["snapshot"])
    repo._timestamp.signed.snapshot_meta = MetaFile(repo._snapshot.signed.version, len(snapshot))
    timestamp = repo._sign(repo._timestamp, repo._signers["timestamp"])
    for name, data in [("snapshot.json", snapshot), ("timestamp.json", timestamp)]:
        (tmp_path / "hub" / "metadata" / name).write_bytes(data)
        repo._files[name] = data
    repo.close()
    return repo


def test_a_hub_with_model_roles_under_top_level_targets_moves_to_shards_at_open(
    tmp_path: Path,
) -> None:
    old = direct_layout(tmp_path)
    device = DeviceVerifier(tmp_path / "device", old.pinned_root())
    old_files = dict(old.metadata_for(1, A2))
    assert not any(n.startswith(SHARD_PREFIX) for n in old_files)
    assert signed(old_files, "snapshot.json")["meta"]["model-a.json"]["length"] > 0
    assert device.verify_metadata(old_files, A2).custom == manifest("a", 2)
    old_top = signed(old_files, "targets.json")
    role_version = Metadata.from_bytes(old_files["model-a.json"]).signed.version

    repo = TrustRepository.open_or_init(tmp_path / "hub")  # the hub starts: re-shard

    assert repo.target_names() == [A1, A2, B1]  # no version lost
    files = dict(repo.metadata_for(1, A2))
    top = signed(files, "targets.json")
    assert top["version"] == old_top["version"] + 1
    assert {r["name"] for r in top["delegations"]["roles"]} == {
        shard_name(A1),
        shard_name(B1),
    }
    assert files["model-a.json"] == old_files["model-a.json"]  # the role itself unchanged
    assert signed(files, "snapshot.json")["meta"]["model-a.json"] == {"version": role_version}
    assert Metadata.from_bytes(files["model-a.json"]).signed.version == role_version
    # the device that trusts the old layout follows, and keeps its rollback memory
    assert device.verify_metadata(files, A2).custom == manifest("a", 2)
    assert device.verify_metadata(dict(repo.metadata_for(1, B1)), B1).custom == manifest("b", 1)
    with pytest.raises(TrustError) as info:
        device.verify_metadata(old_files, A2)
    assert info.value.reason == Reason.METADATA_ROLLBACK
    # publishing goes on under the shards; a second start finds nothing to move
    repo.add_target("a/3/model.onnx", b"a three", manifest("a", 3))
    again = TrustRepository.open_or_init(tmp_path / "hub")
    assert dict(again.metadata_for(1, A2)) == dict(repo.metadata_for(1, A2))
    assert again.target_names() == [A1, A2, "a/3/model.onnx", B1]


def test_a_padded_models_role_reads_as_signed(tmp_path: Path) -> None:
    """No length in the snapshot for a delegated role: padding is not a new role (the
    signature covers the content); the answer's size limit bounds it."""
    repo = TrustRepository.open_or_init(tmp_path / "hub")
    repo.add_target(A1, b"a one", manifest("a", 1))
    files = dict(repo.metadata_for(1, A1))
    padded = {**files, "model-a.json": files["model-a.json"] + b" " * 1000}

    device = DeviceVerifier(tmp_path / "device", repo.pinned_root())
    target = device.verify_metadata(padded, A1)

    assert (target.length, target.custom) == (len(b"a one"), manifest("a", 1))
