"""``edgefleet agent run`` as an operator meets it: a real process, a real Mosquitto.

What it logs about its broker, how it stops (with the broker gone too), what
``GET /v1/status`` says, and what a second agent on the same endpoint port is told.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from agent_process import AgentProcess  # tests/agent_process.py

from agent.spool import Spool
from agent.store import DeviceStore
from hub.transport.broker import Mosquitto, free_port, mosquitto_config, wait_for_port
from hub.trust.repository import TrustRepository

pytestmark = [pytest.mark.broker, pytest.mark.slow]

STOP_WITHIN_S = 5.0  # what an operator may expect of SIGTERM / Ctrl-C


@pytest.fixture(scope="module")
def pinned_root(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return TrustRepository.open_or_init(tmp_path_factory.mktemp("trust")).pinned_root()


@pytest.fixture
def agents() -> Iterator[list[AgentProcess]]:
    started: list[AgentProcess] = []
    yield started
    for a in started:
        a.kill()


def dead_port() -> int:
    """A loopback port nobody listens on (connections are refused)."""
    return free_port()


@pytest.mark.parametrize(
    ("sig", "broker_gone"),
    [(signal.SIGTERM, "stopped"), (signal.SIGINT, "stopped"), (signal.SIGTERM, "frozen")],
    ids=["sigterm-broker-stopped", "ctrl-c-broker-stopped", "sigterm-broker-frozen"],
)
def test_the_agent_stops_within_seconds_with_its_broker_gone(
    private_mosquitto: Mosquitto,
    pinned_root: bytes,
    tmp_path: Path,
    agents: list[AgentProcess],
    sig: signal.Signals,
    broker_gone: str,
) -> None:
    """Stopped: the port refuses. Frozen (SIGSTOP): the TCP link stays up, nothing answers
    (a hung broker host): saying "offline" and paho's thread must not hold the stop."""
    agent = AgentProcess(tmp_path, private_mosquitto.address.url, pinned_root)
    agents.append(agent.start())
    agent.wait_log(f"connected to {private_mosquitto.address.url}", 15)
    try:
        if broker_gone == "stopped":
            private_mosquitto.stop()
            agent.wait_log("lost the connection", 10)
            agent.wait_log("cannot connect", 10)
        else:
            os.kill(private_mosquitto.pid, signal.SIGSTOP)
        time.sleep(2.5)  # telemetry windows (1 s) close meanwhile: they go to the spool
        t0 = time.monotonic()
        agent.signal(sig)
        rc = agent.wait_exit(STOP_WITHIN_S)
        took = time.monotonic() - t0
    finally:
        if broker_gone == "frozen":
            os.kill(private_mosquitto.pid, signal.SIGCONT)
    assert rc == 0, agent.log
    assert took <= STOP_WITHIN_S
    assert "stopped" in agent.log.splitlines()[-1], agent.log
    print(f"{sig.name}, broker {broker_gone}: exited {took:.2f} s after the signal")
    # its state is on disk: the windows the broker never acknowledged wait in the spool
    assert len(Spool(agent.state_dir / "spool")) >= 1
    assert DeviceStore(agent.state_dir).trust_dir.joinpath("root.json").exists()


def test_an_agent_at_a_dead_broker_says_it_is_retrying_and_answers_status(
    pinned_root: bytes, tmp_path: Path, agents: list[AgentProcess]
) -> None:
    url = f"mqtt://127.0.0.1:{dead_port()}"
    endpoint = f"127.0.0.1:{free_port()}"
    agent = AgentProcess(tmp_path, url, pinned_root, endpoint=endpoint)
    agents.append(agent.start())
    took = agent.wait_log(f"cannot connect to {url} (connection refused); retrying in 1 s", 5)
    agent.wait_log("local inference endpoint on", 5)
    time.sleep(4)  # more attempts fail: they are not logged again
    assert agent.log.count("cannot connect to") == 1, agent.log
    status, body = agent.get(endpoint, "/v1/status")
    assert status == 200, body
    conn = body["connection"]
    assert conn["connected"] is False and conn["broker"] == url
    assert conn["retries"] >= 2 and conn["last_error"] == "connection refused"
    assert conn["since"].endswith("Z") and conn["next_attempt_in_s"] is not None
    assert body["device_id"] == "agent-1" and body["models"] == {} and body["serving"] is None
    assert body["update"] == {"in_progress": None, "last": None, "waiting": []}
    assert body["spool"]["windows"] >= 1 and body["spool"]["dropped"] == 0
    agent.signal(signal.SIGTERM)
    assert agent.wait_exit(STOP_WITHIN_S) == 0
    print(f"retrying line after {took:.2f} s")


def test_a_second_agent_on_the_same_endpoint_is_told_the_port_and_the_setting(
    pinned_root: bytes, tmp_path: Path, agents: list[AgentProcess]
) -> None:
    url = f"mqtt://127.0.0.1:{dead_port()}"
    port = free_port()
    first = AgentProcess(tmp_path / "a", url, pinned_root, endpoint=f"127.0.0.1:{port}")
    agents.append(first.start())
    first.wait_log("local inference endpoint on", 10)
    second = AgentProcess(
        tmp_path / "b", url, pinned_root, device_id="agent-2", endpoint=f"127.0.0.1:{port}"
    )
    agents.append(second.start())
    rc = second.wait_exit(10)
    assert rc != 0
    lines = [line for line in second.log.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("edgefleet: error: "), second.log
    assert f"port {port} of the local inference endpoint (the endpoint setting" in lines[0]
    assert f'endpoint = "127.0.0.1:{port + 1}"' in lines[0], lines[0]
    assert str(second.config) in lines[0] and "Traceback" not in second.log
    # the first one never noticed
    with socket.create_connection(("127.0.0.1", port), timeout=2):
        pass
    assert first.proc is not None and first.proc.poll() is None


@pytest.fixture
def refusing_broker(tmp_path: Path) -> Iterator[str]:
    """A real Mosquitto that answers every CONNECT with "not authorised"."""
    port = free_port()
    conf = tmp_path / "refusing.conf"
    conf.write_text(
        mosquitto_config(port, tmp_path).replace("allow_anonymous true", "allow_anonymous false")
    )
    proc = subprocess.Popen(
        ["mosquitto", "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        wait_for_port("127.0.0.1", port, 10)
        yield f"mqtt://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


def test_a_refused_connection_is_logged_once_with_the_brokers_reason(
    refusing_broker: str, pinned_root: bytes, tmp_path: Path, agents: list[AgentProcess]
) -> None:
    endpoint = f"127.0.0.1:{free_port()}"
    agent = AgentProcess(tmp_path / "agent", refusing_broker, pinned_root, endpoint=endpoint)
    agents.append(agent.start())
    agent.wait_log(
        f"ERROR agent.connection: cannot connect to {refusing_broker} (refused: Not authorized);"
        " retrying in 1 s (attempt 1; backoff 1..60 s)",
        5,
    )
    deadline = time.monotonic() + 10
    while (body := agent.get(endpoint, "/v1/status")[1])["connection"]["retries"] < 3:
        assert time.monotonic() < deadline, body  # paho's backoff: 1 s, then 2 s
        time.sleep(0.2)
    assert body["connection"]["connected"] is False
    assert body["connection"]["last_error"] == "refused: Not authorized"
    # three refusals, told once: the repeats wait a minute before a "still" line
    assert agent.log.count("refused") == 1 and agent.log.count("retrying") == 1, agent.log
    agent.signal(signal.SIGTERM)
    assert agent.wait_exit(STOP_WITHIN_S) == 0
