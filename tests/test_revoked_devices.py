"""A revoked device looks revoked: ``edgefleet devices revoke``, the device list and
``GET /devices/{id}`` say so (since when, why), and a rollout or a deployment that finds
no device names the revoked ones it left out.

Against a real hub, a real Mosquitto and simulated devices running the real agent code."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fleet_rig import Rig, fleet_rig

from edgefleet.cli import main
from hub.transport.broker import Mosquitto

pytestmark = [pytest.mark.broker, pytest.mark.slow]


@pytest.fixture
def rig(private_mosquitto: Mosquitto, tmp_path: Path) -> Iterator[Rig]:
    with fleet_rig(private_mosquitto, tmp_path, devices=2, prefix="press") as r:
        yield r


def cli(rig: Rig, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(rig.cli_args(*args))
    out, err = capsys.readouterr()
    return code, out, err


def test_a_revoked_device_is_shown_revoked_and_refusals_name_it(
    rig: Rig, capsys: pytest.CaptureFixture[str]
) -> None:
    model = rig.train()
    gone, kept = (d.device_id for d in rig.devices)
    before = time.time()

    code, out, _ = cli(rig, capsys, "devices", "revoke", gone, "--reason", "key_compromise")

    assert code == 0
    assert out.startswith(f"device {gone} revoked (key_compromise)"), out
    code, out, _ = cli(rig, capsys, "devices")
    lines = {line.split()[0]: line for line in out.splitlines()}
    assert lines[gone].split()[1] == "revoked" and "key_compromise" in lines[gone], out
    assert lines[kept].split()[1] == "online", out
    dev = rig.client.device(gone)
    assert dev["status"] == "revoked"
    assert dev["revoked"]["reason"] == "key_compromise"
    assert before <= dev["revoked"]["revoked_at"] <= time.time()
    assert rig.client.device(kept)["revoked"] is None
    assert [d["id"] for d in rig.client.devices(status="revoked")] == [gone]
    assert [d["id"] for d in rig.client.devices(status="online")] == [kept]

    rig.client.set_tags(gone, ["line-3"])
    code, _, err = cli(
        rig, capsys, "rollout", "create", "--model", model["name"], "--tag", "line-3"
    )
    assert code == 1
    assert f"no devices match: {gone} is revoked" in err, err

    code, _, err = cli(rig, capsys, "deploy", "--model", model["name"], "--devices", gone)
    assert code == 1
    assert f"1 revoked device id(s): {gone}" in err, err

    rig.client.revoke_device(kept)
    code, _, err = cli(rig, capsys, "deploy", "--model", model["name"])
    assert code == 1
    assert f"no devices match: {gone}, {kept} are revoked" in err, err


def test_a_tag_nobody_has_is_said_so(rig: Rig, capsys: pytest.CaptureFixture[str]) -> None:
    model = rig.train()

    code, _, err = cli(rig, capsys, "rollout", "create", "--model", model["name"], "--tag", "nope")

    assert code == 1
    assert "no devices match: none known with tag nope" in err, err
