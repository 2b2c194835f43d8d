"""The hub process's own telemetry intake (hub/transport/intake.py, ADR 0033): a default
hub (no ingest workers) takes telemetry through its subscribe-only client, with the
link's validation, budget, revocation filter and counters, and loses nothing sent while
it was away."""

from __future__ import annotations

import logging
import os
import pwd
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from sqlmodel import func, select
from tlsbroker import TlsClient, enrol
from waiting import wait_for

from hub import Hub, HubConfig
from hub.store.tables import Telemetry, session
from hub.transport.broker import BrokerAddress, EmbeddedBroker, Mosquitto, free_port
from hub.transport.brokerconf import TlsMosquitto, write_broker_config
from hub.transport.budget import Budget
from hub.transport.intake import TELEMETRY_TOPIC, intake_spec
from hub.trust.pki import CertificateAuthority
from shared import protocol

pytestmark = pytest.mark.broker


def window(seq: int, end: float) -> bytes:
    body = {
        "seq": seq,
        "start": end - 10.0,
        "end": end,
        "model": "m",
        "version": 1,
        "count": 5,
        "errors": 0,
        "latency_us": {"p50": 1.0, "p95": 1.0, "p99": 1.0},
    }
    return protocol.encode("telemetry", body, ts=end)


def rows(hub: Hub, device_id: str) -> int:
    q = select(func.count()).select_from(Telemetry).where(Telemetry.device_id == device_id)
    with session(hub.engine) as s:
        return int(s.exec(q).one())


@pytest.fixture
def device(private_mosquitto: Mosquitto) -> Iterator[mqtt.Client]:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="intake-device")
    client.max_inflight_messages_set(200)
    client.connect(private_mosquitto.address.host, private_mosquitto.address.port)
    client.loop_start()
    yield client
    client.loop_stop()
    client.disconnect()


def send(client: mqtt.Client, device_id: str, seqs: range, payload: bytes | None = None) -> None:
    now = time.time()
    topic = protocol.topic(device_id, "telemetry")
    for seq in seqs:
        client.publish(topic, payload or window(seq, now - 100 + seq), qos=1).wait_for_publish(5)


def start_hub(broker: Mosquitto, data: Path, **config: object) -> Hub:
    cfg = HubConfig(data_dir=data, broker_url=broker.address.url, client_id="h-in", **config)  # type: ignore[arg-type]
    return Hub(cfg).start()


def test_a_default_hub_stores_telemetry_through_its_intake_and_counts_as_before(
    private_mosquitto: Mosquitto, device: mqtt.Client, tmp_path: Path
) -> None:
    hub = start_hub(private_mosquitto, tmp_path / "hub")
    try:
        assert hub.intake is not None and hub.intake.connected
        assert hub.intake.subscriber.client_id == "h-in-telemetry"
        assert all(not t.endswith("/telemetry") for t, _ in hub.mqtt.subscriptions)
        send(device, "in-1", range(30))
        send(device, "in-1", range(1), payload=b"{not json")
        send(device, "in-1", range(3))  # replayed windows: stored once
        wait_for(lambda: hub.ingest.counts["telemetry"] == 33, 10, "33 windows handled")
        assert rows(hub, "in-1") == 30
        assert hub.ingest.counts["telemetry_duplicates"] == 3
        # the counters GET /metrics and /health read: the link's, telemetry included
        assert hub.mqtt.counts["telemetry"] == 33
        assert hub.mqtt.dropped["bad_json"] == 1

        hub.revoke_device("in-1", "key_compromise", by=None)
        send(device, "in-1", range(30, 35))
        wait_for(lambda: hub.mqtt.dropped["revoked_device"] >= 5, 20, "the revoked windows")
        # (the hub's own clearing of the device's retained state is dropped as revoked too)
        assert hub.mqtt.counts["telemetry"] == 33 and rows(hub, "in-1") == 30
    finally:
        hub.stop()


def test_windows_sent_while_the_hub_is_away_are_stored_when_it_returns(
    private_mosquitto: Mosquitto, device: mqtt.Client, tmp_path: Path
) -> None:
    hub = start_hub(private_mosquitto, tmp_path / "hub")
    send(device, "away-1", range(5))
    wait_for(lambda: rows(hub, "away-1") == 5, 10, "the first windows")
    hub.stop()
    send(device, "away-1", range(5, 25))  # queued in the intake's persistent session
    hub = start_hub(private_mosquitto, tmp_path / "hub")
    try:
        wait_for(lambda: rows(hub, "away-1") == 25, 10, "the windows sent while away")
    finally:
        hub.stop()


def test_the_budget_is_one_per_device_across_the_link_and_the_intake(
    private_mosquitto: Mosquitto, device: mqtt.Client, tmp_path: Path
) -> None:
    budget = Budget(per_s=1.0, burst=10.0, bytes_per_s=1e9, bytes_burst=1e9)
    hub = start_hub(private_mosquitto, tmp_path / "hub", ingest_budget=budget)
    try:
        state = protocol.encode("state", {"status": "online"}, ts=time.time())
        for _ in range(6):  # states through the link: 6 of the device's 10
            device.publish(protocol.topic("bud-1", "state"), state, qos=1).wait_for_publish(5)
        wait_for(lambda: hub.mqtt.counts["state"] == 6, 10, "the states")
        send(device, "bud-1", range(10))  # windows through the intake: 4 left, and a trickle
        wait_for(lambda: hub.mqtt.dropped["over_ingest_budget"] >= 5, 10, "the drops")
        assert rows(hub, "bud-1") <= 5
    finally:
        hub.stop()


def test_the_intake_on_a_tls_broker_takes_an_ingest_identity_or_leaves_telemetry_to_the_link(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    tls = BrokerAddress.parse("mqtts://localhost:8883")
    for name in ("ca.crt", "ingest-0.crt", "ingest-0.key"):
        (tmp_path / name).write_text("x")  # (the files' existence is what is chosen on)
    spec = intake_spec(tls, "edgefleet-hub", tmp_path)
    assert spec is not None and spec.client_id == "edgefleet-ingest-0"
    assert spec.tls is not None and spec.tls.cert == tmp_path / "ingest-0.crt"
    assert spec.topic_filter == TELEMETRY_TOPIC
    with caplog.at_level(logging.WARNING):
        assert intake_spec(tls, "edgefleet-hub", tmp_path / "none") is None
    assert "no ingest identity 0" in caplog.text
    plain = BrokerAddress.parse("mqtt://127.0.0.1:1884")
    assert intake_spec(plain, "h", None, embedded=True) is None  # amqtt: the link keeps it
    shared = intake_spec(plain, "hub-2", None, topic_filter="$share/hubs/ef/v1/dev/+/telemetry")
    assert shared is not None and shared.client_id == "hub-2-telemetry"
    assert shared.topic_filter.startswith("$share/hubs/")


@pytest.mark.slow
def test_a_hub_on_a_tls_broker_stores_telemetry_as_its_ingest_identity(tmp_path: Path) -> None:
    data = tmp_path / "hub"
    ca = CertificateAuthority.open_or_init(data / "pki")
    user = pwd.getpwuid(os.geteuid()).pw_name  # Mosquitto runs as us, not `mosquitto`
    files = write_broker_config(tmp_path / "broker", ca, port=free_port(), user=user)
    with TlsMosquitto(files):
        url = f"mqtts://localhost:{files.port}"
        hub = Hub(HubConfig(data_dir=data, broker_url=url, broker_tls_dir=files.directory))
        hub.start()
        device = TlsClient(("localhost", files.port), files.ca, enrol(ca, tmp_path / "d", "tls-1"))
        try:
            assert hub.intake is not None and hub.mqtt.connected.is_set()
            assert hub.intake.subscriber.client_id == "edgefleet-ingest-0"
            assert device.connect()
            for seq in range(3):
                payload = window(seq, time.time() - 100 + seq)
                assert device.publish(protocol.topic("tls-1", "telemetry"), payload).value == 0
            wait_for(lambda: rows(hub, "tls-1") == 3, 10, "the windows, through the intake")
            assert hub.mqtt.connected.is_set()  # the link kept its own session
        finally:
            device.close()
            hub.stop()


@pytest.mark.slow
# amqtt's broker leaves its event loop and two sockets unclosed when stopped (EmbeddedBroker)
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_hub_on_the_embedded_broker_keeps_telemetry_on_its_link(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Mosquitto, "available", staticmethod(lambda: False))  # as without it
    hub = Hub(HubConfig(data_dir=tmp_path / "hub", client_id="h-emb")).start()
    try:
        assert isinstance(hub.local_broker, EmbeddedBroker) and hub.intake is None
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="emb-device")
        client.connect(hub.broker.host, hub.broker.port)
        client.loop_start()
        try:
            send(client, "emb-1", range(3))
            wait_for(lambda: rows(hub, "emb-1") == 3, 20, "the windows, through the link")
        finally:
            client.loop_stop()
            client.disconnect()
        assert hub.mqtt.counts["telemetry"] == 3
    finally:
        hub.stop()
