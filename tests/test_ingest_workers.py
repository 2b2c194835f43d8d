"""Ingest workers (hub/workers.py): processes that take the telemetry through a
``$share`` subscription, against a real Mosquitto, with a real hub and simulated devices.

The plain-TCP case runs the whole hub (``HubConfig(ingest_workers=2)``, as `edgefleet hub
serve --ingest-workers 2`); the TLS case runs a worker with the identity and ACL that
`edgefleet broker config` writes.
"""

from __future__ import annotations

import os
import pwd
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, text
from tlsbroker import Credentials, TlsClient, enrol, hub_credentials
from waiting import wait_for

from hub import Hub, HubConfig
from hub.store.engine import connect
from hub.store.tables import sqlite_url
from hub.transport.broker import Mosquitto, free_port
from hub.transport.brokerconf import TlsMosquitto, write_broker_config
from hub.trust.pki import CertificateAuthority
from hub.workers import IngestWorker, WorkerConfig
from shared import protocol
from simulator.fleet import Fleet, FleetConfig

pytestmark = [pytest.mark.broker, pytest.mark.slow]

DEVICES = 8
WINDOW_S = 0.25


def rows(engine: Engine) -> dict[str, int]:
    """Telemetry windows stored, by device (in whatever database the hub runs on)."""
    with engine.connect() as conn:
        found = conn.execute(text("SELECT device_id, count(*) FROM telemetry GROUP BY device_id"))
        return {device: int(n) for device, n in found.all()}


@pytest.fixture
def hub(private_mosquitto: Mosquitto, tmp_path: Path) -> Iterator[Hub]:
    h = Hub(
        HubConfig(
            data_dir=tmp_path / "hub",
            broker_url=private_mosquitto.address.url,
            dev_mode=True,
            ingest_workers=2,
        )
    ).start()
    yield h
    h.stop()


def test_workers_take_the_telemetry_and_the_hub_keeps_the_rest(
    hub: Hub, private_mosquitto: Mosquitto, tmp_path: Path
) -> None:
    assert hub.workers is not None and hub.workers.alive == 2
    fleet = Fleet(
        FleetConfig(
            devices=DEVICES,
            host="127.0.0.1",
            port=private_mosquitto.port,
            work_dir=tmp_path / "fleet",
            pinned_root=hub.trust.pinned_root(),
            id_prefix="w",
            rows_per_s=0,
            tick_s=WINDOW_S / 2,
            window_s=WINDOW_S,
            heartbeat_s=0,  # every empty window sent: a steady stream to count
        )
    ).start()
    thread = fleet.loop.start_thread()
    db = hub.engine
    try:
        wait_for(lambda: len(rows(db)) == DEVICES, 20, "every device's windows")
        # revoked: the workers read the revocation list and drop its windows from then on
        victim = fleet.devices[0].device_id
        hub.revoke_device(victim, "key_compromise", by=None)
        time.sleep(6.0)  # past the workers' revocation poll (5 s)
        before = rows(db)[victim]
        time.sleep(2.0)  # ~8 more windows it sends
        assert rows(db)[victim] == before
    finally:
        fleet.loop.stop()
        thread.join(10)
    fleet.close()  # (it closes the open windows too)
    closed = {d.device_id: int(d.device.core.state["seq"]) for d in fleet.devices}
    others = {d: n for d, n in closed.items() if d != victim}
    wait_for(lambda: all(rows(db).get(d, 0) >= n for d, n in others.items()), 20, "all windows")
    stored = rows(db)
    assert all(stored[d] == n for d, n in others.items()), (stored, others)
    # the hub process stored states (and would store events) but no telemetry itself
    assert hub.mqtt.counts["telemetry"] == 0 and hub.mqtt.counts["state"] >= DEVICES
    assert sum(stored.values()) > DEVICES * 8


def test_a_worker_uses_its_own_tls_identity_and_reads_telemetry_only(tmp_path: Path) -> None:
    ca = CertificateAuthority.open_or_init(tmp_path / "pki")
    user = pwd.getpwuid(os.geteuid()).pw_name
    files = write_broker_config(
        tmp_path / "broker", ca, port=free_port(), user=user, ingest_workers=1
    )
    db_path = tmp_path / "hub.db"
    db = connect(sqlite_url(db_path))
    address = ("localhost", files.port)
    with TlsMosquitto(files):
        url = f"mqtts://localhost:{files.port}"
        worker = IngestWorker(
            WorkerConfig(url, sqlite_url(db_path), index=0, tls_dir=files.directory)
        )
        worker.start()
        device = TlsClient(address, files.ca, enrol(ca, tmp_path / "dev", "dev-1"))
        try:
            assert device.connect()
            assert device.publish(protocol.topic("dev-1", "telemetry"), window()).value == 0
            # through the $share subscription and the ACL's read of telemetry
            wait_for(lambda: rows(db) == {"dev-1": 1}, 10, "the window, through the worker")
        finally:
            worker.stop()
        # its identity (used alone now: the broker takes its CN as the client id) may
        # read telemetry and nothing else: no commands, no device reports, no writes
        creds = Credentials(
            "edgefleet-ingest-0", files.directory / "ingest-0.crt", files.directory / "ingest-0.key"
        )
        spy = TlsClient(address, files.ca, creds)
        hub = TlsClient(address, files.ca, hub_credentials(files))
        try:
            assert spy.connect() and hub.connect()
            spy.subscribe(protocol.topic("dev-1", "cmd"))
            spy.subscribe(protocol.topic("dev-1", "state"))
            spy.subscribe(protocol.topic("dev-1", "telemetry"))
            assert hub.publish(protocol.topic("dev-1", "cmd"), b"a command").value == 0
            assert device.publish(protocol.topic("dev-1", "state"), b"a state").value == 0
            assert device.publish(protocol.topic("dev-1", "telemetry"), window()).value == 0
            wait_for(lambda: len(spy.received()) >= 1, 5, "the telemetry it may read")
            time.sleep(0.5)
            assert [t for t, _ in spy.received()] == [protocol.topic("dev-1", "telemetry")]
            denied = spy.publish(protocol.topic("dev-1", "cmd"), b"posing as the hub")
            assert denied.value == 135  # not authorised
        finally:
            for c in (spy, hub, device):
                c.close()


def window() -> bytes:
    body = {
        "seq": 0,
        "start": time.time() - 10,
        "end": time.time(),
        "count": 0,
        "errors": 0,
        "latency_us": {"p50": 0.0, "p95": 0.0, "p99": 0.0},
    }
    return protocol.encode("telemetry", body, ts=time.time())
