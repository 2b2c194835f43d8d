"""The fleet as code: a fleet file applied to a real hub with simulated devices (real
Mosquitto, the real agent code). Apply makes the groups, tags and policies and rolls the
group's version out; a second apply and a diff change nothing; a file with an unknown
key or a reference to something that does not exist is refused, naming its line, and
changes nothing."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from fleet_rig import Rig, fleet_rig
from waiting import wait_for

from edgefleet import fleetfile
from edgefleet.cli import main
from edgefleet.client import HubClient, HubClientError
from edgefleet.fleetfile import FleetFileError, line_of
from hub.transport.broker import Mosquitto

pytestmark = [pytest.mark.broker, pytest.mark.slow]

FILE = """\
# the line-a devices run the sensor model under a careful policy
[rollout_policies.careful]
canary = 1
waves = 2
max_failure_ratio = 0.5
min_sample = 1

[groups.line-a]
devices = ["{a}", "{b}"]
model = "{model}"
version = {version}
policy = "careful"

[tags]
"site:berlin" = ["{a}", "{c}"]

[drift.{model}]
psi_threshold = 0.3
k = 2
n = 4

[loop.{model}]
enabled = false
capture_rows = 500
"""


@pytest.fixture
def rig(private_mosquitto: Mosquitto, tmp_path: Path) -> Iterator[Rig]:
    with fleet_rig(private_mosquitto, tmp_path, devices=3, prefix="ff", rows_per_s=0) as r:
        yield r


def write(tmp_path: Path, text: str, **names: object) -> fleetfile.FleetFile:
    path = tmp_path / "fleet.toml"
    path.write_text(text.format(**names))
    return fleetfile.read(path)


def test_apply_makes_the_fleet_then_diff_and_a_second_apply_change_nothing(
    rig: Rig, tmp_path: Path
) -> None:
    model = rig.train()
    a, b, c = sorted(d.device_id for d in rig.devices)
    names = {"a": a, "b": b, "c": c, "model": model["name"], "version": model["version"]}
    fleet = write(tmp_path, FILE, **names)

    planned = fleetfile.send(rig.client, fleet, apply=False)
    lines = fleetfile.render(planned, applied=False)
    assert [ch["kind"] for ch in planned["changes"]] == [
        "rollout_policy",
        "members",
        "members",
        "group",
        "drift_policy",
        "loop_policy",
        "rollout",
    ], lines
    assert "+ rollout policy careful: canary=1, waves=2" in lines[0], lines
    assert f"~ group line-a devices: +2 ({a}, {b})" in lines, lines
    assert f"~ tag site:berlin devices: +2 ({a}, {c})" in lines, lines
    assert f"~ drift policy {model['name']}: psi_threshold 0.2 -> 0.3, n 3 -> 4" in lines
    rollout_line = [ln for ln in lines if ln.startswith(">")]
    assert rollout_line == [
        f"> roll out {model['name']} v{model['version']} to group line-a (2 devices; "
        "no rollout yet) under policy careful"
    ], lines
    assert rig.client.rollouts() == [], "diff changed something"
    assert rig.client.device(a)["tags"] == [], "diff changed something"

    done = fleetfile.send(rig.client, fleet, apply=True)
    rollout_id = done["changes"][-1]["after"]["rollout"]
    wait_for(lambda: rig.client.rollout(rollout_id)["state"] == "completed", 60, "converged")
    status = rig.client.rollout(rollout_id)
    assert status["counts"].get("healthy") == 2, status
    assert {d["device_id"] for d in rig.client.rollout_devices(rollout_id)} == {a, b}
    assert rig.version(next(d for d in rig.devices if d.device_id == c)) is None
    assert sorted(rig.client.device(a)["tags"]) == ["line-a", "site:berlin"]
    assert rig.client.drift_policy(model["name"])["psi_threshold"] == 0.3

    again = fleetfile.send(rig.client, fleet, apply=False)
    assert fleetfile.render(again, applied=False) == ["no changes: the hub matches the file"]
    second = fleetfile.send(rig.client, fleet, apply=True)
    assert second["changes"] == [] and len(rig.client.rollouts()) == 1

    records = rig.client.audit(action="fleet.apply")
    assert len(records) == 2, records
    assert any("roll out" in ln for r in records for ln in r["after"]["changes"]), records


def test_moving_a_device_and_changing_the_version_is_what_diff_shows(
    rig: Rig, tmp_path: Path
) -> None:
    first = rig.train()
    a, b, c = sorted(d.device_id for d in rig.devices)
    names = {"a": a, "b": b, "c": c, "model": first["name"], "version": first["version"]}
    fleetfile.send(rig.client, write(tmp_path, FILE, **names), apply=True)
    rollout = rig.client.rollouts()[0]["id"]
    wait_for(lambda: rig.client.rollout(rollout)["state"] == "completed", 60, "converged")

    second = rig.train()
    names.update(b=c, version=second["version"])  # c joins line-a, b leaves it
    planned = fleetfile.send(rig.client, write(tmp_path, FILE, **names), apply=False)
    lines = fleetfile.render(planned, applied=False)
    assert f"~ group line-a devices: +1 ({c}), -1 ({b})" in lines, lines
    assert (
        f"> roll out {first['name']} v{second['version']} to group line-a (2 devices; "
        f"v{first['version']}) under policy careful"
    ) in lines, lines


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (
            ('policy = "careful"', 'polcy = "careful"'),
            "fleet.toml:12: groups.line-a.polcy: unknown key 'polcy'",
        ),
        (
            ("capture_rows = 500", "capture_rows = 0"),
            "fleet.toml:24: loop.{model}.capture_rows: Input should be greater than or equal to 1",
        ),
        (("version = {version}", "version = 99"), "fleet.toml:11: groups.line-a.version: "),
        (
            ('policy = "careful"', 'policy = "fast"'),
            "fleet.toml:12: groups.line-a.policy: no rollout policy 'fast'",
        ),
        (
            ('"{a}", "{c}"', '"{a}", "ghost-1"'),
            "fleet.toml:15: tags.site:berlin.1: no device 'ghost-1'",
        ),
        (
            ("[drift.{model}]", "[drift.nosuch]"),
            "fleet.toml:17: drift.nosuch: no model 'nosuch' in the registry",
        ),
    ],
)
def test_a_bad_file_is_refused_naming_its_line_and_nothing_changes(
    rig: Rig, tmp_path: Path, edit: tuple[str, str], expected: str
) -> None:
    model = rig.train()
    a, b, c = sorted(d.device_id for d in rig.devices)
    names = {"a": a, "b": b, "c": c, "model": model["name"], "version": model["version"]}
    fleet = write(tmp_path, FILE.replace(*edit), **names)
    with pytest.raises(FleetFileError) as refused:
        fleetfile.send(rig.client, fleet, apply=True)
    message = str(refused.value)
    assert expected.format(**names) in message, message
    assert message.startswith(str(tmp_path / "fleet.toml")), message
    assert rig.client.rollouts() == [] and rig.client.device(a)["tags"] == []
    assert rig.client.drift_policy(model["name"])["psi_threshold"] == 0.2


def test_a_file_that_is_not_toml_names_its_line(tmp_path: Path) -> None:
    path = tmp_path / "fleet.toml"
    path.write_text("[groups.a]\nmodel = \n")
    with pytest.raises(FleetFileError, match=r"fleet.toml: not valid TOML: .*line 2"):
        fleetfile.read(path)


def test_line_of_finds_tables_dotted_and_quoted_keys() -> None:
    text = '[groups."line a"]\nmodel = "m"\n\n[tags]\n"x:y" = [\n  "d1",\n]\ndrift.m.k = 2\n'
    assert line_of(text, ("groups", "line a", "model")) == 2
    assert line_of(text, ("groups", "line a", "missing")) == 1
    assert line_of(text, ("tags", "x:y", 0)) == 5
    assert line_of(text, ("tags", "drift", "m", "k")) == 8
    assert line_of(text, ("nowhere",)) is None


RECEIVER = """\
[receivers.oncall]
url = "http://127.0.0.1:9/hooks/edgefleet?token=abc"
secret_env = "EF_TEST_ONCALL_SECRET"
kinds = ["drift", "rollout"]
"""


def test_receivers_are_declared_with_their_secret_outside_the_file(
    rig: Rig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EF_TEST_ONCALL_SECRET", "s" * 24)
    fleet = write(tmp_path, RECEIVER)
    assert "secret" in fleet.document["receivers"]["oncall"]  # read from the environment

    operator = rig.client.create_api_key("ops", "operator")["key"]
    with HubClient(rig.api.url, api_key=operator) as as_operator:
        planned = fleetfile.send(as_operator, fleet, apply=False)  # diff: a viewer's
        with pytest.raises(HubClientError, match="an admin key applies it") as refused:
            fleetfile.send(as_operator, fleet, apply=True)
    assert refused.value.status == 403
    assert fleetfile.render(planned, applied=False) == [
        "+ receiver oncall: kinds drift, rollout, every model"
    ]
    assert "token=abc" not in str(planned) and "s" * 24 not in str(planned)

    fleetfile.send(rig.client, fleet, apply=True)
    row = rig.hub.alerts.receivers.get("oncall")
    assert (row.url, row.secret, row.kinds) == (
        "http://127.0.0.1:9/hooks/edgefleet?token=abc",
        "s" * 24,
        ["drift", "rollout"],
    )
    again = fleetfile.send(rig.client, fleet, apply=False)
    assert again["changes"] == []

    monkeypatch.setenv("EF_TEST_ONCALL_SECRET", "t" * 24)
    rotated = fleetfile.send(rig.client, fleetfile.read(fleet.path), apply=False)
    assert fleetfile.render(rotated, applied=False) == ["~ receiver oncall: secret changed"]


def test_a_secret_in_the_file_or_one_not_set_is_refused_naming_its_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("EF_TEST_ONCALL_SECRET", raising=False)
    path = tmp_path / "fleet.toml"
    path.write_text(RECEIVER)
    with pytest.raises(FleetFileError, match=r"fleet.toml:1: .*EF_TEST_ONCALL_SECRET is not set"):
        fleetfile.read(path)
    path.write_text(RECEIVER.replace('secret_env = "EF_TEST_ONCALL_SECRET"', 'secret = "x"'))
    with pytest.raises(FleetFileError, match=r"fleet.toml:3: receivers.oncall.secret: keep"):
        fleetfile.read(path)


def test_the_cli_applies_then_diff_shows_no_change(
    rig: Rig, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a, _b, c = sorted(d.device_id for d in rig.devices)
    path = tmp_path / "fleet.toml"
    path.write_text(f'[rollout_policies.fast]\nwaves = 1\n\n[tags]\n"site:x" = ["{a}", "{c}"]\n')
    assert main(rig.cli_args("diff", "-f", str(path))) == 0
    planned = capsys.readouterr().out
    assert f"~ tag site:x devices: +2 ({a}, {c})" in planned, planned
    assert rig.client.device(a)["tags"] == []

    assert main(rig.cli_args("apply", "-f", str(path), "--json")) == 0
    applied = json.loads(capsys.readouterr().out)
    assert [ch["kind"] for ch in applied["changes"]] == ["rollout_policy", "members"]
    assert rig.client.device(c)["tags"] == ["site:x"]

    assert main(rig.cli_args("diff", "-f", str(path))) == 0
    assert capsys.readouterr().out.strip() == "no changes: the hub matches the file"

    path.write_text(path.read_text().replace("waves", "wavs"))
    assert main(rig.cli_args("apply", "-f", str(path))) == 1
    err = capsys.readouterr().err
    assert f"{path}:2: rollout_policies.fast.wavs: unknown key 'wavs'" in err, err
