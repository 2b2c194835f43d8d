"""Revocation that cuts a live connection (ADR 0036): a real hub, real agent daemons and a
real Mosquitto running the config ``edgefleet broker config`` writes, with Mosquitto's
dynamic-security plugin.

A revoked device's open connection is closed within seconds; its reconnect attempts fail
(the CRL refuses its certificate) and, were the CRL not reloaded, the plugin still denies
it every topic; the rest of the fleet stays connected and keeps reporting; an admin's
re-enrolment brings it back.
"""

from __future__ import annotations

import json
import os
import pwd
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from daemon_site import enrol_device, run_daemon, stop_daemon
from sqlalchemy import func
from sqlmodel import col, select
from tlsbroker import Credentials, TlsClient
from waiting import wait_for

from agent.daemon import AgentConfig, AgentDaemon
from edgefleet.client import HubClient
from edgefleet.demo import ApiServer
from hub import Hub, HubConfig
from hub.access.keys import DEV_KEY
from hub.store.tables import Telemetry, session
from hub.transport.broker import free_port
from hub.transport.brokerconf import BrokerFiles, TlsMosquitto, write_broker_config
from hub.transport.dynsec import (
    CONTROL_RESPONSE_TOPIC,
    CONTROL_TOPIC,
    REVOKED_ROLE,
    DynamicSecurity,
    broker_connections,
)
from hub.trust.pki import CertificateAuthority

pytestmark = [pytest.mark.broker, pytest.mark.slow]

CUT_WITHIN_S = 5.0  # the bound a revoked device's open connection must close in
NOT_AUTHORIZED = 135  # MQTT 5 reason code: the broker refused a publish or subscription
# Mosquitto runs as us: as root it would switch to `mosquitto`, which cannot read the
# test's private temporary directory
USER = pwd.getpwuid(os.geteuid()).pw_name


@dataclass
class Site:
    hub: Hub
    client: HubClient
    url: str
    files: BrokerFiles
    broker: TlsMosquitto
    tmp: Path
    daemons: list[AgentDaemon]

    def enrol(self, device_id: str, token: str) -> AgentConfig:
        # a report every second (idle windows are not coalesced): the fleet visibly works
        return enrol_device(self.url, self.tmp, device_id, token, window_s=1.0, heartbeat_s=0)

    def run(self, config: AgentConfig) -> AgentDaemon:
        return run_daemon(config, self.daemons)

    def stop(self, daemon: AgentDaemon) -> None:
        stop_daemon(daemon, self.daemons)

    def credentials(self, device_id: str) -> Credentials:
        identity = self.tmp / device_id / "identity"
        return Credentials(device_id, identity / "device.crt", identity / "device.key")

    def observer(self) -> Credentials:
        """The hub's rights under another client id than the hub's link."""
        d = self.files.directory
        return Credentials("edgefleet-hub-0", d / "hub-0.crt", d / "hub-0.key")

    def mqtt(self, creds: Credentials) -> TlsClient:
        """An MQTT 5 client with ``creds`` (it sees reason codes the agent's 3.1.1 cannot)."""
        return TlsClient((self.broker.host, self.broker.port), self.files.ca, creds)


def make_site(tmp_path: Path, *, reload_crl: bool) -> Iterator[Site]:
    """A CA, the generated broker config (with the plugin), Mosquitto, a hub and its API;
    ``reload_crl``: the hub SIGHUPs the broker after each CRL change (else nobody does)."""
    data = tmp_path / "hub"
    ca = CertificateAuthority.open_or_init(data / "pki")
    files = write_broker_config(
        tmp_path / "broker", ca, port=free_port(), user=USER, hub_replicas=1
    )  # a replica's identity: the test's own view with the hub's rights
    assert files.dynsec is not None, "Mosquitto's dynamic-security plugin is not installed"
    with TlsMosquitto(files) as broker:
        hub = Hub(
            HubConfig(
                data_dir=data,
                broker_url=f"mqtts://localhost:{files.port}",
                broker_tls_dir=files.directory,
                broker_reload=("kill", "-HUP", str(broker.pid)) if reload_crl else (),
                dev_mode=True,
                maintenance_s=3600,  # the tests resynchronise the plugin themselves
            )
        ).start()
        api = ApiServer(hub).start()
        site = Site(hub, HubClient(api.url, api_key=DEV_KEY), api.url, files, broker, tmp_path, [])
        try:
            yield site
        finally:
            for d in list(site.daemons):
                d.stop()
            site.client.close()
            api.stop()
            hub.stop()


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    yield from make_site(tmp_path, reload_crl=True)


@pytest.fixture
def unreloaded(tmp_path: Path) -> Iterator[Site]:
    """A hub with no reload command: the broker keeps its old CRL."""
    yield from make_site(tmp_path, reload_crl=False)


def online(site: Site, device_id: str) -> bool:
    return any(d["id"] == device_id for d in site.client.devices(status="online"))


def windows(site: Site, device_id: str) -> int:
    """Telemetry windows the hub has stored for the device."""
    with session(site.hub.engine) as s:
        rows = s.exec(select(func.count()).where(col(Telemetry.device_id) == device_id))
        return int(rows.one())


def reporting(site: Site, device_id: str) -> Callable[[], bool]:
    """True once the hub has stored a telemetry window of the device's after now."""
    before = windows(site, device_id)
    return lambda: windows(site, device_id) > before


def cut_after(daemon: AgentDaemon, start: float) -> float:
    """Seconds from ``start`` until the daemon's connection is gone."""
    wait_for(lambda: not daemon._client.is_connected(), CUT_WITHIN_S, "the connection cut")
    return time.monotonic() - start


def refused_connections(site: Site) -> int:
    """TLS handshakes the broker refused (a revoked certificate), from its log."""
    log = site.broker.log_path.read_text(errors="replace")
    return sum("certificate verify failed" in line for line in log.splitlines())


# --------------------------------------------------------------------------- through the hub


def test_a_revoked_device_is_cut_within_seconds_and_comes_back_only_by_reenrolment(
    site: Site,
) -> None:
    a = site.enrol("press-a", site.client.create_enrol_token("press-a")["token"])
    b = site.enrol("press-b", site.client.create_enrol_token("press-b")["token"])
    daemon_a, daemon_b = site.run(a), site.run(b)
    wait_for(lambda: online(site, "press-a") and online(site, "press-b"), 15, "both online")
    b_since = daemon_b.connection.since  # when press-b last connected

    start = time.monotonic()
    revocation = site.client.revoke_device("press-a", "key_compromise")
    cut_s = cut_after(daemon_a, start)

    print(f"press-a's connection closed {cut_s:.3f} s after the revocation was asked")
    assert cut_s <= CUT_WITHIN_S
    assert revocation["broker"].startswith("CRL written and the broker reloaded")
    assert revocation["connection"].startswith("disconnected:"), revocation["connection"]
    # it tries again and again (paho's backoff: 1, 2, 4 s): the CRL refuses each attempt
    wait_for(lambda: daemon_a.connection.retries >= 2, 15, "two failed reconnects")
    assert not daemon_a._client.is_connected()
    assert refused_connections(site) >= 2
    # the rest of the fleet stayed connected and keeps reporting
    assert daemon_b._client.is_connected() and daemon_b.connection.since == b_since
    assert site.hub.mqtt.connected.is_set()
    wait_for(reporting(site, "press-b"), 10, "press-b's next report")
    assert site.client.device("press-a")["status"] == "revoked"

    # an admin's re-enrolment lifts the broker's denial: the device is back and reports
    site.stop(daemon_a)
    site.enrol("press-a", site.client.reenrol("press-a")["token"])
    back = site.run(a)
    wait_for(back._client.is_connected, 10, "press-a back after re-enrolment")
    wait_for(lambda: online(site, "press-a"), 10, "press-a online again")
    wait_for(reporting(site, "press-a"), 10, "press-a reporting again")
    assert daemon_b._client.is_connected()


# --------------------------------------------------------------------------- the plugin alone


def test_without_a_crl_reload_the_broker_still_denies_a_revoked_device_every_topic(
    unreloaded: Site,
) -> None:
    site = unreloaded
    site.enrol("press-a", site.client.create_enrol_token("press-a")["token"])
    creds = site.credentials("press-a")
    hub_view = site.mqtt(site.observer())
    assert hub_view.connect()
    hub_view.subscribe("ef/v1/dev/+/state")
    device = site.mqtt(creds)
    assert device.connect()
    assert not device.publish("ef/v1/dev/press-a/state", b"before").is_failure

    start = time.monotonic()
    revocation = site.client.revoke_device("press-a")
    wait_for(lambda: device.disconnects, CUT_WITHIN_S, "the connection cut")
    cut_s = time.monotonic() - start

    print(f"cut {cut_s:.3f} s after the revocation; the device saw {device.disconnects}")
    assert "no reload command is configured" in revocation["broker"]
    assert revocation["connection"].startswith("disconnected:")
    assert str(device.disconnects[0]) == "Administrative action"  # MQTT 5 reason 0x98
    device.close()
    # The broker still holds the old CRL: the TLS handshake passes, but every topic is denied
    again = site.mqtt(creds)
    assert again.connect()
    marker = uuid.uuid4().bytes
    assert again.publish("ef/v1/dev/press-a/state", marker).value == NOT_AUTHORIZED
    assert [c.value for c in again.subscribe("ef/v1/dev/press-a/cmd")] == [NOT_AUTHORIZED]
    assert [c.value for c in again.subscribe("ef/v1/fan/+/blob")] == [NOT_AUTHORIZED]
    assert not hub_view.publish("ef/v1/dev/press-a/cmd", marker).is_failure
    time.sleep(0.5)  # a delivery would have taken milliseconds: nothing may arrive
    assert again.received() == []
    assert marker not in [p for _, p in hub_view.received()]
    again.close()

    # A broker that lost the denial (a state file it could not write, a command it missed)
    # gets it back from the hub's maintenance: the device is cut again.
    hub_view.subscribe(CONTROL_RESPONSE_TOPIC)
    delete = {"commands": [{"command": "deleteClient", "username": "press-a"}]}
    hub_view.publish(CONTROL_TOPIC, json.dumps(delete).encode())
    wait_for(lambda: b"deleteClient" in b"".join(p for _, p in hub_view.received()), 5, "deleted")
    third = site.mqtt(creds)
    assert third.connect()
    assert not third.publish("ef/v1/dev/press-a/state", b"x").is_failure  # nothing denies it
    assert site.hub.identities.sync_connections() == "synchronised: 1 denied, 0 freed"
    wait_for(lambda: third.disconnects, CUT_WITHIN_S, "the connection cut by the resync")
    third.close()

    # re-enrolment: a new certificate, the denial deleted, the device's topics its own again
    site.enrol("press-a", site.client.reenrol("press-a")["token"])
    back = site.mqtt(site.credentials("press-a"))
    assert back.connect()
    assert not back.publish("ef/v1/dev/press-a/state", marker).is_failure
    wait_for(lambda: marker in [p for _, p in hub_view.received()], 5, "its state at the hub")
    assert site.hub.identities.sync_connections() == "synchronised: 0 denied, 0 freed"
    assert back.is_connected()
    back.close()
    hub_view.close()


def test_devices_can_neither_command_the_plugin_nor_read_its_answers(site: Site) -> None:
    site.enrol("press-a", site.client.create_enrol_token("press-a")["token"])
    site.enrol("press-b", site.client.create_enrol_token("press-b")["token"])
    spy = site.mqtt(site.credentials("press-b"))
    assert spy.connect()
    spy.subscribe("$CONTROL/#")  # granted, but the ACL is checked per message
    victim = site.mqtt(site.credentials("press-a"))
    assert victim.connect()

    disable = {"commands": [{"command": "createClient", "username": "press-a",
                             "roles": [{"rolename": REVOKED_ROLE}]},
                            {"command": "disableClient", "username": "press-a"}]}  # fmt: skip
    assert spy.publish(CONTROL_TOPIC, json.dumps(disable).encode()).value == NOT_AUTHORIZED
    assert site.hub.identities.sync_connections() == "synchronised: 0 denied, 0 freed"
    assert victim.is_connected() and victim.disconnects == []
    assert spy.received() == []  # the hub's listClients answer went to the hub alone
    spy.close()
    victim.close()


def test_the_broker_config_loads_the_plugin_beside_the_acl(tmp_path: Path) -> None:
    ca = CertificateAuthority.open_or_init(tmp_path / "pki")
    files = write_broker_config(tmp_path / "broker", ca, port=free_port(), hub_replicas=2)
    assert files.dynsec is not None and files.dynsec_plugin is not None
    conf = files.config.read_text()
    assert f"plugin {files.dynsec_plugin}\n" in conf
    assert f"plugin_opt_config_file {files.dynsec}\n" in conf
    assert f"acl_file {files.acl}\n" in conf
    state = json.loads(files.dynsec.read_text())
    assert state["clients"] == [] and [r["rolename"] for r in state["roles"]] == [REVOKED_ROLE]
    assert not any(state["defaultACLAccess"].values())  # the ACL file decides for the rest
    acl = files.acl.read_text().split("\n\n")
    control = [b.split("\n")[0] for b in acl if f"topic write {CONTROL_TOPIC}" in b]
    assert control == ["user edgefleet-hub", "user edgefleet-hub-0", "user edgefleet-hub-1",
                       "user edgefleet-hub-leader"]  # fmt: skip
    # regenerating keeps the broker's state (the revoked devices it holds)
    files.dynsec.write_text(files.dynsec.read_text().replace('"clients": []', '"clients": [1]'))
    again = write_broker_config(tmp_path / "broker", ca, port=files.port)
    assert again.dynsec is not None and '"clients": [1]' in again.dynsec.read_text()
    # without the plugin, the hub says it cannot cut a connection
    plain = write_broker_config(tmp_path / "plain", ca, port=free_port(), dynsec=False)
    assert plain.dynsec is None and "plugin" not in plain.config.read_text()
    told = broker_connections(plain.directory, Unused()).cut("press-a")
    assert told.startswith("not disconnected: the broker config in") and "no dynamic" in told


class Unused:
    """A control channel nothing may use (the broker has no plugin to talk to)."""

    def publish(self, topic: str, payload: bytes, qos: int) -> None:
        raise AssertionError(f"published to {topic}")

    def listen(self, topic: str, callback: Callable[[bytes], None]) -> None:
        raise AssertionError(f"listened to {topic}")


class Plugin:
    """A stand-in for the plugin behind the hub's link (unit level: what the hub says
    when the broker answers an error or nothing at all)."""

    def __init__(self, answer: Callable[[dict[str, Any]], dict[str, Any]] | None) -> None:
        self.answer = answer
        self.callback: Callable[[bytes], None] | None = None

    def publish(self, topic: str, payload: bytes, qos: int) -> None:
        assert topic == CONTROL_TOPIC and self.callback is not None
        if self.answer is not None:
            commands = json.loads(payload)["commands"]
            self.callback(json.dumps({"responses": [self.answer(c) for c in commands]}).encode())

    def listen(self, topic: str, callback: Callable[[bytes], None]) -> None:
        assert topic == CONTROL_RESPONSE_TOPIC
        self.callback = callback


def test_the_hub_says_when_the_plugin_refuses_or_does_not_answer() -> None:
    def refuse(c: dict[str, Any]) -> dict[str, Any]:
        error = {"createClient": "Role not found"}.get(c["command"])
        return {"command": c["command"], "correlationData": c["correlationData"]} | (
            {"error": error} if error else {}
        )

    told = DynamicSecurity(Plugin(refuse)).cut("press-a")
    assert told == (
        "not disconnected: the broker's dynamic-security plugin: createClient: Role not found"
    )
    silent = DynamicSecurity(Plugin(None), timeout_s=0.2)
    assert silent.cut("press-a").endswith("no answer in 0.2 s")
    assert silent.restore("press-a").startswith("not restored:")
    # an answer to another replica's command is not this one's
    other = DynamicSecurity(Plugin(lambda c: {**c, "correlationData": "x"}), timeout_s=0.2)
    assert other.send([{"command": "listClients"}]) is None
