"""Certificate renewal end to end: a real hub, real agent daemons, a TLS Mosquitto with
the generated config, and device certificates that live seconds (real clocks: the TLS
stack and the broker read the real time, so no frozen clock here).

Shows: devices enrolled together renew spread out in time, each over its own link, and
reconnect with the new certificate; the broker still takes a device once its first
certificate has expired; a device whose certificate expired before it could renew comes
back only through an admin's re-enrolment token; the hub's CA rotates end to end (the
broker trusts both CAs, the devices renew onto the new one and learn its bundle, the old
one is dropped) and no running device falls off.
"""

from __future__ import annotations

import contextlib
import io
import os
import pwd
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from daemon_site import enrol_device, run_daemon, stop_daemon
from sqlmodel import select
from tlsbroker import Credentials, TlsClient
from waiting import wait_for

from agent.daemon import AgentConfig, AgentDaemon
from edgefleet.calls import HubClientError
from edgefleet.cli_app import main
from edgefleet.client import HubClient
from edgefleet.demo import ApiServer
from hub import Hub, HubConfig
from hub.access.keys import DEV_KEY
from hub.store.tables import AuditRecord, session
from hub.transport.broker import free_port
from hub.transport.brokerconf import BrokerFiles, TlsMosquitto, write_broker_config
from hub.trust.pki import CertificateAuthority
from shared.renewal import renew_at

pytestmark = [pytest.mark.broker, pytest.mark.slow]

LIFETIME_S = 16.0  # seconds a device certificate is valid here


@dataclass
class Site:
    hub: Hub
    client: HubClient
    api: ApiServer
    tmp: Path
    daemons: list[AgentDaemon]
    files: BrokerFiles
    broker: TlsMosquitto

    def enrol(self, device_id: str, token: str) -> AgentConfig:
        return enrol_device(
            self.api.url,
            self.tmp,
            device_id,
            token,
            renew_fraction=0.5,
            renew_spread=0.5,  # renew between 25% and 75% of the lifetime
            renew_retry_s=1.0,
        )

    def run(self, config: AgentConfig) -> AgentDaemon:
        return run_daemon(config, self.daemons)

    def stop(self, daemon: AgentDaemon) -> None:
        stop_daemon(daemon, self.daemons)


@contextmanager
def make_site(tmp_path: Path, lifetime_s: float, **config: Any) -> Iterator[Site]:
    """A TLS Mosquitto, the hub (``config``: more HubConfig settings) and its API."""
    data = tmp_path / "hub"
    ca = CertificateAuthority.open_or_init(data / "pki")
    user = pwd.getpwuid(os.geteuid()).pw_name  # Mosquitto runs as us (see test_enrolment)
    files = write_broker_config(tmp_path / "broker", ca, port=free_port(), user=user)
    with TlsMosquitto(files) as broker:
        hub = Hub(
            HubConfig(
                data_dir=data,
                broker_url=f"mqtts://localhost:{files.port}",
                broker_tls_dir=files.directory,
                broker_reload=("kill", "-HUP", str(broker.pid)),
                device_cert_days=lifetime_s / 86400,
                dev_mode=True,
                **config,
            )
        ).start()
        api = ApiServer(hub).start()
        s = Site(hub, HubClient(api.url, api_key=DEV_KEY), api, tmp_path, [], files, broker)
        try:
            yield s
        finally:
            for d in s.daemons:
                d.stop()
            s.client.close()
            api.stop()
            hub.stop()


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    with make_site(tmp_path, LIFETIME_S) as s:
        yield s


def cert_of(site: Site, device_id: str) -> x509.Certificate:
    path = site.tmp / device_id / "identity" / "device.crt"
    return x509.load_pem_x509_certificate(path.read_bytes())


def renewals(site: Site) -> list[AuditRecord]:
    with session(site.hub.engine) as s:
        q = select(AuditRecord).where(AuditRecord.action == "device.renew")
        return list(s.exec(q.order_by(AuditRecord.ts)))  # type: ignore[arg-type]


def test_a_fleet_renews_spread_out_and_keeps_connecting_after_the_old_certificates_expire(
    site: Site,
) -> None:
    names = ["fleet-a", "fleet-b", "fleet-c"]
    configs = [site.enrol(n, site.client.create_enrol_token(n)["token"]) for n in names]
    first = {n: cert_of(site, n) for n in names}
    due = {
        n: renew_at(
            c.not_valid_before_utc.timestamp(),
            c.not_valid_after_utc.timestamp(),
            n,
            c.serial_number,
            fraction=0.5,
            spread=0.5,
        )
        for n, c in first.items()
    }
    daemons = {n: site.run(c) for n, c in zip(names, configs, strict=True)}
    wait_for(lambda: all(d._client.is_connected() for d in daemons.values()), 10, "connected")

    # each renews once its own moment has come, and reconnects with the new certificate
    def renewed() -> bool:
        return all(d.renewal is not None and d.renewal.renewed >= 1 for d in daemons.values())

    wait_for(renewed, LIFETIME_S, "every device's first renewal")
    oks = [r for r in renewals(site) if r.outcome == "ok"]
    firsts = {n: min(r.ts for r in oks if r.target == n) for n in names}
    # each at its own moment (a tick is 1 s; a loaded machine answers later)
    for n in names:
        assert due[n] <= firsts[n] < due[n] + 5.0, (n, due[n], firsts[n])
    for n in names:
        now_cert = cert_of(site, n)
        assert now_cert.serial_number != first[n].serial_number
        assert site.hub.identities.ca.device_history(n)[0]["revoked"] is False
    wait_for(lambda: all(d._client.is_connected() for d in daemons.values()), 10, "reconnected")

    # once every first certificate has expired, a fresh start still connects
    expired_at = max(c.not_valid_after_utc.timestamp() for c in first.values())
    wait_for(lambda: time.time() > expired_at + 1, LIFETIME_S + 5, "the first certificates expire")
    site.stop(daemons["fleet-a"])
    again = site.run(configs[0])
    wait_for(again._client.is_connected, 10, "fleet-a connected after its first cert expired")
    # the others, renewing every few seconds here, reconnect after each renewal
    others = [daemons[n] for n in names[1:]]
    wait_for(lambda: all(d._client.is_connected() for d in others), 10, "the others connected")


def test_a_device_whose_certificate_expired_comes_back_by_re_enrolment(site: Site) -> None:
    config = site.enrol("late-1", site.client.create_enrol_token("late-1")["token"])
    expiry = cert_of(site, "late-1").not_valid_after_utc.timestamp()
    wait_for(lambda: time.time() > expiry + 0.5, LIFETIME_S + 5, "the certificate expires")
    daemon = site.run(config)
    # the broker refuses the expired certificate at every attempt
    wait_for(lambda: daemon.connection.retries >= 2, 15, "two refused attempts")
    assert not daemon._client.is_connected() and daemon.connection.connected is False
    site.stop(daemon)
    # the documented way back: an admin's re-enrolment token, then enrol again
    site.enrol("late-1", site.client.reenrol("late-1")["token"])
    back = site.run(config)
    wait_for(back._client.is_connected, 10, "late-1 connected after re-enrolment")


def test_the_ca_rotates_and_no_running_device_falls_off(tmp_path: Path) -> None:
    """Driven as an operator does, through the admin API and the CLI (edgefleet ca)."""
    with make_site(tmp_path, 86400.0) as site:  # a day: only the hub's hint renews here
        names = ["rot-a", "rot-b"]
        configs = [site.enrol(n, site.client.create_enrol_token(n)["token"]) for n in names]
        site.enrol("rot-off", site.client.create_enrol_token("rot-off")["token"])  # offline
        daemons = {n: site.run(c) for n, c in zip(names, configs, strict=True)}
        wait_for(lambda: all(d._client.is_connected() for d in daemons.values()), 10, "online")
        ident = site.tmp / "rot-a" / "identity"
        old = Credentials("rot-a", tmp_path / "old-a.crt", tmp_path / "old-a.key")
        old.cert.write_bytes((ident / "device.crt").read_bytes())
        old.key.write_bytes((ident / "device.key").read_bytes())
        ca = site.hub.identities.ca
        first = site.client.ca()
        assert first.retired == [] and first.devices_behind == []

        # 1. a new CA issues from now on; the broker trusts both (bundle + a CRL each),
        # and the devices on the old one are asked to renew now
        begun = site.client.begin_ca_rotation()
        assert begun.retired[0].id == first.ca.id and begun.ca.id != first.ca.id
        assert begun.prompted == 3 and "broker reloaded" in begun.broker
        new = ca.certificate
        assert len(x509.load_pem_x509_certificates(site.files.ca.read_bytes())) == 2
        with pytest.raises(HubClientError, match="rotation_under_way") as twice:
            site.client.begin_ca_rotation()
        assert twice.value.status == 409
        # 2. the running devices move
        wait_for(
            lambda: all(d.renewal and d.renewal.renewed for d in daemons.values()), 20, "moved"
        )
        assert site.client.ca().devices_behind == ["rot-off"]
        assert site.client.prompt_ca_rotation().prompted == 1  # asked again: the one behind
        for n in names:
            assert cert_of(site, n).issuer == new.subject
            bundle = (site.tmp / n / "identity" / "ca.crt").read_bytes()
            assert len(x509.load_pem_x509_certificates(bundle)) == 2  # old + new, from the hub
        wait_for(lambda: all(d._client.is_connected() for d in daemons.values()), 10, "back")

        # 3. finishing waits for every device ... unless told to leave rot-off behind
        with pytest.raises(HubClientError, match=r"devices_behind.*rot-off") as refused:
            site.client.finish_ca_rotation()
        assert refused.value.status == 409 and len(site.client.ca().retired) == 1
        out = run_cli(["ca", "finish", "--force", "--hub", site.api.url, "--api-key", DEV_KEY])
        assert "left behind (re-enrol them): rot-off" in out
        server = x509.load_pem_x509_certificate(site.files.server_cert.read_bytes())
        assert server.issuer == new.subject
        assert ca.trust_pem == ca.ca_pem and not list((ca.directory / "retired").iterdir())
        shown = site.client.ca()
        assert shown.retired == [] and shown.ca.id == begun.ca.id
        assert shown.broker_certificate is not None and not shown.broker_certificate.due
        actions = [r["action"] for r in site.client.audit(limit=20)]
        assert {"ca.rotate", "ca.prompt", "ca.finish"} <= set(actions)

        # the open connections stay (the hub's too); a fresh start meets the new server
        # certificate and presents the new device certificate
        assert all(d._client.is_connected() for d in daemons.values())
        assert site.hub.mqtt.connected.is_set()
        site.stop(daemons["rot-a"])
        again = site.run(configs[0])
        wait_for(again._client.is_connected, 10, "rot-a connected on the new CA")
        # the old CA's certificate is refused now
        stale = TlsClient(("127.0.0.1", site.files.port), ident / "ca.crt", old)
        assert not stale.connect()


def run_cli(argv: list[str]) -> str:
    """``edgefleet ARGV`` in-process: its output; it must succeed."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(argv)
    assert code == 0, out.getvalue()
    return out.getvalue()
