"""The shapes of the certificates the hub's CA (hub/trust/pki.py) signs: the CA itself,
TLS clients (devices, the hub, its workers) and the TLS server (the broker)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from ipaddress import ip_address

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["client_extensions", "self_signed_ca", "server_extensions"]


def self_signed_ca(
    key: ec.EllipticCurvePrivateKey, name: str, not_before: dt.datetime, not_after: dt.datetime
) -> x509.Certificate:
    """The CA's own certificate: may sign leaf certificates and CRLs, nothing below."""
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    usage = x509.KeyUsage(
        digital_signature=False,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
    )
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(usage, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )


def leaf_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )


def client_extensions() -> list[tuple[x509.ExtensionType, bool]]:
    """A TLS client certificate: a device, the hub, an ingest worker."""
    return [
        (x509.BasicConstraints(ca=False, path_length=None), True),
        (leaf_usage(), True),
        (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False),
    ]


def server_extensions(server_names: Sequence[str]) -> list[tuple[x509.ExtensionType, bool]]:
    """A TLS server certificate (the broker) for these DNS names and IP addresses."""
    names: list[x509.GeneralName] = []
    for name in server_names:
        try:
            names.append(x509.IPAddress(ip_address(name)))
        except ValueError:
            names.append(x509.DNSName(name))
    return [
        (x509.BasicConstraints(ca=False, path_length=None), True),
        (leaf_usage(), True),
        (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False),
        (x509.SubjectAlternativeName(names), False),
    ]
