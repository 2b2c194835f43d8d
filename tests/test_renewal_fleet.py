"""Certificate renewal end to end: a real hub, real agent daemons, a TLS Mosquitto with
the generated config, and device certificates that live seconds (real clocks: the TLS
stack and the broker read the real time, so no frozen clock here).

Shows: devices enrolled together renew spread out in time, each over its own link, and
reconnect with the new certificate; the broker still takes a device once its first
certificate has expired; a device whose certificate expired before it could renew comes
back only through an admin's re-enrolment token.
"""

from __future__ import annotations

import os
import pwd
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from cryptography import x509
from sqlmodel import select
from waiting import wait_for

from agent.daemon import AgentConfig, AgentDaemon, enrol
from edgefleet.client import HubClient
from edgefleet.demo import ApiServer
from hub import Hub, HubConfig
from hub.access.keys import DEV_KEY
from hub.store.tables import AuditRecord, session
from hub.transport.broker import free_port
from hub.transport.brokerconf import TlsMosquitto, write_broker_config
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

    def enrol(self, device_id: str, token: str) -> AgentConfig:
        path = self.tmp / f"{device_id}.toml"
        enrol(
            hub_url=self.api.url,
            token=token,
            device_id=device_id,
            device_class="generic-linux",
            state_dir=self.tmp / device_id,
            config_out=path,
        )
        return replace(
            AgentConfig.load(path),
            endpoint="",
            renew_fraction=0.5,
            renew_spread=0.5,  # renew between 25% and 75% of the lifetime
            renew_retry_s=1.0,
        )

    def run(self, config: AgentConfig) -> AgentDaemon:
        daemon = AgentDaemon(config)
        daemon.start()
        threading.Thread(target=daemon.run_forever, daemon=True).start()
        self.daemons.append(daemon)
        return daemon

    def stop(self, daemon: AgentDaemon) -> None:
        daemon.stop()
        self.daemons.remove(daemon)


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
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
                device_cert_days=LIFETIME_S / 86400,
                dev_mode=True,
            )
        ).start()
        api = ApiServer(hub).start()
        s = Site(hub, HubClient(api.url, api_key=DEV_KEY), api, tmp_path, [])
        try:
            yield s
        finally:
            for d in s.daemons:
                d.stop()
            s.client.close()
            api.stop()
            hub.stop()


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
    for n in names:
        assert due[n] <= firsts[n] < due[n] + 3.0, (n, due[n], firsts[n])
    spread = max(firsts.values()) - min(firsts.values())
    assert spread > 0.5, f"renewals {firsts} not spread"
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
    assert all(daemons[n]._client.is_connected() for n in names[1:])


def test_a_device_whose_certificate_expired_comes_back_by_re_enrolment(site: Site) -> None:
    config = site.enrol("late-1", site.client.create_enrol_token("late-1")["token"])
    expiry = cert_of(site, "late-1").not_valid_after_utc.timestamp()
    wait_for(lambda: time.time() > expiry + 0.5, LIFETIME_S + 5, "the certificate expires")
    daemon = site.run(config)
    time.sleep(3)  # the broker refuses the expired certificate at every attempt
    assert not daemon._client.is_connected()
    site.stop(daemon)
    # the documented way back: an admin's re-enrolment token, then enrol again
    site.enrol("late-1", site.client.reenrol("late-1")["token"])
    back = site.run(config)
    wait_for(back._client.is_connected, 10, "late-1 connected after re-enrolment")
