"""The processes of ``python -m bench drill``: a Mosquitto that keeps its sessions across a
restart, and the hub as child processes so that SIGKILL is real.

The broker is hub/transport/broker.py's ``Mosquitto`` with ``persistence=True``: a
restart (SIGTERM, then start on the same port and data directory) saves and reloads the
sessions, their subscriptions and the QoS 1 messages queued for them, as a production
broker does; without it every restart would drop the commands queued for devices and the
telemetry queued for the hub.

The hub is ``edgefleet hub serve --dev`` (edgefleet/stage.py ``HubProcess``), driven over
its HTTP API. The leader is the hub process that runs the rollout engine. Today a hub is
one process over one SQLite file, so :func:`kill_leader` SIGKILLs it and starts a new
process on the same data directory and port (``mode: restart``). With hub replicas over
PostgreSQL and a leader elected by advisory lock, :func:`start_hubs` starts N replicas on
one database and :func:`kill_leader` SIGKILLs the one holding the lock and waits for
another to take over (``mode: failover``): those two functions are the whole change.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgefleet.stage import HubProcess
from hub.transport.broker import Mosquitto, free_port

BROKER_DOWN_S = 1.0  # seconds a broker restart keeps the port closed


@dataclass
class Hubs:
    """The hub processes of the drill and what happened to them."""

    processes: list[HubProcess]
    data_dir: Path
    kills: list[dict[str, Any]] = field(default_factory=list)

    @property
    def url(self) -> str:
        """Where the API answers (any replica would do; today there is one)."""
        return self.processes[0].url

    def stop(self) -> None:
        for p in self.processes:
            p.stop()


def start_broker(work: Path) -> Mosquitto:
    """A private Mosquitto on a free port whose restarts keep the sessions."""
    return Mosquitto(work / "broker", persistence=True).start()


def start_hubs(work: Path, broker_url: str, replicas: int = 1) -> Hubs:
    """Start the hub processes on one data directory (one SQLite database).

    Raises:
        ValueError: ``replicas`` other than 1 (hub replicas need PostgreSQL and leader
            election, which the hub does not have yet).
        ScenarioError: a hub did not start (edgefleet/stage.py).
    """
    if replicas != 1:
        raise ValueError("one hub process today: replicas need PostgreSQL and a leader lock")
    data_dir = work / "hub"
    hub = HubProcess(data_dir, broker_url, port=free_port()).start()
    return Hubs([hub], data_dir)


def find_leader(hubs: Hubs) -> HubProcess:
    """The process that runs the rollout engine: today the only one."""
    return hubs.processes[0]


def kill_leader(hubs: Hubs) -> dict[str, Any]:
    """SIGKILL the leader mid-rollout and bring the hub back.

    Returns:
        ``mode`` (``restart``), ``down_s`` (from the kill until the API answers again)
        and the killed ``pid``.
    """
    leader = find_leader(hubs)
    pid = leader.pid
    t0 = time.monotonic()
    leader.kill()
    leader.start()  # a new process on the same data directory, database and port
    record = {"mode": "restart", "pid": pid, "down_s": round(time.monotonic() - t0, 2)}
    hubs.kills.append(record)
    return record


def accepted_windows(hubs: Hubs) -> dict[str, dict[str, set[int]]]:
    """The windows the hub has stored, by kind and device: ``{kind: {device: {seq}}}``
    (``telemetry``: raw windows; ``drift``: drift sketches, one per window).

    Read from the hub's SQLite file (WAL: a reader does not block the hub's writer).
    """
    queries = {
        "telemetry": "SELECT device_id, seq FROM telemetry WHERE seq >= 0",
        "drift": "SELECT device_id, seq FROM driftwindow",
    }
    db = sqlite3.connect(f"file:{hubs.data_dir / 'hub.db'}?mode=ro", uri=True, timeout=30)
    out: dict[str, dict[str, set[int]]] = {}
    try:
        for kind, query in queries.items():
            by_device = out.setdefault(kind, {})
            for device_id, seq in db.execute(query).fetchall():
                by_device.setdefault(device_id, set()).add(int(seq))
    finally:
        db.close()
    return out
