"""The processes of ``python -m bench drill``: a Mosquitto that keeps its sessions across a
restart, and the hub as child processes so that SIGKILL is real.

The broker is hub/transport/broker.py's ``Mosquitto`` with ``persistence=True``: a
restart (SIGTERM, then start on the same port and data directory) saves and reloads the
sessions, their subscriptions and the QoS 1 messages queued for them, as a production
broker does; without it every restart would drop the commands queued for devices and the
telemetry queued for the hub.

The hub, by default, is ``edgefleet hub serve --dev --replicas 2`` (ADR 0032): a
supervisor and two replicas over a PostgreSQL schema of the drill's own (created by
:func:`start_hubs`, dropped by :meth:`Hubs.stop`), one of them the leader by advisory
lock. :func:`kill_leader` asks both replicas' ``/health`` which one leads, SIGKILLs it
and waits until the other says it leads (``mode: failover``, ``takeover_s``); the
supervisor starts the killed one again, as a follower, as it would in production, and
:meth:`Hubs.wait_all_back` records when it answers again (its persistent session kept its
share of the device messages for it). The API is driven through :class:`FailoverClient`,
which moves to the other replica when one does not answer.

``--replicas 1`` runs one hub process over one SQLite file (edgefleet/stage.py
``HubProcess``); there :func:`kill_leader` SIGKILLs it and starts a new process on the
same data directory and port (``mode: restart``).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from edgefleet.stage import HubProcess
from hub.transport.broker import Mosquitto, free_port

BROKER_DOWN_S = 1.0  # seconds a broker restart keeps the port closed
# The windows the hub stored, by kind: (device, seq) rows. The same two queries on SQLite
# and on PostgreSQL (bench/drill_replicas.py).
WINDOW_QUERIES = {
    "telemetry": "SELECT device_id, seq FROM telemetry WHERE seq >= 0",
    "drift": "SELECT device_id, seq FROM driftwindow",
}
Windows = dict[str, dict[str, set[int]]]  # {kind: {device: {seq}}}


class Hubs(Protocol):
    """The hub processes of the drill and what happened to them."""

    mode: str  # what a leader kill is: "restart" (one hub) or "failover" (replicas)
    kills: list[dict[str, Any]]

    @property
    def urls(self) -> list[str]: ...

    def kill_leader(self) -> dict[str, Any]: ...

    def tick(self) -> None: ...

    def wait_all_back(self, timeout_s: float = 120.0) -> None: ...

    def accepted_windows(self) -> Windows: ...

    def summary(self) -> dict[str, Any]: ...

    def stop(self) -> None: ...


@dataclass
class SingleHub:
    """One hub process over one SQLite file (``--replicas 1``)."""

    process: HubProcess
    data_dir: Path
    kills: list[dict[str, Any]] = field(default_factory=list)
    mode: str = "restart"

    @property
    def urls(self) -> list[str]:
        return [self.process.url]

    def kill_leader(self) -> dict[str, Any]:
        """SIGKILL the hub mid-rollout and start a new process on the same data directory,
        database and port.

        Returns:
            ``mode`` (``restart``), ``down_s`` (from the kill until the API answers
            again) and the killed ``pid``.
        """
        pid = self.process.pid
        t0 = time.monotonic()
        self.process.kill()
        self.process.start()
        record = {"mode": self.mode, "pid": pid, "down_s": round(time.monotonic() - t0, 2)}
        self.kills.append(record)
        return record

    def tick(self) -> None:
        """Nothing to watch: the kill waited for the new process."""

    def wait_all_back(self, timeout_s: float = 120.0) -> None:
        """Nothing to wait for: the kill waited for the new process."""

    def accepted_windows(self) -> Windows:
        """Read from the hub's SQLite file (WAL: a reader does not block the hub's writer)."""
        db = sqlite3.connect(f"file:{self.data_dir / 'hub.db'}?mode=ro", uri=True, timeout=30)
        try:
            return collect({kind: db.execute(q).fetchall() for kind, q in WINDOW_QUERIES.items()})
        finally:
            db.close()

    def summary(self) -> dict[str, Any]:
        downs = [k["down_s"] for k in self.kills]
        return {
            "mode": self.mode,
            "replicas": 1,
            "database": "sqlite",
            "down_s": max(downs) if downs else None,
            "kills": self.kills,
        }

    def stop(self) -> None:
        self.process.stop()


def start_broker(work: Path) -> Mosquitto:
    """A private Mosquitto on a free port whose restarts keep the sessions."""
    return Mosquitto(work / "broker", persistence=True).start()


def start_hubs(
    work: Path, broker_url: str, replicas: int = 2, pg_url: str = "", keep: bool = False
) -> Hubs:
    """Start the hub: ``replicas`` of 2 or more over a fresh schema of ``pg_url``
    (bench/drill_replicas.py; ``keep``: the schema stays), or one process over SQLite.

    Raises:
        ScenarioError: a hub did not start (edgefleet/stage.py).
        TimeoutError: the replicas did not answer or elect a leader in time.
        psycopg.Error: PostgreSQL refused the schema.
    """
    if replicas >= 2:
        from bench.drill_replicas import start_replicas

        return start_replicas(work, broker_url, replicas, pg_url, keep)
    data_dir = work / "hub"
    return SingleHub(HubProcess(data_dir, broker_url, port=free_port()).start(), data_dir)


def kill_leader(hubs: Hubs) -> dict[str, Any]:
    """SIGKILL the leader mid-rollout; see :class:`SingleHub` and ``ReplicaSet``."""
    return hubs.kill_leader()


def accepted_windows(hubs: Hubs) -> Windows:
    """The windows the hub has stored, by kind and device: ``{kind: {device: {seq}}}``
    (``telemetry``: raw windows; ``drift``: drift sketches, one per window)."""
    return hubs.accepted_windows()


def collect(rows: dict[str, Iterable[tuple[Any, Any]]]) -> Windows:
    """``{kind: [(device, seq)]}`` as ``{kind: {device: {seq}}}``."""
    out: Windows = {}
    for kind, pairs in rows.items():
        by_device = out.setdefault(kind, {})
        for device_id, seq in pairs:
            by_device.setdefault(str(device_id), set()).add(int(seq))
    return out
