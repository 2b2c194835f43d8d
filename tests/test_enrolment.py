"""Device identity end to end: a real hub and agent daemon over a TLS Mosquitto with the
configuration `edgefleet broker config` writes (client certificates, per-device ACL, CRL).

A device enrols with a one-time token and its own CSR, connects with the certificate it
got, installs a model from a signed command, and is then revoked: the broker cuts its
connection, the hub ignores it at once, the broker refuses its next connection while the
rest of the fleet stays, and an
admin's re-enrolment brings it back.
"""

from __future__ import annotations

import os
import pwd
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from daemon_site import enrol_device, run_daemon
from waiting import wait_for

from agent.daemon import AgentConfig, AgentDaemon
from edgefleet.client import HubClient, HubClientError
from edgefleet.demo import ApiServer
from hub import Hub, HubConfig
from hub.access.keys import DEV_KEY
from hub.transport.broker import Mosquitto, free_port
from hub.transport.brokerconf import TlsMosquitto, write_broker_config
from hub.trust.identities import CRL_REPUBLISH_S
from hub.trust.pki import CertificateAuthority

pytestmark = [pytest.mark.broker, pytest.mark.slow]


@dataclass
class Site:
    hub: Hub
    client: HubClient
    api: ApiServer
    tmp: Path
    daemons: list[AgentDaemon]

    def enrol(self, device_id: str, token: str) -> AgentConfig:
        # heartbeat_s=0: every (empty) window is sent, a report each second that the hub
        # drops once the device is revoked (idle windows coalesce by default, ADR 0034)
        return enrol_device(self.api.url, self.tmp, device_id, token, window_s=1.0, heartbeat_s=0)

    def run(self, config: AgentConfig) -> AgentDaemon:
        return run_daemon(config, self.daemons)


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    data = tmp_path / "hub"
    ca = CertificateAuthority.open_or_init(data / "pki")
    # user: Mosquitto runs as us (as root it would switch to `mosquitto`, which cannot
    # read the test's private temporary directory)
    user = pwd.getpwuid(os.geteuid()).pw_name
    files = write_broker_config(tmp_path / "broker", ca, port=free_port(), user=user)
    with TlsMosquitto(files) as broker:
        hub = Hub(
            HubConfig(
                data_dir=data,
                broker_url=f"mqtts://localhost:{files.port}",
                broker_tls_dir=files.directory,
                broker_reload=("kill", "-HUP", str(broker.pid)),
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


def online(site: Site, device_id: str) -> bool:
    return any(d["id"] == device_id for d in site.client.devices(status="online"))


def test_enrol_connect_install_revoke_reenrol(site: Site) -> None:
    a = site.enrol("press-a", site.client.create_enrol_token("press-a")["token"])
    b = site.enrol("press-b", site.client.create_enrol_token()["token"])
    assert a.broker.startswith("mqtts://")
    assert (site.tmp / "press-a" / "identity" / "device.crt").exists()
    daemon_a, daemon_b = site.run(a), site.run(b)
    wait_for(lambda: online(site, "press-a") and online(site, "press-b"), 15, "both online")

    job = site.client.train(n_train=1000, hidden=[8], probation_s=0, probation_min_inferences=0)
    model = site.client.wait_job(job["id"], timeout=120)["result"]
    dep = site.client.deploy(model["name"], model["version"])
    wait_for(lambda: site.client.deployment(dep["id"])["finished"], 30, "the deployment")
    assert site.client.deployment(dep["id"])["stages"] == {"healthy": 2}

    revocation = site.client.revoke_device("press-a", "key_compromise")
    assert revocation["reason"] == "key_compromise" and revocation["serials"]
    assert revocation["broker"].startswith("CRL written and the broker reloaded (kill -HUP")

    # The broker cuts its open connection (ADR 0036; tests/test_live_revocation.py has
    # the details), the hub leaves it out of deployments at once ...
    assert revocation["connection"].startswith("disconnected:"), revocation["connection"]
    wait_for(lambda: not daemon_a._client.is_connected(), 5, "press-a's connection cut")
    with pytest.raises(HubClientError, match="1 revoked device id"):
        site.client.deploy(model["name"], devices=["press-a"])
    # ... and the broker refuses its next connection, while press-b stays connected.
    daemon_a.stop()
    site.daemons.remove(daemon_a)
    again = site.run(a)
    assert not _connects(again, seconds=3)
    assert daemon_b._client.is_connected()
    assert site.hub.mqtt.connected.is_set()

    # An unbound token cannot bring a revoked id back; an admin's re-enrolment can.
    with pytest.raises(Exception, match="403"):
        site.enrol("press-a", site.client.create_enrol_token()["token"])
    again.stop()
    site.daemons.remove(again)
    site.enrol("press-a", site.client.reenrol("press-a")["token"])
    back = site.run(a)
    assert _connects(back, seconds=10)
    assert "press-a" not in site.hub.revoked()


def _connects(daemon: AgentDaemon, seconds: float) -> bool:
    try:
        wait_for(daemon._client.is_connected, seconds, "a connection")
    except AssertionError:
        return False
    return True


def test_the_running_hub_reissues_its_crl_on_its_maintenance_timer(
    private_mosquitto: Mosquitto, tmp_path: Path
) -> None:
    """The CRL is valid 7 days and an expired one locks every client out: the hub's own
    timer re-issues it daily (backdated here) and reloads the broker."""
    marker = tmp_path / "reloaded"
    (tmp_path / "broker").mkdir()  # (what `edgefleet broker config` wrote)
    hub = Hub(
        HubConfig(
            data_dir=tmp_path / "hub",
            broker_url=private_mosquitto.address.url,
            broker_tls_dir=tmp_path / "broker",
            broker_reload=("touch", str(marker)),
            maintenance_s=0.1,
            dev_mode=True,
        )
    ).start()
    try:
        wait_for(marker.exists, 5, "the first CRL")  # none on disk yet: written at once
        marker.unlink()
        time.sleep(0.5)
        assert not marker.exists()  # fresh: left alone
        hub.identities._crl_written -= CRL_REPUBLISH_S  # a day later
        wait_for(marker.exists, 5, "the daily re-issue")
        assert (tmp_path / "broker" / "crl.pem").stat().st_mtime > time.time() - 5
    finally:
        hub.stop()
