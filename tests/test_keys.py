"""Key management: rotation of every role, thresholds, offline root keys, the director's
key moving with the root, the hub re-signing before expiry, and ``edgefleet keys``."""

from __future__ import annotations

import json
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from freezegun import freeze_time
from pg_schemas import hub_engine
from update_rig import UpdateRig

from edgefleet.cli import main
from hub.access.audit import AuditLog
from hub.access.keys import CLI_ACTOR
from hub.ml.pipeline import BuiltModel
from hub.trust.repository import RepositoryError, TrustRepository
from shared.reasons import Reason

pytestmark = pytest.mark.slow


def serving_v1(tmp_path: Path, built: BuiltModel, **options: object) -> UpdateRig:
    rig = UpdateRig(tmp_path, built, **options)  # type: ignore[arg-type]
    rig.publish()
    rig.install(1)
    return rig


@pytest.mark.parametrize("role", ["root", "targets", "snapshot", "timestamp", "director"])
def test_after_rotating_any_role_the_device_walks_the_root_and_updates(
    role: str, tmp_path: Path, built: BuiltModel
) -> None:
    rig = serving_v1(tmp_path, built)
    keys_before = rig.trust.keys()[role]["keyids"]

    assert rig.trust.rotate(role) == 2

    assert rig.trust.keys()[role]["keyids"] != keys_before
    rig.publish()
    assert rig.deploy(2)[-1]["stage"] == "healthy"
    assert rig.device.verifier.root_version == 2
    assert rig.serving() == 2
    old_files = [tmp_path / "hub" / "trust" / "keys" / role / f"{k}.pem" for k in keys_before]
    assert not any(p.exists() for p in old_files)  # the old private keys are gone


def test_a_device_offline_through_several_rotations_walks_every_root(
    tmp_path: Path, built: BuiltModel
) -> None:
    rig = serving_v1(tmp_path, built)
    for role in ("targets", "root", "timestamp", "root"):
        rig.trust.rotate(role)
    rig.publish()

    assert rig.deploy(2)[-1]["stage"] == "healthy"
    assert rig.device.verifier.root_version == 5


def test_threshold_root_needs_every_key_it_names(tmp_path: Path) -> None:
    repo = TrustRepository.open_or_init(tmp_path / "trust", thresholds={"root": 2})
    assert repo.keys()["root"]["threshold"] == 2
    root_dir = tmp_path / "trust" / "keys" / "root"
    first = sorted(root_dir.glob("*.pem"))[0]
    first.rename(tmp_path / "elsewhere.pem")
    reopened = TrustRepository.open_or_init(tmp_path / "trust")

    with pytest.raises(RepositoryError, match=r"needs 2 root key\(s\); 1 usable"):
        reopened.rotate("targets")

    (tmp_path / "elsewhere.pem").rename(first)
    assert TrustRepository.open_or_init(tmp_path / "trust").rotate("targets") == 2


def test_two_of_three_root_keys_survive_a_lost_key(tmp_path: Path, built: BuiltModel) -> None:
    """A threshold below the number of keys: any 2 of 3 sign a new root, so losing one
    root key locks nobody out; devices accept a root signed by 2 of the 3 it trusts."""
    rig = serving_v1(tmp_path, built, thresholds={"root": 2}, key_counts={"root": 3})
    assert (rig.trust.keys()["root"]["threshold"], len(rig.trust.keys()["root"]["keyids"])) == (
        2,
        3,
    )
    root_dir = tmp_path / "hub" / "trust" / "keys" / "root"
    sorted(root_dir.glob("*.pem"))[0].unlink()  # one root key is lost for good
    rig.trust.close()
    rig.trust = TrustRepository.open_or_init(tmp_path / "hub" / "trust")
    rig.registry.trust = rig.trust

    assert rig.trust.rotate("root", keys=3) == 2  # signed by the 2 keys left, and 3 new ones
    rig.publish()

    assert rig.deploy(2)[-1]["stage"] == "healthy"  # the device walked to root v2
    assert rig.device.verifier.root_version == 2
    assert rig.trust.keys()["root"]["keys_here"] == 3
    with pytest.raises(RepositoryError, match=r"make 3\.\.16 keys, not 2"):
        rig.trust.rotate("targets", threshold=3, keys=2)


def test_keys_cli_makes_m_of_n(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = ["--data-dir", str(tmp_path / "hub")]
    assert main(["keys", "init", *data, "--threshold", "root=2", "--keys", "root=3"]) == 0
    assert "root       threshold 2  keys here 3/3" in capsys.readouterr().out
    assert main(["keys", "rotate", "director", *data, "--threshold", "2", "--keys", "3"]) == 0
    assert "director   threshold 2  keys here 3/3" in capsys.readouterr().out


def test_the_root_can_live_offline(tmp_path: Path, built: BuiltModel) -> None:
    usb = tmp_path / "usb"
    repo = TrustRepository.open_or_init(tmp_path / "trust", root_keys_dir=usb)
    assert len(list(usb.glob("*.pem"))) == 1
    assert not (tmp_path / "trust" / "keys" / "root").exists()
    shutil.move(usb, tmp_path / "drawer")  # unplugged

    hub = TrustRepository.open_or_init(tmp_path / "trust", root_keys_dir=usb)
    hub.add_target("m/1/model.onnx", built.model_bytes, {"model": "m"})  # signing goes on
    with pytest.raises(RepositoryError, match="needs 1 root key"):
        hub.rotate("timestamp")

    shutil.move(tmp_path / "drawer", usb)  # plugged back in
    assert hub.rotate("timestamp") == 2
    assert repo.root_version == 1  # (the first handle was not used again)


def test_rotating_the_director_reaches_a_device_through_its_next_command(
    tmp_path: Path, built: BuiltModel
) -> None:
    """A command signed by the new director key names a newer root: the device walks to
    it, finds the key there, and then obeys."""
    rig = serving_v1(tmp_path, built)
    rig.trust.rotate("director")
    rig.publish()

    events = rig.deploy(2)

    assert [e["stage"] for e in events][-1] == "healthy", events
    assert rig.device.core.root_version == 2


def test_a_command_for_a_newer_root_that_still_does_not_list_its_key_is_refused(
    tmp_path: Path, built: BuiltModel
) -> None:
    from securesystemslib.signer import CryptoSigner

    rig = serving_v1(tmp_path, built)
    rig.trust.rotate("targets")  # root v2: a newer root exists, without the thief's key
    rig.publish()

    events = rig.send(rig.command("deploy", 2, signers=[CryptoSigner.generate_ed25519()]))

    assert (events[-1]["stage"], events[-1]["reason"]) == ("refused", Reason.UNKNOWN_KEY)
    assert rig.device.core.root_version == 2  # it did walk the chain
    assert rig.serving() == 1


def test_the_hub_re_signs_roles_before_they_expire(tmp_path: Path) -> None:
    repo = TrustRepository.open_or_init(tmp_path / "trust")
    assert repo.refresh_expiring() == []
    with freeze_time(datetime.now(UTC) + timedelta(days=4)):  # snapshot (7 d) half gone
        assert repo.refresh_expiring() == ["snapshot", "timestamp"]
        assert repo.refresh_expiring() == []
    with freeze_time(datetime.now(UTC) + timedelta(days=200)):  # root (365 d) too
        assert repo.refresh_expiring() == ["targets", "snapshot", "timestamp", "root"]
        assert repo.root_version == 2


def test_a_running_hub_keeps_the_cli_off_its_keys(tmp_path: Path) -> None:
    held = TrustRepository.open_or_init(tmp_path / "trust", exclusive=True)
    with pytest.raises(RepositoryError, match="in use by another process"):
        TrustRepository.open_or_init(tmp_path / "trust", exclusive=True)
    held.close()
    TrustRepository.open_or_init(tmp_path / "trust", exclusive=True).close()


def test_keys_cli_init_show_rotate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = ["--data-dir", str(tmp_path / "hub")]
    assert main(["keys", "init", *data, "--threshold", "root=2"]) == 0
    out = capsys.readouterr().out
    assert "root version 1" in out and "root       threshold 2  keys here 2/2" in out

    assert main(["keys", "rotate", "snapshot", *data]) == 0
    assert "root is now version 2" in capsys.readouterr().out
    assert main(["keys", "renew-root", *data]) == 0
    assert "root version 3" in capsys.readouterr().out

    # each change is in the hub's audit log, as the API's changes are (no key material)
    engine = hub_engine(tmp_path / "hub")
    records = {r.action: r for r in AuditLog(engine).query(limit=10)}
    assert set(records) == {"signing_key.init", "signing_key.rotate", "signing_key.renew_root"}
    rotate = records["signing_key.rotate"]
    assert (rotate.actor_keyid, rotate.status, rotate.target) == (CLI_ACTOR, 0, "snapshot")
    assert rotate.before and rotate.after
    assert rotate.before["snapshot"]["keyids"] != rotate.after["snapshot"]["keyids"]
    assert (rotate.before["root_version"], rotate.after["root_version"]) == (1, 2)
    renew = records["signing_key.renew_root"].after
    assert renew is not None and renew["version"] == 3
    assert "private" not in json.dumps([r.model_dump() for r in records.values()])

    assert main(["keys", "init", *data]) == 1  # never over an existing repository
    assert "already has keys" in capsys.readouterr().err
    assert main(["keys", "rotate", "nobody", *data]) == 2  # a usage error: not a role
    assert "'nobody' is not one of 'root', 'targets'" in capsys.readouterr().err
