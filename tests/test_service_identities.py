"""The hub's service names are its own (issue 11, item 3).

The attack as found: a device enrolled as ``edgefleet-ingest-5``; ``edgefleet broker config
--ingest-workers 8`` then issued the service certificate for that name as well, and the
ACL let the device read every device's telemetry. Now the whole ``edgefleet-`` prefix is
refused at enrolment (``reserved_identity``, whatever the token, re-enrolment too), and
broker config refuses to issue a service name a device holds (``identity_held``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from cryptography import x509

from agent.identity import DeviceIdentity
from edgefleet.cli import main
from edgefleet.client import HubClient
from edgefleet.demo import ApiServer
from hub import Hub, HubConfig
from hub.access.keys import DEV_KEY
from hub.transport.broker import Mosquitto, free_port
from hub.trust.pki import CertificateAuthority
from hub.trust.profiles import client_extensions

pytestmark = pytest.mark.broker


@dataclass
class Site:
    hub: Hub
    api: ApiServer
    admin: HubClient
    data: Path


@pytest.fixture
def site(tmp_path: Path, mosquitto: Mosquitto) -> Iterator[Site]:
    data = tmp_path / "hub"
    hub = Hub(HubConfig(data_dir=data, broker_url=mosquitto.address.url, dev_mode=True)).start()
    api = ApiServer(hub).start()
    admin = HubClient(api.url, api_key=DEV_KEY)
    try:
        yield Site(hub, api, admin, data)
    finally:
        admin.close()
        api.stop()
        hub.stop()


def csr_for(tmp: Path, device_id: str) -> str:
    return DeviceIdentity.load_or_create(tmp / device_id, device_id).csr_pem().decode()


# (case, device id, with a CSR, token bound to the id)
ENROLMENTS = [
    ("an ingest worker's name, unbound token", "edgefleet-ingest-5", False, False),
    ("an ingest worker's name, with a CSR", "edgefleet-ingest-5", True, False),
    ("an ingest worker's name not issued yet", "edgefleet-ingest-99", True, False),
    ("the hub's name", "edgefleet-hub", True, False),
    ("the broker's name", "edgefleet-broker", False, False),
    ("any name in the prefix", "edgefleet-anything", True, False),
    ("the prefix in another case", "EdgeFleet-ingest-5", True, False),
]


@pytest.mark.parametrize(
    ("device_id", "csr", "bound"), [r[1:] for r in ENROLMENTS], ids=[r[0] for r in ENROLMENTS]
)
def test_a_device_cannot_enrol_under_a_name_of_the_hubs(
    site: Site, tmp_path: Path, device_id: str, csr: bool, bound: bool
) -> None:
    token = site.admin.create_enrol_token()["token"]
    body = {"device_id": device_id, "token": token, "device_class": "generic-linux"}
    if csr:
        body["csr"] = csr_for(tmp_path, device_id)

    answer = httpx.post(f"{site.api.url}/enrol", json=body)

    assert answer.status_code == 403, answer.text
    assert "reserved_identity" in answer.json()["detail"]
    assert site.hub.identities.ca.serials_for(device_id) == []
    # the refusal came before the token was used up: a real device may still use it
    ok = httpx.post(
        f"{site.api.url}/enrol",
        json={"device_id": "press-1", "token": token, "csr": csr_for(tmp_path, "press-1")},
    )
    assert ok.status_code == 200, ok.text


def test_no_token_can_be_made_for_a_name_of_the_hubs(site: Site) -> None:
    answer = httpx.post(
        f"{site.api.url}/enrol-tokens",
        json={"device_id": "edgefleet-ingest-5"},
        headers={"authorization": f"Bearer {DEV_KEY}"},
    )
    assert answer.status_code == 403, answer.text
    assert "reserved_identity" in answer.json()["detail"]
    listed = httpx.get(
        f"{site.api.url}/enrol-tokens", headers={"authorization": f"Bearer {DEV_KEY}"}
    )
    assert listed.json() == []


def enrolled_by_an_older_hub(ca_dir: Path, device_id: str, tmp: Path) -> int:
    """A device certificate for ``device_id`` as a hub before this change issued it: no
    name check, and a ledger entry without its kind. Its serial."""
    ca = CertificateAuthority.open_or_init(ca_dir)
    identity = DeviceIdentity.load_or_create(tmp / device_id, device_id)
    key = x509.load_pem_x509_csr(identity.csr_pem()).public_key()
    with ca._lock:
        issued = ca._issue(key, device_id, 365, client_extensions(), kind="device")
    ledger_path = ca_dir / "ledger.json"
    ledger = json.loads(ledger_path.read_text())
    for entry in ledger["issued"].values():
        entry.pop("kind", None)  # the older ledger's format
    ledger_path.write_text(json.dumps(ledger))
    return issued.serial


def broker_config(data: Path, out: Path, workers: int) -> int:
    return main(
        ["broker", "config", "--data-dir", str(data), "--out", str(out), "--port",
         str(free_port()), "--ingest-workers", str(workers)]
    )  # fmt: skip


def test_broker_config_refuses_a_service_name_a_device_holds(
    tmp_path: Path, mosquitto: Mosquitto, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "hub"
    assert broker_config(data, tmp_path / "broker", workers=4) == 0
    serial = enrolled_by_an_older_hub(data / "pki", "edgefleet-ingest-5", tmp_path)
    capsys.readouterr()

    assert broker_config(data, tmp_path / "broker-8", workers=8) == 1

    err = capsys.readouterr().err
    assert "identity_held" in err and "edgefleet-ingest-5" in err and format(serial, "x") in err
    assert "POST /devices/edgefleet-ingest-5/revoke" in err
    assert list((tmp_path / "broker-8").iterdir()) == []  # nothing written, nothing issued
    ca = CertificateAuthority.open_or_init(data / "pki")
    assert ca.serials_for("edgefleet-ingest-5") == [serial]

    # The device cannot re-enrol under it either, and the fix the message gives works.
    hub = Hub(HubConfig(data_dir=data, broker_url=mosquitto.address.url, dev_mode=True)).start()
    api = ApiServer(hub).start()
    admin = {"authorization": f"Bearer {DEV_KEY}"}
    try:
        again = httpx.post(f"{api.url}/devices/edgefleet-ingest-5/reenrol", headers=admin)
        assert again.status_code == 403 and "reserved_identity" in again.json()["detail"]
        revoked = httpx.post(f"{api.url}/devices/edgefleet-ingest-5/revoke", headers=admin)
        assert revoked.status_code == 200, revoked.text
    finally:
        api.stop()
        hub.stop()
    assert broker_config(data, tmp_path / "broker-8", workers=8) == 0
    assert (tmp_path / "broker-8" / "ingest-5.crt").exists()
