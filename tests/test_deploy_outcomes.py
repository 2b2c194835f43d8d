"""A plain ``deploy`` to devices that are away: it converges when they come back, ends
(``timed_out``) for one that never does, and ``deploy --wait`` says so and exits; Ctrl-C
while following a deployment or a rollout says that it goes on and how to reach it.

Against a real hub, a real Mosquitto and simulated devices running the real agent code."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fleet_rig import Rig, fleet_rig
from waiting import wait_for

from edgefleet.cli import main
from hub.transport.broker import Mosquitto

pytestmark = [pytest.mark.broker, pytest.mark.slow]


@pytest.fixture
def rig(private_mosquitto: Mosquitto, tmp_path: Path) -> Iterator[Rig]:
    with fleet_rig(private_mosquitto, tmp_path, devices=2, prefix="dp") as r:
        yield r


def test_a_device_offline_at_deploy_gets_it_when_it_is_back(rig: Rig) -> None:
    model = rig.train()
    away = rig.devices[0]
    rig.take_offline(away)

    dep = rig.client.deploy(model["name"], model["version"])
    wait_for(lambda: rig.client.deployment(dep["id"])["converged"] == 1, 30, "the one there")
    st = rig.client.deployment(dep["id"])
    assert (st["finished"], st["offline"], st["stages"]) == (False, 1, {"healthy": 1, "sent": 1})

    rig.bring_back(away)  # the broker kept nothing: the hub must send again

    wait_for(lambda: rig.client.deployment(dep["id"])["finished"], 30, "the one back")
    st = rig.client.deployment(dep["id"])
    assert (st["converged"], st["stages"], st["state"]) == (2, {"healthy": 2}, "completed"), st
    assert rig.version(away) == model["version"]
    listed = [d for d in rig.client.deployments() if d["id"] == dep["id"]]
    assert listed and listed[0]["devices"] == 2


def test_a_device_that_never_comes_back_times_out_and_deploy_wait_says_so(
    rig: Rig, capsys: pytest.CaptureFixture[str]
) -> None:
    model = rig.train()
    away, there = rig.devices
    rig.take_offline(away)

    t0 = time.monotonic()
    code = main(rig.cli_args("deploy", "--model", model["name"], "--device-timeout", "3", "--wait"))
    took = time.monotonic() - t0

    out = capsys.readouterr().out.splitlines()
    assert code == 1
    assert took < 30, f"deploy --wait took {took:.0f} s"
    assert "(1 offline: sent again when back, timed out after 3 s away)" in "\n".join(out)
    dep_id = out[0].split()[1].rstrip(":")
    # (the model's manifest asks for no probation: the device there saw no traffic in it)
    done = "1/2 healthy (1 with no inferences during probation), 1 timed out"
    assert f"deployment {dep_id} finished: {done}" in out, out
    rows = {line.split()[0]: line for line in out if line.startswith("  dp-")}
    assert rows[away.device_id].split()[1] == "timed_out", out
    assert "never came back" in rows[away.device_id], out
    assert "healthy (no inferences during probation)" in rows[there.device_id], out
    st = rig.client.deployment(dep_id)
    assert st["per_device"] and {d["stage"] for d in st["per_device"]} == {"healthy", "timed_out"}
    assert rig.version(there) == model["version"]


def _interrupt(rig: Rig, *args: str, started: str) -> tuple[int, str, str]:
    """Run ``edgefleet ARGS`` as a process, Ctrl-C it once ``started`` is printed."""
    proc = rig.cli_process(*args)
    assert proc.stdout is not None
    first = proc.stdout.readline()
    assert started in first, first
    time.sleep(1.5)  # a few polls of the hub
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=20)
    return proc.returncode, first + out, err


def test_ctrl_c_during_rollout_create_watch_says_the_rollout_goes_on(rig: Rig) -> None:
    model = rig.train()
    rig.take_offline(rig.devices[0])  # the rollout cannot finish while we watch it

    code, out, err = _interrupt(
        rig, "rollout", "create", "--model", model["name"], "--watch", started="rollout "
    )

    rollout_id = out.split()[1].rstrip(":")
    assert code == 130
    assert f"the rollout {rollout_id} continues on the hub" in err
    hub = f"--hub {rig.api.url}"  # the commands work as printed
    assert f"watch it:  edgefleet rollout watch {rollout_id} {hub}\n" in err, err
    assert f"abort it:  edgefleet rollout abort {rollout_id} {hub}  (add --rollback" in err, err
    assert rig.client.rollout(rollout_id)["state"] == "running"


def test_ctrl_c_during_deploy_wait_says_the_deployment_goes_on(rig: Rig) -> None:
    model = rig.train()
    rig.take_offline(rig.devices[0])

    code, out, err = _interrupt(
        rig, "deploy", "--model", model["name"], "--wait", started="deployment "
    )

    dep_id = out.split()[1].rstrip(":")
    assert code == 130
    assert f"the deployment {dep_id} continues on the hub" in err
    assert f"edgefleet rollout watch {dep_id} --hub {rig.api.url}" in err, err
    assert f"edgefleet rollout abort {dep_id} --hub {rig.api.url}" in err, err
    assert rig.client.deployment(dep_id, devices=False)["finished"] is False
