"""An online role's key in a PKCS#11 token: securesystemslib's ``HSMSigner``, found by label.

The hub signs timestamp, snapshot, targets and director commands with any
``securesystemslib`` ``Signer``; a key kept in an HSM (or TPM, or SoftHSM2) is signed
through securesystemslib's own ``HSMSigner`` (python-pkcs11; ECDSA P-256 or P-384, so
such a role's key is ``ecdsa-sha2-nistp256`` where the file keys are Ed25519: TUF lets
each key have its own scheme). What this module adds around it:

- the key is named by a ``pkcs11:`` URI with the key's label (shared/pkcs11.py), not by
  the token's numeric object id ``HSMSigner`` wants: the id is read from the token once;
- the token is opened, the PIN tried and the key found when the hub starts, so a token
  that is missing or locked, or a key that is not there, stops the start with its reason
  (a :class:`~shared.pkcs11.Pkcs11Error`), not at the first timestamp re-signing;
- signing takes the process's login lock (a token allows one login per application).

The keystore (hub/trust/keystore.py) keeps such a key as ``<keyid>.pkcs11``: the URI,
nothing secret.
"""

from __future__ import annotations

import os

from securesystemslib.signer import HSMSigner, Signature, SSlibKey

from shared.pkcs11 import (
    LOGIN_LOCK,
    MODULE_ENV,
    Pkcs11Error,
    TokenKeyUri,
    find_key_pair,
    token_session,
)

__all__ = ["TokenSigner"]


class TokenSigner(HSMSigner):
    """Signs with the key a ``pkcs11:`` URI names; the key never leaves the token."""

    def __init__(self, uri: TokenKeyUri) -> None:
        """Open the token, log in, find the key and read its public half.

        Raises:
            Pkcs11Error: no_module, no_pin, no_token, bad_pin or no_key.
        """
        _use_module(uri)
        with token_session(uri) as session:
            private, public = find_key_pair(session, uri)
            key_id = int.from_bytes(bytes(private.id or b""), "big")
        if not key_id:
            raise Pkcs11Error("no_key", f"{uri.key!r} has no object id (pkcs11-tool --id 01)")
        scheme = {256: "ecdsa-sha2-nistp256", 384: "ecdsa-sha2-nistp384"}.get(public.curve.key_size)
        if scheme is None:
            raise Pkcs11Error("no_key", f"{uri.key!r} is {public.curve.name}: P-256 or P-384")
        super().__init__(
            key_id, SSlibKey.from_crypto(public, scheme=scheme), lambda _: uri.pin(), uri.token
        )
        self.uri = uri

    @classmethod
    def from_uri(cls, text: str) -> TokenSigner:
        """:meth:`__init__` from the URI's text.

        Raises:
            Pkcs11Error: bad_uri, or as :meth:`__init__`.
        """
        return cls(TokenKeyUri.parse(text))

    def sign(self, payload: bytes) -> Signature:
        """Sign ``payload`` in the token (HSMSigner's signature format).

        Raises:
            Pkcs11Error: the token went away, or refused the PIN or the key.
        """
        with LOGIN_LOCK:
            try:
                return super().sign(payload)
            except Pkcs11Error:
                raise
            except Exception as e:  # HSMSigner's ValueError, python-pkcs11's errors
                raise Pkcs11Error("token_error", f"signing with {self.uri.key!r}: {e!r}") from e


def _use_module(uri: TokenKeyUri) -> None:
    """HSMSigner loads the library ``$PYKCS11LIB`` names: make it the URI's."""
    path = uri.module_path()
    current = os.environ.get(MODULE_ENV)
    if current and current != path:
        raise Pkcs11Error("no_module", f"${MODULE_ENV} is {current}, the URI says {path}")
    os.environ[MODULE_ENV] = path
