"""A small rig for fleet tests that assert what an operator sees: a real hub (API, SQLite,
TUF, the rollout engine), simulated devices running the real agent code, a real Mosquitto,
and the CLI run in-process or as a real subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from waiting import wait_for

from edgefleet.client import HubClient
from edgefleet.demo import ApiServer
from hub import Hub, HubConfig
from hub.access.keys import DEV_KEY
from hub.transport.broker import Mosquitto
from simulator.fleet import Fleet, FleetConfig

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Rig:
    hub: Hub
    api: ApiServer
    client: HubClient
    fleet: Fleet
    processes: list[subprocess.Popen[str]] = field(default_factory=list)

    @property
    def devices(self) -> list[Any]:
        return list(self.fleet.devices)

    def version(self, device: Any) -> int | None:
        active = device.device.predictor.active
        return active[1] if active else None

    def on_loop(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the fleet's loop thread (where devices live) and wait for it."""
        done = threading.Event()

        def run() -> None:
            fn()
            done.set()

        self.fleet.loop.call_soon_threadsafe(run)
        assert done.wait(10), "the fleet's loop did not run the call"

    def take_offline(self, device: Any) -> None:
        """The device loses its network; the hub sees its Last Will."""
        self.on_loop(device.drop_link)
        wait_for(
            lambda: self.client.device(device.device_id)["status"] == "offline", 20, "Last Will"
        )

    def bring_back(self, device: Any) -> None:
        """The network is back; the broker kept nothing for it (a clean session)."""
        self.on_loop(lambda: device.restore_link(session_lost=True))

    def train(self, **settings: Any) -> dict[str, Any]:
        settings.setdefault("latency_budget_us", 50_000.0)
        settings.setdefault("probation_s", 0)
        settings.setdefault("probation_min_inferences", 0)
        job = self.client.train(n_train=1000, hidden=[8], **settings)
        result: dict[str, Any] = self.client.wait_job(job["id"], timeout=120)["result"]
        return result

    def cli_args(self, *args: str) -> list[str]:
        return [*args, "--hub", self.api.url, "--api-key", DEV_KEY]

    def cli_process(self, *args: str) -> subprocess.Popen[str]:
        """``edgefleet ARGS`` as a real process against this hub."""
        env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
        code = "import sys; from edgefleet.cli import main; sys.exit(main())"
        proc = subprocess.Popen(
            [sys.executable, "-c", code, *self.cli_args(*args)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.processes.append(proc)  # reaped by the rig, however the test ends
        return proc

    def reap(self) -> None:
        """Kill what still runs and close its pipes: a process left to the garbage
        collector warns (ResourceWarning, an error here) in whichever test runs next."""
        for proc in self.processes:
            if proc.poll() is None:
                proc.kill()
            proc.communicate()


@contextmanager
def fleet_rig(
    broker: Mosquitto, work: Path, devices: int, prefix: str, rows_per_s: float = 10.0
) -> Iterator[Rig]:
    """A hub and ``devices`` simulated devices, all online, each inferring on
    ``rows_per_s`` rows a second (0: no live traffic)."""
    hub = Hub(
        HubConfig(
            data_dir=work / "hub",
            broker_url=broker.address.url,
            chunk_size=4096,
            dev_mode=True,
        )
    ).start()
    api = ApiServer(hub).start()
    client = HubClient(api.url, api_key=DEV_KEY)
    cfg = FleetConfig(
        devices=devices,
        host=broker.address.host,
        port=broker.address.port,
        work_dir=work / prefix,
        pinned_root=hub.trust.pinned_root(),
        id_prefix=prefix,
        device_class="gateway",
        fetch_timeout_s=3.0,
        rows_per_s=rows_per_s,
    )
    fleet = Fleet(cfg).start()
    thread = fleet.loop.start_thread()
    rig = Rig(hub, api, client, fleet)
    try:
        wait_for(lambda: len(client.devices(status="online")) == devices, 30, "online")
        yield rig
    finally:
        rig.reap()
        fleet.loop.stop()
        thread.join(10)
        fleet.close()
        client.close()
        api.stop()
        hub.stop()
