"""Spool drops, end to end: simulated devices (the agent's own core and spool, simulator/
fleet.py) lose their broker, fill their spools and drop the oldest windows; once back,
they report the count in their next windows, and a real hub's ``GET /metrics`` serves
the fleet's total as ``edgefleet_spool_dropped_total``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from metrics_rig import samples, served_hub, value
from waiting import wait_for

from hub.transport.broker import Mosquitto
from simulator.fleet import Fleet, FleetConfig

pytestmark = [pytest.mark.broker]

DEVICES = 3
WINDOW_S = 0.25  # telemetry windows of a quarter second: a full spool in seconds


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    """A broker that keeps sessions across its restart, as in production."""
    if not Mosquitto.available():
        pytest.fail("the mosquitto binary is missing")
    with Mosquitto(tmp_path / "broker", persistence=True) as b:
        yield b


def idle_fleet(
    broker: Mosquitto, tmp_path: Path, served: Any, prefix: str, *, spool_max_bytes: int
) -> FleetConfig:
    """Devices with no model (empty windows carry the spool count all the same), every
    idle window sent (they fill the spool), spools of ``spool_max_bytes``."""
    return FleetConfig(
        devices=DEVICES,
        host="127.0.0.1",
        port=broker.port,
        work_dir=tmp_path / "fleet",
        pinned_root=served.hub.trust.pinned_root(),
        id_prefix=prefix,
        rows_per_s=0,
        tick_s=WINDOW_S / 2,
        window_s=WINDOW_S,
        heartbeat_s=WINDOW_S,
        spool_max_bytes=spool_max_bytes,
    )


def test_the_windows_devices_spools_dropped_reach_the_hubs_metrics(
    broker: Mosquitto, tmp_path: Path
) -> None:
    with served_hub(broker, tmp_path / "hub") as served:
        config = idle_fleet(broker, tmp_path, served, "spool", spool_max_bytes=3000)  # ~8 windows
        fleet = Fleet(config).start()
        thread = fleet.loop.start_thread()
        try:
            wait_for(lambda: served.hub.ingest.counts["telemetry"] >= DEVICES, 30, "first windows")
            assert value(samples(served.scrape()), "edgefleet_spool_dropped_total") == 0
            broker.stop()
            wait_for(
                lambda: min(d.spool.spool.dropped for d in fleet.devices) >= 3,
                20,
                "every spool dropping windows",
            )
            broker.start()

            def served_total() -> float:
                return value(samples(served.scrape()), "edgefleet_spool_dropped_total")

            def dropped() -> int:  # (they drop until they are back)
                return sum(d.spool.spool.dropped for d in fleet.devices)

            # back, each device reports its count in its next windows
            wait_for(lambda: served_total() == dropped(), 30, "the drops in /metrics")
            assert dropped() >= 3 * DEVICES
        finally:
            fleet.loop.stop()
            thread.join(10)
            fleet.close()


def test_a_spool_smaller_than_one_window_drops_each_window_and_the_devices_run_on(
    broker: Mosquitto, tmp_path: Path
) -> None:
    with served_hub(broker, tmp_path / "hub") as served:
        # a window is ~400 bytes: none can ever be spooled
        config = idle_fleet(broker, tmp_path, served, "tiny", spool_max_bytes=100)
        fleet = Fleet(config).start()
        thread = fleet.loop.start_thread()
        try:
            wait_for(
                lambda: min(d.spool.spool.dropped for d in fleet.devices) >= 8,
                30,
                "every device dropping its windows, window after window",
            )
            assert thread.is_alive()  # the loop of every device runs on
            assert all(len(d.spool.spool) == 0 for d in fleet.devices)
            assert all(d.device.core.spool_dropped >= 8 for d in fleet.devices)  # reported
        finally:
            fleet.loop.stop()
            thread.join(10)
            fleet.close()
