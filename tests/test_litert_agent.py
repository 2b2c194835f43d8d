"""A device of a LiteRT class runs a .tflite model end to end: the hub judges and signs
the file, the agent (runtime "tflite", agent/litert.py) downloads and verifies it, runs
the health check with the golden outputs the hub computed, passes probation on live
traffic, and serves predictions with class names; real hub, Mosquitto, LiteRT."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_wine
from test_daemon import get, post
from test_tflite_uploads import write_csv
from tflite_models import wine_tflite
from waiting import wait_for

from agent.daemon import AgentConfig, AgentDaemon
from edgefleet.cli import main
from edgefleet.client import HubClient
from edgefleet.demo import ApiServer
from hub import Hub, HubConfig
from hub.access.keys import ApiKeys, Role
from hub.transport.broker import Mosquitto, free_port

pytestmark = [pytest.mark.broker, pytest.mark.slow, pytest.mark.tflite]


def test_a_litert_device_installs_health_checks_and_serves_a_tflite_model(
    private_mosquitto: Mosquitto, tmp_path: Path
) -> None:
    hub = Hub(HubConfig(data_dir=tmp_path / "hub", broker_url=private_mosquitto.address.url))
    hub.start()
    api = ApiServer(hub).start()
    client = HubClient(api.url, api_key=ApiKeys(hub.engine).create("t", Role.operator, "t").key)
    daemon: AgentDaemon | None = None
    runner: threading.Thread | None = None
    try:
        wine = load_wine()
        z = (wine.data - wine.data.mean(axis=0)) / wine.data.std(axis=0)
        write_csv(tmp_path / "wine-z.csv", z, [f"c{t}" for t in wine.target])
        client.upload_dataset("wine-z", tmp_path / "wine-z.csv", label="label")
        job = client.upload("wine", wine_tflite(int8=True, standardized=True), dataset="wine-z")
        model = client.wait_job(job["id"], timeout=300)["result"]
        assert model["format"] == "tflite"

        cfg_path, port = tmp_path / "agent.toml", free_port()
        argv = ["agent", "enrol", "--hub", api.url, "--device-id", "pi-1"]
        argv += ["--token", client.create_enrol_token("pi-1")["token"]]
        argv += ["--device-class", "pi-litert", "--state-dir", str(tmp_path / "device")]
        argv += ["--config-out", str(cfg_path), "--endpoint", f"127.0.0.1:{port}"]
        assert main(argv) == 0
        config = AgentConfig.load(cfg_path)
        # the hub's profile of pi-litert set the runtime and the budget in the config
        assert (config.runtime, config.memory_budget_mb) == ("tflite", 48.0)
        daemon = AgentDaemon(config)
        daemon.start()
        runner = threading.Thread(target=daemon.run_forever, daemon=True)
        runner.start()
        wait_for(lambda: client.devices(status="online"), 10, "the device online")
        assert client.device("pi-1")["runtime"] == "tflite"

        dep = client.deploy("wine", model["version"])
        x, y = z[:4].astype(np.float32), [int(t) for t in wine.target[:4]]
        deadline = time.monotonic() + 60
        while not client.deployment(dep["id"], devices=False)["finished"]:
            # probation's live traffic, with true labels (live accuracy from class scores)
            status, body = post(port, "/v1/predict", {"inputs": x.tolist(), "labels": y})
            assert status in (200, 503), body  # 503 until the model is active
            assert time.monotonic() < deadline, "no outcome in 60 s"
            time.sleep(0.1)
        st = client.deployment(dep["id"])
        assert st["per_device"][0]["stage"] == "healthy", st
        status, body = post(port, "/v1/predict", {"inputs": x.tolist()})
        assert status == 200 and (body["model"], body["version"]) == ("wine", model["version"])
        [scores] = [v for k, v in body["outputs"].items() if k not in ("label", "class")]
        assert np.asarray(scores).shape == (4, 3)
        assert body["outputs"]["class"] == [f"c{t}" for t in wine.target[:4]]
        status, info = get(port, "/v1/status")
        assert info["serving"] == {"model": "wine", "version": model["version"]}
        status, info = get(port, "/v1/model")
        assert info["task"] == "classification" and info["classes"] == ["c0", "c1", "c2"]

        # the labelled rows reach the hub as live accuracy, as they do from an ONNX device
        # v2 by a rollout, then the operator aborts it and puts the devices back: the
        # device rolls back to v1 and loads its .tflite again, as an ONNX device would
        job = client.upload("wine", wine_tflite(int8=True, standardized=True), dataset="wine-z")
        v2 = client.wait_job(job["id"], timeout=300)["result"]["version"]
        # a probation long enough that the rollout is still running when it is aborted:
        # the device serves v2 on probation, then the operator takes it back
        rollout = client.create_rollout(
            "wine", version=v2, probation_s=120, probation_min_inferences=1
        )
        deadline = time.monotonic() + 60
        while True:
            status, body = post(port, "/v1/predict", {"inputs": x.tolist()})
            if status == 200 and body["version"] == v2:
                break
            assert time.monotonic() < deadline, client.rollout(rollout["id"])
            time.sleep(0.1)
        assert client.rollout(rollout["id"])["state"] == "running"
        client.rollout_action(rollout["id"], "abort", rollback=True)
        wait_for(
            lambda: client.rollout(rollout["id"])["counts"].get("rolled_back", 0) == 1,
            30,
            "the device rolled back",
        )
        status, body = post(port, "/v1/predict", {"inputs": x.tolist()})
        assert status == 200 and body["version"] == model["version"]  # v1 again, on LiteRT
        assert body["outputs"]["class"] == [f"c{t}" for t in wine.target[:4]]

        # data capture from a LiteRT device: its sampled rows reach the hub, verified
        capture = client.start_capture("wine", devices=["pi-1"], rows=20, duration_s=2.0)
        deadline = time.monotonic() + 30
        while client.capture(capture["id"])["state"] == "running":
            post(port, "/v1/predict", {"inputs": x.tolist()})
            assert time.monotonic() < deadline, client.capture(capture["id"])
            time.sleep(0.05)
        done = client.capture(capture["id"])
        assert done["state"] == "done", done
        assert [d["status"] for d in done["devices"]] == ["verified"]
        assert client.capture_dataset(done["dataset_id"])["rows"] > 0

        def labelled() -> int:
            versions = client.performance("wine")["versions"]
            return sum(int(v.get("labelled") or 0) for v in versions)

        wait_for(lambda: labelled() > 0, 30, "live accuracy at the hub")
    finally:
        if daemon is not None:
            daemon.stop()
        if runner is not None:
            runner.join(5)
        client.close()
        api.stop()
        hub.stop()
