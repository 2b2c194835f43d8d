"""Idle windows coalesce into heartbeats (agent/core/windows.py): an idle device sends a
zero window every ``heartbeat_s`` instead of one every ``window_s``, the hub still shows
it online, and once inferences come back the windows tile time, their seqs have no gap
and the hub's totals are exact."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path
from typing import Any

import pytest
from metrics_rig import publish, samples, served_hub, value
from sqlmodel import Session, select
from test_core_models import Device, stats
from waiting import wait_for

from agent.core import AgentCore, CoreConfig
from agent.events import Publish, Tick
from hub.store.tables import Device as DeviceRow
from hub.transport.broker import Mosquitto
from simulator.fleet import Fleet, FleetConfig


def telemetry(acts: list[Any]) -> list[dict[str, Any]]:
    return [
        json.loads(a.payload)["body"]
        for a in acts
        if isinstance(a, Publish) and a.topic.endswith("/telemetry")
    ]


def test_an_idle_device_sends_a_heartbeat_not_every_window() -> None:
    core = AgentCore(CoreConfig("idle-1", "gw", window_s=10, heartbeat_s=60))
    sent: list[dict[str, Any]] = []
    for t in range(0, 601, 5):  # 600 s idle: 60 windows
        sent += telemetry(core.handle(Tick(float(t))))
    # the first window since start, then one zero window per 60 s
    assert 1 <= len(sent) <= 1 + 600 // 60
    assert [b["seq"] for b in sent] == list(range(len(sent)))
    assert all(b["count"] == 0 for b in sent)
    assert [b["start"] for b in sent[1:]] == [b["end"] for b in sent[:-1]]  # no hole
    assert sent[-1]["end"] - sent[0]["start"] >= 540


def test_heartbeat_s_at_most_window_s_sends_every_window() -> None:
    core = AgentCore(CoreConfig("idle-2", "gw", window_s=10, heartbeat_s=0))
    sent = [b for t in range(0, 101, 5) for b in telemetry(core.handle(Tick(float(t))))]
    assert len(sent) == 10


def run_device(seed: int) -> tuple[list[dict[str, Any]], int, int]:
    """A device with model "m" v1 through two hours of bursts and long quiet spells:
    (its telemetry bodies, inferences it ran, windows it closed)."""
    rng = random.Random(seed)
    d = Device()  # window_s 10 s, heartbeat_s 300 s: the defaults
    bodies = telemetry(d.install("m", 1, b"m" * 100, 0.0))
    ran, windows, t = 100, 0, 10.0  # install's probation traffic: 100 inferences
    while t < 7200:
        busy = rng.random() < 0.3
        for _ in range(rng.randint(1, 90)):  # 5 s ticks: 5 s to 7.5 min of one mood
            t += 5.0
            n = rng.randint(1, 20) if busy else 0
            ran += n
            acts = d.core.handle(Tick(t, model_stats={"m": stats(n)}))
            windows += 1 if t % 10 == 0 else 0
            bodies += telemetry(acts)
    t += 10.0
    bodies += telemetry(d.core.handle(Tick(t, model_stats={"m": stats(1)})))  # closes the last
    return bodies, ran + 1, windows


def test_windows_after_quiet_spells_tile_time_and_count_every_inference() -> None:
    bodies, ran, _ = run_device(seed=7)
    mine = [b for b in bodies if b["model"] == "m"]
    assert [b["seq"] for b in mine] == list(range(mine[0]["seq"], mine[0]["seq"] + len(mine)))
    assert [b["start"] for b in mine[1:]] == [b["end"] for b in mine[:-1]]  # no gap, no overlap
    assert sum(b["count"] for b in mine) == ran
    # idle spells went as zero windows of up to 300 s, not one per 10 s
    assert max(b["end"] - b["start"] for b in mine if b["count"] == 0) >= 300
    assert len(mine) < 7200 / 10 * 0.6


@pytest.mark.broker
def test_the_hub_counts_exactly_and_keeps_idle_devices_online(
    private_mosquitto: Mosquitto, tmp_path: Path
) -> None:
    bodies, ran, _ = run_device(seed=11)
    shift = time.time() - bodies[-1]["end"]  # windows of the last two hours
    for b in bodies:
        b["start"], b["end"] = b["start"] + shift, b["end"] + shift
    broker = private_mosquitto
    with served_hub(broker, tmp_path / "hub") as served:
        sent = publish(broker, [("dev-1", "telemetry", b) for b in bodies])
        # a replay of the last windows: the hub's (device, seq) dedup keeps them once
        publish(broker, [("dev-1", "telemetry", b) for b in bodies[-3:]])

        def inferences() -> float:
            got = samples(served.scrape())
            return value(got, "edgefleet_model_inferences_total", model="m", version="1")

        wait_for(lambda: served.hub.ingest.counts["telemetry"] >= sent + 3, 30, "every window")
        wait_for(lambda: inferences() == ran, 30, "the model's total")
        assert inferences() == ran

        config = FleetConfig(
            devices=3,
            host="127.0.0.1",
            port=broker.port,
            work_dir=tmp_path / "fleet",
            pinned_root=served.hub.trust.pinned_root(),
            id_prefix="idle",
            rows_per_s=0,  # no model, no inference: every window is empty
            tick_s=0.1,
            window_s=0.2,
            heartbeat_s=1.0,
        )
        fleet = Fleet(config).start()
        thread = fleet.loop.start_thread()
        try:
            t0 = time.monotonic()
            before = served.hub.ingest.counts["telemetry"]
            time.sleep(4.0)  # 20 windows each
            got = served.hub.ingest.counts["telemetry"] - before
            elapsed = time.monotonic() - t0
        finally:
            fleet.loop.stop()
            thread.join(10)
        # the first window of each, then a heartbeat a second at most: not 20 windows
        assert 3 <= got <= 3 * (1 + elapsed / 1.0 + 1)
        with Session(served.hub.engine) as s:
            status = {d.id: d.status for d in s.exec(select(DeviceRow)) if d.id.startswith("idle")}
        assert status == {d.device_id: "online" for d in fleet.devices}
        fleet.close()


def test_a_new_version_closes_the_quiet_span_of_the_one_before() -> None:
    d = Device()
    bodies = telemetry(d.install("m", 1, b"m" * 100, 0.0))
    for t in range(15, 200, 5):  # v1 idle: nothing sent after its first windows
        bodies += telemetry(d.core.handle(Tick(float(t))))
    quiet_from = bodies[-1]["end"]
    bodies += telemetry(d.install("m", 2, b"n" * 100, 200.0))
    mine = [b for b in bodies if b["model"] == "m"]
    assert [b["start"] for b in mine[1:]] == [b["end"] for b in mine[:-1]]  # no gap
    gap = next(b for b in mine if b["start"] == quiet_from)
    assert (gap["version"], gap["count"]) == (1, 0)  # the quiet span, under v1
    assert mine[-1]["version"] == 2 and sum(b["count"] for b in mine) == 200
