"""Certificate renewal on the hub (hub/trust/renewal.py): what it issues, what it refuses
and why, what it records and audits; and the agent's renewal schedule (shared/renewal.py).

The hub side runs against the real CA and a real database (the audit log); the messages
go through the real protocol codec. The broker and the agent daemon are in
tests/test_renewal_fleet.py.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pg_schemas import hub_engine
from sqlmodel import select

from hub.store.tables import AuditRecord, session
from hub.trust.pki import CertificateAuthority
from hub.trust.renewal import Renewals
from shared import protocol
from shared.renewal import renew_at


def csr_for(key: ec.EllipticCurvePrivateKey, cn: str) -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    csr = x509.CertificateSigningRequestBuilder().subject_name(name).sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM)


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def ask(renewals: Renewals, device_id: str, csr: bytes) -> dict[str, object]:
    """Send a renew_request through the codec; the decoded answer's body."""
    request = protocol.decode(protocol.encode("renew_request", {"csr": csr.decode()}, ts=1.0))
    payload = renewals.answer(device_id, request)
    answer = protocol.decode(payload, expect=protocol.TOPIC_TYPES["cert"])
    assert answer.body["request"] == request.id
    return dict(answer.body)


@pytest.fixture
def hub(tmp_path: Path) -> tuple[CertificateAuthority, Renewals, ec.EllipticCurvePrivateKey]:
    ca = CertificateAuthority.open_or_init(tmp_path / "pki")
    key = new_key()
    ca.issue_device(csr_for(key, "dev-1"), "dev-1")  # enrolled
    ca.issue_device(csr_for(new_key(), "dev-2"), "dev-2")
    return ca, Renewals(ca, hub_engine(tmp_path), min_interval_s=0), key


def audit(renewals: Renewals) -> list[AuditRecord]:
    assert renewals.engine is not None
    with session(renewals.engine) as s:
        return list(s.exec(select(AuditRecord).where(AuditRecord.action == "device.renew")))


def test_a_renewal_issues_a_certificate_for_the_new_key_records_and_audits_it(hub) -> None:
    ca, renewals, _ = hub
    key = new_key()
    body = ask(renewals, "dev-1", csr_for(key, "dev-1"))
    assert body["ok"] is True and body["ca_bundle"] == ca.ca_pem.decode()
    cert = x509.load_pem_x509_certificate(str(body["certificate"]).encode())
    assert cert.public_key().public_numbers() == key.public_key().public_numbers()
    cert.verify_directly_issued_by(ca.certificate)
    history = ca.device_history("dev-1")
    assert [h["via"] for h in history] == ["enrol", "renewal"]
    assert history[-1]["serial"] == cert.serial_number
    # the old certificate stays valid (not revoked) until it expires
    assert not history[0]["revoked"] and len(ca.device_serials("dev-1")) == 2
    [record] = audit(renewals)
    assert (record.outcome, record.target, record.method) == ("ok", "dev-1", "MQTT")
    assert record.after == {"serial": format(cert.serial_number, "x")}


def test_a_retry_with_the_same_new_key_gets_the_same_certificate(hub) -> None:
    ca, renewals, _ = hub
    key = new_key()
    first = ask(renewals, "dev-1", csr_for(key, "dev-1"))
    again = ask(renewals, "dev-1", csr_for(key, "dev-1"))  # the first answer was lost
    assert again["certificate"] == first["certificate"]
    assert len(ca.device_history("dev-1")) == 2  # nothing new issued


def _tampered(key: ec.EllipticCurvePrivateKey) -> bytes:
    """A CSR whose signature does not match its contents (one byte of it flipped)."""
    der = bytearray(
        x509.load_pem_x509_csr(csr_for(key, "dev-1")).public_bytes(serialization.Encoding.DER)
    )
    der[-5] ^= 0x01
    csr = x509.load_der_x509_csr(bytes(der))
    return csr.public_bytes(serialization.Encoding.PEM)


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("another device's id", "identity_mismatch"),
        ("a service's name", "identity_mismatch"),
        ("the key it connects with", "reused_key"),
        ("a superseded key", "reused_key"),
        ("a wrong signature", "bad_signature"),
        ("not a CSR", "bad_csr"),
        ("a weak key", "weak_key"),
        ("too soon after the last", "too_soon"),
    ],
)
def test_a_bad_renewal_is_refused_with_its_reason_and_audited(hub, case: str, reason: str) -> None:
    ca, renewals, current = hub
    device, csr = "dev-1", csr_for(new_key(), "dev-1")
    if case == "another device's id":
        csr = csr_for(new_key(), "dev-2")
    elif case == "a service's name":
        device, csr = "edgefleet-hub", csr_for(new_key(), "edgefleet-hub")
    elif case == "the key it connects with":
        csr = csr_for(current, "dev-1")
    elif case == "a superseded key":
        # renewed once onto `middle`, then onto another: `middle` is an earlier key now
        middle = new_key()
        assert ask(renewals, "dev-1", csr_for(middle, "dev-1"))["ok"]
        assert ask(renewals, "dev-1", csr_for(new_key(), "dev-1"))["ok"]
        csr = csr_for(middle, "dev-1")
    elif case == "a wrong signature":
        csr = _tampered(new_key())
    elif case == "not a CSR":
        csr = b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"
    elif case == "a weak key":
        csr = csr_for(ec.generate_private_key(ec.SECP384R1()), "dev-1")  # type: ignore[arg-type]
    elif case == "too soon after the last":
        renewals.min_interval_s = 3600
        assert ask(renewals, "dev-1", csr_for(new_key(), "dev-1"))["ok"]
    before = len(ca.device_history("dev-1"))
    body = ask(renewals, device, csr)
    assert body["ok"] is False and body["reason"] == reason, body
    assert body["detail"] and "certificate" not in body
    assert len(ca.device_history("dev-1")) == before  # nothing issued
    denied = [r for r in audit(renewals) if r.outcome == "denied"]
    assert len(denied) == 1 and denied[0].target == device
    assert denied[0].detail is not None and denied[0].detail.startswith(reason)


def test_a_device_whose_certificates_expired_is_told_to_re_enrol(tmp_path: Path) -> None:
    ca = CertificateAuthority.open_or_init(tmp_path / "pki")
    ca.issue_device(csr_for(new_key(), "dev-1"), "dev-1", days=1.5 / 86400)  # 1.5 s
    renewals = Renewals(ca, None, min_interval_s=0)
    deadline = time.monotonic() + 10
    while ca.device_serials("dev-1") and time.monotonic() < deadline:
        time.sleep(0.1)
    body = ask(renewals, "dev-1", csr_for(new_key(), "dev-1"))
    assert body["reason"] == "expired" and "/devices/dev-1/reenrol" in str(body["detail"])


def test_renewal_moments_spread_a_fleet_enrolled_together_and_stay_put() -> None:
    start, end = 1_000_000.0, 1_000_000.0 + 365 * 86400
    moments = [renew_at(start, end, f"dev-{i}", 0xABC) for i in range(200)]
    fractions = sorted((m - start) / (end - start) for m in moments)
    assert fractions[0] >= 2 / 3 - 0.05 and fractions[-1] < 2 / 3 + 0.05
    assert fractions[-1] - fractions[0] > 0.09  # spread over ~the whole 0.1
    assert len({round(m) for m in moments}) == 200  # no two devices in the same second
    assert renew_at(start, end, "dev-7", 0xABC) == moments[7]  # deterministic
    with pytest.raises(ValueError):
        renew_at(start, end, "dev-1", 1, fraction=0.98, spread=0.1)
