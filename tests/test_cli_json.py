"""``--json`` on every read command, against a real hub: a real Mosquitto, simulated
devices running the real agent code, a trained model, a deployment and a capture, and
the CLI run in-process (tests/fleet_rig.py). Each command's stdout must parse as JSON
of the shape the API answers, with nothing else on it."""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from fleet_rig import Rig, fleet_rig
from terminal import on_a_terminal
from waiting import wait_for

from edgefleet.cli import main
from hub.transport.broker import Mosquitto

pytestmark = [pytest.mark.broker]


@dataclass
class Stage:
    rig: Rig
    model: str
    device: str
    deployment: str
    capture: str


def cli_json(rig: Rig, capsys: pytest.CaptureFixture[str], *args: str) -> Any:
    """``edgefleet ARGS --json``: exit 0, nothing on stdout but JSON."""
    capsys.readouterr()
    code = main(rig.cli_args(*args, "--json"))
    out, err = capsys.readouterr()
    assert code == 0, err
    return json.loads(out)


@pytest.fixture(scope="module")
def stage(mosquitto: Mosquitto, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stage]:
    work = tmp_path_factory.mktemp("cli-json")
    with fleet_rig(mosquitto, work, devices=2, prefix="cj") as rig:
        model = rig.train()["name"]
        device = rig.devices[0].device_id
        dep = rig.client.create_deployment(model)
        wait_for(lambda: rig.client.deployment(dep["id"], devices=False)["finished"], 60, "done")
        cap = rig.client.start_capture(model, devices=[device], rows=5, duration_s=2)
        yield Stage(rig, model, device, dep["id"], cap["id"])


def read_commands(s: Stage) -> list[tuple[list[str], type]]:
    """Every read command and the JSON type it answers with."""
    m, d, dep = s.model, s.device, s.deployment
    return [
        (["devices"], list), (["devices", "list"], list), (["devices", "show", d], dict),
        (["classes", "list"], list), (["classes", "show", "generic-linux"], dict),
        (["hub", "classes"], list), (["hub", "status"], dict),
        (["models", "list"], list), (["models", "runs", m], list),
        (["models", "lineage", f"{m}:1"], dict), (["models", "performance", m], dict),
        (["datasets", "list"], list),
        (["deployments", "list"], list), (["deployments", "show", dep], dict),
        (["deployments", "events", dep], list),
        (["rollout", "list"], list), (["rollout", "show", dep], dict),
        (["rollout", "devices", dep], list), (["rollout", "events", dep], list),
        (["drift", "scores", m], dict), (["drift", "alerts", "--model", m], list),
        (["drift", "events"], list), (["drift", "policy", "show", m], dict),
        (["telemetry", "device", d], dict), (["telemetry", "model", m], dict),
        (["captures", "show", s.capture], dict), (["captures", "datasets"], list),
        (["loop", "policy", "show", m], dict), (["loop", "runs"], list),
        (["api-keys", "list"], list), (["signing-keys", "list"], dict),
        (["audit", "--limit", "5"], list), (["enrol-token", "list"], list),
    ]  # fmt: skip


def test_every_read_command_prints_json_and_only_json(
    stage: Stage, capsys: pytest.CaptureFixture[str]
) -> None:
    for args, kind in read_commands(stage):
        found = cli_json(stage.rig, capsys, *args)
        assert isinstance(found, kind), (args, found)
    devices = cli_json(stage.rig, capsys, "devices")
    assert {d["id"] for d in devices} == {d.device_id for d in stage.rig.devices}
    shown = cli_json(stage.rig, capsys, "deployments", "show", stage.deployment)
    assert shown["devices"] == 2 and shown["finished"]
    audit = cli_json(stage.rig, capsys, "audit", "--action", "deployment.create")
    assert [r["target"] for r in audit] == [stage.deployment]


def test_every_read_command_renders_for_a_person_too(
    stage: Stage, capsys: pytest.CaptureFixture[str]
) -> None:
    for args, _ in read_commands(stage):
        capsys.readouterr()
        code = main(stage.rig.cli_args(*args))
        out, err = capsys.readouterr()
        assert code == 0 and out.strip() and not err, (args, err)
        assert "\x1b[" not in out, args  # a pipe: plain text
        with pytest.raises(json.JSONDecodeError):
            json.loads(out)


def test_a_table_and_json_come_from_the_same_data(
    stage: Stage, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = cli_json(stage.rig, capsys, "devices")
    assert main(stage.rig.cli_args("devices")) == 0
    out = capsys.readouterr().out
    assert "\x1b[" not in out  # a pipe: no colour codes
    lines = {line.split()[0]: line.split() for line in out.splitlines() if line.strip()}
    for d in rows:
        assert lines[d["id"]][1] == d["status"]
        assert lines[d["id"]][2] == f"{d['model']}:{d['version']}"


def test_changes_answer_json_too(stage: Stage, capsys: pytest.CaptureFixture[str]) -> None:
    rig, device = stage.rig, stage.rig.devices[1].device_id
    tagged = cli_json(rig, capsys, "devices", "tags", "set", device, "line-7")
    assert tagged == {"device": device, "tags": ["line-7"]}
    group = cli_json(rig, capsys, "telemetry", "group", "line-7")
    assert group["group"] == "line-7" and group["devices"] == 1
    policy = cli_json(rig, capsys, "drift", "policy", "set", stage.model, "--min-rows", "50")
    assert policy["min_rows"] == 50 and policy["k"] == 2  # the rest as it was
    loop = cli_json(rig, capsys, "loop", "policy", "set", stage.model, "--waves", "2")
    assert loop["waves"] == 2 and loop["enabled"] is False
    token = cli_json(rig, capsys, "enrol-token", "--device-id", "cj-new")
    assert token["device_id"] == "cj-new" and token["token"]
    listed = cli_json(rig, capsys, "enrol-token", "list")
    assert token["id"] in {t["id"] for t in listed} and "token" not in listed[0]
    revoked = cli_json(rig, capsys, "enrol-token", "revoke", token["id"])
    assert revoked["revoked_at"]


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_watch_on_a_terminal_draws_a_bar_and_on_a_pipe_lines(stage: Stage) -> None:
    from edgefleet.rollout_cli import follow

    term, pipe = Terminal(), io.StringIO()
    assert follow(stage.rig.client, stage.deployment, out=term) == 0
    assert follow(stage.rig.client, stage.deployment, out=pipe) == 0
    drawn, logged = term.getvalue(), pipe.getvalue()
    assert "━" in drawn and "2/2" in drawn and "\x1b[" in drawn  # a live view, a bar
    assert "\x1b[" not in logged and "2/2 healthy" in logged
    for out in (drawn, logged):  # then each device's outcome, as lines
        assert all(f"{d.device_id} " in out for d in stage.rig.devices)


def test_keys_through_the_api(stage: Stage, capsys: pytest.CaptureFixture[str]) -> None:
    rig = stage.rig
    made = cli_json(rig, capsys, "api-keys", "create", "--name", "ci", "--role", "viewer")
    assert made["key"].startswith(f"ef_{made['keyid']}_") and made["role"] == "viewer"
    listed = cli_json(rig, capsys, "api-keys", "list")
    assert made["keyid"] in {k["keyid"] for k in listed} and "key" not in listed[0]
    assert cli_json(rig, capsys, "api-keys", "revoke", made["keyid"])["revoked_at"]
    before = cli_json(rig, capsys, "signing-keys", "list")
    rotated = cli_json(rig, capsys, "signing-keys", "rotate", "snapshot")
    assert rotated["root_version"] == before["root"]["version"] + 1
    assert set(rotated["keyids"]).isdisjoint(before["snapshot"]["keyids"])
    capsys.readouterr()
    assert main(rig.cli_args("signing-keys", "rotate", "timestamp")) == 0
    assert capsys.readouterr().out.startswith("rotated timestamp: root is now version")


def test_an_upload_reports_the_bytes_it_sent(
    stage: Stage, tmp_path_factory: pytest.TempPathFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path_factory.mktemp("upload") / "tiny.csv"
    path.write_text("a,b,y\n" + "".join(f"{i},{i * 2},{i % 2}\n" for i in range(300)))
    seen: list[int] = []
    v = stage.rig.client.upload_dataset("tiny", path, label="y", on_bytes=seen.append)
    assert seen == [path.stat().st_size] and v["rows"] == 300  # one block: a small file
    [listed] = cli_json(stage.rig, capsys, "datasets", "list", "--name", "tiny")
    assert listed["id"] == v["id"] == "tiny:1"


def test_deploy_wait_on_a_terminal_draws_a_bar(stage: Stage) -> None:
    args = ["deploy", "--model", stage.model, "--version", "1", "--wait"]
    seen = on_a_terminal(stage.rig.cli_args(*args))
    assert "━" in seen and "2/2" in seen  # the live bar, full
    assert re.search(r"deployment \w+: all 2 devices healthy", seen), seen


def test_a_rollout_paused_resumed_and_aborted_from_the_cli(
    stage: Stage, capsys: pytest.CaptureFixture[str]
) -> None:
    rig = stage.rig
    v2 = rig.train()["version"]
    started = cli_json(
        rig, capsys, "rollout", "create", "--model", stage.model, "--version", str(v2),
        "--canary", "1", "--rate", "0.01",  # one device now, the next in 100 minutes
    )  # fmt: skip
    rollout = started["id"]
    assert (started["version"], started["devices"], started["state"]) == (v2, 2, "running")
    assert cli_json(rig, capsys, "rollout", "pause", rollout)["state"] == "paused"
    assert cli_json(rig, capsys, "rollout", "resume", rollout)["state"] == "running"
    capsys.readouterr()
    assert main(rig.cli_args("rollout", "abort", rollout, "--rollback")) == 0
    assert capsys.readouterr().out == f"rollout {rollout}: aborted\n"
    assert cli_json(rig, capsys, "rollout", "show", rollout)["state"] == "aborted"
