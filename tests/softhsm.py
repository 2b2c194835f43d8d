"""A fresh SoftHSM2 token for one test: its own token directory under tmp_path.

SoftHSM2 reads ``$SOFTHSM2_CONF`` when the library is initialised, and python-pkcs11
keeps a loaded library per path: :func:`fresh_token` unloads it before and after, so each
test sees only its own token. Key pairs are made in the token (python-pkcs11), as an
operator would with ``pkcs11-tool --keypairgen``.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from shared.pkcs11 import MODULE_ENV

LIBRARIES = ("/usr/lib/softhsm/libsofthsm2.so", "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so")
PIN = "4711"
SO_PIN = "987654"
PIN_ENV = "EF_TEST_TOKEN_PIN"


def softhsm_library() -> str:
    """The SoftHSM2 PKCS#11 library; skips the test when softhsm2 is not installed."""
    found = [p for p in LIBRARIES if Path(p).exists()]
    if not found or shutil.which("softhsm2-util") is None:
        pytest.skip("softhsm2 is not installed (scripts/setup installs it)")
    return found[0]


@dataclass(frozen=True)
class Token:
    label: str
    library: str

    def uri(self, key: str, pin_source: str = f"env:{PIN_ENV}") -> str:
        """The ``pkcs11:`` URI of ``key`` in this token."""
        query = f"pin-source={pin_source}&module-path={self.library}"
        return f"pkcs11:token={self.label};object={key}?{query}"

    def make_key(self, label: str, key_id: int, curve: str = "secp256r1") -> str:
        """Make an EC key pair in the token (label, CKA_ID); its URI."""
        import pkcs11
        from pkcs11.util.ec import encode_named_curve_parameters

        token = pkcs11.lib(self.library).get_token(token_label=self.label)
        with token.open(user_pin=PIN, rw=True) as session:
            params = session.create_domain_parameters(
                pkcs11.KeyType.EC,
                {pkcs11.Attribute.EC_PARAMS: encode_named_curve_parameters(curve)},
                local=True,
            )
            params.generate_keypair(store=True, label=label, id=bytes([key_id]))
        return self.uri(label)


@contextmanager
def fresh_token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, label: str) -> Iterator[Token]:
    """Initialise a token labelled ``label`` in ``tmp_path``; its PIN in ``$PIN_ENV``."""
    library = softhsm_library()
    import pkcs11

    tokens = tmp_path / "softhsm-tokens"
    tokens.mkdir()
    conf = tmp_path / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {tokens}\nobjectstore.backend = file\n")
    monkeypatch.setenv("SOFTHSM2_CONF", str(conf))
    monkeypatch.setenv(PIN_ENV, PIN)
    monkeypatch.setenv(MODULE_ENV, library)
    init = ["softhsm2-util", "--init-token", "--free", "--label", label]
    subprocess.run(
        [*init, "--pin", PIN, "--so-pin", SO_PIN],
        check=True,
        capture_output=True,
    )
    pkcs11.unload(library)  # initialise again: read this test's configuration
    try:
        yield Token(label, library)
    finally:
        pkcs11.unload(library)
