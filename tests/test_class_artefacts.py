"""One model version, an artefact per device class (ADR 0020): a model trained on the
hub runs as int8 ONNX on a generic-linux device and as full-int8 TFLite on a pi-litert
device in the same rollout, each health-checked with its own golden outputs; real hub,
Mosquitto, onnxruntime, TensorFlow's converter and LiteRT."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
from models import make_mlp_onnx
from test_daemon import get, post
from waiting import wait_for

from agent.daemon import AgentConfig, AgentDaemon
from edgefleet.cli import main
from edgefleet.client import HubClient, HubClientError
from edgefleet.demo import ApiServer
from hub import Hub, HubConfig
from hub.access.keys import ApiKeys, Role
from hub.transport.broker import Mosquitto, free_port
from shared.sensors import CLASSES, generate

pytestmark = [pytest.mark.broker, pytest.mark.slow, pytest.mark.tflite]


def start_agent(
    client: HubClient, api_url: str, tmp: Path, device: str, device_class: str, runtime: str
) -> tuple[AgentDaemon, threading.Thread, int]:
    cfg_path, port = tmp / f"{device}.toml", free_port()
    argv = ["agent", "enrol", "--hub", api_url, "--device-id", device]
    argv += ["--token", client.create_enrol_token(device)["token"]]
    argv += ["--device-class", device_class, "--state-dir", str(tmp / device)]
    argv += ["--config-out", str(cfg_path), "--endpoint", f"127.0.0.1:{port}"]
    assert main(argv) == 0
    config = AgentConfig.load(cfg_path)
    daemon = AgentDaemon(AgentConfig(**{**config.__dict__, "runtime": runtime, "window_s": 1.0}))
    daemon.start()
    thread = threading.Thread(target=daemon.run_forever, daemon=True)
    thread.start()
    return daemon, thread, port


def test_one_rollout_sends_each_class_the_artefact_of_its_runtime(
    private_mosquitto: Mosquitto, tmp_path: Path
) -> None:
    hub = Hub(HubConfig(data_dir=tmp_path / "hub", broker_url=private_mosquitto.address.url))
    hub.start()
    api = ApiServer(hub).start()
    client = HubClient(api.url, api_key=ApiKeys(hub.engine).create("t", Role.operator, "t").key)
    agents: list[tuple[AgentDaemon, threading.Thread, int]] = []
    try:
        with pytest.raises(HubClientError, match="no device class 'nosuch'"):
            client.train(n_train=2000, device_classes=["nosuch"])
        # the hub converts its own MLPs, never an uploaded ONNX file
        with pytest.raises(HubClientError, match="an uploaded onnxruntime file runs on"):
            client.upload(
                "mine", make_mlp_onnx(hidden=(8,), n=200), ["pi-litert"], unevaluated=True
            )
        job = client.train(
            n_train=2000,
            device_classes=["generic-linux", "pi-litert"],
            probation_s=1.0,
            probation_min_inferences=3,
        )
        model = client.wait_job(job["id"], timeout=300)["result"]
        artefacts: dict[str, Any] = model["artefacts"]
        assert set(artefacts) == {"onnxruntime", "tflite"}
        onnx, tfl = artefacts["onnxruntime"], artefacts["tflite"]
        assert onnx["target"].endswith("model.onnx") and tfl["target"].endswith("model.tflite")
        assert {g["name"] for g in tfl["gates"]} >= {"int8_loss", "sibling"}
        assert all(g["passed"] for g in tfl["gates"])
        print(
            f"\nint8 ONNX {onnx['size_bytes']:,} B accuracy {onnx['metrics']['accuracy']:.4f};"
            f" int8 .tflite {tfl['size_bytes']:,} B accuracy {tfl['metrics']['accuracy']:.4f}"
        )

        agents.append(
            start_agent(client, api.url, tmp_path, "gw-1", "generic-linux", "onnxruntime")
        )
        agents.append(start_agent(client, api.url, tmp_path, "pi-1", "pi-litert", "tflite"))
        wait_for(lambda: len(client.devices(status="online")) == 2, 15, "both devices online")

        rollout = client.create_rollout(model["name"], version=model["version"])
        x, _ = generate(4, seed=5)
        deadline = time.monotonic() + 90
        while client.rollout(rollout["id"])["state"] != "completed":
            for _, _, port in agents:  # probation's live traffic on each device
                post(port, "/v1/predict", {"inputs": x.tolist()})
            assert time.monotonic() < deadline, client.rollout(rollout["id"])
            time.sleep(0.1)
        for (_, _, port), fmt in zip(agents, ("onnx", "tflite"), strict=True):
            status, body = post(port, "/v1/predict", {"inputs": x.tolist()})
            assert status == 200 and body["version"] == model["version"]
            assert all(c in CLASSES for c in body["outputs"]["class"])
            status, info = get(port, "/v1/status")
            assert info["serving"] == {"model": model["name"], "version": model["version"]}
            # what each device installed: the file of its runtime
            installed = list((tmp_path / ("gw-1" if fmt == "onnx" else "pi-1")).rglob("model.*"))
            assert {p.suffix for p in installed} == {f".{fmt}"}, installed
    finally:
        for daemon, thread, _ in agents:
            daemon.stop()
            thread.join(5)
        client.close()
        api.stop()
        hub.stop()
