"""What an operator sees of ``edgefleet hub serve`` in its first hour ("The first hour of
a new operator", items 1, 6, 13 and 14), each against a real ``hub serve`` child process
and a real Mosquitto:

- a restart keeps the private broker's port (the one devices' agent.toml names), says
  which port is taken and how to choose another, and shows devices it has not heard from
  since a broker change as ``unknown``, not ``online``;
- no access-log line per request unless asked for (``-v``, ``--access-log``);
- /docs loads all its assets from the hub itself;
- the API's URL is printed once bound, a taken port is named with ``--port``, and the
  first-admin-key hint only while no admin key exists.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import psutil
import pytest
from waiting import wait_for

from agent.daemon import enrol
from edgefleet.cli import main as cli
from edgefleet.client import HubClient
from hub import HubConfig
from hub.access.keys import DEV_KEY
from hub.transport.broker import BrokerAddress, Mosquitto, free_port
from hub.transport.local_broker import BROKER_FILE
from shared import protocol

pytestmark = [pytest.mark.broker, pytest.mark.slow]

ADMIN = {"authorization": f"Bearer {DEV_KEY}"}
START_TIMEOUT_S = 60.0  # seconds from spawn to an answering /health
ACCESS_LINE = re.compile(r'"GET /health HTTP/1\.1" 200')
ADMIN_HINT = "no admin key yet"


class Serve:
    """``edgefleet hub serve --dev`` as a child process; its stdout and stderr kept apart."""

    def __init__(self, data: Path, *args: str, port: int | None = None) -> None:
        self.data = data
        self.port = port or free_port()
        self.cmd = [sys.executable, "-m", "edgefleet.cli", "hub", "serve", "--dev"]
        self.cmd += ["--data", str(data), "--port", str(self.port), *args]
        n = len(list(data.parent.glob("serve-*.out")))
        self.out_path = data.parent / f"serve-{n}.out"
        self.err_path = data.parent / f"serve-{n}.err"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def stdout(self) -> str:
        return self.out_path.read_text(errors="replace")

    @property
    def stderr(self) -> str:
        return self.err_path.read_text(errors="replace")

    @property
    def broker(self) -> BrokerAddress:
        """The broker the hub said it uses (its ``API on ...`` line)."""
        found = re.search(r"broker (mqtts?://\S+)", self.stdout)
        assert found, self.stdout
        return BrokerAddress.parse(found.group(1))

    def spawn(self) -> Serve:
        self.data.parent.mkdir(parents=True, exist_ok=True)
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            self.proc = subprocess.Popen(self.cmd, stdout=out, stderr=err)
        return self

    def start(self) -> Serve:
        """Spawn and wait until /health answers."""
        proc = self.spawn().proc
        assert proc is not None
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            assert proc.poll() is None, f"exited {proc.returncode}: {self.stderr[-2000:]}"
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, f"no answer: {self.stderr[-2000:]}"
            time.sleep(0.1)

    def exit_code(self, timeout_s: float = START_TIMEOUT_S) -> int:
        """Spawn and wait for it to exit (a start that must fail)."""
        proc = self.spawn().proc
        assert proc is not None
        return proc.wait(timeout_s)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(30)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()

    def device(self, device_id: str) -> dict[str, Any]:
        """The device as GET /devices/{id} answers ({} before it has ever reported)."""
        r = httpx.get(f"{self.url}/devices/{device_id}", headers=ADMIN, timeout=10)
        assert r.status_code in (200, 404), r.text
        return dict(r.json()) if r.status_code == 200 else {}

    def device_status(self, device_id: str) -> str | None:
        return self.device(device_id).get("status")


@pytest.fixture
def started() -> Iterator[list[Serve]]:
    """Processes a test starts; each is stopped at its end."""
    procs: list[Serve] = []
    yield procs
    for p in procs:
        p.stop()


def report_online(broker: BrokerAddress, device_id: str) -> None:
    """What an agent sends on each connect: its retained ``state``, ``online``."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"{device_id}-test")
    client.connect(broker.host, broker.port)
    client.loop_start()
    body = {"status": "online", "device_class": "sim-gateway"}
    payload = protocol.encode("state", body, ts=time.time())
    client.publish(
        protocol.topic(device_id, "state"), payload, qos=1, retain=True
    ).wait_for_publish(5)
    client.loop_stop()
    client.disconnect()


def listening_on(port: int) -> socket.socket:
    """Another program's socket holding ``port``."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # past the hub's TIME_WAITs
    try:
        sock.bind(("127.0.0.1", port))
    except OSError:
        sock.close()
        raise
    sock.listen()
    return sock


# ------------------------------------------------------------- item 1: the broker's port


def test_a_restarted_hub_keeps_its_broker_port_and_forgets_who_was_online(
    tmp_path: Path, started: list[Serve]
) -> None:
    data = tmp_path / "hub"
    first = Serve(data).start()
    started.append(first)
    broker = first.broker
    report_online(broker, "dev-1")
    wait_for(lambda: first.device_status("dev-1") == "online", 15, "dev-1 online")
    first.stop()

    second = Serve(data).start()
    started.append(second)
    assert second.broker == broker, "the port devices' agent.toml names"
    # a new private broker: dev-1's Last Will went with the old one
    assert second.device_status("dev-1") == "unknown"
    report_online(broker, "dev-1")
    wait_for(lambda: second.device_status("dev-1") == "online", 15, "dev-1 online again")

    # killed (no shutdown code): its broker is left running, and stopped by the next start
    second.kill()
    orphan = json.loads((data / BROKER_FILE).read_text())["pid"]
    assert _running(orphan)
    third = Serve(data).start()
    started.append(third)
    assert third.broker == broker
    assert not _running(orphan)


def _running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_an_enrolled_agent_is_back_online_after_a_hub_restart(
    tmp_path: Path, started: list[Serve]
) -> None:
    """The whole story with a real agent: its agent.toml, written at enrolment, still
    names the hub's broker after the hub restarts, and it reports again."""
    data = tmp_path / "hub"
    first = Serve(data).start()
    started.append(first)
    with HubClient(first.url, api_key=DEV_KEY) as client:
        token = client.create_enrol_token("press-1")["token"]
    config = tmp_path / "agent.toml"
    enrol(
        hub_url=first.url,
        token=token,
        device_id="press-1",
        device_class="generic-linux",
        state_dir=tmp_path / "device",
        config_out=config,
        endpoint="",  # no local endpoint: its default port may be in use
    )
    before = config.read_text()
    cmd = [sys.executable, "-m", "edgefleet.cli", "agent", "run", "--config", str(config)]
    with open(tmp_path / "agent.err", "wb") as err:
        agent = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
    try:
        wait_for(lambda: first.device_status("press-1") == "online", 60, "the agent online")
        first.stop()
        restarted = time.time()
        second = Serve(data).start()
        started.append(second)
        # paho retries after 1, 2, 4 ... s (at most 60): the broker was away for seconds
        back = lambda: second.device("press-1").get("last_seen", 0) > restarted  # noqa: E731
        wait_for(back, 90, "the agent reporting to the restarted hub")
        assert second.device_status("press-1") == "online"
        assert config.read_text() == before
    finally:
        agent.terminate()
        agent.wait(15)


def test_a_taken_broker_port_is_named_with_the_option_to_choose_another(
    tmp_path: Path, started: list[Serve]
) -> None:
    data = tmp_path / "hub"
    first = Serve(data).start()
    started.append(first)
    port = first.broker.port
    first.stop()
    with listening_on(port):
        again = Serve(data)
        assert again.exit_code() != 0
        assert f"port {port}" in again.stderr and "--broker-port" in again.stderr, again.stderr
        assert "Traceback" not in again.stderr
    other = free_port()
    moved = Serve(data, "--broker-port", str(other)).start()
    started.append(moved)
    assert moved.broker.port == other
    assert f":{other}" in (data / BROKER_FILE).read_text()


def test_broker_port_with_an_external_broker_is_refused(tmp_path: Path) -> None:
    """A --broker-port the hub would ignore would leave the operator believing it."""
    with pytest.raises(ValueError, match="--broker-port"):
        HubConfig(tmp_path, broker_url="mqtt://127.0.0.1:1883", broker_port=1884)


def test_devices_behind_another_broker_url_are_unknown_and_the_same_one_keeps_them(
    tmp_path: Path, started: list[Serve], mosquitto: Mosquitto
) -> None:
    data = tmp_path / "hub"
    first = Serve(data, "--broker", mosquitto.address.url).start()
    started.append(first)
    report_online(mosquitto.address, "dev-2")
    wait_for(lambda: first.device_status("dev-2") == "online", 15, "dev-2 online")
    first.stop()

    same = Serve(data, "--broker", mosquitto.address.url).start()  # same broker: still true
    started.append(same)
    assert same.device_status("dev-2") == "online"
    same.stop()

    with Mosquitto() as other:
        moved = Serve(data, "--broker", other.address.url).start()
        started.append(moved)
        assert moved.device_status("dev-2") == "unknown"
        report_online(other.address, "dev-2")
        wait_for(lambda: moved.device_status("dev-2") == "online", 15, "dev-2 online again")
        moved.stop()


# ------------------------------------------------------------- item 6: access logs


def test_a_request_writes_an_access_line_with_v(
    tmp_path: Path, started: list[Serve], mosquitto: Mosquitto
) -> None:
    hub = Serve(tmp_path / "hub", "--broker", mosquitto.address.url, "-v").start()
    started.append(hub)
    assert httpx.get(f"{hub.url}/health").status_code == 200
    wait_for(lambda: ACCESS_LINE.search(hub.stdout), 10, "an access line on stdout")
    # (without -v: test_the_api_url_and_the_admin_hint_are_printed_when_true_and_no_access_lines)


def test_access_log_file_gets_the_lines_and_the_terminal_none(
    tmp_path: Path, started: list[Serve], mosquitto: Mosquitto
) -> None:
    log = tmp_path / "access.log"
    hub = Serve(tmp_path / "hub", "--broker", mosquitto.address.url, "--access-log", str(log))
    started.append(hub.start())
    assert httpx.get(f"{hub.url}/health").status_code == 200
    wait_for(lambda: log.exists() and ACCESS_LINE.search(log.read_text()), 10, "access line")
    hub.stop()
    assert not ACCESS_LINE.search(hub.stdout + hub.stderr)


# ------------------------------------------------------------- item 13: /docs offline


class _Assets(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "script" and a.get("src"):
            self.urls.append(str(a["src"]))
        if tag == "link" and a.get("href"):
            self.urls.append(str(a["href"]))


PAGES = {"/docs": {"javascript", "css", "png"}, "/redoc": {"javascript", "png"}}


def test_docs_load_every_asset_from_the_hub(
    tmp_path: Path, started: list[Serve], mosquitto: Mosquitto
) -> None:
    hub = Serve(tmp_path / "hub", "--broker", mosquitto.address.url).start()
    started.append(hub)
    for page, types in PAGES.items():
        _check_page(hub, page, types)
    spec = httpx.get(f"{hub.url}/openapi.json")
    assert spec.status_code == 200 and spec.json()["openapi"].startswith("3.1")


def _check_page(hub: Serve, page: str, types: set[str]) -> None:
    r = httpx.get(hub.url + page)
    assert r.status_code == 200 and "text/html" in r.headers["content-type"]
    parser = _Assets()
    parser.feed(r.text)
    assert parser.urls, r.text
    assert "cdn" not in r.text.lower() and "://" not in " ".join(parser.urls), parser.urls
    seen = set()
    for url in parser.urls:
        assert url.startswith("/") and not url.startswith("//"), url
        asset = httpx.get(hub.url + url)
        assert asset.status_code == 200, url
        kind = asset.headers["content-type"]
        seen |= {t for t in types if t in kind}
        assert len(asset.content) > 1000, url
    assert seen == types, (page, seen)


# ------------------------------------------------------------- item 14: start-up lines


def test_the_api_url_and_the_admin_hint_are_printed_when_true_and_no_access_lines(
    tmp_path: Path, started: list[Serve], mosquitto: Mosquitto
) -> None:
    data = tmp_path / "hub"
    first = Serve(data, "--broker", mosquitto.address.url).start()
    started.append(first)
    assert f"hub: API on http://127.0.0.1:{first.port}" in first.stdout
    assert ADMIN_HINT in first.stdout
    assert httpx.get(f"{first.url}/health").status_code == 200
    time.sleep(0.5)  # an access line would be out by now
    first.stop()
    assert not ACCESS_LINE.search(first.stdout + first.stderr), "an access line without -v"
    assert cli(["hub", "apikey", "create", "--data-dir", str(data), "--role", "admin",
                "--name", "ops"]) == 0  # fmt: skip
    second = Serve(data, "--broker", mosquitto.address.url).start()
    started.append(second)
    assert f"hub: API on http://127.0.0.1:{second.port}" in second.stdout
    assert ADMIN_HINT not in second.stdout


def test_a_taken_api_port_is_named_with_the_option_to_choose_another(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    port = free_port()
    with listening_on(port):
        hub = Serve(tmp_path / "hub", "--broker", mosquitto.address.url, port=port)
        t0 = time.monotonic()
        assert hub.exit_code() != 0
        took = time.monotonic() - t0
    assert f"port {port}" in hub.stderr and "--port" in hub.stderr, hub.stderr
    assert "API on" not in hub.stdout, "printed a URL it never listened on"
    assert "Traceback" not in hub.stderr
    assert not (tmp_path / "hub" / BROKER_FILE).exists(), "started the hub before binding"
    print(f"a taken API port refused in {took:.1f} s")
