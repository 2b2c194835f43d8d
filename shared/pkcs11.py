"""A private key that stays in a PKCS#11 token (an HSM, a TPM, a smart card, SoftHSM2).

The device's key (agent/token_key.py) and the hub's online signing keys
(hub/trust/token_signer.py) can live in a token instead of a 0600 file. Both name the key
with a ``pkcs11:`` URI (RFC 7512, the attributes below)::

    pkcs11:token=edgefleet;object=device-key?pin-source=file:/etc/edgefleet/token.pin
    pkcs11:token=hub;object=timestamp-1?pin-source=env:EF_TOKEN_PIN&module-path=/usr/lib/softhsm/libsofthsm2.so

``token`` is the token's label, ``object`` the key's label; ``pin-source`` says where the
user PIN is read from: ``env:VAR`` or ``file:/path`` (one line). A PIN never goes in the URI
(``pin-value`` is refused) nor on a command line. ``module-path`` is the token's PKCS#11
library; without it, ``$PYKCS11LIB`` (the variable securesystemslib's HSMSigner reads).

Binding: python-pkcs11 (PyPI), imported only when a token is used: the ``agent-pkcs11``
and ``hub`` extras install it.

Exceptions::

    Pkcs11Error(reason, detail)   a ValueError
        bad_uri     not a pkcs11: URI this module understands
        no_module   no PKCS#11 library named, or it cannot be loaded (or no python-pkcs11)
        no_pin      the PIN source is unset or unreadable
        no_token    no initialised token with that label
        bad_pin     the token refused the PIN (wrong, or locked after too many tries)
        no_key      no EC private key with that label in the token (or more than one)
        token_error any other failure the token reports
        no_tls      (agent) a token key cannot authenticate a TLS connection from Python
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import parse_qsl, unquote

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric import ec

__all__ = [
    "LOGIN_LOCK",
    "MODULE_ENV",
    "Pkcs11Error",
    "TokenKeyUri",
    "find_key_pair",
    "token_session",
]

MODULE_ENV: Final = "PYKCS11LIB"  # the PKCS#11 library when the URI names none
_PATH_ATTRS: Final = frozenset({"token", "object", "id", "type"})
_QUERY_ATTRS: Final = frozenset({"pin-source", "module-path"})
# A token allows one login per application: sessions of one process take turns.
LOGIN_LOCK = threading.RLock()


class Pkcs11Error(ValueError):
    """A token key cannot be used; ``reason`` is a stable code (module docstring)."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class TokenKeyUri:
    """Where a key is: token label, key label, PIN source and PKCS#11 library."""

    token: str
    key: str
    pin_source: str
    module: str = ""

    @classmethod
    def parse(cls, text: str) -> TokenKeyUri:
        """Read a ``pkcs11:`` URI.

        Raises:
            Pkcs11Error: ``bad_uri``: not pkcs11:, an unknown attribute, ``pin-value``,
                or ``token``, ``object`` or ``pin-source`` missing.
        """
        if not text.startswith("pkcs11:"):
            raise Pkcs11Error("bad_uri", f"{text!r} does not start with pkcs11:")
        path, _, query = text.removeprefix("pkcs11:").partition("?")
        attrs: dict[str, str] = {}
        for part in filter(None, path.split(";")):
            name, _, value = part.partition("=")
            if name not in _PATH_ATTRS:
                raise Pkcs11Error("bad_uri", f"unknown attribute {name!r} in {text!r}")
            attrs[name] = unquote(value)
        for name, value in parse_qsl(query, keep_blank_values=True):
            if name == "pin-value":
                raise Pkcs11Error("bad_uri", "pin-value: give the PIN by pin-source=env:|file:")
            if name not in _QUERY_ATTRS:
                raise Pkcs11Error("bad_uri", f"unknown query attribute {name!r} in {text!r}")
            attrs[name] = value
        missing = [a for a in ("token", "object", "pin-source") if not attrs.get(a)]
        if missing:
            raise Pkcs11Error("bad_uri", f"{text!r} lacks {', '.join(missing)}")
        if not attrs["pin-source"].startswith(("env:", "file:")):
            raise Pkcs11Error("bad_uri", "pin-source must be env:VAR or file:/path")
        return cls(
            attrs["token"], attrs["object"], attrs["pin-source"], attrs.get("module-path", "")
        )

    def module_path(self) -> str:
        """The PKCS#11 library: the URI's ``module-path``, else ``$PYKCS11LIB``.

        Raises:
            Pkcs11Error: ``no_module``.
        """
        path = self.module or os.environ.get(MODULE_ENV, "")
        if not path:
            raise Pkcs11Error("no_module", f"no module-path in the URI and ${MODULE_ENV} unset")
        return path

    def pin(self) -> str:
        """The user PIN, read from its source now (a changed file is picked up).

        Raises:
            Pkcs11Error: ``no_pin``.
        """
        kind, _, where = self.pin_source.partition(":")
        if kind == "env":
            value = os.environ.get(where)
            if not value:
                raise Pkcs11Error("no_pin", f"the PIN's variable ${where} is unset or empty")
            return value
        try:
            lines = Path(where).read_text().splitlines()
        except OSError as e:
            raise Pkcs11Error("no_pin", f"cannot read the PIN file {where}: {e.strerror}") from e
        if not lines or not lines[0]:
            raise Pkcs11Error("no_pin", f"the PIN file {where} is empty")
        return lines[0]

    def __str__(self) -> str:
        module = f"&module-path={self.module}" if self.module else ""
        return f"pkcs11:token={self.token};object={self.key}?pin-source={self.pin_source}{module}"


def _library(uri: TokenKeyUri) -> Any:
    try:
        import pkcs11
    except ImportError as e:
        raise Pkcs11Error("no_module", "python-pkcs11 is not installed (extra agent-pkcs11)") from e
    path = uri.module_path()
    try:
        return pkcs11.lib(path)
    except Exception as e:  # python-pkcs11 raises RuntimeError subclasses for a bad library
        raise Pkcs11Error("no_module", f"cannot load the PKCS#11 library {path}: {e!r}") from e


@contextmanager
def token_session(uri: TokenKeyUri) -> Iterator[Any]:
    """A logged-in session on the URI's token (python-pkcs11's ``Session``).

    Raises:
        Pkcs11Error: ``no_module``, ``no_pin``, ``no_token``, ``bad_pin`` or ``token_error``.
    """
    lib = _library(uri)  # first: it says so if python-pkcs11 is missing
    import pkcs11.exceptions as p11e

    pin = uri.pin()
    try:
        token = lib.get_token(token_label=uri.token)
    except (p11e.NoSuchToken, p11e.MultipleTokensReturned) as e:
        raise Pkcs11Error("no_token", f"no single token labelled {uri.token!r}") from e
    with LOGIN_LOCK:
        try:
            session = token.open(user_pin=pin)
        except (p11e.PinIncorrect, p11e.PinLocked, p11e.PinInvalid, p11e.PinLenRange) as e:
            raise Pkcs11Error(
                "bad_pin", f"token {uri.token!r} refused the PIN ({type(e).__name__})"
            ) from e
        except p11e.PKCS11Error as e:
            raise Pkcs11Error("token_error", f"token {uri.token!r}: {e!r}") from e
        with session:
            yield session


def find_key_pair(session: Any, uri: TokenKeyUri) -> tuple[Any, ec.EllipticCurvePublicKey]:
    """The EC private key labelled ``uri.key`` and its public key (``cryptography``'s).

    The public half is read from the token's public key object of the same label.

    Raises:
        Pkcs11Error: ``no_key``.
    """
    import pkcs11
    import pkcs11.util.ec
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import load_der_public_key

    where = f"token {uri.token!r}"
    try:
        private = session.get_key(pkcs11.ObjectClass.PRIVATE_KEY, pkcs11.KeyType.EC, label=uri.key)
        public = session.get_key(pkcs11.ObjectClass.PUBLIC_KEY, pkcs11.KeyType.EC, label=uri.key)
    except pkcs11.exceptions.NoSuchKey as e:
        raise Pkcs11Error("no_key", f"no EC key pair labelled {uri.key!r} in {where}") from e
    except pkcs11.exceptions.MultipleObjectsReturned as e:
        raise Pkcs11Error("no_key", f"several EC keys labelled {uri.key!r} in {where}") from e
    key = load_der_public_key(pkcs11.util.ec.encode_ec_public_key(public))
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise Pkcs11Error("no_key", f"{uri.key!r} in {where} is not an EC key")
    return private, key
