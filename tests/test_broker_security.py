"""The generated TLS broker config (hub/transport/brokerconf.py) against a real Mosquitto.

Each test shows what a client sees: a device reaches only its own topics, cannot pose as
the hub or another device, and the broker refuses clients without a certificate from the
hub's CA, plain TCP, and revoked certificates, without dropping the rest of the fleet.
"""

from __future__ import annotations

import datetime as dt
import os
import pwd
import select
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.x509.oid import NameOID
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode
from tlsbroker import Credentials, TlsClient, enrol, hub_credentials
from waiting import wait_for

from edgefleet.cli import main
from hub import Hub, HubConfig
from hub.settings import check_broker_transport
from hub.transport.broker import BrokerAddress, free_port
from hub.transport.brokerconf import BrokerFiles, TlsMosquitto, write_broker_config
from hub.trust.pki import CertificateAuthority
from shared.atomic import write_atomic
from shared.protocol import MAX_BLOB_BYTES

pytestmark = pytest.mark.broker

NOT_AUTHORIZED = 135  # MQTT 5 reason code of a PUBACK for a publish the ACL denies
# Mosquitto runs as us: started as root it would switch to `mosquitto`, which cannot
# read the test's private temporary directories
USER = pwd.getpwuid(os.geteuid()).pw_name


@dataclass(frozen=True)
class Fleet:
    ca: CertificateAuthority
    files: BrokerFiles
    broker: TlsMosquitto
    hub: Credentials
    a: Credentials
    b: Credentials


@contextmanager
def start_fleet(root: Path, **config: Any) -> Iterator[Fleet]:
    """A CA, a generated config, two enrolled devices and Mosquitto running it."""
    ca = CertificateAuthority.open_or_init(root / "pki")
    files = write_broker_config(root / "broker", ca, port=free_port(), user=USER, **config)
    a = enrol(ca, root / "devices", "dev-a")
    b = enrol(ca, root / "devices", "dev-b")
    with TlsMosquitto(files) as broker:
        yield Fleet(ca, files, broker, hub_credentials(files), a, b)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """One broker for the tests that do not change its state (no revocation)."""
    with start_fleet(tmp_path_factory.mktemp("fleet")) as f:
        yield f


@pytest.fixture
def own_fleet(tmp_path: Path) -> Iterator[Fleet]:
    """A broker of this test's own (revocation and CRL changes)."""
    with start_fleet(tmp_path) as f:
        yield f


Clients = Callable[..., TlsClient]


@pytest.fixture
def clients() -> Iterator[Clients]:
    """``clients(fleet, creds, **options)``: a TLS client of this test, closed after it."""
    made: list[TlsClient] = []

    def make(fleet: Fleet, creds: Credentials | None, **kwargs: Any) -> TlsClient:
        address = (fleet.broker.host, kwargs.pop("port", fleet.broker.port))
        made.append(TlsClient(address, fleet.files.ca, creds, **kwargs))
        return made[-1]

    yield make
    for c in made:
        c.close()


def connected(clients: Clients, fleet: Fleet, creds: Credentials, **kwargs: Any) -> TlsClient:
    client = clients(fleet, creds, **kwargs)
    assert client.connect(), f"{creds.name} could not connect: {client.connack}"
    return client


def accepted(code: ReasonCode) -> bool:
    """A PUBACK that says yes (0 success, or 16 no matching subscribers on MQTT 5)."""
    return not code.is_failure


def topics_seen(client: TlsClient, marker: bytes) -> list[str]:
    return [t for t, p in client.received() if marker in p]


# --------------------------------------------------------------------------- allowed paths


def test_device_reports_reach_the_hub_and_commands_reach_the_device(
    fleet: Fleet, clients: Clients
) -> None:
    hub = connected(clients, fleet, fleet.hub)
    hub.subscribe("ef/v1/dev/+/state")
    a = connected(clients, fleet, fleet.a)
    a.subscribe("ef/v1/dev/dev-a/cmd")
    a.subscribe("ef/v1/dev/dev-a/blob")
    marker = uuid.uuid4().bytes

    assert accepted(a.publish("ef/v1/dev/dev-a/state", marker))
    assert accepted(hub.publish("ef/v1/dev/dev-a/cmd", marker))
    assert accepted(hub.publish("ef/v1/dev/dev-a/blob", marker))

    wait_for(lambda: len(topics_seen(a, marker)) == 2, 5, "dev-a's cmd and blob")
    wait_for(lambda: topics_seen(hub, marker), 5, "dev-a's state at the hub")
    assert topics_seen(hub, marker) == ["ef/v1/dev/dev-a/state"]
    assert topics_seen(a, marker) == ["ef/v1/dev/dev-a/cmd", "ef/v1/dev/dev-a/blob"]


def test_device_may_publish_every_report_kind(fleet: Fleet, clients: Clients) -> None:
    hub = connected(clients, fleet, fleet.hub)
    hub.subscribe("ef/v1/dev/dev-a/#")
    a = connected(clients, fleet, fleet.a)
    marker = uuid.uuid4().bytes
    kinds = ["state", "events", "telemetry", "drift", "fetch"]

    codes = [accepted(a.publish(f"ef/v1/dev/dev-a/{kind}", marker)) for kind in kinds]

    assert all(codes)
    wait_for(lambda: len(topics_seen(hub, marker)) == len(kinds), 5, "every report")


def test_ed25519_device_certificate_connects(
    fleet: Fleet, clients: Clients, tmp_path: Path
) -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dev-ed")])
    csr = x509.CertificateSigningRequestBuilder().subject_name(name).sign(key, None)
    issued = fleet.ca.issue_device(csr.public_bytes(serialization.Encoding.PEM), "dev-ed")
    (tmp_path / "ed.crt").write_bytes(issued.cert_pem)
    (tmp_path / "ed.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    creds = Credentials("dev-ed", tmp_path / "ed.crt", tmp_path / "ed.key")

    ed = connected(clients, fleet, creds)

    assert accepted(ed.publish("ef/v1/dev/dev-ed/state", b"up"))
    assert ed.publish("ef/v1/dev/dev-a/state", b"up").value == NOT_AUTHORIZED


# --------------------------------------------------------------------------- the ACL


def test_device_cannot_read_another_devices_topics(fleet: Fleet, clients: Clients) -> None:
    hub = connected(clients, fleet, fleet.hub)
    hub.subscribe("ef/v1/dev/dev-b/state")
    a = connected(clients, fleet, fleet.a)
    spy = a.subscribe("ef/v1/dev/dev-b/#")
    a.subscribe("ef/v1/dev/dev-a/cmd")
    b = connected(clients, fleet, fleet.b)
    b.subscribe("ef/v1/dev/dev-b/#")
    marker = uuid.uuid4().bytes

    assert accepted(b.publish("ef/v1/dev/dev-b/state", marker))
    wait_for(lambda: topics_seen(hub, marker), 5, "dev-b's state at the hub")
    hub.publish("ef/v1/dev/dev-b/cmd", marker)
    hub.publish("ef/v1/dev/dev-b/blob", marker)
    # a sentinel after them, from the same publisher: once dev-a has it, dev-b's
    # messages would have reached dev-a too, had the ACL let them through
    hub.publish("ef/v1/dev/dev-a/cmd", marker)

    wait_for(lambda: topics_seen(a, marker), 5, "the sentinel at dev-a")
    wait_for(lambda: len(topics_seen(b, marker)) == 2, 5, "dev-b's own cmd and blob")
    assert topics_seen(a, marker) == ["ef/v1/dev/dev-a/cmd"]
    assert spy[0].value == 1  # Mosquitto grants the subscription; the read check is per message


@pytest.mark.parametrize(
    "topic",
    [
        "ef/v1/dev/dev-b/state",
        "ef/v1/dev/dev-b/telemetry",
        "ef/v1/dev/dev-b/fetch",
        "ef/v1/dev/dev-b/cmd",
        "ef/v1/dev/dev-b/blob",
        "ef/v1/dev/dev-a/cmd",  # its own command topic: posing as the hub
        "ef/v1/dev/dev-a/blob",
        "ef/v1/other",
    ],
)
def test_forbidden_publish_is_refused_with_mqtt5_and_not_delivered(
    fleet: Fleet, clients: Clients, topic: str
) -> None:
    hub = connected(clients, fleet, fleet.hub)
    hub.subscribe("ef/v1/#")
    a = connected(clients, fleet, fleet.a)
    a.subscribe("ef/v1/dev/dev-a/#")
    marker = uuid.uuid4().bytes

    code = a.publish(topic, marker)
    a.publish("ef/v1/dev/dev-a/state", marker)  # allowed: the sentinel

    assert code.value == NOT_AUTHORIZED
    wait_for(lambda: topics_seen(hub, marker), 5, "the sentinel at the hub")
    assert topics_seen(hub, marker) == ["ef/v1/dev/dev-a/state"]
    assert topics_seen(a, marker) == []  # a device never reads its own reports either
    assert a.is_connected()


def test_forbidden_publish_is_dropped_silently_with_mqtt311(fleet: Fleet, clients: Clients) -> None:
    hub = connected(clients, fleet, fleet.hub)
    hub.subscribe("ef/v1/dev/#")
    b = connected(clients, fleet, fleet.b)
    b.subscribe("ef/v1/dev/dev-b/cmd")
    a = connected(clients, fleet, fleet.a, mqtt5=False)
    marker = uuid.uuid4().bytes

    forged = a.publish("ef/v1/dev/dev-b/cmd", marker)  # a forged command for dev-b
    a.publish("ef/v1/dev/dev-a/state", marker)

    wait_for(lambda: topics_seen(hub, marker), 5, "the sentinel at the hub")
    assert accepted(forged)  # 3.1.1 has no way to say no: the PUBACK looks fine
    assert topics_seen(hub, marker) == ["ef/v1/dev/dev-a/state"]
    assert topics_seen(b, marker) == []


def test_client_id_of_another_device_does_not_take_its_session(
    fleet: Fleet, clients: Clients
) -> None:
    b = connected(clients, fleet, fleet.b)
    b.subscribe("ef/v1/dev/dev-b/cmd")
    hub = connected(clients, fleet, fleet.hub)

    connected(clients, fleet, fleet.a, client_id="dev-b")  # dev-a claims dev-b's client id
    time.sleep(0.5)  # a take-over would disconnect dev-b at once
    marker = uuid.uuid4().bytes
    hub.publish("ef/v1/dev/dev-b/cmd", marker)

    wait_for(lambda: topics_seen(b, marker), 5, "dev-b's command")
    assert b.is_connected() and b.disconnects == []


# --------------------------------------------------------------------------- transport


def test_client_without_certificate_is_refused(fleet: Fleet, clients: Clients) -> None:
    anonymous = clients(fleet, None)

    assert not anonymous.connect()
    assert anonymous.connack is None  # refused in the TLS handshake, before MQTT


def test_plain_tcp_refused_on_tls_listener(fleet: Fleet) -> None:
    """A client that forgets TLS gets no MQTT session: nothing travels in clear."""
    got: list[object] = []
    plain = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="dev-a")
    plain.on_connect = lambda *args: got.append(args[3])
    plain.connect(fleet.broker.host, fleet.broker.port)
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline and plain.loop(0.1) == mqtt.MQTT_ERR_SUCCESS:
        pass
    plain.disconnect()

    # the same with a raw MQTT 3.1.1 CONNECT: the answer is no CONNACK (0x20)
    connect = b"\x10\x11\x00\x04MQTT\x04\x02\x00\x3c\x00\x05dev-a"
    with socket.create_connection((fleet.broker.host, fleet.broker.port), timeout=2) as s:
        s.sendall(connect)
        try:
            answer = s.recv(64)
        except (ConnectionResetError, TimeoutError):
            answer = b""

    assert got == []
    assert not answer.startswith(b"\x20")


def test_certificate_from_another_ca_is_refused(
    fleet: Fleet, clients: Clients, tmp_path: Path
) -> None:
    rogue = CertificateAuthority.open_or_init(tmp_path / "rogue")  # same name, other key
    forged = enrol(rogue, tmp_path / "devices", "dev-a")  # and the same device id
    client = clients(fleet, forged)  # it trusts the real CA, so it accepts the broker

    assert not client.connect()
    assert client.connack is None
    assert connected(clients, fleet, fleet.a).is_connected()  # the real dev-a still can


class WireTap:
    """A TCP relay between a client and the broker that keeps every byte it carries."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.carried = bytearray()
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port = self._server.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._relay, daemon=True)
        self._thread.start()

    def _relay(self) -> None:
        self._server.settimeout(5)
        conn, _ = self._server.accept()
        with conn, socket.create_connection(self.target) as upstream:
            peers = {conn: upstream, upstream: conn}
            while not self._stop.is_set():
                ready, _, _ = select.select(list(peers), [], [], 0.1)
                for sock in ready:
                    try:
                        data = sock.recv(65536)
                        self.carried += data
                        peers[sock].sendall(data)
                    except (ConnectionResetError, BrokenPipeError):
                        # the client closed with the broker's close_notify unread: its
                        # kernel answers with a reset (RST), an end like a FIN
                        return
                    if not data:
                        return

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._server.close()


def test_payload_and_topic_are_encrypted_on_the_wire(fleet: Fleet, clients: Clients) -> None:
    hub = connected(clients, fleet, fleet.hub)
    hub.subscribe("ef/v1/dev/dev-a/telemetry")
    tap = WireTap(fleet.broker.host, fleet.broker.port)
    secret = b"secret-reading-" + uuid.uuid4().hex.encode()
    try:
        a = connected(clients, fleet, fleet.a, port=tap.port)
        try:
            assert accepted(a.publish("ef/v1/dev/dev-a/telemetry", secret))
            wait_for(lambda: topics_seen(hub, secret), 5, "the reading at the hub")
        finally:
            a.close()
    finally:
        tap.close()

    assert len(tap.carried) > 500  # the handshake and the message went through it
    assert secret not in tap.carried
    assert b"ef/v1/dev/dev-a/telemetry" not in tap.carried


# --------------------------------------------------------------------------- revocation


def refused(clients: Clients, fleet: Fleet, creds: Credentials) -> bool:
    return not clients(fleet, creds).connect()


def test_revoked_device_cannot_reconnect_and_the_fleet_stays(
    own_fleet: Fleet, clients: Clients, tmp_path: Path
) -> None:
    fleet = own_fleet
    # probing with dev-a before Mosquitto has handled the SIGHUP would take over dev-a's
    # session; a revoked probe device tells when the new CRL is in force
    probe = enrol(fleet.ca, tmp_path / "probe", "dev-probe")
    hub = connected(clients, fleet, fleet.hub)
    hub.subscribe("ef/v1/dev/+/state")
    a = connected(clients, fleet, fleet.a)
    b = connected(clients, fleet, fleet.b)
    b.subscribe("ef/v1/dev/dev-b/cmd")
    assert fleet.a.serial is not None and probe.serial is not None

    fleet.ca.revoke(fleet.a.serial, "key_compromise")
    fleet.ca.revoke(probe.serial)
    fleet.broker.reload_crl(fleet.ca)

    wait_for(lambda: refused(clients, fleet, probe), 5, "the new CRL in force")
    assert refused(clients, fleet, fleet.a)
    marker = uuid.uuid4().bytes
    hub.publish("ef/v1/dev/dev-b/cmd", marker)
    b.publish("ef/v1/dev/dev-b/state", marker)
    wait_for(lambda: topics_seen(b, marker), 5, "dev-b's command after the reload")
    wait_for(lambda: topics_seen(hub, marker), 5, "dev-b's state after the reload")
    assert b.is_connected() and b.disconnects == []
    assert hub.is_connected() and hub.disconnects == []
    # Mosquitto does not cut dev-a's open connection: the hub must enforce revocation too
    assert a.is_connected() and a.disconnects == []
    b.close()
    assert connected(clients, fleet, fleet.b).is_connected()  # dev-b may still reconnect


def test_expired_crl_refuses_every_client(own_fleet: Fleet, clients: Clients) -> None:
    fleet = own_fleet
    assert connected(clients, fleet, fleet.b).is_connected()

    stale = fleet.ca.crl_pem(validity=dt.timedelta(minutes=-1))  # next_update in the past
    write_atomic(fleet.files.crl, stale, mode=0o644)
    fleet.broker.reload()

    wait_for(lambda: refused(clients, fleet, fleet.b), 5, "dev-b refused with a stale CRL")
    assert refused(clients, fleet, fleet.hub)
    fleet.broker.reload_crl(fleet.ca)  # a fresh CRL lets everyone back in
    wait_for(lambda: not refused(clients, fleet, fleet.b), 5, "dev-b back with a fresh CRL")


# --------------------------------------------------------------------------- config options


def test_generated_config_defaults(fleet: Fleet) -> None:
    """One TLS listener (no plain one unless asked), queues sized for the hub (DESIGN §8)."""
    lines = fleet.files.config.read_text().splitlines()
    settings = dict(line.split(" ", 1) for line in lines if line and not line.startswith("#"))

    assert [line for line in lines if line.startswith("listener ")] == [
        f"listener {fleet.files.port} 127.0.0.1"
    ]
    assert fleet.files.passwords is None and "password_file" not in settings
    assert settings["allow_anonymous"] == "false"
    assert settings["per_listener_settings"] == "false"
    assert int(settings["max_packet_size"]) >= MAX_BLOB_BYTES + 64 * 2**10
    assert int(settings["max_queued_messages"]) >= 100_000
    assert int(settings["max_inflight_messages"]) > 20
    assert settings["persistent_client_expiration"] == "7d"
    assert settings["persistence"] == "false"


def test_dev_plain_listener_admits_only_the_hub(tmp_path: Path) -> None:
    plain_port = free_port()
    with start_fleet(tmp_path, plain_port=plain_port) as fleet:
        assert fleet.files.hub_password is not None
        password = fleet.files.hub_password.read_text()
        outcomes = {}
        for name, user, secret in [
            ("hub", "edgefleet-hub", password),
            ("wrong password", "edgefleet-hub", "guess"),
            ("device name", "dev-a", password),
            ("anonymous", None, None),
        ]:
            got: list[int] = []
            c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=name.replace(" ", "-"))
            if user is not None:
                c.username_pw_set(user, secret)
            c.on_connect = lambda *args, got=got: got.append(args[3].value)
            c.connect("127.0.0.1", plain_port)
            deadline = time.monotonic() + 2
            while not got and time.monotonic() < deadline:
                c.loop(0.1)
            c.disconnect()
            outcomes[name] = got
        assert outcomes == {
            "hub": [0],
            "wrong password": [135],
            "device name": [135],
            "anonymous": [135],
        }


def test_persistence_keeps_retained_state_across_a_restart(
    tmp_path: Path, clients: Clients
) -> None:
    marker = uuid.uuid4().bytes
    with start_fleet(tmp_path, persistence_dir=tmp_path / "db") as fleet:
        a = connected(clients, fleet, fleet.a)
        assert accepted(a.publish("ef/v1/dev/dev-a/state", marker, retain=True))
        a.close()
    assert (tmp_path / "db" / "mosquitto.db").exists()
    with start_fleet(tmp_path, persistence_dir=tmp_path / "db") as fleet:
        hub = connected(clients, fleet, fleet.hub)
        hub.subscribe("ef/v1/dev/dev-a/state")
        wait_for(lambda: topics_seen(hub, marker), 5, "the retained state after a restart")


def test_cli_writes_a_config_mosquitto_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    port = free_port()
    data = tmp_path / "data"
    argv = ["broker", "config", "--data-dir", str(data), "--port", str(port), "--user", USER]

    assert main(argv) == 0

    out_dir = data / "broker-tls"
    command = f"mosquitto -c {out_dir / 'mosquitto.conf'}"
    assert command in capsys.readouterr().out
    assert (data / "pki" / "ca.key").exists()
    proc = subprocess.Popen(command.split(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    hub = TlsClient(
        ("127.0.0.1", port),
        out_dir / "ca.crt",
        Credentials("edgefleet-hub", out_dir / "hub.crt", out_dir / "hub.key"),
    )
    try:
        wait_for(lambda: hub.connect() or proc.poll() is not None, 5, "the CLI's broker")
        assert hub.is_connected(), proc.stderr.read() if proc.stderr else ""
        assert accepted(hub.publish("ef/v1/dev/dev-a/cmd", b"hello"))
    finally:
        hub.close()
        proc.terminate()
        proc.wait(5)
        if proc.stderr:
            proc.stderr.close()


@pytest.mark.parametrize(
    ("url", "dev", "allow", "refused"),
    [
        ("mqtt://192.0.2.10:1883", False, False, True),  # plain TCP on a network
        ("mqtt://broker.example:1883", False, False, True),
        ("mqtt://127.0.0.1:1883", False, False, False),  # one machine's try-out
        ("mqtt://localhost:1883", False, False, False),
        ("mqtt://[::1]:1883", False, False, False),
        ("mqtt://192.0.2.10:1883", True, False, False),  # development mode
        ("mqtt://192.0.2.10:1883", False, True, False),  # --allow-plain-broker
        ("mqtts://192.0.2.10:8883", False, False, False),
    ],
)
def test_a_plain_broker_on_a_network_needs_an_explicit_yes(
    tmp_path: Path, url: str, dev: bool, allow: bool, refused: bool
) -> None:
    cfg = HubConfig(tmp_path, broker_url=url, dev_mode=dev, allow_plain_broker=allow)
    if refused:
        with pytest.raises(ValueError, match=r"plain TCP on a network.*mqtts://"):
            check_broker_transport(BrokerAddress.parse(url), cfg)
        with pytest.raises(ValueError, match="plain TCP"):  # before it touches anything
            Hub(cfg).start()
        assert not (tmp_path / "hub.db").exists()
    else:
        check_broker_transport(BrokerAddress.parse(url), cfg)
