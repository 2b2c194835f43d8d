"""A device whose key stays in a PKCS#11 token (SoftHSM2), against a real hub and a TLS
Mosquitto configured by `edgefleet broker config`.

It enrols (the token signs the CSR; no key file is written), and its daemon refuses to
dial ``mqtts`` itself, with the reason: Python's ssl takes a client key only from a file.
Through a local stunnel that holds the key by OpenSSL's PKCS#11 engine (Debian's stunnel4
and libengine-pkcs11-openssl, docs/devices.md), the same device connects over mTLS and the
hub sees it online.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from softhsm import PIN, PIN_ENV, Token, fresh_token
from waiting import wait_for

from agent.daemon import AgentConfig, AgentDaemon, enrol
from edgefleet.cli import EX_CONFIG, main
from edgefleet.client import HubClient
from edgefleet.demo import ApiServer
from hub import Hub, HubConfig
from hub.access.keys import DEV_KEY
from hub.transport.broker import free_port
from hub.transport.brokerconf import BrokerFiles, TlsMosquitto, write_broker_config
from hub.trust.pki import CertificateAuthority
from shared.pkcs11 import TokenKeyUri

pytestmark = [pytest.mark.broker, pytest.mark.slow]

ENGINE = "/usr/lib/x86_64-linux-gnu/engines-3/pkcs11.so"


@pytest.fixture
def token(monkeypatch: pytest.MonkeyPatch) -> Iterator[Token]:
    with fresh_token(monkeypatch) as t:
        yield t


@pytest.fixture
def hub_site(tmp_path: Path) -> Iterator[tuple[HubClient, ApiServer, BrokerFiles]]:
    data = tmp_path / "hub"
    ca = CertificateAuthority.open_or_init(data / "pki")
    user = pwd.getpwuid(os.geteuid()).pw_name  # as root, Mosquitto would switch user
    files = write_broker_config(tmp_path / "broker", ca, port=free_port(), user=user)
    with TlsMosquitto(files):
        hub = Hub(
            HubConfig(
                data_dir=data,
                broker_url=f"mqtts://localhost:{files.port}",
                broker_tls_dir=files.directory,
                dev_mode=True,
            )
        ).start()
        api = ApiServer(hub).start()
        client = HubClient(api.url, api_key=DEV_KEY)
        try:
            yield client, api, files
        finally:
            client.close()
            api.stop()
            hub.stop()


def stunnel_for(tmp: Path, token: Token, uri: str, identity: Path, broker_port: int) -> Path:
    """A stunnel client config: plain MQTT on a local port, mTLS to the broker with the
    key in the token (OpenSSL's PKCS#11 engine); the PIN is in this 0600 file."""
    key = TokenKeyUri.parse(uri)
    conf = tmp / "stunnel.conf"
    local = free_port()
    conf.write_text(
        "foreground = yes\npid =\n"
        f"engine = pkcs11\nengineCtrl = MODULE_PATH:{token.library}\nengineCtrl = PIN:{PIN}\n"
        "[edgefleet-mqtt]\nclient = yes\n"
        f"accept = 127.0.0.1:{local}\nconnect = localhost:{broker_port}\n"
        f"engineId = pkcs11\nkey = pkcs11:token={key.token};object={key.key};type=private\n"
        f"cert = {identity / 'device.crt'}\nCAfile = {identity / 'ca.crt'}\n"
        "verifyChain = yes\ncheckHost = localhost\n"
    )
    conf.chmod(0o600)
    (tmp / "stunnel.port").write_text(str(local))
    return conf


def test_a_device_with_its_key_in_a_token_enrols_and_connects_through_a_pkcs11_tunnel(
    tmp_path: Path,
    token: Token,
    hub_site: tuple[HubClient, ApiServer, BrokerFiles],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    if shutil.which("stunnel") is None or not Path(ENGINE).exists():
        pytest.skip("stunnel4 or libengine-pkcs11-openssl is not installed (scripts/setup)")
    client, api, files = hub_site
    uri = token.make_key("device-key", 1)
    config_path = tmp_path / "press-t.toml"

    enrol(
        hub_url=api.url,
        token=client.create_enrol_token("press-t")["token"],
        device_id="press-t",
        device_class="generic-linux",
        state_dir=tmp_path / "press-t",
        config_out=config_path,
        key=uri,
    )

    identity = tmp_path / "press-t" / "identity"
    config = AgentConfig.load(config_path)
    assert config.key == uri and config.broker.startswith("mqtts://")
    assert not (identity / "device.key").exists()  # the key stayed in the token
    cert = x509.load_pem_x509_certificate((identity / "device.crt").read_bytes())
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    assert cert.public_key().public_bytes(der, spki) == token_public_key(token, uri)

    # Python's ssl cannot present the token's key: the daemon stops once, with the reason
    assert main(["agent", "run", "--config", str(config_path)]) == EX_CONFIG
    err = capsys.readouterr().err
    assert "no_tls:" in err and "Python's ssl presents only a key from a file" in err
    monkeypatch.setenv(PIN_ENV, "0000")
    assert main(["agent", "run", "--config", str(config_path)]) == EX_CONFIG
    assert f"bad_pin: token '{token.label}' refused the PIN" in capsys.readouterr().err
    monkeypatch.setenv(PIN_ENV, PIN)

    # stunnel holds the key through OpenSSL's PKCS#11 engine; the agent speaks MQTT to it
    conf = stunnel_for(tmp_path, token, uri, identity, files.port)
    local = int((tmp_path / "stunnel.port").read_text())
    log = (tmp_path / "stunnel.log").open("w")
    tunnel = subprocess.Popen(["stunnel", str(conf)], stdout=log, stderr=subprocess.STDOUT)
    daemon = AgentDaemon(
        replace(config, broker=f"mqtt://127.0.0.1:{local}", endpoint="", window_s=1.0)
    )
    try:
        daemon.start()
        threading.Thread(target=daemon.run_forever, daemon=True).start()
        wait_for(
            lambda: any(d["id"] == "press-t" for d in client.devices(status="online")),
            20,
            "press-t online through the tunnel",
        )
    finally:
        daemon.stop()
        tunnel.terminate()
        tunnel.wait(10)
        log.close()
        print((tmp_path / "stunnel.log").read_text())


def token_public_key(token: Token, uri: str) -> bytes:
    from shared.pkcs11 import find_key_pair, token_session

    key = TokenKeyUri.parse(uri)
    with token_session(key) as session:
        _, public = find_key_pair(session, key)
    return public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
