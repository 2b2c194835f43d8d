"""The broker's server certificate rotates without a fleet outage, and what Mosquitto
2.0.11 does on SIGHUP with its listener's certificates, measured (docs/operations.md).

A real TLS Mosquitto from the generated config, real paho clients with device
certificates from the hub's CA.
"""

from __future__ import annotations

import os
import pwd
import time
from pathlib import Path

import pytest
from tlsbroker import Credentials, TlsClient, enrol, server_serial
from waiting import wait_for

from hub.transport.broker import free_port
from hub.transport.brokercert import rotate_server_certificate, server_certificate_due
from hub.transport.brokerconf import BrokerFiles, TlsMosquitto, write_broker_config
from hub.trust.pki import CertificateAuthority
from shared.atomic import write_atomic

pytestmark = [pytest.mark.broker]

USER = pwd.getpwuid(os.geteuid()).pw_name  # Mosquitto runs as us (see test_enrolment)


def wait_serial(files: BrokerFiles, creds: Credentials, serial: int) -> None:
    wait_for(lambda: server_serial(files, creds) == serial, 5, f"server certificate {serial:x}")


def test_the_server_certificate_rotates_and_connected_devices_stay(tmp_path: Path) -> None:
    ca = CertificateAuthority.open_or_init(tmp_path / "pki")
    files = write_broker_config(tmp_path / "broker", ca, port=free_port(), user=USER)
    dev = enrol(ca, tmp_path / "devices", "dev-1")
    with TlsMosquitto(files) as broker:
        address = (broker.host, broker.port)
        listener = TlsClient(address, files.ca, dev)
        assert listener.connect()
        listener.subscribe("ef/v1/dev/dev-1/cmd")
        old = server_serial(files, dev)

        # the files alone change nothing: Mosquitto reads them at start and on SIGHUP
        issued = rotate_server_certificate(ca, files, None, days=1)
        time.sleep(0.5)
        assert server_serial(files, dev) == old
        broker.reload()
        wait_serial(files, dev, issued.serial)  # new connections meet the new certificate

        # the device connected before the rotation is still connected, and still served
        assert listener.is_connected()
        hub = TlsClient(
            address, files.ca, Credentials(files.hub_identity, files.hub_cert, files.hub_key)
        )
        assert hub.connect()
        hub.publish("ef/v1/dev/dev-1/cmd", b"after the rotation")
        wait_for(
            lambda: ("ef/v1/dev/dev-1/cmd", b"after the rotation") in listener.received(),
            5,
            "delivery",
        )
        # and rotate_server_certificate signals the broker itself
        second = rotate_server_certificate(ca, files, broker.pid, days=1)
        wait_serial(files, dev, second.serial)
        assert listener.is_connected()
        fresh = TlsClient(address, files.ca, dev, client_id="dev-1")
        listener.close()
        assert fresh.connect()
        for c in (fresh, hub):
            c.close()


def test_the_server_certificate_is_due_at_two_thirds_of_its_lifetime(tmp_path: Path) -> None:
    ca = CertificateAuthority.open_or_init(tmp_path / "pki")
    files = write_broker_config(tmp_path / "broker", ca, port=free_port(), user=USER)
    assert not server_certificate_due(files)
    rotate_server_certificate(ca, files, None, days=3 / 86400)  # 3 s (+0.3 s back-dated)
    wait_for(lambda: server_certificate_due(files), 5, "two thirds of 3 s")


def test_sighup_reloads_the_ca_bundle_and_a_ca_needs_its_crl(tmp_path: Path) -> None:
    """The facts CA rotation rests on: a CA added to ``cafile`` (with its CRL in
    ``crlfile``) is trusted after SIGHUP; without its CRL its devices are refused; a CA
    dropped from ``cafile`` locks its devices out of new connections, never the open ones."""
    ca = CertificateAuthority.open_or_init(tmp_path / "pki")
    files = write_broker_config(tmp_path / "broker", ca, port=free_port(), user=USER)
    old_dev = enrol(ca, tmp_path / "devices", "dev-old")
    # held open throughout; another name than the probes (a second connection under the
    # same name takes the first one's place: use_username_as_clientid)
    held_dev = enrol(ca, tmp_path / "devices", "dev-held")
    ca2 = CertificateAuthority.open_or_init(tmp_path / "pki2", name="edgefleet hub CA 2")
    new_dev = enrol(ca2, tmp_path / "devices2", "dev-new")
    bundle = tmp_path / "bundle.crt"
    bundle.write_bytes(ca.ca_pem + ca2.ca_pem)  # what the devices trust during the overlap

    def connects(creds: Credentials) -> bool:
        client = TlsClient(("127.0.0.1", files.port), bundle, creds)
        ok = client.connect()
        if ok:
            client.close()
        return ok

    with TlsMosquitto(files) as broker:
        held = TlsClient(("127.0.0.1", files.port), bundle, held_dev)
        assert held.connect()
        assert not connects(new_dev)
        write_atomic(files.ca, ca.ca_pem + ca2.ca_pem)
        write_atomic(files.crl, ca.crl_pem())  # the new CA's CRL missing
        broker.reload()
        time.sleep(0.5)
        assert not connects(new_dev)
        write_atomic(files.crl, ca.crl_pem() + ca2.crl_pem())
        broker.reload()
        wait_for(lambda: connects(new_dev), 5, "the new CA's device accepted")
        assert connects(old_dev)
        write_atomic(files.ca, ca2.ca_pem)  # the old CA dropped
        write_atomic(files.crl, ca2.crl_pem())
        broker.reload()
        wait_for(lambda: not connects(old_dev), 5, "the old CA's device refused")
        assert connects(new_dev) and held.is_connected()
        held.close()


def test_only_the_device_itself_asks_on_its_renew_topic_and_reads_its_cert_topic(
    tmp_path: Path,
) -> None:
    """The ACL the generated config gains from shared/topics.py: the topic names who asks
    for a renewal, and only that device reads the answer (MQTT 5: 135 = not authorised)."""
    ca = CertificateAuthority.open_or_init(tmp_path / "pki")
    files = write_broker_config(tmp_path / "broker", ca, port=free_port(), user=USER)
    a = enrol(ca, tmp_path / "devices", "dev-a")
    b = enrol(ca, tmp_path / "devices", "dev-b")
    hub_creds = Credentials(files.hub_identity, files.hub_cert, files.hub_key)
    with TlsMosquitto(files) as broker:
        address = (broker.host, broker.port)
        hub, dev_a, dev_b = (TlsClient(address, files.ca, c) for c in (hub_creds, a, b))
        assert hub.connect() and dev_a.connect() and dev_b.connect()
        hub.subscribe("ef/v1/dev/+/renew")
        dev_a.subscribe("ef/v1/dev/dev-b/cert")  # granted; nothing delivered
        dev_b.subscribe("ef/v1/dev/dev-b/cert")
        assert dev_a.publish("ef/v1/dev/dev-b/renew", b"as b").value == 135
        assert dev_a.publish("ef/v1/dev/dev-a/cert", b"as the hub").value == 135
        assert not dev_a.publish("ef/v1/dev/dev-a/renew", b"mine").is_failure
        wait_for(lambda: hub.received() == [("ef/v1/dev/dev-a/renew", b"mine")], 5, "a's own")
        hub.publish("ef/v1/dev/dev-b/cert", b"for b")
        wait_for(lambda: dev_b.received() == [("ef/v1/dev/dev-b/cert", b"for b")], 5, "b's")
        # a sentinel after b's answer, from the same sender: once dev-a has it, b's answer
        # would have reached dev-a too, had the ACL let it through
        dev_a.subscribe("ef/v1/dev/dev-a/cert")
        hub.publish("ef/v1/dev/dev-a/cert", b"sentinel 2")
        wait_for(lambda: ("ef/v1/dev/dev-a/cert", b"sentinel 2") in dev_a.received(), 5, "a's")
        assert all(topic != "ef/v1/dev/dev-b/cert" for topic, _ in dev_a.received())
        for c in (hub, dev_a, dev_b):
            c.close()
