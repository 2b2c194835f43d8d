"""Test helpers for the TLS broker: enrol devices with the hub's CA, real paho clients."""

from __future__ import annotations

import socket
import ssl
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
from cryptography import x509
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from agent.identity import DeviceIdentity
from hub.transport.brokerconf import BrokerFiles
from hub.trust.pki import CertificateAuthority, IssuedCert

WAIT_S = 5.0  # seconds to wait for a CONNACK, SUBACK or PUBACK


@dataclass(frozen=True)
class Credentials:
    """What a client presents: its certificate and key."""

    name: str
    cert: Path
    key: Path
    serial: int | None = None


def enrol(ca: CertificateAuthority, state_dir: Path, device_id: str) -> Credentials:
    """Enrol a device the way the agent does: its own key, a CSR, the CA's certificate."""
    identity = DeviceIdentity.load_or_create(state_dir / device_id, device_id)
    issued: IssuedCert = ca.issue_device(identity.csr_pem(), device_id)
    identity.store_certificate(issued.cert_pem, ca.ca_pem)
    return Credentials(device_id, identity.cert_path, identity.key_path, issued.serial)


def hub_credentials(files: BrokerFiles) -> Credentials:
    return Credentials(files.hub_identity, files.hub_cert, files.hub_key)


def server_serial(files: BrokerFiles, creds: Credentials) -> int:
    """The serial of the certificate the broker shows a new TLS connection."""
    ctx = ssl.create_default_context(cafile=str(files.ca))
    ctx.load_cert_chain(str(creds.cert), str(creds.key))
    with (
        socket.create_connection(("127.0.0.1", files.port), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


class TlsClient:
    """A paho client on its own thread that records what happens to it."""

    def __init__(
        self,
        address: tuple[str, int],
        ca: Path,
        creds: Credentials | None,
        *,
        client_id: str | None = None,
        mqtt5: bool = True,
    ) -> None:
        self.address = address
        self.messages: list[tuple[str, bytes]] = []
        self.pubacks: dict[int, ReasonCode] = {}
        self.connack: ReasonCode | None = None
        self.disconnects: list[ReasonCode] = []
        self.tls_error: Exception | None = None
        self._lock = threading.Lock()
        self._connected = threading.Event()
        self._suback = threading.Event()
        self._acked = threading.Condition(self._lock)
        self.granted: list[ReasonCode] = []
        protocol = mqtt.MQTTv5 if mqtt5 else mqtt.MQTTv311
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            # like the agent: the device id (Mosquitto replaces it with the CN anyway)
            client_id=client_id or (creds.name if creds else f"test-{uuid.uuid4().hex[:8]}"),
            protocol=protocol,
        )
        # seconds (paho types them int, floats work): a refused client stops promptly
        self.client.reconnect_delay_set(0.05, 0.1)  # type: ignore[arg-type]
        self.client.tls_set(
            ca_certs=str(ca),
            certfile=str(creds.cert) if creds else None,
            keyfile=str(creds.key) if creds else None,
        )
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        self.client.on_publish = self._on_publish

    # ------------------------------------------------------------------ callbacks

    def _on_connect(self, _c: object, _u: object, _f: object, rc: ReasonCode, _p: object) -> None:
        self.connack = rc
        self._connected.set()

    def _on_disconnect(
        self, _c: object, _u: object, _f: object, rc: ReasonCode, _p: object
    ) -> None:
        with self._lock:
            self.disconnects.append(rc)
        self._connected.set()  # a refusal before the CONNACK ends the wait too

    def _on_message(self, _c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append((msg.topic, bytes(msg.payload)))

    def _on_subscribe(
        self, _c: object, _u: object, _mid: int, rcs: list[ReasonCode], _p: object
    ) -> None:
        self.granted = rcs
        self._suback.set()

    def _on_publish(
        self, _c: object, _u: object, mid: int, rc: ReasonCode, _p: Properties | None
    ) -> None:
        with self._acked:
            self.pubacks[mid] = rc
            self._acked.notify_all()

    # ------------------------------------------------------------------ actions

    def connect(self) -> bool:
        """Connect and wait for the CONNACK; False when TLS or the broker refused us."""
        try:
            self.client.connect(*self.address, keepalive=30)
        except (ssl.SSLError, OSError) as e:
            self.tls_error = e
            return False
        self.client.loop_start()
        self._connected.wait(WAIT_S)
        if self.connack is not None and not self.connack.is_failure:
            return True
        self.close()  # no reconnect attempts in the background
        return False

    def subscribe(self, topic: str) -> list[ReasonCode]:
        self._suback.clear()
        self.client.subscribe(topic, qos=1)
        assert self._suback.wait(WAIT_S), f"no SUBACK for {topic}"
        return self.granted

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> ReasonCode:
        """Publish at QoS 1 and return the PUBACK's reason code (MQTT 5: 135 = denied)."""
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        with self._acked:
            ok = self._acked.wait_for(lambda: info.mid in self.pubacks, WAIT_S)
            assert ok, f"no PUBACK for {topic}"
            return self.pubacks[info.mid]

    def received(self) -> list[tuple[str, bytes]]:
        with self._lock:
            return list(self.messages)

    def is_connected(self) -> bool:
        return bool(self.client.is_connected())

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
        # A refused client stopped while its loop thread was reconnecting keeps the new
        # socket (paho closes it only at the next loop): close it now, not at collection
        sock = self.client.socket()
        if sock is not None:
            sock.close()
