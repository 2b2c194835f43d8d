"""The agent daemon (paho adapter + local endpoint) against a real hub and Mosquitto."""

from __future__ import annotations

import http.client
import json
import logging
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from waiting import wait_for

from agent.daemon import AgentConfig, AgentDaemon, ConfigError
from edgefleet.cli import main
from edgefleet.client import HubClient
from edgefleet.demo import ApiServer
from hub import Hub, HubConfig
from hub.access.keys import ApiKeys, Role
from hub.transport.broker import Mosquitto, free_port
from shared.sensors import CLASSES, FEATURES, generate

pytestmark = [pytest.mark.broker, pytest.mark.slow]


GOOD = 'device_id = "a"\ndevice_class = "c"\nbroker = "mqtt://h:1"\nstate_dir = "/x"\n'


def post(port: int, path: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.request("POST", path, json.dumps(body), {"content-type": "application/json"})
    resp = conn.getresponse()
    out = resp.status, json.loads(resp.read())
    conn.close()
    return out


def get(port: int, path: str) -> tuple[int, dict[str, Any]]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.request("GET", path)
    resp = conn.getresponse()
    out = resp.status, json.loads(resp.read())
    conn.close()
    return out


UPDATE_STEPS = (  # what an operator reads in the agent's log, in order, once each
    "deploy received",
    "downloading",
    "verified against its signed metadata",
    "installed (staged beside the active model)",
    "health check passed (p95 ",
    "activated; on probation",
    "healthy (",
)


def update_lines(caplog: pytest.LogCaptureFixture, deployment: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "agent.update" and r.levelno == logging.INFO and deployment in r.getMessage()
    ]


def test_daemon_installs_serves_and_reports(
    private_mosquitto: Mosquitto, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    hub = Hub(HubConfig(data_dir=tmp_path / "hub", broker_url=private_mosquitto.address.url))
    hub.start()
    api = ApiServer(hub).start()
    client = HubClient(api.url, api_key=ApiKeys(hub.engine).create("t", Role.operator, "test").key)
    daemon: AgentDaemon | None = None
    runner: threading.Thread | None = None
    try:
        cfg_path = tmp_path / "agent.toml"
        port = free_port()
        # as an operator enrols a second agent on a machine: its own endpoint port
        argv = ["agent", "enrol", "--hub", api.url, "--device-id", "press-17"]
        argv += ["--token", client.create_enrol_token("press-17")["token"]]
        argv += ["--device-class", "generic-linux", "--state-dir", str(tmp_path / "device")]
        argv += ["--config-out", str(cfg_path), "--endpoint", f"127.0.0.1:{port}"]
        assert main(argv) == 0
        assert f'endpoint = "127.0.0.1:{port}"' in cfg_path.read_text()
        config = AgentConfig.load(cfg_path)
        assert config.endpoint == f"127.0.0.1:{port}"
        config = AgentConfig(**{**config.__dict__, "window_s": 1.0})
        daemon = AgentDaemon(config)
        daemon.start()
        runner = threading.Thread(target=daemon.run_forever, daemon=True)
        runner.start()
        wait_for(lambda: client.devices(status="online"), 10, "the device online")
        # No model yet: the endpoint says so.
        x, y = generate(4, seed=5)
        status, body = post(port, "/v1/predict", {"inputs": x.tolist()})
        assert status == 503
        job = client.train(n_train=2000, probation_s=1.0, probation_min_inferences=3)
        model = client.wait_job(job["id"], timeout=120)["result"]
        dep = client.deploy(model["name"], model["version"])
        # Probation needs live traffic: an application on the device calls the endpoint.
        deadline = time.monotonic() + 30
        while not client.deployment(dep["id"], devices=False)["finished"]:
            post(port, "/v1/predict", {"inputs": x.tolist(), "labels": y.tolist()})
            assert time.monotonic() < deadline, "no outcome in 30 s"
            time.sleep(0.1)
        st = client.deployment(dep["id"])
        assert st["per_device"][0]["stage"] == "healthy", st
        # The device's own log told each step, once, in order.
        lines = update_lines(caplog, dep["id"])
        assert len(lines) == len(UPDATE_STEPS), lines
        for line, step in zip(lines, UPDATE_STEPS, strict=True):
            assert f"update {model['name']} v{model['version']}" in line and step in line, line
        # And /v1/status says what it runs and how the update ended.
        status, body = get(port, "/v1/status")
        assert status == 200, body
        assert body["connection"]["connected"] is True
        assert body["connection"]["broker"] == private_mosquitto.address.url
        assert body["models"] == {
            model["name"]: {"version": model["version"], "versions": [model["version"]]}
        }
        assert body["serving"] == {"model": model["name"], "version": model["version"]}
        assert body["update"]["in_progress"] is None
        last = body["update"]["last"]
        assert (last["deployment"], last["stage"], last["reason"]) == (dep["id"], "healthy", None)
        assert set(body["spool"]) == {"windows", "bytes", "dropped"}
        status, body = post(port, "/v1/predict", {"inputs": x.tolist()})
        assert status == 200
        assert (body["model"], body["version"]) == (model["name"], model["version"])
        assert len(body["outputs"]["label"]) == 4
        # names from the signed manifest, beside the indices
        assert body["outputs"]["class"] == [CLASSES[i] for i in body["outputs"]["label"]]
        status, info = get(port, "/v1/model")
        assert (info["classes"], info["features"]) == (list(CLASSES), list(FEATURES))
        assert info["inputs"][0]["features"] == list(FEATURES)
        wait_for(lambda: hub.ingest.counts["telemetry"] >= 1, 10, "telemetry")
    finally:
        if daemon is not None:
            daemon.stop()
        if runner is not None:
            runner.join(5)
        client.close()
        api.stop()
        hub.stop()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('device_id = "a"\n', "missing"),
        (
            'device_id = "a b"\ndevice_class = "c"\nbroker = "mqtt://h:1"\nstate_dir = "/x"\n',
            "device_id",
        ),
        ('device_id = "a"\ndevice_class = "c"\nbroker = "http://h"\nstate_dir = "/x"\n', "broker"),
        ("not toml [", "agent.toml"),
        (GOOD + "foo = 1\n", "unknown"),
        (GOOD + 'endpoint = "8780"\n', 'endpoint must be "host:port"'),
        (GOOD + 'endpoint = "127.0.0.1:99999"\n', "endpoint"),
        (GOOD + 'runtime = "tensorrt"\n', "runtime must be onnxruntime or tflite"),
        (GOOD + "renew_fraction = 0.98\n", "leaves the lifetime"),
        (GOOD + "renew_spread = 1.5\n", "renew_fraction/renew_spread"),
        (GOOD + 'renew_retry_s = "soon"\n', "are numbers"),
        (GOOD + "renew_retry_s = 0\n", "renew_retry_s must be a positive"),
    ],
)
def test_bad_config_is_refused_clearly(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        AgentConfig.load(path)


def test_daemon_refuses_to_start_without_enrolment(tmp_path: Path) -> None:
    config = AgentConfig("a", "c", "mqtt://127.0.0.1:1", tmp_path / "state")
    with pytest.raises(ConfigError, match="enrol first"):
        AgentDaemon(config)


def test_every_agent_setting_is_documented() -> None:
    """docs/agent.md's table has a row for each field AgentConfig accepts."""
    doc = (Path(__file__).resolve().parent.parent / "docs" / "agent.md").read_text()
    missing = [f for f in AgentConfig.__dataclass_fields__ if f"| `{f}` |" not in doc]
    assert not missing, f"docs/agent.md lacks {missing}"
