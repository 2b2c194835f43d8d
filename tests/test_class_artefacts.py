"""One model version, an artefact per device class (ADR 0020): a model trained on the
hub runs as int8 ONNX on a generic-linux device and as full-int8 TFLite on a pi-litert
device in the same rollout, each health-checked with its own golden outputs; a conv net
trained on images is signed the same way, an artefact per runtime; real hub, Mosquitto,
onnxruntime, PyTorch, TensorFlow's converter and LiteRT."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from models import make_mlp_onnx
from test_daemon import get, post
from test_tflite_convnet import converting_here, swapping_class_scores
from waiting import wait_for

import hub.ml.tflite_convnet as export
from agent.daemon import AgentConfig, AgentDaemon
from edgefleet.cli import main
from edgefleet.client import HubClient, HubClientError
from edgefleet.demo import ApiServer
from hub import Hub, HubConfig
from hub.access.keys import ApiKeys, Role
from hub.ml.data.samples import digits_images, write_npz
from hub.ml.runner import open_runner
from hub.transport.broker import Mosquitto, free_port
from shared.delegation import role_file, role_name
from shared.manifest import Manifest
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


def signed_targets(hub: Hub) -> dict[str, Any]:
    """The targets the hub has signed, as devices read them from the models' roles."""
    out: dict[str, Any] = {}
    for name in hub.trust.target_names():
        files = dict(hub.trust.metadata_for(hub.trust.root_version, name))
        out[name] = json.loads(files[role_file(role_name(name))])["signed"]["targets"][name]
    return out


def test_a_conv_net_for_two_runtimes_signs_an_artefact_for_each(
    private_mosquitto: Mosquitto, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``models train --kind cnn`` for generic-linux and pi-litert: one version, its int8
    ONNX file and its int8 .tflite each signed as a target of their own, with a manifest
    whose golden outputs the file itself gives (what each device checks on install); a
    pi-litert device then installs the .tflite and serves the conv net."""
    hub = Hub(HubConfig(data_dir=tmp_path / "hub", broker_url=private_mosquitto.address.url))
    hub.start()
    api = ApiServer(hub).start()
    client = HubClient(api.url, api_key=ApiKeys(hub.engine).create("t", Role.operator, "t").key)
    agents: list[tuple[AgentDaemon, threading.Thread, int]] = []
    try:
        x, y = digits_images(seed=1, size=8)  # 8x8: the default conv net trains in seconds
        client.upload_dataset("digits", write_npz(tmp_path / "digits.npz", x, y))
        settings: dict[str, Any] = {
            "name": "digits",
            "dataset": "digits",
            "kind": "cnn",
            "device_classes": ["generic-linux", "pi-litert"],
            "probation_s": 1.0,
            "probation_min_inferences": 3,
        }
        # a .tflite that answers unlike its ONNX sibling: the build is refused, unsigned
        with monkeypatch.context() as patch:
            converting_here(patch)
            patch.setattr(export, "convert_int8", swapping_class_scores(export.convert_int8))
            with pytest.raises(HubClientError, match="sibling"):
                client.wait_job(client.train(**settings)["id"], timeout=300)
        (run,) = client.runs("digits")
        assert run["status"] == "refused" and run["version"] is None
        assert "sibling" in {g["name"] for g in run["gates"] if not g["passed"]}
        assert client.models() == [] and signed_targets(hub) == {}

        model = client.wait_job(client.train(**settings)["id"], timeout=300)["result"]
        artefacts: dict[str, Any] = model["artefacts"]
        assert set(artefacts) == {"onnxruntime", "tflite"}
        tfl = artefacts["tflite"]
        assert {g["name"] for g in tfl["gates"]} >= {"int8_loss", "sibling"}
        assert all(g["passed"] for g in tfl["gates"])
        print(
            f"\ndigits 8x8 cnn: int8 ONNX {artefacts['onnxruntime']['size_bytes']:,} B"
            f" accuracy {artefacts['onnxruntime']['metrics']['accuracy']:.4f};"
            f" int8 .tflite {tfl['size_bytes']:,} B accuracy {tfl['metrics']['accuracy']:.4f}"
        )

        targets = hub.registry.artefacts("digits", model["version"])
        assert targets == {runtime: a["target"] for runtime, a in artefacts.items()}
        signed = signed_targets(hub)
        for runtime, target in sorted(targets.items()):  # onnxruntime, then tflite
            entry = signed[target]
            manifest = Manifest.from_custom(hub.trust.manifest(target) or {})
            assert (manifest.runtime, manifest.version) == (runtime, model["version"])
            assert manifest.format == ("tflite" if runtime == "tflite" else "onnx")
            assert manifest.inputs[0].shape == (None, 8, 8)
            blob = hub.registry.store.get(entry["hashes"]["sha256"])
            assert len(blob) == entry["length"] == artefacts[runtime]["size_bytes"]
            golden = np.asarray(manifest.health.golden_inputs, np.float32).reshape(-1, 8, 8)
            got = open_runner(blob).run(golden, manifest.health.golden_output)
            want = np.asarray(manifest.health.golden_outputs, np.float32)
            np.testing.assert_allclose(got.reshape(len(golden), -1), want, atol=1e-6)
        assert targets["tflite"].endswith("model.tflite")
        scores = open_runner(blob).run(x[:4], manifest.health.golden_output)  # the .tflite
        expected = [manifest.classes[i] for i in scores.argmax(axis=1)]

        # a LiteRT device installs the .tflite, passes probation and serves the conv net
        agent = start_agent(client, api.url, tmp_path, "pi-1", "pi-litert", "tflite")
        agents.append(agent)
        wait_for(lambda: len(client.devices(status="online")) == 1, 15, "the device online")
        rollout = client.create_rollout("digits", version=model["version"])
        rows = {"inputs": x[:4].tolist()}
        deadline = time.monotonic() + 90
        while client.rollout(rollout["id"])["state"] != "completed":
            post(agent[2], "/v1/predict", rows)  # probation's live traffic
            assert time.monotonic() < deadline, client.rollout(rollout["id"])
            time.sleep(0.1)
        status, body = post(agent[2], "/v1/predict", rows)
        assert status == 200 and body["version"] == model["version"]
        # the classes the hub's LiteRT gives for these rows from the signed .tflite
        assert body["outputs"]["class"] == expected
        assert {p.suffix for p in (tmp_path / "pi-1").rglob("model.*")} == {".tflite"}
    finally:
        for daemon, thread, _ in agents:
            daemon.stop()
            thread.join(5)
        client.close()
        api.stop()
        hub.stop()
