"""The agent's side of certificate renewal (agent/renewal.py) with a fake clock and a
recording publisher; the hub's CA (real) answers. The broker and the daemon's reconnect
are in tests/test_renewal_fleet.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from agent.identity import DeviceIdentity
from agent.renewal import NEXT_CA, NEXT_CERT, NEXT_KEY, CertRenewal
from hub.trust.pki import CertificateAuthority
from shared import protocol

LIFETIME_DAYS = 100 / 86400  # 100 s (back-dated by 10 s): due between 62.5% and 72.5%


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def device(tmp_path: Path) -> tuple[CertificateAuthority, CertRenewal, Clock, list[bytes]]:
    ca = CertificateAuthority.open_or_init(tmp_path / "pki")
    identity = DeviceIdentity.load_or_create(tmp_path / "identity", "dev-1")
    issued = ca.issue_device(identity.csr_pem(), "dev-1", days=LIFETIME_DAYS)
    identity.store_certificate(issued.cert_pem, ca.ca_pem)
    sent: list[bytes] = []
    clock = Clock(issued.not_after.timestamp() - 100)
    renewal = CertRenewal(
        tmp_path / "identity", "dev-1", lambda _t, p: sent.append(p), retry_s=5, clock=clock
    )
    return ca, renewal, clock, sent


def csr_key(payload: bytes) -> object:
    body = protocol.decode(payload, expect=frozenset({"renew_request"})).body
    return x509.load_pem_x509_csr(body["csr"].encode()).public_key()


def answer(ca: CertificateAuthority, payload: bytes, **override: object) -> bytes:
    request = protocol.decode(payload)
    issued = ca.issue_device(request.body["csr"].encode(), "dev-1", via="renewal")
    body = {"request": request.id, "ok": True, "certificate": issued.cert_pem.decode()}
    body |= {"ca_bundle": ca.trust_pem.decode(), **override}
    return protocol.encode("renew_answer", body, ts=0)


def test_it_asks_when_due_and_again_with_backoff_and_the_same_key(device) -> None:
    _, renewal, clock, sent = device
    due = renewal.due_at()
    clock.t = due - 1
    renewal.tick(connected=True)
    assert sent == []
    clock.t = due
    renewal.tick(connected=False)  # offline: nothing to send on
    assert sent == []
    renewal.tick(connected=True)
    renewal.tick(connected=True)
    assert len(sent) == 1
    clock.t = due + 5  # no answer after retry_s: ask again, then wait twice as long
    renewal.tick(connected=True)
    clock.t = due + 14.9
    renewal.tick(connected=True)
    clock.t = due + 15
    renewal.tick(connected=True)
    assert len(sent) == 3
    keys = {csr_key(p).public_numbers() for p in sent}  # type: ignore[attr-defined]
    assert len(keys) == 1  # the same new key each time


def test_a_good_answer_is_kept_beside_the_old_and_promoted_once_connected(device) -> None:
    ca, renewal, clock, sent = device
    clock.t = renewal.due_at()
    renewal.tick(connected=True)
    old = (renewal.directory / "device.crt").read_bytes()
    assert renewal.on_answer(answer(ca, sent[0]))
    assert (renewal.directory / NEXT_CERT).exists()
    assert (renewal.directory / "device.crt").read_bytes() == old  # kept until proven
    cert, key, bundle = renewal.switching()
    assert (cert.name, key.name, bundle.name) == (NEXT_CERT, NEXT_KEY, NEXT_CA)
    renewal.connected()
    assert (renewal.directory / "device.crt").read_bytes() != old
    assert not (renewal.directory / NEXT_CERT).exists() and renewal.renewed == 1


def test_an_answer_for_another_key_is_not_kept(device) -> None:
    ca, renewal, clock, sent = device
    clock.t = renewal.due_at()
    renewal.tick(connected=True)
    other = ec.generate_private_key(ec.SECP256R1())  # not the key this answer is for
    pem = other.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    (renewal.directory / NEXT_KEY).write_bytes(pem)
    assert not renewal.on_answer(answer(ca, sent[0]))
    assert not (renewal.directory / NEXT_CERT).exists()


def test_refusals_reused_key_makes_a_new_key_expired_stops(device) -> None:
    _, renewal, clock, sent = device
    clock.t = renewal.due_at()
    renewal.tick(connected=True)
    refused = {"request": "r", "ok": False, "reason": "reused_key", "detail": "an old key"}
    assert not renewal.on_answer(protocol.encode("renew_answer", refused, ts=0))
    assert not (renewal.directory / NEXT_KEY).exists()
    clock.t += 10  # the wait had doubled to 10 s with the first request
    renewal.tick(connected=True)
    assert csr_key(sent[1]).public_numbers() != csr_key(sent[0]).public_numbers()  # type: ignore[attr-defined]
    expired = refused | {"reason": "expired", "detail": "re-enrol"}
    renewal.on_answer(protocol.encode("renew_answer", expired, ts=0))
    clock.t += 3600
    renewal.tick(connected=True)
    assert len(sent) == 2 and renewal.stopped_reason == "re-enrol"


def test_a_new_certificate_the_broker_refuses_is_dropped(device) -> None:
    ca, renewal, clock, sent = device
    clock.t = renewal.due_at()
    renewal.tick(connected=True)
    renewal.on_answer(answer(ca, sent[0]))
    renewal.switching()
    cert, key = renewal.switch_failed("refused: not authorised")
    assert (cert.name, key.name) == ("device.crt", "device.key")
    assert not any((renewal.directory / n).exists() for n in (NEXT_CERT, NEXT_KEY, NEXT_CA))


def test_a_hint_asks_now_and_a_cut_promotion_is_finished_at_start(device) -> None:
    ca, renewal, _, sent = device
    renewal.on_answer(protocol.encode("renew_hint", {"reason": "ca_rotation"}, ts=0))
    renewal.tick(connected=True)  # long before it is due
    assert len(sent) == 1
    renewal.on_answer(answer(ca, sent[0]))
    d = renewal.directory
    (d / NEXT_KEY).replace(d / "device.key")  # a crash between the two renames
    again = CertRenewal(d, "dev-1", sent.append)  # type: ignore[arg-type]
    identity = DeviceIdentity.load_or_create(d, "dev-1")
    assert again.renewed == 0 and not (d / NEXT_CERT).exists()
    cert = x509.load_pem_x509_certificate(identity.cert_path.read_bytes())
    assert cert.issuer == ca.certificate.subject  # device.crt is the new one, for device.key
    identity.store_certificate(identity.cert_path.read_bytes(), ca.ca_pem)  # key matches
