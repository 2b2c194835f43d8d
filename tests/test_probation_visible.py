"""Probation is visible: a rollout sets it (``--probation-s``), ``rollout create --watch``
and ``GET /rollouts/{id}`` show each device's time left and the inferences seen against
the minimum, and an outcome says when "healthy" rested on no inference at all.

Against a real hub, a real Mosquitto and simulated devices running the real agent code
(the model's manifest asks for no probation: what the devices do is the rollout's)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fleet_rig import Rig, fleet_rig

from edgefleet.cli import main
from hub.transport.broker import Mosquitto

pytestmark = [pytest.mark.broker, pytest.mark.slow]

PROBATION_S = 6.0


@pytest.fixture
def busy(private_mosquitto: Mosquitto, tmp_path: Path) -> Iterator[Rig]:
    """Two devices serving live traffic (10 rows a second each)."""
    with fleet_rig(private_mosquitto, tmp_path, devices=2, prefix="busy") as r:
        yield r


@pytest.fixture
def idle(private_mosquitto: Mosquitto, tmp_path: Path) -> Iterator[Rig]:
    """Two devices nobody calls."""
    with fleet_rig(private_mosquitto, tmp_path, devices=2, prefix="idle", rows_per_s=0) as r:
        yield r


def test_watch_shows_probation_and_the_devices_serve_out_the_rollouts_length(
    busy: Rig, capsys: pytest.CaptureFixture[str]
) -> None:
    model = busy.train()
    seen: list[dict[str, Any]] = []  # the API's answers while devices were on probation
    stop = threading.Event()

    def poll() -> None:
        while not stop.wait(0.3):
            for r in busy.client.rollouts():
                st = busy.client.rollout(r["id"])
                if st["probation"]:
                    seen.append(st)

    create = ("rollout", "create", "--model", model["name"], "--watch")
    create += ("--probation-s", f"{PROBATION_S:g}")
    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    try:
        code = main(busy.cli_args(*create, "--probation-min-inferences", "5"))
    finally:
        stop.set()
        poller.join(5)
    out = capsys.readouterr().out

    assert code == 0, out
    assert "probation: 6 s, at least 5 inferences (this rollout's)" in out, out
    assert "on probation 2:" in out or "on probation 1:" in out, out
    assert " s left  " in out and "/5 inferences seen" in out, out
    assert "no inferences during probation" not in out, out
    assert seen, "the API never showed a device on probation"
    first = seen[0]["probation"][0]
    assert first["min_inferences"] == 5 and 0 < first["left_s"] <= PROBATION_S, first
    rollout_id = seen[0]["id"]
    for row in busy.client.rollout_devices(rollout_id):
        assert row["state"] == "healthy" and row["probation"]["inferences"] >= 5, row
        assert row["attempts"] == 1, row  # a probation longer than 5 s is not silence
        assert row["probation"]["probation_s"] == PROBATION_S, row
        events: dict[str, float] = {}  # the first of each stage
        for e in busy.client.rollout_events(rollout_id, device=row["device_id"]):
            events.setdefault(e["stage"], e["ts"])
        assert events["healthy"] - events["activated"] >= PROBATION_S - 0.1, events


def test_healthy_without_traffic_says_so(idle: Rig, capsys: pytest.CaptureFixture[str]) -> None:
    model = idle.train()

    create = ("rollout", "create", "--model", model["name"], "--watch", "--probation-s", "1")
    code = main(idle.cli_args(*create))
    out = capsys.readouterr().out

    assert code == 0, out
    assert "2 healthy with no inferences during probation (no evidence either way)" in out, out
    lines = [line for line in out.splitlines() if "wave 1  healthy" in line]
    assert len(lines) == 2 and all(
        line.endswith("healthy (no inferences during probation)") for line in lines
    ), out
    st = idle.client.rollouts()[0]
    assert idle.client.rollout(st["id"])["healthy_without_traffic"] == 2
