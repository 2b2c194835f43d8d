"""Signing with a key in a PKCS#11 token (SoftHSM2) against a key file, per signature.

A throw-away SoftHSM2 token in a temporary directory holds one EC P-256 key pair. Measured:
the hub's ``TokenSigner`` start (open the token, log in, find the key), one signature of
a 2 KB payload by it (securesystemslib's HSMSigner: a session and a login per signature)
against an Ed25519 ``CryptoSigner`` from a file, and a device CSR signed in the token.

    python -m bench token_signing [--json] [--n 200]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

LIBRARY = "/usr/lib/softhsm/libsofthsm2.so"
PIN = "4711"


def _per_call_ms(call: Callable[[], object], n: int) -> float:
    start = time.perf_counter()
    for _ in range(n):
        call()
    return (time.perf_counter() - start) / n * 1e3


def _make_token(where: Path) -> str:
    import pkcs11
    from pkcs11.util.ec import encode_named_curve_parameters

    (where / "tokens").mkdir()
    conf = where / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {where / 'tokens'}\nobjectstore.backend = file\n")
    os.environ["SOFTHSM2_CONF"] = str(conf)
    init = ["softhsm2-util", "--init-token", "--free", "--label", "bench"]
    subprocess.run([*init, "--pin", PIN, "--so-pin", "987654"], check=True, capture_output=True)
    token = pkcs11.lib(LIBRARY).get_token(token_label="bench")
    with token.open(user_pin=PIN, rw=True) as session:
        ec = {pkcs11.Attribute.EC_PARAMS: encode_named_curve_parameters("secp256r1")}
        params = session.create_domain_parameters(pkcs11.KeyType.EC, ec, local=True)
        params.generate_keypair(store=True, label="bench-key", id=b"\x01")
    os.environ["EF_BENCH_PIN"] = PIN
    return f"pkcs11:token=bench;object=bench-key?pin-source=env:EF_BENCH_PIN&module-path={LIBRARY}"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench token_signing")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--n", type=int, default=200, help="signatures per contender")
    args = parser.parse_args(argv)
    from securesystemslib.signer import CryptoSigner

    from agent.token_key import TokenKey
    from hub.trust.token_signer import TokenSigner
    from shared.pkcs11 import TokenKeyUri

    payload = b"x" * 2000
    with tempfile.TemporaryDirectory() as tmp:
        uri = _make_token(Path(tmp))
        start = time.perf_counter()
        signer = TokenSigner.from_uri(uri)
        figures = {"token_signer_start_ms": (time.perf_counter() - start) * 1e3}
        figures["token_sign_ms"] = _per_call_ms(lambda: signer.sign(payload), args.n)
        file_key = CryptoSigner.generate_ed25519()
        figures["file_ed25519_sign_ms"] = _per_call_ms(lambda: file_key.sign(payload), args.n)
        device = TokenKey(TokenKeyUri.parse(uri))
        figures["device_csr_ms"] = _per_call_ms(lambda: device.csr_pem("press-1"), args.n // 4)
    if args.json:
        print(json.dumps(figures))
    else:
        for name, value in figures.items():
            print(f"{name:<24} {value:8.2f}")
    return 0
