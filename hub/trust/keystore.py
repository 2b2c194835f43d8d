"""The private keys of the repository's roles, one PEM file per key, mode 0600.

Layout: ``keys/<role>/<keyid>.pem`` under the repository, except the root keys, which may
live in a directory of their own (``root_keys_dir``, e.g. a USB stick kept offline).
"""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives.serialization import load_pem_private_key
from securesystemslib.signer import CryptoSigner

from shared.atomic import write_atomic

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

    def save(self, role: str, signer: CryptoSigner) -> None:
        """Write ``signer``'s private key (atomically, mode 0600)."""
        self.role_dir(role).mkdir(mode=0o700, parents=True, exist_ok=True)
        write_atomic(self.path(role, signer.public_key.keyid), signer.private_bytes, mode=0o600)

    def delete(self, role: str, keyid: str) -> None:
        self.path(role, keyid).unlink(missing_ok=True)

    def load(self, role: str, wanted: set[str]) -> list[CryptoSigner]:
        """The private keys of ``role`` that are here and whose key id is in ``wanted``."""
        folder = self.role_dir(role)
        signers = []
        for path in sorted(folder.glob("*.pem")) if folder.is_dir() else []:
            signer = CryptoSigner(load_pem_private_key(path.read_bytes(), password=None))
            if signer.public_key.keyid in wanted:
                signers.append(signer)
        return signers
