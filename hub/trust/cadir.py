"""What the hub's CA keeps beside its own key: CRLs, and the CAs a rotation retired.

During a CA rotation (hub/trust/ca_rotation.py, ADR 0035) the CA that issued the fleet's
certificates until then is *retired*: it issues nothing more, but the broker and the
devices still trust it until every device has renewed onto the new CA, and it still
signs a CRL of its own, because Mosquitto refuses a client whose issuer has no CRL in
``crlfile`` (measured: tests/test_broker_rotation.py). Files::

    retired/<ski>.key   a retired CA's key (mode 0600), kept to sign its CRLs
    retired/<ski>.crt   its certificate

``<ski>`` is the hex of the CA certificate's subject key identifier.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from hub.trust.csr import key_pem, public_der
from hub.trust.pki_error import PkiError
from shared.atomic import write_atomic

__all__ = ["RETIRED_DIR", "Authority", "ca_id", "crl_pem", "load_retired", "retire"]

RETIRED_DIR = "retired"
REVOCATION_REASONS = {flag.name: flag for flag in x509.ReasonFlags}

Authority = tuple[ec.EllipticCurvePrivateKey, x509.Certificate]


def ca_id(cert: x509.Certificate) -> str:
    """A CA certificate's subject key identifier, hex: how the ledger names an issuer."""
    ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return ski.digest.hex()


def load_ledger(path: Path) -> dict[str, Any]:
    ledger: dict[str, Any] = {"issued": {}, "revoked": {}, "services": [], "crl_number": 0}
    if path.exists():
        try:
            ledger.update(json.loads(path.read_bytes()))
        except (OSError, ValueError) as e:
            raise PkiError("bad_ca", f"cannot read the ledger {path}: {e}") from e
    return ledger


def finish_rotation_write(directory: Path) -> None:
    """``ca.key.new`` left by a rotation cut short (CertificateAuthority.rotate writes it,
    then ca.crt, then renames it over ca.key): finish the rename when it is ca.crt's key."""
    new = directory / "ca.key.new"
    if not new.exists():
        return
    try:
        key = serialization.load_pem_private_key(new.read_bytes(), password=None)
        cert = x509.load_pem_x509_certificate((directory / "ca.crt").read_bytes())
    except (OSError, ValueError):
        new.unlink()  # the rotation never got to write its certificate
        return
    if public_der(key.public_key()) == public_der(cert.public_key()):
        os.replace(new, directory / "ca.key")
    else:
        new.unlink()


def authority_key_id(cert: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


def load_retired(directory: Path) -> list[Authority]:
    """The retired CAs in ``directory``, oldest certificate first.

    Raises:
        PkiError: ``bad_ca`` for a key or certificate that cannot be read or do not match.
    """
    found: list[Authority] = []
    for cert_path in sorted((directory / RETIRED_DIR).glob("*.crt")):
        try:
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
            key = serialization.load_pem_private_key(
                cert_path.with_suffix(".key").read_bytes(), password=None
            )
        except (OSError, ValueError) as e:
            raise PkiError("bad_ca", f"cannot read the retired CA {cert_path}: {e}") from e
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise PkiError("bad_ca", f"{cert_path.with_suffix('.key')} is not an EC key")
        found.append((key, cert))
    return sorted(found, key=lambda a: a[1].not_valid_before_utc)


def retire(directory: Path, authority: Authority) -> None:
    """Keep ``authority`` under ``retired/`` (key first: a certificate there has its key)."""
    key, cert = authority
    folder = directory / RETIRED_DIR
    folder.mkdir(mode=0o700, exist_ok=True)
    write_atomic(folder / f"{ca_id(cert)}.key", key_pem(key), mode=0o600)
    write_atomic(folder / f"{ca_id(cert)}.crt", cert.public_bytes(serialization.Encoding.PEM))


def drop_retired(directory: Path, cert: x509.Certificate) -> None:
    """Forget a retired CA: its key and certificate are deleted."""
    folder = directory / RETIRED_DIR
    (folder / f"{ca_id(cert)}.crt").unlink(missing_ok=True)
    (folder / f"{ca_id(cert)}.key").unlink(missing_ok=True)


def crl_pem(
    authority: Authority,
    revoked: Mapping[str, Mapping[str, Any]],
    number: int,
    *,
    now: dt.datetime,
    skew: dt.timedelta,
    validity: dt.timedelta,
) -> bytes:
    """A CRL signed by ``authority`` listing every revoked serial (PEM). Serials another
    CA issued are listed too: harmless (serials are random), and one list to keep."""
    key, cert = authority
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(cert.subject)
        .last_update(now - skew)
        .next_update(now + validity)
        .add_extension(x509.CRLNumber(number), critical=False)
        .add_extension(authority_key_id(cert), critical=False)
    )
    for serial, entry in revoked.items():
        rb = (
            x509.RevokedCertificateBuilder()
            .serial_number(int(serial))
            .revocation_date(dt.datetime.fromisoformat(entry["revoked_at"]))
        )
        if entry["reason"] != "unspecified":  # RFC 5280 5.3.1: omit it when unspecified
            flag = REVOCATION_REASONS[entry["reason"]]
            rb = rb.add_extension(x509.CRLReason(flag), critical=False)
        builder = builder.add_revoked_certificate(rb.build())
    crl = builder.sign(key, hashes.SHA256())
    return crl.public_bytes(serialization.Encoding.PEM)
