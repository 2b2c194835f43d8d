"""The operator's surface for the broker's server certificate (ADR 0035,
docs/operations.md "Certificates"): ``edgefleet broker renew-cert`` through the admin API
and the leader's maintenance timer, against a real TLS Mosquitto from the generated
config, the real hub and its API served by uvicorn, and real paho clients.

The CA rotation through the API and the CLI is tests/test_renewal_fleet.py's
``test_the_ca_rotates_and_no_running_device_falls_off`` (real agent daemons).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509
from sqlmodel import select
from test_renewal_fleet import make_site, run_cli
from tlsbroker import TlsClient, enrol, server_serial
from waiting import wait_for

from edgefleet.calls import HubClientError
from edgefleet.client import HubClient
from edgefleet.demo import ApiServer
from hub import Hub, HubConfig
from hub.access.keys import DEV_KEY
from hub.store.tables import AuditRecord, session
from hub.transport.brokercert import rotate_server_certificate, server_certificate_due
from hub.transport.brokerconf import BrokerFiles
from hub.transport.rotations import Rotations
from hub.trust.pki import PkiError

pytestmark = [pytest.mark.broker, pytest.mark.slow]


def file_serial(files: BrokerFiles) -> int:
    return x509.load_pem_x509_certificate(files.server_cert.read_bytes()).serial_number


def test_renew_cert_keeps_a_connected_device_and_new_connections_meet_the_new_one(
    tmp_path: Path,
) -> None:
    with make_site(tmp_path, 86400.0) as site:
        dev = enrol(site.hub.identities.ca, tmp_path / "devices", "cert-dev")
        listener = TlsClient(("127.0.0.1", site.files.port), site.files.ca, dev)
        assert listener.connect()
        listener.subscribe("ef/v1/dev/cert-dev/cmd")
        old = server_serial(site.files, dev)
        shown = site.client.ca().broker_certificate
        assert shown is not None and int(shown.serial, 16) == old and not shown.due
        said = run_cli(["ca", "show", "--hub", site.api.url, "--api-key", DEV_KEY])
        assert "0 device(s) behind" in said and f"{old:x}"[:16] in said

        out = run_cli(["broker", "renew-cert", "--hub", site.api.url, "--api-key", DEV_KEY])
        new = file_serial(site.files)
        assert new != old and f"serial {new:x}" in out and "broker reloaded" in out
        # new connections meet the new certificate; the connected device stays, served
        wait_for(lambda: server_serial(site.files, dev) == new, 5, f"server certificate {new:x}")
        assert listener.is_connected()
        site.hub.mqtt.publish("ef/v1/dev/cert-dev/cmd", b"after the renewal", 1)
        wait_for(
            lambda: ("ef/v1/dev/cert-dev/cmd", b"after the renewal") in listener.received(),
            5,
            "delivery",
        )
        assert site.hub.mqtt.connected.is_set()
        records = site.client.audit(action="broker.certificate.renew")
        assert records[0]["outcome"] == "ok" and records[0]["after"] == {"serial": f"{new:x}"}
        listener.close()


SHORT_S = 20.0  # seconds the short server certificate lives: due after about 13 s


def test_the_leaders_timer_re_issues_a_due_server_certificate(tmp_path: Path) -> None:
    with make_site(tmp_path, 86400.0, maintenance_s=0.5) as site:
        ca, files = site.hub.identities.ca, site.files
        dev = enrol(ca, tmp_path / "devices", "timer-dev")
        listener = TlsClient(("127.0.0.1", files.port), files.ca, dev)
        assert listener.connect()
        # the broker is given a server certificate of 20 s (backdated 2 s): due at 2/3
        short = rotate_server_certificate(ca, files, site.broker.pid, days=SHORT_S / 86400)
        wait_for(lambda: server_serial(files, dev) == short.serial, 5, "the short one shown")
        assert not server_certificate_due(files)  # not yet: the timer leaves it alone

        wait_for(lambda: file_serial(files) != short.serial, 30, "the timer re-issued it")
        new = file_serial(files)
        assert not server_certificate_due(files)
        wait_for(lambda: server_serial(files, dev) == new, 5, "the broker shows it")
        cert = x509.load_pem_x509_certificate(files.server_cert.read_bytes())
        life = cert.not_valid_after_utc - cert.not_valid_before_utc
        assert life.days > 800  # the broker's default lifetime, not the short one
        assert listener.is_connected() and site.hub.mqtt.connected.is_set()
        with session(site.hub.engine) as s:
            q = select(AuditRecord).where(AuditRecord.action == "broker.certificate.renew")
            records = list(s.exec(q))
        assert len(records) == 1, records  # once: it is not due any more
        record = records[0]
        assert record.actor_name == "hub:maintenance" and record.outcome == "ok"
        assert record.before == {"serial": f"{short.serial:x}"}
        assert record.after is not None and record.after["serial"] == f"{new:x}"
        listener.close()


def test_without_a_tls_broker_a_change_is_refused_with_the_reason(tmp_path: Path) -> None:
    hub = Hub(HubConfig(data_dir=tmp_path / "hub", dev_mode=True)).start()
    api = ApiServer(hub).start()
    client = HubClient(api.url, api_key=DEV_KEY)
    try:
        shown = client.ca()
        assert shown.broker_certificate is None and shown.devices_behind == []
        before = shown.ca.id
        for call in (
            client.renew_broker_certificate,
            client.begin_ca_rotation,
            client.prompt_ca_rotation,
            client.finish_ca_rotation,
        ):
            with pytest.raises(HubClientError, match="no_tls_broker") as refused:
                call()
            assert refused.value.status == 409
        assert client.ca().ca.id == before and client.ca().retired == []  # nothing changed
    finally:
        client.close()
        api.stop()
        hub.stop()


def test_a_replica_that_does_not_lead_refuses(tmp_path: Path) -> None:
    """Only the leader rotates (it answers the renewals); the leadership itself is
    tests/test_hub_replicas_cli.py's: here a replica that lost it."""
    with make_site(tmp_path, 86400.0) as site:
        follower = Rotations(site.hub.identities, site.files.directory, print, lambda: False)
        before = file_serial(site.files)
        with pytest.raises(PkiError, match="not_leader"):
            follower.renew_broker_certificate()
        with pytest.raises(PkiError, match="not_leader"):
            follower.begin()
        assert not follower.refresh() and file_serial(site.files) == before
        assert site.hub.identities.ca.retired == []


def test_the_timer_says_when_it_cannot_read_the_server_certificate(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A broker directory without its certificate: logged, and the rest of the hub's
    maintenance goes on (no exception out of the timer's step)."""
    with make_site(tmp_path, 86400.0) as site:
        empty = tmp_path / "no-broker-files"
        empty.mkdir()
        rotations = Rotations(site.hub.identities, empty, print, lambda: True)
        assert not rotations.refresh()
        assert "cannot check the broker's server certificate" in caplog.text
        with pytest.raises(PkiError, match="no_tls_broker"):
            rotations.renew_broker_certificate()
