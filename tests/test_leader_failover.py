"""Two hub replicas over one PostgreSQL lose their leader mid-rollout (ADR 0032).

``edgefleet hub serve --replicas 2`` runs two real hub processes on a schema of this
test's own, a real Mosquitto and simulated devices running the real agent code. A slow,
multi-wave rollout starts; once part of the fleet has its deploy command, the leader
process is SIGKILLed. What an operator relies on:

- the other replica becomes the leader within 10 s (measured and printed);
- the rollout converges: every device runs the new version;
- every device was sent exactly one deploy command for it (counted by a client that
  reads the devices' command topic, as the devices do);
- every telemetry window a device had accepted by the broker is stored once the
  supervisor has restarted the killed replica (its session kept its share).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import psutil
import psycopg
import pytest
from waiting import wait_for

from edgefleet.client import HubClient
from hub.access.keys import DEV_KEY
from hub.transport.broker import Mosquitto, free_port
from simulator.fleet import Fleet, FleetConfig

pytestmark = [pytest.mark.broker, pytest.mark.postgres, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent
PG = "host=127.0.0.1 port=5432 user=postgres dbname=test"
DEVICES = 24
TAKEOVER_LIMIT_S = 10.0


@pytest.fixture
def schema() -> Iterator[str]:
    name = f"failover_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG, autocommit=True) as c:
        c.execute(f'CREATE SCHEMA "{name}"')
    yield name
    with psycopg.connect(PG, autocommit=True) as c:
        c.execute(f'DROP SCHEMA "{name}" CASCADE')


class Replicas:
    """``edgefleet hub serve --replicas 2`` as a child process (the supervisor)."""

    def __init__(self, data: Path, db_url: str, broker: str) -> None:
        self.port = free_port()
        while not _free(self.port + 1):
            self.port = free_port()
        cmd = [sys.executable, "-m", "edgefleet.cli", "hub", "serve", "--dev", "--data"]
        cmd += [str(data), "--db", db_url, "--broker", broker, "--port", str(self.port)]
        cmd += ["--replicas", "2"]
        env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
        self.log = (data.parent / "replicas.log").open("wb")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env=env)

    def url(self, i: int) -> str:
        return f"http://127.0.0.1:{self.port + i}"

    def health(self, i: int) -> dict[str, object] | None:
        try:
            r = httpx.get(f"{self.url(i)}/health", timeout=1.0)
            return dict(r.json()) if r.status_code == 200 else None
        except httpx.HTTPError:
            return None

    def leader(self) -> int | None:
        for i in (0, 1):
            h = self.health(i)
            if h is not None and h.get("leader"):
                return i
        return None

    def pid(self, i: int) -> int:
        for child in psutil.Process(self.proc.pid).children():
            args = child.cmdline()
            if "--replica" in args and args[args.index("--replica") + 1] == str(i):
                return int(child.pid)
        raise AssertionError(f"no replica {i} under the supervisor")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            for child in psutil.Process(self.proc.pid).children():
                child.kill()
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def _free(port: int) -> bool:
    import socket

    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class CommandSpy:
    """Reads every device's command topic, as the devices do, and counts deploys."""

    def __init__(self, broker: Mosquitto) -> None:
        self.deploys: Counter[tuple[str, str]] = Counter()  # (device, deployment) -> count
        self._lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="spy")
        self.client.on_message = self._on_message
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *_: subscribed.set()
        self.client.on_connect = lambda c, *_: c.subscribe("ef/v1/dev/+/cmd", qos=1)
        self.client.connect(broker.address.host, broker.address.port)
        self.client.loop_start()
        assert subscribed.wait(10), "the spy could not subscribe"

    def _on_message(self, _c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        envelope = json.loads(msg.payload)
        if envelope.get("type") == "deploy":
            body = envelope["body"]
            with self._lock:
                self.deploys[(body["device"], body["deployment"])] += 1

    def count(self, deployment: str) -> dict[str, int]:
        with self._lock:
            return {d: n for (d, dep), n in self.deploys.items() if dep == deployment}

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def stored_windows(schema: str) -> dict[str, int]:
    with psycopg.connect(PG, autocommit=True) as c:
        rows = c.execute(f'SELECT device_id, count(*) FROM "{schema}".telemetry GROUP BY 1')
        return {str(d): int(n) for d, n in rows.fetchall()}


@pytest.fixture
def replicas(private_mosquitto: Mosquitto, schema: str, tmp_path: Path) -> Iterator[Replicas]:
    db_url = f"postgresql+psycopg://postgres@127.0.0.1:5432/test?options=-csearch_path%3D{schema}"
    r = Replicas(tmp_path / "hub", db_url, private_mosquitto.address.url)
    try:
        wait_for(lambda: all(r.health(i) for i in (0, 1)), 90, "both replicas up")
        wait_for(lambda: r.leader() is not None, 20, "a leader")
        yield r
    finally:
        r.stop()


@pytest.fixture
def spy(private_mosquitto: Mosquitto) -> Iterator[CommandSpy]:
    s = CommandSpy(private_mosquitto)
    yield s
    s.stop()


@pytest.fixture
def trained(replicas: Replicas) -> dict[str, Any]:
    """A model trained and signed through replica 0."""
    with HubClient(replicas.url(0), api_key=DEV_KEY) as client:
        job = client.train(
            n_train=1000,
            hidden=[8],
            latency_budget_us=50_000.0,
            probation_s=0,
            probation_min_inferences=0,
        )
        return dict(client.wait_job(job["id"], timeout=180)["result"])


@pytest.fixture
def fleet(
    replicas: Replicas, trained: dict[str, Any], private_mosquitto: Mosquitto, tmp_path: Path
) -> Iterator[RunningFleet]:
    """The simulated devices, online."""
    root = (tmp_path / "hub" / "trust" / "metadata" / "root.json").read_bytes()
    f = Fleet(
        FleetConfig(
            devices=DEVICES,
            host="127.0.0.1",
            port=private_mosquitto.port,
            work_dir=tmp_path / "fleet",
            pinned_root=root,
            id_prefix="fo",
            device_class="gateway",
            fetch_timeout_s=3.0,
            rows_per_s=0,
            tick_s=0.25,
            window_s=0.5,
        )
    ).start()
    running = RunningFleet(f, f.loop.start_thread())
    try:
        with HubClient(replicas.url(0), api_key=DEV_KEY) as client:
            wait_for(lambda: len(client.devices(status="online")) == DEVICES, 60, "online")
        yield running
    finally:
        running.close()


class RunningFleet:
    """The fleet and its loop's thread; :meth:`close` once (the test, else teardown)."""

    def __init__(self, fleet: Fleet, thread: threading.Thread) -> None:
        self.fleet = fleet
        self._thread = thread
        self._closed = False

    def close(self) -> None:
        """Stop the loop, then let every device close its open window and send it."""
        if self._closed:
            return
        self._closed = True
        self.fleet.loop.stop()
        self._thread.join(10)
        self.fleet.close()


def test_the_leader_is_killed_mid_rollout_and_another_replica_finishes_it(
    replicas: Replicas,
    spy: CommandSpy,
    trained: dict[str, Any],
    fleet: RunningFleet,
    schema: str,
) -> None:
    with HubClient(replicas.url(0), api_key=DEV_KEY) as client:
        # slow enough to kill mid-way: 3 waves, 60 devices a minute at most
        rid = client.create_rollout(
            trained["name"], waves=3, rate_per_min=60, device_timeout_s=20, min_sample=DEVICES
        )["id"]
    wait_for(lambda: sum(spy.count(rid).values()) >= 6, 60, "part of the fleet sent")
    leader = replicas.leader()
    assert leader is not None
    other = 1 - leader
    os.kill(replicas.pid(leader), signal.SIGKILL)
    killed = time.monotonic()
    sent_before = sum(spy.count(rid).values())
    wait_for(lambda: replicas.leader() == other, TAKEOVER_LIMIT_S + 5, "the take-over")
    takeover_s = time.monotonic() - killed
    print(
        f"\nleader replica {leader} SIGKILLed with {sent_before}/{DEVICES} devices sent; "
        f"replica {other} took over in {takeover_s:.2f} s"
    )
    assert takeover_s <= TAKEOVER_LIMIT_S
    assert sent_before < DEVICES  # the kill fell mid-rollout
    metrics = httpx.get(
        f"{replicas.url(other)}/metrics", headers={"authorization": f"Bearer {DEV_KEY}"}
    ).text
    assert "edgefleet_hub_leader 1.0" in metrics  # what Prometheus sees of the take-over

    with HubClient(replicas.url(other), api_key=DEV_KEY) as client:
        wait_for(lambda: client.rollout(rid)["finished"], 180, f"rollout {rid}")
        status = client.rollout(rid)
    assert (status["state"], status["converged"]) == ("completed", DEVICES), status
    versions = fleet.fleet.summary().versions
    assert versions == {f"{trained['name']}:{trained['version']}": DEVICES}, versions
    assert spy.count(rid) == {d.device_id: 1 for d in fleet.fleet.devices}, spy.count(rid)

    # the killed replica is back (the supervisor), and collects what its session kept
    wait_for(lambda: replicas.health(leader), 60, "the killed replica restarted")
    fleet.close()
    produced = {d.device_id: int(d.device.core.state["seq"]) for d in fleet.fleet.devices}
    try:
        wait_for(lambda: stored_windows(schema) == produced, 60, "every window stored")
    finally:
        stored = stored_windows(schema)
        print(f"telemetry windows: {sum(produced.values())} sent, {sum(stored.values())} stored")
    lost = {d: n - stored.get(d, 0) for d, n in produced.items() if stored.get(d, 0) != n}
    assert not lost, lost
