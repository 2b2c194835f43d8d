"""Keys in hardware: the device's key and the hub's online signing keys in a PKCS#11 token.

Every test takes a fresh SoftHSM2 token (tests/softhsm.py): a real PKCS#11 module, driven
through python-pkcs11 and securesystemslib's HSMSigner as an HSM would be. The hub signs
a rollout's metadata and commands with token keys and a real device core verifies them;
a device enrols with a real hub with its key in the token; a missing token, a wrong PIN
and a missing key are refused at start with their reason.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from softhsm import PIN_ENV, Token, fresh_token
from tuf.api.exceptions import UnsignedMetadataError
from update_rig import UpdateRig

from agent.identity import DeviceIdentity
from edgefleet.cli import main
from hub import pipeline_config
from hub.ml.pipeline import BuiltModel, train
from hub.trust.keystore import TOKEN_SUFFIX
from hub.trust.pki import CertificateAuthority
from hub.trust.repository import RepositoryError, TrustRepository
from hub.trust.token_signer import TokenSigner
from shared.pkcs11 import Pkcs11Error, TokenKeyUri


@pytest.fixture
def token(monkeypatch: pytest.MonkeyPatch) -> Iterator[Token]:
    with fresh_token(monkeypatch) as t:
        yield t


def reason(call: object) -> str:
    with pytest.raises(Pkcs11Error) as info:
        call()  # type: ignore[operator]
    return info.value.reason


def spki(key: object) -> bytes:
    return key.public_bytes(  # type: ignore[attr-defined,no-any-return]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


# --------------------------------------------------------------------------- the URI


@pytest.mark.parametrize(
    ("uri", "why"),
    [
        ("file:/etc/key.pem", "does not start with pkcs11:"),
        ("pkcs11:token=t;object=k?pin-value=1234", "pin-value"),
        ("pkcs11:token=t?pin-source=env:PIN", "lacks object"),
        ("pkcs11:token=t;object=k", "lacks pin-source"),
        ("pkcs11:token=t;object=k;slot=1?pin-source=env:PIN", "unknown attribute 'slot'"),
        ("pkcs11:token=t;object=k?pin-source=1234", "pin-source must be env:VAR or file:"),
    ],
)
def test_a_bad_uri_is_refused_with_what_is_wrong(uri: str, why: str) -> None:
    with pytest.raises(Pkcs11Error, match=why) as info:
        TokenKeyUri.parse(uri)
    assert info.value.reason == "bad_uri"


# --------------------------------------------------------------------------- the device


def test_the_device_key_in_a_token_signs_its_csr_and_takes_its_certificate(
    tmp_path: Path, token: Token
) -> None:
    uri = token.make_key("device-key", 1)
    identity = DeviceIdentity.load(tmp_path / "identity", "press-7", uri)
    ca = CertificateAuthority.open_or_init(tmp_path / "pki")

    csr = x509.load_pem_x509_csr(identity.csr_pem())
    issued = ca.issue_device(identity.csr_pem(), "press-7")
    identity.store_certificate(issued.cert_pem, ca.ca_pem)

    assert csr.is_signature_valid
    assert identity.in_token and identity.has_certificate
    cert = x509.load_pem_x509_certificate(identity.cert_path.read_bytes())
    assert spki(cert.public_key()) == spki(identity._key.public_key())
    assert not identity.key_path.exists()  # no key file: the key stays in the token


def test_a_token_the_device_cannot_use_is_refused_with_its_reason(
    tmp_path: Path, token: Token, monkeypatch: pytest.MonkeyPatch
) -> None:
    token.make_key("device-key", 1)
    where = tmp_path / "identity"

    def load(uri: str) -> object:
        return lambda: DeviceIdentity.load(where, "press-7", uri)

    assert reason(load(token.uri("no-such-key"))) == "no_key"
    assert reason(load(token.uri("device-key").replace(f"token={token.label}", "token=gone"))) == (
        "no_token"
    )
    assert reason(load(token.uri("device-key", pin_source="file:/nonexistent/pin"))) == "no_pin"
    monkeypatch.setenv(PIN_ENV, "0000")
    assert reason(load(token.uri("device-key"))) == "bad_pin"
    monkeypatch.setenv(PIN_ENV, "")
    assert reason(load(token.uri("device-key"))) == "no_pin"
    bad_module = token.uri("device-key").replace(token.library, str(tmp_path / "nope.so"))
    assert reason(load(bad_module)) == "no_module"


# --------------------------------------------------------------------------- the hub

ONLINE = ("targets", "snapshot", "timestamp", "director")


def test_the_hub_signs_with_keys_in_a_token_and_a_device_installs_what_it_signed(
    tmp_path: Path, token: Token, built: BuiltModel
) -> None:
    rig = UpdateRig(tmp_path, built)
    rig.publish()
    rig.install(1)
    for n, role in enumerate(ONLINE, start=1):
        rig.trust.rotate(role, keys=[TokenSigner.from_uri(token.make_key(f"hub-{role}", n))])

    rig.publish()

    assert rig.deploy(2)[-1]["stage"] == "healthy"
    assert rig.serving() == 2
    assert rig.device.verifier.root_version == 5
    keys = tmp_path / "hub" / "trust" / "keys"
    for role in ONLINE:
        assert not list((keys / role).glob("*.pem")), role  # no key file left for the role
        assert [p.read_text().strip() for p in (keys / role).glob(f"*{TOKEN_SUFFIX}")] == [
            token.uri(f"hub-{role}")
        ]
    timestamp = json.loads(dict(rig.trust.metadata_for(5))["timestamp.json"])
    signer = TokenSigner.from_uri(token.uri("hub-timestamp"))
    assert [s["keyid"] for s in timestamp["signatures"]] == [signer.public_key.keyid]
    assert signer.public_key.scheme == "ecdsa-sha2-nistp256"


def test_a_restarted_hub_re_signs_with_its_token_keys_and_rotation_goes_on(
    tmp_path: Path, token: Token, built: BuiltModel
) -> None:
    rig = UpdateRig(tmp_path, built)
    rig.publish()
    rig.install(1)
    rig.trust.rotate("timestamp", keys=[TokenSigner.from_uri(token.make_key("ts-1", 1))])
    rig.trust.rotate("director", keys=[TokenSigner.from_uri(token.make_key("dir-1", 2))])

    restarted = TrustRepository.open_or_init(tmp_path / "hub" / "trust")
    assert restarted.refresh_timestamp(min_remaining_s=10 * 365 * 86400)  # re-signs now
    rig.trust.rotate("timestamp", keys=[TokenSigner.from_uri(token.make_key("ts-2", 3))])
    rig.trust.rotate("director")  # back to a key file
    rig.publish()

    assert rig.deploy(2)[-1]["stage"] == "healthy"
    keys = tmp_path / "hub" / "trust" / "keys"
    assert [p.read_text().strip() for p in (keys / "timestamp").glob("*.pkcs11")] == [
        token.uri("ts-2")
    ]
    director = keys / "director"
    assert list(director.glob("*.pem")) and not list(director.glob("*.pkcs11"))


def test_a_hub_whose_token_is_locked_or_gone_stops_with_the_reason(
    tmp_path: Path,
    token: Token,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    data = ["--data-dir", str(tmp_path / "hub")]
    assert main(["keys", "init", *data]) == 0
    missing = token.uri("no-such-key")
    assert main(["keys", "rotate", "timestamp", *data, "--pkcs11", missing]) == 1
    assert "no_key: no EC key pair labelled 'no-such-key'" in capsys.readouterr().err
    uri = token.make_key("hub-timestamp", 1)
    assert main(["keys", "rotate", "timestamp", *data, "--pkcs11", uri]) == 0
    capsys.readouterr()

    monkeypatch.setenv(PIN_ENV, "0000")  # the wrong PIN: the hub's start is refused
    with pytest.raises(RepositoryError, match=r"timestamp key named in .*bad_pin"):
        TrustRepository.open_or_init(tmp_path / "hub" / "trust")
    assert main(["keys", "show", *data]) == 1
    assert f"bad_pin: token '{token.label}' refused the PIN" in capsys.readouterr().err

    monkeypatch.setenv(PIN_ENV, "4711")
    show = subprocess.run(  # a hub started with the token unplugged
        [sys.executable, "-m", "edgefleet.cli", "keys", "show", *data],
        env=token.unplugged(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert show.returncode == 1
    assert f"no_token: no single token labelled '{token.label}'" in show.stderr


@pytest.mark.tflite
def test_a_hub_that_built_a_tflite_artefact_still_signs_with_its_token(token: Token) -> None:
    """TensorFlow's BoringSSL shadows the OpenSSL a PKCS#11 module links: in a process
    that imported TensorFlow the next key operation in the token dies with SIGSEGV. The
    hub converts .tflite files in a process of its own (hub/ml/tflite_process.py)."""
    built = train(pipeline_config(n_train=600, hidden=(8,)), runtimes=("tflite",))
    assert [s.format for s in built.siblings] == ["tflite"]

    assert "tensorflow" not in sys.modules
    signer = TokenSigner.from_uri(token.make_key("after-tflite", 9))
    assert signer.sign(b"signed after a .tflite build").signature


def test_a_running_hub_whose_token_refuses_keeps_its_last_metadata_and_signs_once_it_is_back(
    tmp_path: Path, token: Token, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = TrustRepository.open_or_init(tmp_path / "trust")
    repo.rotate("timestamp", keys=[TokenSigner.from_uri(token.make_key("hub-timestamp", 1))])
    served = dict(repo.metadata_for(1))["timestamp.json"]

    monkeypatch.setenv(PIN_ENV, "0000")  # the token now refuses (a PIN changed under the hub)
    # python-tuf wraps the signer's error; the hub's maintenance loop logs it and goes on
    with pytest.raises(UnsignedMetadataError, match="token_error: signing with 'hub-timestamp'"):
        repo.refresh_timestamp(min_remaining_s=10 * 365 * 86400)
    assert (tmp_path / "trust" / "metadata" / "timestamp.json").read_bytes() == served

    monkeypatch.setenv(PIN_ENV, "4711")
    assert repo.refresh_timestamp(min_remaining_s=10 * 365 * 86400)
    fresh = json.loads((tmp_path / "trust" / "metadata" / "timestamp.json").read_bytes())
    assert fresh["signed"]["version"] > json.loads(served)["signed"]["version"]
    device_view = TrustRepository.open_or_init(tmp_path / "trust")  # what a restart reads
    assert (
        dict(device_view.metadata_for(1))["timestamp.json"]
        == dict(repo.metadata_for(1))["timestamp.json"]
    )
