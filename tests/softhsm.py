"""SoftHSM2 tokens for tests: a fresh token per test, from one token directory per process.

SoftHSM2 crashes with SIGSEGV in a process that has imported TensorFlow, whose bundled
BoringSSL symbols shadow the system OpenSSL's that SoftHSM2 links (measured: key
generation after ``import tensorflow`` dies every time; after torch, pyarrow or h5py it
does not). scripts/test runs the token tests in a pytest process of their own, since an
xdist worker may have run a TensorFlow test before.

SoftHSM2 reads ``$SOFTHSM2_CONF`` and scans its token directory once, at its first
``C_Initialize``; it sees no token initialised after that. Rather than finalise and load
it again per test (python-pkcs11's ``unload``, SoftHSM2's OpenSSL teardown and all), the
library is loaded once per process and never unloaded: the first :func:`fresh_token` of
a process initialises a pool of :data:`POOL_SIZE` tokens in a directory of its own
(``softhsm2-util``, before the library loads) and every test takes an unused one. Key
pairs are made in the token (python-pkcs11), as an operator would with ``pkcs11-tool
--keypairgen``.
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import tempfile
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
POOL_SIZE = 12  # more than the tests of one file take (each xdist worker is a process)

_pool: list[str] = []  # labels of this process's tokens not yet taken
_pool_made = False


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

    def unplugged(self, where: Path) -> dict[str, str]:
        """The environment of a process started with this token unplugged: its SoftHSM2
        reads a token directory with no token. (Deleting the token would break this
        process's loaded library, which scanned the directory once.)"""
        (where / "no-tokens").mkdir()
        conf = where / "softhsm2-unplugged.conf"
        conf.write_text(
            f"directories.tokendir = {where / 'no-tokens'}\nobjectstore.backend = file\n"
        )
        return {**os.environ, "SOFTHSM2_CONF": str(conf)}


def _make_pool() -> None:
    """This process's token directory and its tokens, before the library first loads."""
    global _pool_made
    where = Path(tempfile.mkdtemp(prefix="ef-softhsm-"))
    atexit.register(shutil.rmtree, where, True)
    (where / "tokens").mkdir()
    conf = where / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {where / 'tokens'}\nobjectstore.backend = file\n")
    os.environ["SOFTHSM2_CONF"] = str(conf)  # for this process and every one it starts
    for n in range(1, POOL_SIZE + 1):
        label = f"edgefleet-{n:02d}"
        init = ["softhsm2-util", "--init-token", "--free", "--label", label]
        subprocess.run([*init, "--pin", PIN, "--so-pin", SO_PIN], check=True, capture_output=True)
        _pool.append(label)
    _pool_made = True


@contextmanager
def fresh_token(monkeypatch: pytest.MonkeyPatch) -> Iterator[Token]:
    """A token no other test of this process has used; its PIN in ``$PIN_ENV``."""
    library = softhsm_library()
    if not _pool_made:
        _make_pool()
    if not _pool:
        raise RuntimeError(f"every one of the {POOL_SIZE} test tokens is taken: raise POOL_SIZE")
    monkeypatch.setenv(PIN_ENV, PIN)
    monkeypatch.setenv(MODULE_ENV, library)
    yield Token(_pool.pop(0), library)
