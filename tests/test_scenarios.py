"""Rehearsals: the example scenarios played end to end, faults and all, on real parts.

Each test runs a private Mosquitto, the hub as a child process (so SIGKILL is real) and
a fleet running the real agent code; it asserts the summary a user reads and the
devices' own state (what they run, what they persisted).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from agent.store import DeviceStore
from edgefleet.cli import main
from edgefleet.rehearsal import ScenarioResult, run_scenario
from simulator.fleet import Fleet, FleetConfig
from simulator.scenario import ScenarioError, load_scenario, parse_scenario
from simulator.timeline import HubUnreachable, play

SCENARIOS = Path(__file__).resolve().parent.parent / "simulator" / "scenarios"


def _run(name: str, tmp_path: Path) -> ScenarioResult:
    return run_scenario(load_scenario(SCENARIOS / f"{name}.toml"), tmp_path / "run", say=print)


def _active(result: ScenarioResult) -> dict[str, Any]:
    return {d.device_id: d.device.predictor.active for d in result.fleet.devices}


@pytest.mark.slow
@pytest.mark.broker
def test_flaky_network_still_converges_everywhere(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "summary.json"
    work = tmp_path / "work"
    scenario = str(SCENARIOS / "flaky-network.toml")
    rc = main(
        ["sim", "run", "--scenario", scenario, "--summary", str(out), "--work-dir", str(work)]
    )
    err = capsys.readouterr().err
    summary = json.loads(out.read_text())
    assert rc == 0, summary
    n = summary["devices"]
    assert summary["versions"] == {"vibration:1": n}
    assert summary["states"] == {"healthy": n}
    assert summary["converged"] == n and summary["seconds_to_converge"] is not None
    assert summary["rollout"]["state"] == "completed"
    assert summary["refusals"] == {} and summary["rollbacks"] == 0
    faults = summary["faults"]
    for kind in ("crash_mid_download", "disconnect"):
        assert faults[kind]["injected"] == faults[kind]["planned"] > 0, kind
    assert faults["corrupt_chunks"]["injected"] >= 1  # refused by hash, asked again
    assert faults["slow_link"]["injected"] > 0
    # Each crashed device had chunks on disk and resumed from its bitmap: it never asked
    # again for a chunk it had persisted.
    assert len(summary["crashes"]) == faults["crash_mid_download"]["planned"]
    for crash in summary["crashes"]:
        assert crash["chunks_on_disk"] >= 2 and crash["refetched"] == 0, crash
    assert "crashed with 2 chunks on disk" in err and "restarted from its state directory" in err
    # What the devices persisted: every one runs v1, no job left, the file in place.
    for dev in sorted((work / "devices").iterdir()):
        state = DeviceStore(dev).load_state()
        assert state is not None and state["job"] is None, dev.name
        assert state["models"]["vibration"]["version"] == 1, dev.name
        assert (dev / "models" / "vibration" / "1").is_dir()


@pytest.mark.slow
@pytest.mark.broker
def test_a_good_model_with_ten_percent_faulty_devices_converges_on_the_rest(
    tmp_path: Path,
) -> None:
    result = _run("faulty-class", tmp_path)
    s = result.summary
    bad = {d.device_id for d in result.fleet.devices if d.device_class == "gw-bad"}
    assert len(bad) == 2
    assert s["model"] == {"name": "vibration", "version": 2, "baseline_version": 1}
    assert s["rollout"]["state"] == "completed", s["rollout"]
    assert s["versions"] == {"vibration:1": 2, "vibration:2": 18}
    assert s["refusals"] == {"health_check_failed": 2}
    assert s["rollout"]["counts"] == {"failed": 2, "healthy": 18}
    assert s["converged"] == 18 and s["halts"] == []
    for device_id, active in _active(result).items():
        assert active == ("vibration", 1 if device_id in bad else 2), device_id
    failed = {e.device_id for d in result.fleet.devices for e in d.events if e.stage == "failed"}
    assert failed == bad


@pytest.mark.slow
@pytest.mark.broker
def test_a_model_failing_on_thirty_percent_halts_and_every_device_goes_back(
    tmp_path: Path,
) -> None:
    result = _run("bad-model", tmp_path)
    s = result.summary
    assert s["rollout"]["state"] == "halted", s["rollout"]
    assert "failed" in s["rollout"]["halted_reason"]
    assert [h["state"] for h in s["halts"]] == ["halted"]
    # every device ends on the version it ran before: refused ones kept it, the
    # others were rolled back by a signed rollback command
    assert s["versions"] == {"vibration:1": 10}, s["versions"]
    assert set(_active(result).values()) == {("vibration", 1)}
    events = [e for d in result.fleet.devices for e in d.events]
    touched = {e.device_id for e in events if e.stage == "activated" and e.version == 2}
    assert s["rollbacks"] == s["rollout"]["rollbacks_sent"] == len(touched) >= 1
    # the waves are the scenario's (seeded): the same devices fail in every run
    bad = {d.device_id for d in result.fleet.devices if d.device_class == "gw-bad"}
    failed = {e.device_id for e in events if e.reason == "health_check_failed"}
    assert failed and failed <= bad and not touched & bad
    assert s["refusals"] == {"health_check_failed": len(failed)}


@pytest.mark.slow
@pytest.mark.broker
def test_broker_restart_mid_rollout_converges(tmp_path: Path) -> None:
    result = _run("broker-restart", tmp_path)
    s = result.summary
    n = s["devices"]
    assert s["faults"]["broker_restart"]["injected"] == 1
    assert s["faults"]["broker_restart"]["struck"]["healthy"] < n  # mid-rollout
    assert s["converged"] == n and s["versions"] == {"vibration:1": n}, s
    assert set(_active(result).values()) == {("vibration", 1)}
    # Every device really lost its connection and came back.
    assert result.fleet.loop.stats.connects >= 2 * n


@pytest.mark.slow
@pytest.mark.broker
def test_hub_killed_mid_rollout_converges_once_back(tmp_path: Path) -> None:
    result = _run("hub-restart", tmp_path)
    s = result.summary
    n = s["devices"]
    assert s["faults"]["hub_restart"]["injected"] == 1
    assert s["faults"]["hub_restart"]["struck"]["healthy"] < n  # killed mid-rollout
    assert s["hub_unreachable_s"] > 0  # the API was really gone for a while
    assert s["converged"] == n and s["states"] == {"healthy": n}, s
    assert set(_active(result).values()) == {("vibration", 1)}
    log = (result.work_dir / "hub.log").read_text()
    assert log.count("hub: API on") == 2  # started, killed, started again


BAD_FILES = [
    # (what the file says, the field the error must name)
    ('seed = 1\n[fleet]\ndevices = 3\n[[fault]]\nkind = "meteor"\n', "fault[0].kind"),
    (
        'seed = 1\n[fleet]\ndevices = 3\n[[fault]]\nkind = "disconnect"\nfraction = 1.5\n'
        "duration_s = 1\n",
        "fault[0].fraction",
    ),
    ('seed = 1\n[fleet]\ndevices = 3\n[[fault]]\nkind = "disconnect"\n', "fault[0].duration_s"),
    ("[fleet]\ndevices = 3\n", "seed"),
    ("seed = 1\n", "fleet"),
    ("seed = 1\n[fleet]\ndevices = 4\nclasses = { a = 1, b = 2 }\n", "fleet.classes"),
    ('seed = 1\n[fleet]\ndevices = 3\n[rollout]\ncanary = "two"\n', "rollout.canary"),
    ("seed = 1\n[fleet]\ndevices = 3\n[rollout]\nmax_failure_ratio = 2\n", "rollout.max_failure"),
    (
        'seed = 1\n[fleet]\ndevices = 3\n[[fault]]\nkind = "corrupt_chunks"\np = 0\n',
        "fault[0].p",
    ),
    (
        'seed = 1\n[fleet]\ndevices = 3\n[[fault]]\nkind = "faulty_class"\ndevice_class = "nope"\n',
        "fault[0].device_class",
    ),
    ('seed = 1\n[fleet]\ndevices = 3\n[[fault]]\nkind = "hub_restart"\ncount = 1\n', "count"),
    ("seed = 1\n[fleet]\ndevices = 3\nspeed = 9\n", "speed"),
    ("seed = 1\n[fleet\n", "not valid TOML"),
    ('seed = 1\n[fleet]\ndevices = 3\n[rows]\nlabel = "y"\n', "rows.file: missing"),
    (
        'seed = 1\n[fleet]\ndevices = 3\n[rows]\nfile = "nope.csv"\nlabel = "y"\n',
        "nope.csv: cannot read: No such file",
    ),
    (
        'seed = 1\n[fleet]\ndevices = 3\n[rows]\nfile = "a.csv"\nlate_share = 1.5\n',
        "rows.late_share: must be within 0..1",
    ),
    ('seed = 1\n[fleet]\ndevices = 3\n[rows]\nfile = "a.csv"\nspeed = 1\n', "rows.speed"),
]


@pytest.mark.parametrize(("text", "field"), BAD_FILES)
def test_bad_scenario_files_name_the_field(tmp_path: Path, text: str, field: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(ScenarioError) as e:
        load_scenario(path)
    message = str(e.value)
    assert message.startswith(f"{path}: ") and field in message and "\n" not in message


def test_rows_name_the_file_column_and_row_and_do_not_go_with_drift(tmp_path: Path) -> None:
    (tmp_path / "d.csv").write_text("a,b,y\n1,2,x\n1,n/a,z\n")
    path = tmp_path / "s.toml"
    path.write_text('seed = 1\n[fleet]\ndevices = 3\n[rows]\nfile = "d.csv"\nlabel = "y"\n')
    with pytest.raises(ScenarioError) as e:
        load_scenario(path)  # the file is relative to the scenario's directory
    assert str(e.value) == f"{path}: rows.file: d.csv: column 'b' row 2: 'n/a' is not a number"
    (tmp_path / "d.csv").write_text("a,b,y\n1,2,x\n1,3,z\n")
    assert load_scenario(path).rows is not None
    with pytest.raises(ScenarioError, match="drift: shifts the built-in sensor stream"):
        parse_scenario(
            {
                "seed": 1,
                "fleet": {"devices": 3},
                "rows": {"file": str(tmp_path / "d.csv"), "label": "y"},
                "drift": [{"kind": "covariate", "offset": {"temp_c": 1.0}}],
            }
        )


@pytest.mark.slow
@pytest.mark.broker
def test_a_rehearsal_on_the_operators_own_rows(tmp_path: Path) -> None:
    result = _run("own-data", tmp_path)
    s = result.summary
    n = s["devices"]
    assert s["versions"] == {"wine:1": n} and s["converged"] == n, s
    labels = s["labels"]
    # Every device inferred on the file's rows and reported their labels, part of them
    # later by prediction id (30%: within 4 binomial sd of that share of those sent).
    assert labels["unmatched"] == 0 and labels["late_refused"] == 0
    assert labels["labelled"] > 20 * n and labels["accuracy"] >= 0.9
    sent = labels["labelled"] - labels["late_joined"] + labels["late"]
    assert abs(labels["late"] / sent - 0.3) < 4 * (0.3 * 0.7 / sent) ** 0.5
    assert labels["late_joined"] > 0


def test_bad_scenario_file_is_one_line_from_the_cli(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(BAD_FILES[0][0])
    assert main(["sim", "run", "--scenario", str(path)]) == 1
    err = capsys.readouterr().err.strip()
    assert err == (
        f"edgefleet: error: {path}: fault[0].kind: unknown kind 'meteor' (one of "
        "crash_mid_download, disconnect, slow_link, corrupt_chunks, faulty_class, "
        "broker_restart, hub_restart)"
    )


def test_example_scenarios_are_valid() -> None:
    files = sorted(SCENARIOS.glob("*.toml"))
    assert len(files) >= 4
    for path in files:
        load_scenario(path)


def test_class_fractions_become_counts_that_sum_to_the_fleet() -> None:
    s = parse_scenario({"seed": 1, "fleet": {"devices": 10, "classes": {"a": 0.7, "b": 0.3}}})
    assert s.fleet.classes == (("a", 7), ("b", 3))
    s = parse_scenario({"seed": 1, "fleet": {"devices": 3, "classes": {"a": 0.5, "b": 0.5}}})
    assert sum(n for _c, n in s.fleet.classes) == 3


class _FakeHub:
    """A RolloutHub that is down for the first poll, then completes on the third."""

    def __init__(self) -> None:
        self.specs: list[dict[str, Any]] = []
        self.polls = 0

    def start_rollout(self, spec: Mapping[str, Any]) -> str:
        self.specs.append(dict(spec))
        return "r-1"

    def rollout_status(self, rollout_id: str) -> dict[str, Any]:
        self.polls += 1
        if self.polls == 1:
            raise HubUnreachable("ConnectError")
        done = self.polls >= 3
        return {
            "id": rollout_id,
            "state": "completed" if done else "running",
            "finished": done,
            "wave": 1,
            "waves": 1,
            "devices": 2,
            "converged": 2 if done else 1,
            "counts": {"healthy": 2} if done else {"healthy": 1, "sent": 1},
            "failure_ratio": 0.0,
            "halted_reason": None,
        }

    def rollout_devices(self, rollout_id: str) -> list[dict[str, Any]]:
        raise HubUnreachable("ConnectError")


class _NoProcesses:
    def restart_broker(self, down_s: float) -> None:
        raise AssertionError("no process fault in this scenario")

    def kill_hub(self) -> None:
        raise AssertionError("no process fault in this scenario")

    def start_hub(self) -> None:
        raise AssertionError("no process fault in this scenario")


def test_the_timeline_follows_the_rollout_through_a_hub_outage(tmp_path: Path) -> None:
    scenario = parse_scenario({"seed": 3, "fleet": {"devices": 2}, "rollout": {"canary": 1}})
    fleet = Fleet(FleetConfig(2, "127.0.0.1", 1, tmp_path, b"{}"))  # never started
    hub, lines = _FakeHub(), []
    try:
        played = play(
            scenario,
            fleet,
            _NoProcesses(),
            hub,
            {"name": "vibration", "version": 2},
            say=lines.append,
        )
    finally:
        fleet.close()
    assert hub.specs == [{"seed": "scenario-3", "canary": 1, "model": "vibration", "version": 2}]
    assert played.rollout_id == "r-1" and played.rows == []
    w = played.watch
    assert w.hub_unreachable_s > 0 and not w.timed_out
    assert w.status is not None and w.status["state"] == "completed"
    assert w.seconds_to_converge is not None and w.halts == []
    assert any("hub unreachable (ConnectError)" in line for line in lines), lines


@pytest.mark.slow
@pytest.mark.broker
@pytest.mark.tflite
def test_a_mixed_fleet_takes_one_rollout_each_class_on_its_artefact(tmp_path: Path) -> None:
    result = _run("mixed-fleet", tmp_path)
    s = result.summary
    assert s["rollout"]["state"] == "completed", s["rollout"]
    assert s["converged"] == 12 and s["refusals"] == {}
    by_class = s["rollout"]["by_class"]
    assert by_class["generic-linux"]["runtime"] == "onnxruntime"
    assert by_class["generic-linux"]["target"].endswith("/model.onnx")
    assert by_class["pi-litert"]["runtime"] == "tflite"
    assert by_class["pi-litert"]["target"].endswith("/model.tflite")
    for entry in by_class.values():
        assert entry["counts"] == {"healthy": 6}, by_class
    for d in result.fleet.devices:  # each device serves the file of its runtime
        want = "tflite" if d.device_class == "pi-litert" else "onnxruntime"
        assert d.device.predictor.session is not None
        assert d.device.predictor.session.backend == want, d.device_id
