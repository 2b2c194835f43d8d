"""What a device may do with the fan-out topics, against a real Mosquitto running the
generated TLS config and ACL (hub/transport/brokerconf.py, docs/security.md).

A device reads a fan-out topic; it cannot publish on one (MQTT 5 shows the denial as
reason code 135, and a sentinel shows nothing got through), and reading the fan-out
gives it nothing of another device's own topics.
"""

from __future__ import annotations

import os
import pwd
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from tlsbroker import Credentials, TlsClient, enrol, hub_credentials
from waiting import wait_for

from hub.transport.broker import BrokerAddress, free_port
from hub.transport.brokerconf import TlsMosquitto, write_broker_config
from hub.transport.fanout import fanout_key
from hub.transport.hub_links import fanout_link
from hub.transport.service_names import fanout_tls
from hub.trust.pki import CertificateAuthority
from shared.protocol import fanout_topic

pytestmark = pytest.mark.broker

NOT_AUTHORIZED = 135  # MQTT 5 reason code of a PUBACK for a publish the ACL denies
USER = pwd.getpwuid(os.geteuid()).pw_name  # Mosquitto runs as us (see test_broker_security)
FAN = fanout_topic(fanout_key("rollout-1", "model-a/3/model.onnx"))


def fanout_credentials(files: Any) -> Credentials:
    """The hub's fan-out link's identity, as ``broker config`` wrote it."""
    tls = fanout_tls(files.directory)
    assert tls is not None, "broker config wrote no fan-out identity"
    return Credentials(f"{files.hub_identity}-fanout", tls.cert, tls.key)


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("fanacl")
    ca = CertificateAuthority.open_or_init(root / "pki")
    files = write_broker_config(root / "broker", ca, port=free_port(), user=USER)
    creds = {
        "a": enrol(ca, root / "devices", "dev-a"),
        "b": enrol(ca, root / "devices", "dev-b"),
        "hub": hub_credentials(files),
        "fan": fanout_credentials(files),
    }
    with TlsMosquitto(files) as running:
        yield {"files": files, "broker": running, **creds}


@pytest.fixture
def connect(broker: dict[str, Any]) -> Iterator[Callable[[Credentials], TlsClient]]:
    made: list[TlsClient] = []

    def make(creds: Credentials) -> TlsClient:
        address = (broker["broker"].host, broker["broker"].port)
        client = TlsClient(address, broker["files"].ca, creds)
        made.append(client)
        assert client.connect(), f"{creds.name} could not connect: {client.connack}"
        return client

    yield make
    for c in made:
        c.close()


def seen(client: TlsClient, marker: bytes) -> list[str]:
    return [t for t, p in client.received() if marker in p]


def test_devices_read_what_the_hub_fans_out(
    broker: dict[str, Any], connect: Callable[[Credentials], TlsClient]
) -> None:
    hub = connect(broker["hub"])
    a, b = connect(broker["a"]), connect(broker["b"])
    a.subscribe(FAN)
    b.subscribe(FAN)
    marker = uuid.uuid4().bytes

    code = hub.publish(FAN, marker)

    assert not code.is_failure
    wait_for(lambda: seen(a, marker) and seen(b, marker), 5, "the chunk at both devices")
    assert seen(a, marker) == [FAN] and seen(b, marker) == [FAN]


def test_a_device_cannot_publish_on_a_fan_out_topic(
    broker: dict[str, Any], connect: Callable[[Credentials], TlsClient]
) -> None:
    hub = connect(broker["hub"])
    hub.subscribe("ef/v1/#")
    a, b = connect(broker["a"]), connect(broker["b"])
    b.subscribe(FAN)
    marker = uuid.uuid4().bytes

    forged = a.publish(FAN, marker)  # a forged chunk for every device of the round
    a.publish("ef/v1/dev/dev-a/state", marker)  # allowed: the sentinel

    assert forged.value == NOT_AUTHORIZED
    wait_for(lambda: seen(hub, marker), 5, "the sentinel at the hub")
    assert seen(hub, marker) == ["ef/v1/dev/dev-a/state"]
    assert seen(b, marker) == []
    assert a.is_connected()


def test_reading_every_fan_out_topic_shows_no_device_topic(
    broker: dict[str, Any], connect: Callable[[Credentials], TlsClient]
) -> None:
    hub = connect(broker["hub"])
    a, b = connect(broker["a"]), connect(broker["b"])
    spy = a.subscribe("ef/v1/fan/#")  # granted: a device may read every fan-out topic
    a.subscribe("ef/v1/dev/dev-a/cmd")
    b.subscribe("ef/v1/dev/dev-b/#")
    marker = uuid.uuid4().bytes

    hub.publish("ef/v1/dev/dev-b/blob", marker)  # dev-b's own chunk answer
    hub.publish(FAN, marker)
    hub.publish("ef/v1/dev/dev-a/cmd", marker)  # the sentinel, from the same publisher

    wait_for(lambda: "ef/v1/dev/dev-a/cmd" in seen(a, marker), 5, "the sentinel at dev-a")
    # dev-b reads on its own connection: the broker's order holds per subscriber only
    wait_for(lambda: seen(b, marker), 5, "dev-b's own answer at dev-b")
    assert seen(a, marker) == [FAN, "ef/v1/dev/dev-a/cmd"]
    assert seen(b, marker) == ["ef/v1/dev/dev-b/blob"]
    assert spy[0].value == 1


def test_the_generated_acl_grants_fan_out_read_to_all_and_write_to_the_hub(
    broker: dict[str, Any],
) -> None:
    acl = Path(broker["files"].acl).read_text()
    assert "pattern read ef/v1/fan/+/blob" in acl
    hub_section = acl.split("user edgefleet-hub", 1)[1].split("\n\n", 1)[0]
    assert "topic write ef/v1/fan/+/blob" in hub_section
    assert "write ef/v1/fan" not in acl.split("user edgefleet-hub", 1)[0]


def test_the_fan_out_link_publishes_rounds_and_nothing_else(
    broker: dict[str, Any], connect: Callable[[Credentials], TlsClient]
) -> None:
    hub = connect(broker["hub"])
    hub.subscribe("ef/v1/#")
    fan = connect(broker["fan"])
    spy = fan.subscribe("ef/v1/dev/+/#")  # granted, but it may read nothing there
    a = connect(broker["a"])
    a.subscribe(FAN)
    a.subscribe("ef/v1/dev/dev-a/cmd")
    marker = uuid.uuid4().bytes

    assert not fan.publish(FAN, marker).is_failure
    forged = fan.publish("ef/v1/dev/dev-a/cmd", marker)  # a command from the fan-out link
    a.publish("ef/v1/dev/dev-a/state", marker)  # the sentinel, read by the hub and not it

    assert forged.value == NOT_AUTHORIZED
    wait_for(lambda: seen(hub, marker), 5, "the sentinel at the hub")
    wait_for(lambda: seen(a, marker), 5, "the round at dev-a")
    assert seen(a, marker) == [FAN]
    assert seen(fan, marker) == [] and spy[0].value == 1


def test_the_hub_fans_out_as_its_own_identity_on_a_tls_broker(broker: dict[str, Any]) -> None:
    files = broker["files"]
    address = BrokerAddress.parse(f"mqtts://localhost:{files.port}")
    link = fanout_link(address, "edgefleet-hub", files.directory)
    assert link is not None
    link.start()  # the broker accepted the certificate (else: ConnectionError)
    try:
        info = link.publish_info(FAN, b"chunk", 1)
        info.wait_for_publish(5)
        assert info.is_published()  # the broker acknowledged it
    finally:
        link.stop()

    old = files.directory / "no-fanout-identity"  # a directory from before the identity
    old.mkdir()
    assert fanout_link(address, "edgefleet-hub", old) is None  # shares the hub's link
