"""Rollouts against a real hub (API, SQLite, TUF, the rollout engine) and simulated devices
running the real agent code, over a real Mosquitto."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from waiting import wait_for

from agent.runtime import OnnxBackend, SessionCache
from edgefleet.client import HubClient, HubClientError
from edgefleet.demo import ApiServer
from edgefleet.rollout_cli import follow
from hub import Hub, HubConfig
from hub.access.keys import DEV_KEY
from hub.transport.broker import Mosquitto
from simulator.faults import PerturbedBackend
from simulator.fleet import Fleet, FleetConfig

pytestmark = [pytest.mark.broker, pytest.mark.slow]

GATEWAYS, CAMERAS = 14, 6


@dataclass
class Stage:
    hub: Hub
    client: HubClient
    fleets: list[Fleet]

    @property
    def devices(self) -> list[Any]:
        return [d for f in self.fleets for d in f.devices]

    def versions(self, ids: set[str] | None = None) -> dict[str, int | None]:
        out = {}
        for d in self.devices:
            if ids is None or d.device_id in ids:
                active = d.device.predictor.active
                out[d.device_id] = active[1] if active else None
        return out


@pytest.fixture
def stage(private_mosquitto: Mosquitto, tmp_path: Path) -> Iterator[Stage]:
    hub = Hub(
        HubConfig(
            data_dir=tmp_path / "hub",
            broker_url=private_mosquitto.address.url,
            chunk_size=4096,
            dev_mode=True,
        )
    ).start()
    api = ApiServer(hub).start()
    client = HubClient(api.url, api_key=DEV_KEY)
    root = hub.trust.pinned_root()
    fleets = []
    for prefix, n, device_class in (("gw", GATEWAYS, "gateway"), ("cam", CAMERAS, "camera")):
        cfg = FleetConfig(
            devices=n,
            host=private_mosquitto.address.host,
            port=private_mosquitto.address.port,
            work_dir=tmp_path / prefix,
            pinned_root=root,
            id_prefix=prefix,
            device_class=device_class,
            fetch_timeout_s=3.0,
        )
        fleets.append(Fleet(cfg).start())
    threads = [f.loop.start_thread() for f in fleets]
    try:
        wait_for(lambda: len(client.devices(status="online")) == GATEWAYS + CAMERAS, 30, "online")
        yield Stage(hub, client, fleets)
    finally:
        for f, t in zip(fleets, threads, strict=True):
            f.loop.stop()
            t.join(10)
            f.close()
        client.close()
        api.stop()
        hub.stop()


def train(client: HubClient, **settings: Any) -> dict[str, Any]:
    settings.setdefault("latency_budget_us", 50_000.0)  # 20 devices share this process
    job = client.train(
        n_train=1000, hidden=[8], probation_s=0, probation_min_inferences=0, **settings
    )
    result: dict[str, Any] = client.wait_job(job["id"], timeout=120)["result"]
    return result


def finish(client: HubClient, rollout_id: str, timeout: float = 60) -> dict[str, Any]:
    wait_for(lambda: client.rollout(rollout_id)["finished"], timeout, f"rollout {rollout_id}")
    return client.rollout(rollout_id)


def test_canary_then_waves_converge_every_device(stage: Stage) -> None:
    v1 = train(stage.client)
    r = stage.client.create_rollout(v1["name"], canary=2, waves=3, min_sample=2)
    assert (r["waves"], r["devices"]) == (4, GATEWAYS + CAMERAS)

    st = finish(stage.client, r["id"])

    assert (st["state"], st["converged"], st["wave"]) == ("completed", 20, 4), st
    assert set(stage.versions().values()) == {v1["version"]}
    rows = stage.client.rollout_devices(r["id"])
    canary = {d["device_id"] for d in rows if d["wave"] == 0}
    assert len(canary) == 2
    # the canary finished before the next wave was sent
    first_sent_after = min(d["sent_at"] for d in rows if d["wave"] == 1)
    canary_done = max(
        e["ts"] for e in stage.client.rollout_events(r["id"]) if e["device_id"] in canary
    )
    assert first_sent_after >= canary_done - 1.0  # (device clocks: same machine)
    events = stage.client.rollout_events(r["id"], device=sorted(canary)[0])
    assert [e["stage"] for e in events][-1] == "healthy"
    # what `edgefleet rollout watch` shows
    out = io.StringIO()
    assert follow(stage.client, r["id"], out=out) == 0
    view = out.getvalue()
    assert "COMPLETED  wave 4/4" in view and "20/20 healthy  failures 0 (0%)" in view, view
    assert f"{sorted(canary)[0]:<24} wave 1  healthy" in view, view


def on_loop(fleet: Fleet, fn: Callable[[], None]) -> None:
    """Run ``fn`` on the fleet's loop thread (where devices live) and wait for it."""
    done = threading.Event()

    def run() -> None:
        fn()
        done.set()

    fleet.loop.call_soon_threadsafe(run)
    assert done.wait(10), "the fleet's loop did not run the call"


def break_runtime(fleet: Fleet, shift: float = 0.25) -> None:
    """Give every device of ``fleet`` a runtime whose outputs are off by ``shift``, as a
    miscompiled kernel would: any model it loads from now on fails its health check."""
    cache = SessionCache(PerturbedBackend(OnnxBackend(), shift))

    def apply() -> None:
        for d in fleet.devices:
            d.sessions = cache
            d.device.sessions = cache

    on_loop(fleet, apply)


def test_a_model_failing_its_health_check_on_30_percent_halts_and_all_go_back(
    stage: Stage,
) -> None:
    v1 = train(stage.client)
    assert finish(stage.client, stage.client.create_rollout(v1["name"])["id"])["converged"] == 20
    # v2 fails its health check (golden outputs off) on the 6 cameras: 30% of the fleet
    break_runtime(stage.fleets[1])
    v2 = train(stage.client, seed=8)

    r = stage.client.create_rollout(v2["name"], max_failure_ratio=0.2, min_sample=5)
    st = finish(stage.client, r["id"])

    assert st["state"] == "halted" and "failed" in st["halted_reason"], st
    rows = {d["device_id"]: d for d in stage.client.rollout_devices(r["id"])}
    cameras = {d.device_id for d in stage.fleets[1].devices}
    for device_id, row in rows.items():
        if device_id in cameras:  # never activated v2: nothing to put back
            assert (row["state"], row["reason"]) == ("failed", "health_check_failed"), row
        else:  # activated v2 (or was about to): sent a signed rollback
            assert row["state"] == "rolled_back" and row["rollback_at"] is not None, row
    # every device ends on the version it had before the rollout, and serves it
    assert set(stage.versions().values()) == {v1["version"]}
    assert st["rolled_back"] == GATEWAYS and st["counts"] == {"failed": 6, "rolled_back": 14}


def test_rate_limit_pause_resume_abort_with_rollback(stage: Stage) -> None:
    v1 = train(stage.client)
    assert finish(stage.client, stage.client.create_rollout(v1["name"])["id"])["converged"] == 20
    v2 = train(stage.client, seed=8)
    r = stage.client.create_rollout(
        v2["name"], rate_per_min=30
    )  # a device every 2 s: most are still pending at the abort
    stage.client.rollout_action(r["id"], "pause")

    def sent() -> int:
        return sum(1 for d in stage.client.rollout_devices(r["id"]) if d["attempts"])

    before = sent()
    assert 1 <= before <= 2
    with pytest.raises(HubClientError, match="409"):
        stage.client.rollout_action(r["id"], "pause")
    time.sleep(4.5)  # two devices' worth of time: a pause earns no credit
    assert sent() == before
    stage.client.rollout_action(r["id"], "resume")
    time.sleep(1.0)
    assert sent() <= before + 1  # no burst on resume
    wait_for(lambda: stage.client.rollout(r["id"])["converged"] >= 4, 40, "four devices")

    st = stage.client.rollout_action(r["id"], "abort", rollback=True)
    assert st["state"] == "aborted"
    st = finish(stage.client, r["id"])

    # never sent a command: skipped; changed: put back to v1 by a signed rollback
    rows = stage.client.rollout_devices(r["id"])
    changed = [d for d in rows if d["rollback_at"] is not None]
    assert len(changed) >= 4 and all(d["state"] == "rolled_back" for d in changed), rows
    assert st["counts"].get("skipped", 0) >= 1, st
    assert set(stage.versions().values()) == {v1["version"]}


def test_a_device_joining_a_group_gets_its_version(stage: Stage) -> None:
    v1 = train(stage.client)
    members = [d.device_id for d in stage.devices[:5]]
    for device_id in members:
        stage.client.set_tags(device_id, ["line-1"])
    r = stage.client.create_rollout(v1["name"], group="line-1")
    assert finish(stage.client, r["id"])["converged"] == 5
    newcomer = stage.devices[10].device_id
    assert stage.versions({newcomer})[newcomer] is None

    stage.client.set_tags(newcomer, ["line-1"])

    wait_for(lambda: stage.versions({newcomer})[newcomer] == v1["version"], 20, "the newcomer")


def test_broker_restart_mid_rollout_converges(stage: Stage, private_mosquitto: Mosquitto) -> None:
    """The broker comes back with no sessions (no persistence): commands queued for
    devices are gone, and so is whatever devices reported before the hub resubscribed.
    The hub re-sends to devices back and silent, and reads missed outcomes from their
    retained state (tests/test_rollout_engine.py pins down each rule)."""
    v1 = train(stage.client)
    r = stage.client.create_rollout(v1["name"], rate_per_min=120, device_timeout_s=120)
    wait_for(lambda: stage.client.rollout(r["id"])["converged"] >= 3, 20, "a few devices")
    assert stage.client.rollout(r["id"])["counts"].get("pending", 0) >= 5  # mid-rollout

    private_mosquitto.restart(down_s=1.0)

    st = finish(stage.client, r["id"], timeout=60)
    assert (st["state"], st["converged"]) == ("completed", 20), st
    assert set(stage.versions().values()) == {v1["version"]}


def test_an_offline_device_gets_the_deployment_when_it_is_back(stage: Stage) -> None:
    """Its wave waits for it no longer than the device timeout, and it gets the command
    when it is back even though the broker kept nothing for it (a clean session)."""
    v1 = train(stage.client)
    away = stage.fleets[0].devices[0]
    on_loop(stage.fleets[0], away.drop_link)
    wait_for(
        lambda: stage.client.device(away.device_id)["status"] == "offline", 20, "its Last Will"
    )

    r = stage.client.create_rollout(v1["name"], waves=2, device_timeout_s=3)

    wait_for(lambda: stage.client.rollout(r["id"])["finished"], 60, "the other 19")
    st = stage.client.rollout(r["id"])
    assert (st["state"], st["converged"], st["offline"]) == ("completed", 19, 1), st
    assert stage.versions({away.device_id})[away.device_id] is None

    on_loop(stage.fleets[0], lambda: away.restore_link(session_lost=True))

    wait_for(lambda: stage.versions({away.device_id})[away.device_id] == v1["version"], 30, "it")
    wait_for(lambda: stage.client.rollout(r["id"])["converged"] == 20, 10, "the hub to hear")
    row = next(d for d in stage.client.rollout_devices(r["id"]) if d["device_id"] == away.device_id)
    assert row["attempts"] >= 2 and row["state"] == "healthy", row
