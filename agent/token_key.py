"""The device's key in a PKCS#11 token (``key = "pkcs11:..."`` in the agent's config).

The key pair is made in the token by the operator (``pkcs11-tool --keypairgen``, EC
P-256, docs/devices.md) and never leaves it: the agent reads its public half and asks the
token to sign its certificate requests (enrolment, renewal). ``cryptography`` signs only
with keys it holds, so the request is assembled here (asn1crypto, which python-pkcs11
brings) and the token signs its DER.

What the token cannot do here is the broker's TLS handshake: Python's ``ssl`` loads a
client key only from a file (docs/devices.md, "Keys in a token", says what was measured),
so the daemon refuses ``mqtts`` with a token key, with that reason.
"""

from __future__ import annotations

import hashlib

from cryptography import x509 as cx509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from shared.pkcs11 import Pkcs11Error, TokenKeyUri, find_key_pair, token_session

__all__ = ["TokenKey"]


class TokenKey:
    """An EC P-256 key pair in a token, found (and the PIN tried) when constructed."""

    def __init__(self, uri: TokenKeyUri) -> None:
        """Open the token, log in and find the key.

        Raises:
            Pkcs11Error: the token, PIN or key is not usable (its ``reason`` says which).
        """
        self.uri = uri
        with token_session(uri) as session:
            _, public = find_key_pair(session, uri)
        if not isinstance(public.curve, ec.SECP256R1):
            raise Pkcs11Error("no_key", f"{uri.key!r} is {public.curve.name}, not EC P-256")
        self._public = public

    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self._public

    def sign_sha256(self, data: bytes) -> bytes:
        """An ECDSA-SHA256 signature of ``data`` (DER), made in the token.

        Raises:
            Pkcs11Error: the token went away or refused.
        """
        import pkcs11
        import pkcs11.util.ec

        digest = hashlib.sha256(data).digest()
        with token_session(self.uri) as session:
            private, _ = find_key_pair(session, self.uri)
            raw = private.sign(digest, mechanism=pkcs11.Mechanism.ECDSA)
        return bytes(pkcs11.util.ec.encode_ecdsa_signature(raw))

    def csr_pem(self, common_name: str) -> bytes:
        """A PKCS#10 request for ``CN=common_name`` with this key, signed by the token."""
        from asn1crypto import csr, keys, x509

        spki = self._public.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        info = csr.CertificationRequestInfo(
            {
                "version": "v1",
                "subject": x509.Name.build({"common_name": common_name}),
                "subject_pk_info": keys.PublicKeyInfo.load(spki),
                "attributes": [],
            }
        )
        request = csr.CertificationRequest(
            {
                "certification_request_info": info,
                "signature_algorithm": {"algorithm": "sha256_ecdsa"},
                "signature": self.sign_sha256(info.dump()),
            }
        )
        built = cx509.load_der_x509_csr(request.dump())
        if not built.is_signature_valid:  # a token that signs with another key than it says
            raise Pkcs11Error("token_error", f"{self.uri.key!r}: the token's signature is invalid")
        return built.public_bytes(serialization.Encoding.PEM)
