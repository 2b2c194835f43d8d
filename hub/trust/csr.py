"""The hub CA's checks of what it is given: a CSR, its subject, its key (hub/trust/pki.py).

Keys: ECDSA P-256 with SHA-256 everywhere; a device CSR may carry an Ed25519 key (Mosquitto
2.0.11 on OpenSSL 3 accepts those client certificates); RSA and other curves are refused
(``weak_key``) to keep one small, fast key type on the devices.
"""

from __future__ import annotations

import hashlib
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID

from hub.trust.pki_error import PkiError

__all__ = [
    "MAX_CSR_BYTES",
    "check_key",
    "key_id",
    "key_pem",
    "parse_csr",
    "public_der",
    "single_cn",
]

MAX_CSR_BYTES = 16 * 2**10  # bytes; a P-256 CSR is about 400


def parse_csr(csr_pem: bytes) -> x509.CertificateSigningRequest:
    if len(csr_pem) > MAX_CSR_BYTES:
        raise PkiError("bad_csr", f"{len(csr_pem)} bytes, at most {MAX_CSR_BYTES}")
    try:
        return x509.load_pem_x509_csr(csr_pem)
    except ValueError as e:
        raise PkiError("bad_csr", f"not a PEM certificate signing request: {e}") from e


def single_cn(name: x509.Name) -> str:
    cns = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    if len(cns) != 1:
        raise PkiError("bad_csr", f"the subject needs exactly one common name, has {len(cns)}")
    value = cns[0].value
    return value if isinstance(value, str) else value.decode(errors="replace")


def check_key(public_key: Any) -> None:
    if isinstance(public_key, ed25519.Ed25519PublicKey):
        return
    if isinstance(public_key, ec.EllipticCurvePublicKey) and isinstance(
        public_key.curve, ec.SECP256R1
    ):
        return
    kind = type(public_key).__name__
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        kind = f"EC {public_key.curve.name}"
    raise PkiError("weak_key", f"need an EC P-256 (or Ed25519) key, got {kind}")


def public_der(public_key: Any) -> bytes:
    der: bytes = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return der


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def key_id(public_key: Any) -> str:
    """The SHA-256 (hex) of a public key's SubjectPublicKeyInfo: how the ledger names a key."""
    return hashlib.sha256(public_der(public_key)).hexdigest()
