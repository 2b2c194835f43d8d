"""The private keys of the repository's roles, one PEM file per key, mode 0600.

Layout: ``keys/<role>/<keyid>.pem`` under the repository, except the root keys, which may
live in a directory of their own (``root_keys_dir``, e.g. a USB stick kept offline).
An online role's key may instead be in a PKCS#11 token: ``keys/<role>/<keyid>.pkcs11``
holds the ``pkcs11:`` URI that names it (hub/trust/token_signer.py; no secret in it).
"""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives.serialization import load_pem_private_key
from securesystemslib.signer import CryptoSigner, Signer

from hub.trust.roles import RepositoryError
from hub.trust.token_signer import TokenSigner
from shared.atomic import write_atomic
from shared.pkcs11 import Pkcs11Error

TOKEN_SUFFIX = ".pkcs11"  # a file naming a key in a token

__all__ = ["KeyStore"]


class KeyStore:
    """Where each role's private keys are kept, and reading and writing them."""

    def __init__(self, keys_dir: Path, root_keys_dir: Path | None = None) -> None:
        self.keys_dir = keys_dir
        self.root_keys_dir = root_keys_dir or keys_dir / "root"

    def role_dir(self, role: str) -> Path:
        return self.root_keys_dir if role == "root" else self.keys_dir / role

    def path(self, role: str, keyid: str) -> Path:
        return self.role_dir(role) / f"{keyid}.pem"

    def save(self, role: str, signer: Signer) -> None:
        """Write ``signer``'s private key (atomically, mode 0600), or its token's URI."""
        self.role_dir(role).mkdir(mode=0o700, parents=True, exist_ok=True)
        keyid = signer.public_key.keyid
        if isinstance(signer, TokenSigner):
            path = self.path(role, keyid).with_suffix(TOKEN_SUFFIX)
            write_atomic(path, f"{signer.uri}\n".encode(), mode=0o600)
        elif isinstance(signer, CryptoSigner):
            write_atomic(self.path(role, keyid), signer.private_bytes, mode=0o600)
        else:
            raise RepositoryError(f"cannot keep a {type(signer).__name__} for {role}")

    def delete(self, role: str, keyid: str) -> None:
        """Forget a key: its file, or the URI of a key in a token (which stays there)."""
        self.path(role, keyid).unlink(missing_ok=True)
        self.path(role, keyid).with_suffix(TOKEN_SUFFIX).unlink(missing_ok=True)

    def load(self, role: str, wanted: set[str]) -> list[Signer]:
        """The keys of ``role`` that are here and whose key id is in ``wanted``.

        Raises:
            RepositoryError: a key in a token cannot be used (token missing or locked,
                wrong PIN, key not found): the reason, and which file names it.
        """
        folder = self.role_dir(role)
        signers: list[Signer] = []
        for path in sorted(folder.glob("*.pem")) if folder.is_dir() else []:
            signer = CryptoSigner(load_pem_private_key(path.read_bytes(), password=None))
            if signer.public_key.keyid in wanted:
                signers.append(signer)
        for path in sorted(folder.glob(f"*{TOKEN_SUFFIX}")) if folder.is_dir() else []:
            if path.stem not in wanted:
                continue  # a key rotated out; its URI file was left by a crash
            try:
                token_signer = TokenSigner.from_uri(path.read_text().strip())
            except Pkcs11Error as e:
                raise RepositoryError(f"the {role} key named in {path}: {e}") from e
            if token_signer.public_key.keyid != path.stem:
                raise RepositoryError(f"{path} names a key whose id is not {path.stem}")
            signers.append(token_signer)
        return signers
