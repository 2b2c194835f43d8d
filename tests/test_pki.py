"""The hub's CA (hub/trust/pki.py) and the device's identity (agent/identity.py), no broker."""

from __future__ import annotations

import datetime as dt
import stat
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from pg_schemas import hub_engine

from agent.identity import DeviceIdentity, IdentityError
from hub.trust.identities import CRL_REPUBLISH_S, Identities
from hub.trust.pki import CRL_VALIDITY, CertificateAuthority, PkiError


@pytest.fixture
def ca(tmp_path: Path) -> CertificateAuthority:
    return CertificateAuthority.open_or_init(tmp_path / "pki")


def make_csr(cn: str | list[str], key: object | None = None) -> bytes:
    key = key or ec.generate_private_key(ec.SECP256R1())
    names = [cn] if isinstance(cn, str) else cn
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, n) for n in names])
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    csr = x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, algorithm)  # type: ignore[arg-type]
    return csr.public_bytes(serialization.Encoding.PEM)


def tampered_csr() -> bytes:
    """A CSR for dev-a whose subject was changed to dev-b after signing."""
    key = ec.generate_private_key(ec.SECP256R1())
    der = x509.load_pem_x509_csr(make_csr("dev-a", key)).public_bytes(serialization.Encoding.DER)
    assert der.count(b"dev-a") == 1
    forged = x509.load_der_x509_csr(der.replace(b"dev-a", b"dev-b"))
    return forged.public_bytes(serialization.Encoding.PEM)


# --------------------------------------------------------------------------- the CA


def test_new_ca_keeps_its_key_private_and_is_a_ca(tmp_path: Path) -> None:
    ca = CertificateAuthority.open_or_init(tmp_path / "pki")

    assert stat.S_IMODE((tmp_path / "pki").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "pki" / "ca.key").stat().st_mode) == 0o600
    assert (tmp_path / "pki" / "ledger.json").exists()
    cert = x509.load_pem_x509_certificate(ca.ca_pem)
    basic = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert basic.critical and basic.value.ca and basic.value.path_length == 0
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign and usage.crl_sign
    assert cert.not_valid_after_utc - cert.not_valid_before_utc > dt.timedelta(days=3649)
    cert.verify_directly_issued_by(cert)  # self-signed


def test_issue_device_from_the_devices_own_csr(ca: CertificateAuthority, tmp_path: Path) -> None:
    identity = DeviceIdentity.load_or_create(tmp_path / "dev", "pump-7")

    issued = ca.issue_device(identity.csr_pem(), "pump-7")

    cert = x509.load_pem_x509_certificate(issued.cert_pem)
    assert issued.subject == "pump-7" and cert.serial_number == issued.serial
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "pump-7"
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert cert.not_valid_after_utc == issued.not_after
    assert (
        dt.timedelta(days=364)
        < issued.not_after - dt.datetime.now(dt.UTC)
        <= dt.timedelta(days=365)
    )
    cert.verify_directly_issued_by(x509.load_pem_x509_certificate(ca.ca_pem))
    assert ca.serials_for("pump-7") == [issued.serial]
    identity.store_certificate(issued.cert_pem, ca.ca_pem)
    assert identity.has_certificate


def test_ed25519_device_key_is_accepted(ca: CertificateAuthority) -> None:
    issued = ca.issue_device(make_csr("dev-ed", ed25519.Ed25519PrivateKey.generate()), "dev-ed")
    cert = x509.load_pem_x509_certificate(issued.cert_pem)
    assert isinstance(cert.public_key(), ed25519.Ed25519PublicKey)


REFUSALS: list[tuple[str, Callable[[], bytes], str, str]] = [
    # (case, CSR, device id enrolled, reason)
    ("not a CSR", lambda: b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n", "dev-a", "bad_csr"),
    ("oversized", lambda: b"A" * 20_000, "dev-a", "bad_csr"),
    ("CN of another device", lambda: make_csr("dev-b"), "dev-a", "identity_mismatch"),
    ("CN differs in case", lambda: make_csr("Dev-A"), "dev-a", "identity_mismatch"),
    ("two CNs", lambda: make_csr(["dev-a", "dev-b"]), "dev-a", "bad_csr"),
    ("subject changed after signing", tampered_csr, "dev-b", "bad_signature"),
    ("the hub's name", lambda: make_csr("edgefleet-hub"), "edgefleet-hub", "reserved_identity"),
    (
        "the broker's name",
        lambda: make_csr("edgefleet-broker"),
        "edgefleet-broker",
        "reserved_identity",
    ),
    (
        "an ingest worker's name, before it is issued",
        lambda: make_csr("edgefleet-ingest-5"),
        "edgefleet-ingest-5",
        "reserved_identity",
    ),
    (
        "the hub's prefix in another case",
        lambda: make_csr("EDGEFLEET-x"),
        "EDGEFLEET-x",
        "reserved_identity",
    ),
    ("wildcard in the id", lambda: make_csr("dev+"), "dev+", "bad_identity"),
    ("slash in the id", lambda: make_csr("a/b"), "a/b", "bad_identity"),
    (
        "RSA key",
        lambda: make_csr("dev-a", rsa.generate_private_key(public_exponent=65537, key_size=2048)),
        "dev-a",
        "weak_key",
    ),
    (
        "P-384 key",
        lambda: make_csr("dev-a", ec.generate_private_key(ec.SECP384R1())),
        "dev-a",
        "weak_key",
    ),
]


@pytest.mark.parametrize(
    ("csr", "device_id", "reason"), [r[1:] for r in REFUSALS], ids=[r[0] for r in REFUSALS]
)
def test_refused_csrs(
    ca: CertificateAuthority, csr: Callable[[], bytes], device_id: str, reason: str
) -> None:
    with pytest.raises(PkiError) as e:
        ca.issue_device(csr(), device_id)
    assert e.value.reason == reason
    assert ca.serials_for(device_id) == []


def test_a_service_name_is_reserved_once_issued(ca: CertificateAuthority) -> None:
    ca.issue_service("hub-eu-1")
    with pytest.raises(PkiError, match="reserved_identity"):
        ca.issue_device(make_csr("hub-eu-1"), "hub-eu-1")


def test_a_service_name_a_device_holds_is_not_issued(ca: CertificateAuthority) -> None:
    device = ca.issue_device(make_csr("hub-eu-2"), "hub-eu-2")
    with pytest.raises(PkiError) as e:
        ca.issue_service("hub-eu-2")
    assert e.value.reason == "identity_held" and format(device.serial, "x") in e.value.detail
    assert ca.serials_for("hub-eu-2") == [device.serial]
    ca.revoke(device.serial, "cessation_of_operation")  # freed: a revoked certificate
    ca.issue_service("hub-eu-2")


def test_service_certificates(ca: CertificateAuthority) -> None:
    server, server_key = ca.issue_service(
        "edgefleet-broker", server_names=["localhost", "127.0.0.1"]
    )
    hub, hub_key = ca.issue_service("edgefleet-hub")

    cert = x509.load_pem_x509_certificate(server.cert_pem)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    hub_cert = x509.load_pem_x509_certificate(hub.cert_pem)
    eku = hub_cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    for pem, c in ((server_key, cert), (hub_key, hub_cert)):
        key = serialization.load_pem_private_key(pem, password=None)
        assert key.public_key() == c.public_key()


# --------------------------------------------------------------------------- revocation


def crl_of(ca: CertificateAuthority) -> x509.CertificateRevocationList:
    crl = x509.load_pem_x509_crl(ca.crl_pem())
    assert crl.is_signature_valid(x509.load_pem_x509_certificate(ca.ca_pem).public_key())  # type: ignore[arg-type]
    return crl


def test_revoked_serial_is_in_the_signed_crl(ca: CertificateAuthority) -> None:
    a = ca.issue_device(make_csr("dev-a"), "dev-a")
    b = ca.issue_device(make_csr("dev-b"), "dev-b")
    assert crl_of(ca).get_revoked_certificate_by_serial_number(a.serial) is None

    ca.revoke(a.serial, "key_compromise")

    crl = crl_of(ca)
    entry = crl.get_revoked_certificate_by_serial_number(a.serial)
    assert entry is not None
    assert entry.extensions.get_extension_for_class(x509.CRLReason).value.reason == (
        x509.ReasonFlags.key_compromise
    )
    assert crl.get_revoked_certificate_by_serial_number(b.serial) is None
    assert ca.is_revoked(a.serial) and not ca.is_revoked(b.serial)
    assert dt.timedelta(days=6) < crl.next_update_utc - dt.datetime.now(dt.UTC) <= dt.timedelta(7)  # type: ignore[operator]


def test_revoke_is_idempotent(ca: CertificateAuthority) -> None:
    a = ca.issue_device(make_csr("dev-a"), "dev-a")
    ca.revoke(a.serial, "superseded")
    first = ca.revoked()

    ca.revoke(a.serial, "key_compromise")

    assert ca.revoked() == first
    assert [(r.serial, r.reason, r.subject) for r in first] == [(a.serial, "superseded", "dev-a")]
    assert len(list(crl_of(ca))) == 1


def test_unknown_revocation_reason_is_refused(ca: CertificateAuthority) -> None:
    with pytest.raises(PkiError, match="bad_reason"):
        ca.revoke(1, "because")
    assert ca.revoked() == []


def test_reopened_ca_keeps_key_and_ledger(tmp_path: Path) -> None:
    ca = CertificateAuthority.open_or_init(tmp_path / "pki")
    a = ca.issue_device(make_csr("dev-a"), "dev-a")
    ca.revoke(a.serial)

    again = CertificateAuthority.open_or_init(tmp_path / "pki")

    assert again.ca_pem == ca.ca_pem
    assert again.is_revoked(a.serial)
    assert again.serials_for("dev-a") == [a.serial]
    assert crl_of(again).get_revoked_certificate_by_serial_number(a.serial) is not None


def test_ca_with_a_foreign_key_is_refused(tmp_path: Path) -> None:
    CertificateAuthority.open_or_init(tmp_path / "pki")
    other = ec.generate_private_key(ec.SECP256R1())
    (tmp_path / "pki" / "ca.key").write_bytes(
        other.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    with pytest.raises(PkiError, match="bad_ca"):
        CertificateAuthority.open_or_init(tmp_path / "pki")


def test_concurrent_issue_and_revoke_lose_nothing(ca: CertificateAuthority) -> None:
    csrs = {f"dev-{i}": make_csr(f"dev-{i}") for i in range(24)}
    serials: list[int] = []

    def enrol(names: list[str]) -> None:
        for name in names:
            issued = ca.issue_device(csrs[name], name)
            serials.append(issued.serial)
            ca.revoke(issued.serial)

    names = sorted(csrs)
    threads = [threading.Thread(target=enrol, args=(names[i::4],)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    reopened = CertificateAuthority.open_or_init(ca.directory)
    assert sorted(r.serial for r in reopened.revoked()) == sorted(serials)
    assert len(serials) == 24


# --------------------------------------------------------------------------- device side


def test_device_key_is_private_and_stable(tmp_path: Path) -> None:
    first = DeviceIdentity.load_or_create(tmp_path / "dev", "pump-7")
    assert stat.S_IMODE(first.key_path.stat().st_mode) == 0o600
    assert not first.has_certificate

    again = DeviceIdentity.load_or_create(tmp_path / "dev", "pump-7")

    def public_key(csr_pem: bytes) -> object:
        return x509.load_pem_x509_csr(csr_pem).public_key()

    assert public_key(again.csr_pem()) == public_key(first.csr_pem())
    csr = x509.load_pem_x509_csr(first.csr_pem())
    assert csr.is_signature_valid
    assert csr.subject.rfc4514_string() == "CN=pump-7"


def test_device_refuses_a_bad_id(tmp_path: Path) -> None:
    with pytest.raises(IdentityError, match="bad_device_id"):
        DeviceIdentity.load_or_create(tmp_path / "dev", "ef/v1/#")


def test_device_refuses_a_certificate_for_another_key(
    ca: CertificateAuthority, tmp_path: Path
) -> None:
    mine = DeviceIdentity.load_or_create(tmp_path / "mine", "pump-7")
    impostor = DeviceIdentity.load_or_create(tmp_path / "other", "pump-7")
    issued = ca.issue_device(impostor.csr_pem(), "pump-7")

    with pytest.raises(IdentityError) as e:
        mine.store_certificate(issued.cert_pem, ca.ca_pem)

    assert e.value.reason == "wrong_key"
    assert not mine.cert_path.exists() and not mine.ca_path.exists()


def test_device_refuses_a_certificate_naming_another_device(
    ca: CertificateAuthority, tmp_path: Path
) -> None:
    mine = DeviceIdentity.load_or_create(tmp_path / "dev", "pump-7")
    same_key_other_name = DeviceIdentity.load_or_create(tmp_path / "dev", "pump-8")
    issued = ca.issue_device(same_key_other_name.csr_pem(), "pump-8")

    with pytest.raises(IdentityError) as e:
        mine.store_certificate(issued.cert_pem, ca.ca_pem)

    assert e.value.reason == "wrong_identity"
    assert not mine.has_certificate


def test_device_refuses_a_certificate_from_another_ca(
    ca: CertificateAuthority, tmp_path: Path
) -> None:
    identity = DeviceIdentity.load_or_create(tmp_path / "dev", "pump-7")
    rogue = CertificateAuthority.open_or_init(tmp_path / "rogue")  # same CA name, other key
    issued = rogue.issue_device(identity.csr_pem(), "pump-7")

    with pytest.raises(IdentityError) as e:
        identity.store_certificate(issued.cert_pem, ca.ca_pem)

    assert e.value.reason == "wrong_ca"
    assert not identity.has_certificate
    identity.store_certificate(issued.cert_pem, rogue.ca_pem)  # the matching CA is fine
    assert identity.cert_path.read_bytes() == issued.cert_pem


def test_device_refuses_garbage(ca: CertificateAuthority, tmp_path: Path) -> None:
    identity = DeviceIdentity.load_or_create(tmp_path / "dev", "pump-7")
    with pytest.raises(IdentityError, match="bad_cert"):
        identity.store_certificate(b"not a certificate", ca.ca_pem)


# ---------------------------------------------------------------- the hub's CRL publication


@pytest.mark.parametrize(
    ("reload", "notice"),
    [
        ((), "no reload command is configured"),
        (("false",), "the broker reload (false) failed"),
        (("true",), "CRL written and the broker reloaded (true)"),
    ],
)
def test_a_revocation_says_what_the_broker_was_told(
    tmp_path: Path, ca: CertificateAuthority, reload: tuple[str, ...], notice: str
) -> None:
    engine = hub_engine(tmp_path)
    ids = Identities(engine, ca, crl_path=tmp_path / "crl.pem", reload_command=reload)
    ids.issue("dev-a", make_csr("dev-a"), reenrol=False)
    ids.revoke("dev-a", "key_compromise", by=None)
    assert notice in ids.broker_notice
    crl = crl_of_file(tmp_path / "crl.pem")
    assert crl.get_revoked_certificate_by_serial_number(ca.serials_for("dev-a")[0]) is not None


def test_the_crl_is_reissued_daily_before_it_runs_out(
    tmp_path: Path, ca: CertificateAuthority
) -> None:
    engine = hub_engine(tmp_path)
    marker = tmp_path / "reloaded"
    ids = Identities(
        engine, ca, crl_path=tmp_path / "crl.pem", reload_command=("touch", str(marker))
    )
    assert ids.refresh_crl()  # never written: write it now
    first = crl_of_file(tmp_path / "crl.pem")
    marker.unlink()
    assert not ids.refresh_crl() and not marker.exists()  # written today: nothing to do
    ids._crl_written -= CRL_REPUBLISH_S + 1  # a day later
    assert ids.refresh_crl() and marker.exists()
    again = crl_of_file(tmp_path / "crl.pem")
    assert again.next_update_utc >= first.next_update_utc
    fresh = dt.datetime.now(dt.UTC) + CRL_VALIDITY  # valid 7 days from the re-issue
    assert abs(again.next_update_utc - fresh) < dt.timedelta(minutes=1)


def crl_of_file(path: Path) -> x509.CertificateRevocationList:
    return x509.load_pem_x509_crl(path.read_bytes())
