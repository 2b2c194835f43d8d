"""The device's own identity: its private key, its CSR, the certificate the hub issues.

The key pair is made on the device at first use and the private key never leaves it
(mode 0600), or it lives in a PKCS#11 token and never leaves that (``key = "pkcs11:..."`` in
the agent's config: agent/token_key.py, :meth:`DeviceIdentity.load`). Enrolment sends
:meth:`DeviceIdentity.csr_pem` to the hub, which returns a
client certificate signed by its CA (hub/trust/pki.py); :meth:`DeviceIdentity.store_certificate`
checks that certificate before the agent ever presents it to the broker. Files::

    device.key   EC P-256 private key (PKCS#8 PEM, mode 0600); absent for a token key
    device.crt   the client certificate: CN = device id, signed by the hub's CA
    ca.crt       the hub's CA: the broker's server certificate must chain to it

Exceptions::

    IdentityError(reason, detail)
        bad_device_id   not a valid protocol device id
        bad_key         device.key is unreadable or not an EC P-256 key
        bad_cert        the certificate or CA does not parse
        wrong_key       the certificate is for another key pair
        wrong_identity  the certificate names another device
        wrong_ca        the certificate is not signed by the given CA
        expired         the certificate is past its not-after date
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from agent.token_key import TokenKey
from shared.atomic import write_atomic
from shared.pkcs11 import TokenKeyUri
from shared.protocol import is_device_id

__all__ = ["DeviceIdentity", "IdentityError"]

KEY_FILE: Final = "device.key"
CERT_FILE: Final = "device.crt"
CA_FILE: Final = "ca.crt"


class IdentityError(ValueError):
    """The device's identity files are missing, broken, or do not belong together.

    Attributes:
        reason: a stable, short code (``wrong_key``, ``wrong_ca``, ...).
        detail: what exactly was wrong.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class DeviceIdentity:
    """The device's key pair and certificate in one directory."""

    def __init__(
        self, directory: Path, device_id: str, key: ec.EllipticCurvePrivateKey | TokenKey
    ) -> None:
        self.directory = directory
        self.device_id = device_id
        self._key = key

    @classmethod
    def load(cls, directory: Path, device_id: str, key_uri: str = "") -> DeviceIdentity:
        """The identity whose key is ``key_uri`` (a ``pkcs11:`` URI), or the key file.

        Raises:
            IdentityError: ``bad_device_id``, ``bad_key``.
            Pkcs11Error: the token, its PIN or the key is not usable (shared/pkcs11.py).
        """
        if not key_uri:
            return cls.load_or_create(directory, device_id)
        if not is_device_id(device_id):
            raise IdentityError("bad_device_id", f"{device_id!r} is not a valid device id")
        key = TokenKey(TokenKeyUri.parse(key_uri))
        Path(directory).mkdir(parents=True, exist_ok=True)
        return cls(Path(directory), device_id, key)

    @property
    def in_token(self) -> bool:
        """Whether the private key is in a PKCS#11 token (no key file to hand to ``ssl``)."""
        return isinstance(self._key, TokenKey)

    @classmethod
    def load_or_create(cls, directory: Path, device_id: str) -> DeviceIdentity:
        """Load the device's key from ``directory``, or make one there on first use.

        Raises:
            IdentityError: ``bad_device_id``, or ``bad_key`` for an unusable key file.
        """
        if not is_device_id(device_id):
            raise IdentityError("bad_device_id", f"{device_id!r} is not a valid device id")
        directory = Path(directory)
        key_path = directory / KEY_FILE
        if key_path.exists():
            return cls(directory, device_id, _load_key(key_path))
        directory.mkdir(parents=True, exist_ok=True)
        key = ec.generate_private_key(ec.SECP256R1())
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        write_atomic(key_path, pem, mode=0o600)
        return cls(directory, device_id, key)

    @property
    def key_path(self) -> Path:
        return self.directory / KEY_FILE

    @property
    def cert_path(self) -> Path:
        return self.directory / CERT_FILE

    @property
    def ca_path(self) -> Path:
        return self.directory / CA_FILE

    @property
    def has_certificate(self) -> bool:
        return self.cert_path.exists() and self.ca_path.exists()

    def csr_pem(self) -> bytes:
        """A certificate signing request for this device (CN = device id), PEM."""
        if isinstance(self._key, TokenKey):
            return self._key.csr_pem(self.device_id)
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, self.device_id)])
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(subject)
            .sign(self._key, hashes.SHA256())
        )
        return csr.public_bytes(serialization.Encoding.PEM)

    def store_certificate(self, cert_pem: bytes, ca_pem: bytes) -> None:
        """Check the certificate the hub issued, then keep it and the CA (atomically).

        Raises:
            IdentityError: ``bad_cert``, ``expired``, ``wrong_key``, ``wrong_identity`` or
                ``wrong_ca``.
        """
        try:
            cert = x509.load_pem_x509_certificate(cert_pem)
            ca = x509.load_pem_x509_certificate(ca_pem)
        except ValueError as e:
            raise IdentityError("bad_cert", f"not a PEM certificate: {e}") from e
        if cert.not_valid_after_utc <= dt.datetime.now(dt.UTC):
            raise IdentityError("expired", f"the certificate expired {cert.not_valid_after_utc}")
        if _spki(cert.public_key()) != _spki(self._key.public_key()):
            raise IdentityError("wrong_key", "the certificate is for another key pair")
        cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        names = [c.value if isinstance(c.value, str) else c.value.decode() for c in cns]
        if names != [self.device_id]:
            raise IdentityError("wrong_identity", f"certificate for {names}, not {self.device_id}")
        try:
            cert.verify_directly_issued_by(ca)
        except (ValueError, TypeError, InvalidSignature) as e:
            raise IdentityError("wrong_ca", f"not signed by {ca.subject.rfc4514_string()}") from e
        write_atomic(self.ca_path, ca.public_bytes(serialization.Encoding.PEM), mode=0o644)
        write_atomic(self.cert_path, cert.public_bytes(serialization.Encoding.PEM), mode=0o644)


def _load_key(path: Path) -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as e:
        raise IdentityError("bad_key", f"cannot read {path}: {e}") from e
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise IdentityError("bad_key", f"{path} is not an EC P-256 private key")
    return key


def _spki(public_key: object) -> bytes:
    if not isinstance(public_key, ec.EllipticCurvePublicKey):
        return b""
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
