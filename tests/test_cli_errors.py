"""What an operator sees when the CLI cannot reach a hub, or the hub refuses a request
(issue "The first hour of a new operator", items 5 and 12): one line that names the URL
and the likely cause, exit 1, no traceback; a 422 said one sentence per field.

Against real parts: a real ``edgefleet hub serve`` child process, a real agent local
endpoint (the wrong ``--hub`` an operator pastes), a port nothing listens on.
"""

from __future__ import annotations

import datetime
import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from agent.endpoint import LocalEndpoint
from agent.predictor import Predictor
from edgefleet.cli import main
from edgefleet.client import render_detail
from edgefleet.stage import HubProcess
from hub.access.keys import DEV_KEY
from hub.transport.broker import Mosquitto, free_port

pytestmark = [pytest.mark.broker]


@pytest.fixture(scope="module")
def hub(mosquitto: Mosquitto, tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubProcess]:
    proc = HubProcess(tmp_path_factory.mktemp("cli-errors") / "hub", mosquitto.address.url)
    yield proc.start()
    proc.stop()


@pytest.fixture
def agent_endpoint() -> Iterator[str]:
    with LocalEndpoint(Predictor()) as ep:
        host, port = ep.address
        yield f"http://{host}:{port}"


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[str]:
    """A real TLS server (a self-signed certificate) that a plain-http client reaches:
    the handshake fails on the HTTP bytes and it drops the connection."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(1).not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256())
    )  # fmt: skip
    (tmp_path / "c.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "k.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(tmp_path / "c.pem", tmp_path / "k.pem")
    srv = socket.create_server(("127.0.0.1", 0))
    srv.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except TimeoutError:
                continue
            try:
                ctx.wrap_socket(conn, server_side=True).close()
            except (ssl.SSLError, OSError):
                conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.getsockname()[1]}"
    stop.set()
    thread.join(5)
    srv.close()


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def test_nothing_listening_names_the_url_and_says_start_the_hub(
    capsys: pytest.CaptureFixture[str],
) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    code, _, err = run(capsys, "devices", "--hub", url, "--api-key", DEV_KEY)
    line = one_line(err)
    assert code == 1
    assert f"no edgefleet hub at {url}: connection refused" in line
    assert "edgefleet hub serve" in line and "port" in line


def test_agent_enrol_with_nothing_listening_says_the_same(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    code, _, err = run(
        capsys, "agent", "enrol", "--hub", url, "--token", "t", "--device-id", "d1",
        "--state-dir", str(tmp_path / "s"), "--config-out", str(tmp_path / "a.toml"),
    )  # fmt: skip
    line = one_line(err)
    assert code == 1
    assert f"no edgefleet hub at {url}: connection refused" in line
    assert "urlopen" not in line and "Errno" not in line


def test_https_to_a_plain_http_hub_says_try_http(
    hub: HubProcess, capsys: pytest.CaptureFixture[str]
) -> None:
    url = hub.url.replace("http://", "https://")
    code, _, err = run(capsys, "devices", "--hub", url, "--api-key", DEV_KEY)
    line = one_line(err)
    assert code == 1
    assert f"no edgefleet hub at {url}: TLS failed" in line and "try http://" in line


def test_http_to_a_tls_server_says_try_https(
    tls_server: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, _, err = run(capsys, "devices", "--hub", tls_server, "--api-key", DEV_KEY)
    assert code == 1
    line = one_line(err)
    assert f"no edgefleet hub at {tls_server}: the server dropped the connection" in line
    assert line.endswith("if it speaks TLS, try https://")
    code, _, err = run(
        capsys, "agent", "enrol", "--hub", tls_server, "--token", "t", "--device-id", "d1",
        "--state-dir", str(tmp_path / "s"), "--config-out", str(tmp_path / "a.toml"),
    )  # fmt: skip
    assert code == 1 and one_line(err).endswith("if it speaks TLS, try https://")
    assert "urlopen" not in err


@pytest.mark.parametrize("command", [["models", "list"], ["models", "train"]])
def test_the_agents_endpoint_as_hub_is_not_a_hub(
    agent_endpoint: str, capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    code, _, err = run(capsys, *command, "--hub", agent_endpoint, "--api-key", DEV_KEY)
    line = one_line(err)
    assert code == 1
    assert f"no edgefleet hub at {agent_endpoint}: this is not an edgefleet hub" in line
    assert "8700" in line


def test_agent_enrol_against_the_agents_endpoint_is_not_a_hub(
    agent_endpoint: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, _, err = run(
        capsys, "agent", "enrol", "--hub", agent_endpoint, "--token", "t", "--device-id",
        "d1", "--state-dir", str(tmp_path / "s"), "--config-out", str(tmp_path / "a.toml"),
    )  # fmt: skip
    assert code == 1
    assert "this is not an edgefleet hub" in one_line(err)


def test_agent_enrol_refused_by_the_hub_gives_its_reason(
    hub: HubProcess, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, _, err = run(
        capsys, "agent", "enrol", "--hub", hub.url, "--token", "not-a-token", "--device-id",
        "d1", "--state-dir", str(tmp_path / "s"), "--config-out", str(tmp_path / "a.toml"),
    )  # fmt: skip
    line = one_line(err)
    assert code == 1
    assert f"the hub at {hub.url} refused the enrolment (403)" in line


def test_a_422_is_one_sentence_per_field_not_a_python_list(
    hub: HubProcess, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(
        capsys, "deploy", "--hub", hub.url, "--api-key", DEV_KEY, "--model", "vibration",
        "--version", "0",
    )  # fmt: skip
    line = one_line(err)
    assert code == 1
    assert line == "edgefleet: error: hub answered 422: version: must be at least 1"


def test_a_404_from_the_hub_itself_stays_the_hubs_answer(
    hub: HubProcess, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(
        capsys, "models", "lineage", "nosuch:1", "--hub", hub.url, "--api-key", DEV_KEY
    )
    assert code == 1
    assert one_line(err) == "edgefleet: error: hub answered 404: no model nosuch v1 in the registry"


@pytest.mark.parametrize(
    ("detail", "said"),
    [
        (
            [{"type": "missing", "loc": ["body", "model"], "msg": "Field required"}],
            "model: is required",
        ),
        (
            [
                {"type": "less_than_equal", "loc": ["query", "limit"], "ctx": {"le": 1000}},
                {"type": "value_error", "loc": ["body"], "msg": "Value error, Name a device"},
            ],
            "limit: must be at most 1000; request: name a device",
        ),
        ("no model 'x'", "no model 'x'"),
    ],
)
def test_validation_errors_read_as_sentences(detail: object, said: str) -> None:
    assert render_detail(detail) == said


def test_hub_wait_gives_up_in_its_time_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    code, _, err = run(capsys, "hub", "wait", "--hub", url, "--timeout", "0.5")
    assert code == 1
    assert f"no edgefleet hub at {url}: nothing answered in 0.5 s (connection refused)" in (
        one_line(err)
    )


def test_hub_wait_returns_once_the_hub_answers(
    hub: HubProcess, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(capsys, "hub", "wait", "--hub", hub.url)
    assert code == 0
    assert out.startswith(f"hub: answering at {hub.url}")


def test_hub_wait_for_the_agents_endpoint_says_it_is_not_a_hub(
    agent_endpoint: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, "hub", "wait", "--hub", agent_endpoint, "--timeout", "5")
    assert code == 1 and "this is not an edgefleet hub" in one_line(err)


def test_a_refusal_from_a_new_command_is_one_line_and_json_gets_nothing(
    hub: HubProcess, capsys: pytest.CaptureFixture[str]
) -> None:
    api = ("--hub", hub.url, "--api-key", DEV_KEY)
    code, out, err = run(capsys, "captures", "show", "nosuch", "--json", *api)
    assert code == 1 and out == ""  # a script reading --json gets no half answer
    assert one_line(err) == "edgefleet: error: hub answered 404: no capture 'nosuch'"
    code, out, err = run(capsys, "drift", "policy", "set", "vibration", "--k", "0", *api)
    assert code == 1
    assert one_line(err) == "edgefleet: error: hub answered 422: k: must be at least 1"


def test_verbose_shows_the_traceback_instead(
    hub: HubProcess, capsys: pytest.CaptureFixture[str]
) -> None:
    from edgefleet.client import HubClientError

    with pytest.raises(HubClientError, match="no capture 'nosuch'"):
        main(["-v", "captures", "show", "nosuch", "--hub", hub.url, "--api-key", DEV_KEY])


def test_a_usage_error_says_what_is_wrong_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "rollout", "abort")
    assert code == 2 and out == "" and "Traceback" not in err
    assert "Missing argument 'ROLLOUT'" in err and "edgefleet rollout abort -h" in err
