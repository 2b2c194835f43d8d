"""hub/transport/fastsub.py: the subscribe-only MQTT client of the hub's ingest processes.

Against the real Mosquitto of tests/conftest.py, except where a broker cannot be made
to misbehave: the malformed-packet tests script a fake broker on a local socket (as
paho's own tests do) to send bytes no real broker would.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from pg_schemas import hub_engine
from sqlalchemy import text
from tlsbroker import TlsClient, enrol
from waiting import wait_for

from hub import make_ingest
from hub.transport.broker import BrokerAddress, Mosquitto, TlsIdentity, free_port
from hub.transport.brokerconf import TlsMosquitto, write_broker_config
from hub.transport.fastsub import ConnectRefused, FastSubscriber
from hub.transport.inbound import IngestSubscriber
from hub.trust.pki import CertificateAuthority
from shared import protocol

pytestmark = pytest.mark.broker


def _address(broker: Mosquitto) -> BrokerAddress:
    return BrokerAddress("127.0.0.1", broker.port)


@pytest.fixture
def prefix() -> str:
    return f"t-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def publisher(mosquitto: Mosquitto) -> Iterator[mqtt.Client]:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"pub-{uuid.uuid4().hex}")
    client.connect("127.0.0.1", mosquitto.port)
    client.loop_start()
    yield client
    client.disconnect()
    client.loop_stop()


def _publish(client: mqtt.Client, items: list[tuple[str, bytes]]) -> None:
    infos = [client.publish(topic, payload, qos=1) for topic, payload in items]
    for info in infos:
        info.wait_for_publish(10)


class Collector:
    """A batch handler that records what it was given (and can fail on purpose)."""

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.batches: list[list[tuple[str, bytes]]] = []
        self.lock = threading.Lock()

    def __call__(self, batch: list[tuple[str, bytes]]) -> None:
        with self.lock:
            self.batches.append(list(batch))
        if self.fail:
            raise RuntimeError("simulated crash before the batch is stored")

    @property
    def payloads(self) -> list[bytes]:
        with self.lock:
            return [p for b in self.batches for _t, p in b]


def test_receives_qos1_messages_in_order_and_acknowledges_them(
    mosquitto: Mosquitto, publisher: mqtt.Client, prefix: str
) -> None:
    got = Collector()
    client_id = f"{prefix}-sub"
    sub = FastSubscriber(_address(mosquitto), client_id, [(f"{prefix}/#", 1)], got)
    sub.start()
    sent = [f"m{i}".encode() for i in range(300)]
    _publish(publisher, [(f"{prefix}/a", p) for p in sent])
    wait_for(lambda: len(got.payloads) >= 300, 10, "300 messages")
    sub.stop()
    assert got.payloads == sent
    assert {t for b in got.batches for t, _ in b} == {f"{prefix}/a"}
    assert sub.counts["messages"] == 300 and sub.counts["redelivered"] == 0

    # acknowledged: the same session gets nothing again, only what came after
    again = Collector()
    sub2 = FastSubscriber(_address(mosquitto), client_id, [(f"{prefix}/#", 1)], again)
    sub2.start()
    _publish(publisher, [(f"{prefix}/a", b"after")])
    wait_for(lambda: again.payloads, 10, "the message sent after")
    time.sleep(0.2)
    sub2.stop()
    assert again.payloads == [b"after"]


def test_a_batch_whose_handler_fails_is_redelivered_to_the_next_connection(
    mosquitto: Mosquitto, publisher: mqtt.Client, prefix: str
) -> None:
    client_id = f"{prefix}-crash"
    crashing = Collector(fail=True)  # as if the process died before its SQL commit
    sub = FastSubscriber(_address(mosquitto), client_id, [(f"{prefix}/#", 1)], crashing)
    sub.start()
    sent = [f"m{i}".encode() for i in range(50)]
    _publish(publisher, [(f"{prefix}/x", p) for p in sent])
    wait_for(lambda: sub.dropped["callback_error"] >= 1, 10, "the failing handler")
    sub.stop()
    seen_by_crashed = set(crashing.payloads)
    assert seen_by_crashed and sub.counts["messages"] == 0  # nothing was acknowledged

    got = Collector()
    sub2 = FastSubscriber(_address(mosquitto), client_id, [(f"{prefix}/#", 1)], got)
    sub2.start()
    wait_for(lambda: len(got.payloads) >= 50, 10, "the redelivered messages")
    sub2.stop()
    assert got.payloads == sent  # every one, in order, none lost
    # the broker marked those it had sent before as duplicates (DUP flag)
    assert sub2.counts["redelivered"] >= len(seen_by_crashed)


def test_a_shared_subscription_splits_the_stream(
    mosquitto: Mosquitto, publisher: mqtt.Client, prefix: str
) -> None:
    shared = [(f"$share/{prefix}/{prefix}/+", 1)]
    a, b = Collector(), Collector()
    subs = [
        FastSubscriber(_address(mosquitto), f"{prefix}-{n}", shared, h)
        for n, h in (("a", a), ("b", b))
    ]
    for s in subs:
        s.start()
    sent = [f"m{i}".encode() for i in range(200)]
    _publish(publisher, [(f"{prefix}/d{i % 7}", p) for i, p in enumerate(sent)])
    wait_for(lambda: len(a.payloads) + len(b.payloads) >= 200, 10, "the whole stream")
    time.sleep(0.2)
    for s in subs:
        s.stop()
    assert a.payloads and b.payloads  # both took a share
    assert sorted(a.payloads + b.payloads) == sorted(sent)  # each message exactly once


def test_keepalive_pings_keep_an_idle_connection_up(
    mosquitto: Mosquitto, publisher: mqtt.Client, prefix: str
) -> None:
    got = Collector()
    # Mosquitto drops a client silent for 1.5 keepalives: 1.5 s here
    sub = FastSubscriber(
        _address(mosquitto), f"{prefix}-idle", [(f"{prefix}/#", 1)], got, keepalive_s=1
    )
    sub.start()
    time.sleep(3.5)
    assert sub.counts["pings"] >= 2 and sub.counts["pongs"] >= 2
    assert sub.counts["reconnects"] == 0 and sub.connected.is_set()
    _publish(publisher, [(f"{prefix}/late", b"still here")])
    wait_for(lambda: got.payloads, 5, "a message after the idle time")
    sub.stop()
    assert got.payloads == [b"still here"]


def test_tls_with_a_client_certificate(tmp_path: Path) -> None:
    """mqtts: the hub's certificate against the generated TLS broker
    (hub/transport/brokerconf.py)."""
    ca = CertificateAuthority.open_or_init(tmp_path / "pki")
    user = pwd.getpwuid(os.geteuid()).pw_name  # started as root it would switch users
    files = write_broker_config(tmp_path / "broker", ca, port=free_port(), user=user)
    device = enrol(ca, tmp_path / "devices", "dev-tls")
    with TlsMosquitto(files) as broker:
        got = Collector()
        sub = FastSubscriber(
            BrokerAddress("127.0.0.1", broker.port, tls=True),
            files.hub_identity,
            [("ef/v1/dev/+/telemetry", 1)],
            got,
            tls=TlsIdentity(files.ca, files.hub_cert, files.hub_key),
        )
        sub.start()
        dev = TlsClient(("127.0.0.1", broker.port), files.ca, device, mqtt5=False)
        assert dev.connect()
        for seq in range(2):
            dev.publish(*_telemetry("dev-tls", seq))
        wait_for(lambda: len(got.payloads) == 2, 10, "two messages over TLS")
        sub.stop()
        dev.close()
    assert [t for b in got.batches for t, _ in b] == [protocol.topic("dev-tls", "telemetry")] * 2


def test_a_refused_connection_raises_a_clear_error(mosquitto: Mosquitto) -> None:
    # MQTT 3.1.1: an empty client id with a persistent session is refused (code 2)
    sub = FastSubscriber(_address(mosquitto), "", [("x/#", 1)], Collector())
    with pytest.raises(ConnectRefused, match="client identifier rejected") as e:
        sub.start()
    assert e.value.code == 2


# ------------------------------------------------------------- a scripted fake broker

CONNACK_OK = b"\x20\x02\x00\x00"


def _publish_packet(topic: str, payload: bytes, packet_id: int) -> bytes:
    body = len(topic).to_bytes(2, "big") + topic.encode() + packet_id.to_bytes(2, "big")
    body += payload
    assert len(body) < 128
    return bytes([0x32, len(body)]) + body


def _read_packet(conn: socket.socket) -> bytes:
    header = conn.recv(2)
    assert len(header) == 2 and header[1] < 128  # our client's packets here are small
    body = b""
    while len(body) < header[1]:
        body += conn.recv(header[1] - len(body))
    return header + body


class FakeBroker:
    """A local socket server that plays a broker: first connection gets ``bad``, the
    next a valid QoS 1 PUBLISH (packet id 7); records what the client sent."""

    def __init__(self, bad: bytes) -> None:
        self.bad = bad
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.received: list[bytes] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        with self.server:
            for attempt in range(2):
                self._connection(attempt)

    def _connection(self, attempt: int) -> None:
        conn, _ = self.server.accept()
        with conn:
            conn.settimeout(5)
            self.received.append(_read_packet(conn))  # CONNECT
            conn.sendall(CONNACK_OK)
            subscribe = _read_packet(conn)
            self.received.append(subscribe)
            conn.sendall(b"\x90\x03" + subscribe[2:4] + b"\x01")  # SUBACK, QoS 1
            if attempt == 0:
                conn.sendall(self.bad)
                with contextlib.suppress(OSError):
                    conn.recv(10)  # until the client hangs up
            else:
                conn.sendall(_publish_packet("ef/v1/dev/d1/telemetry", b"good", 7))
                self.received.append(_read_packet(conn))  # PUBACK
                conn.recv(10)


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        # a PUBLISH whose topic length runs past the packet
        (b"\x32\x06\x00\x50abcd", "malformed_packet"),
        # a remaining length of five bytes
        (b"\x30\xff\xff\xff\xff\x01", "malformed_packet"),
        # a packet a broker never sends to a client (SUBSCRIBE)
        (b"\x82\x02\x00\x01", "malformed_packet"),
        # 256 MiB announced: over the size bound
        (b"\x30\xff\xff\xff\x7f", "oversize_packet"),
    ],
)
def test_a_malformed_packet_is_counted_and_the_client_reconnects(bad: bytes, reason: str) -> None:
    fake = FakeBroker(bad)
    got = Collector()
    sub = FastSubscriber(BrokerAddress("127.0.0.1", fake.port), "fake", [("ef/#", 1)], got)
    sub.start()
    wait_for(lambda: got.payloads, 10, "the good message after the reconnect")
    wait_for(lambda: len(fake.received) == 5, 5, "the PUBACK of the good message")
    sub.stop()
    assert sub.dropped[reason] == 1 and sub.counts["reconnects"] == 1
    assert got.payloads == [b"good"]
    assert fake.received[4] == b"\x40\x02\x00\x07"  # PUBACK of packet 7, after delivery


# ------------------------------------------------------------- into the hub's SQL


def _telemetry(device: str, seq: int) -> tuple[str, bytes]:
    body = {
        "seq": seq,
        "start": 1_700_000_000.0 + seq * 10,
        "end": 1_700_000_010.0 + seq * 10,
        "count": 5,
        "errors": 0,
        "latency_us": {"p50": 100.0, "p95": 150.0, "p99": 190.0},
        "latency_hist": {"112": 3, "120": 2},
    }
    payload = protocol.encode("telemetry", body, ts=body["end"])
    return protocol.topic(device, "telemetry"), payload


def test_ingest_subscriber_stores_what_hub_mqtt_would(
    mosquitto: Mosquitto, publisher: mqtt.Client, tmp_path: Path
) -> None:
    device = f"fs-{uuid.uuid4().hex[:8]}"
    engine = hub_engine(tmp_path)
    ingest = make_ingest(engine, inline=True)
    ingest.start()
    consumer = IngestSubscriber(
        _address(mosquitto),
        ingest,
        client_id=f"{device}-ingest",
        subscriptions=[(f"ef/v1/dev/{device}/+", 1)],
    )
    consumer.start()
    good = [_telemetry(device, seq) for seq in range(20)]
    topic = protocol.topic(device, "telemetry")
    bad = [(topic, b"{not json"), (protocol.topic(device, "fetch"), good[0][1])]
    _publish(publisher, [*good[:10], *bad, *good[10:], good[3]])  # + a replayed window
    wait_for(lambda: ingest.counts["telemetry"] == 21, 10, "21 telemetry windows written")
    consumer.stop()
    ingest.stop()
    assert ingest.counts["telemetry_duplicates"] == 1
    assert consumer.dropped == {"bad_json": 1, "unexpected_type": 1}
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT seq, p95_us, latency_hist FROM telemetry"
                " WHERE device_id = :device ORDER BY seq"
            ),
            {"device": device},
        ).fetchall()
    assert [r[0] for r in rows] == list(range(20))
    assert rows[0][1] == 150.0 and rows[0][2] == '{"112":3,"120":2}'


def test_retained_messages_other_than_state_are_dropped_and_counted(
    mosquitto: Mosquitto, publisher: mqtt.Client, prefix: str
) -> None:
    for kind in ("telemetry", "state"):
        publisher.publish(
            f"{prefix}/d1/{kind}", kind.encode(), qos=1, retain=True
        ).wait_for_publish(5)
    got = Collector()
    sub = FastSubscriber(_address(mosquitto), f"{prefix}-ret", [(f"{prefix}/#", 1)], got)
    sub.start()
    _publish(publisher, [(f"{prefix}/d1/telemetry", b"live")])  # live: not retained
    wait_for(lambda: b"live" in got.payloads, 10, "the live message")
    sub.stop()
    for kind in ("telemetry", "state"):  # leave the shared broker as it was
        publisher.publish(f"{prefix}/d1/{kind}", b"", qos=1, retain=True).wait_for_publish(5)
    assert sorted(got.payloads) == [b"live", b"state"]
    assert sub.dropped["retained"] == 1
