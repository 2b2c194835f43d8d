"""A retrained version carries an artefact per runtime of its device classes (ADR 0020),
as a build does: a model trained for generic-linux and pi-litert, retrained on captured
rows, gets an int8 ONNX file and a full-int8 .tflite, each gated, signed as its own target
with its classes' health budgets, and a LiteRT device installs the retrained .tflite; a
sibling refused by its gate refuses the retrain unsigned; a conv net retrains for LiteRT
too; an ONNX-only model still retrains to ONNX only. Real hub, API, Mosquitto,
onnxruntime, TensorFlow's converter and LiteRT.

The captured rows are written as a finished capture leaves them (a dataset version row
and its npz): the capture protocol itself is tests/test_datasets.py's.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from test_class_artefacts import signed_targets, start_agent
from test_daemon import post
from test_tflite_convnet import converting_here, swapping_class_scores
from waiting import wait_for

import hub.ml.tflite_export as mlp_export
from agent.daemon import AgentDaemon
from edgefleet.client import HubClient, HubClientError
from edgefleet.demo import ApiServer
from hub import Hub, HubConfig
from hub.access.keys import ApiKeys, Role
from hub.ml.data.captured_rows import to_npz
from hub.ml.data.samples import digits_images, write_npz
from hub.ml.runner import open_runner
from hub.store.tables import DatasetVersion, session
from hub.transport.broker import Mosquitto
from shared.manifest import Manifest
from shared.sensors import generate

pytestmark = [pytest.mark.broker, pytest.mark.slow]

JOB_TIMEOUT_S = 300.0
PI_LITERT = {"latency_budget_us": 8000.0, "memory_budget_mb": 48.0}  # its profile.toml


class Stage:
    """A hub of its own with its API, and an operator's client."""

    def __init__(self, mosquitto: Mosquitto, tmp: Path) -> None:
        self.hub = Hub(HubConfig(data_dir=tmp / "hub", broker_url=mosquitto.address.url))
        self.hub.start()
        self.api = ApiServer(self.hub).start()
        key = ApiKeys(self.hub.engine).create("t", Role.operator, "t").key
        self.client = HubClient(self.api.url, api_key=key)

    def close(self) -> None:
        self.client.close()
        self.api.stop()
        self.hub.stop()

    def captured(
        self, dataset_id: str, model: str, version: int, x: npt.NDArray[Any], y: npt.NDArray[Any]
    ) -> str:
        """A dataset version of ``model`` as a finished capture from two devices leaves it."""
        arrays = {
            "x": x.astype(np.float32),
            "labels": y.astype(np.int64),
            "device_index": (np.arange(len(x)) % 2).astype(np.int32),
        }
        row = DatasetVersion(
            id=dataset_id,
            model=model,
            version=version,
            devices=["d0", "d1"],
            rows=len(x),
            labelled=len(x),
            features=int(x.shape[1]),
            sha256=self.hub.store.put(to_npz(arrays)),
        )
        with session(self.hub.engine) as s:
            s.add(row)
            s.commit()
        return dataset_id

    def retrain(self, model: str, dataset_id: str) -> dict[str, Any]:
        job = self.client.retrain(model, [dataset_id])
        return dict(self.client.wait_job(job["id"], timeout=JOB_TIMEOUT_S)["result"])


@pytest.fixture
def stage(private_mosquitto: Mosquitto, tmp_path: Path) -> Any:
    stage = Stage(private_mosquitto, tmp_path)
    try:
        yield stage
    finally:
        stage.close()


def check_signed(hub: Hub, name: str, result: dict[str, Any], row_shape: tuple[int, ...]) -> None:
    """Each artefact of the version is signed as a target of its own, with a manifest of
    its runtime and version, pi-litert's health budgets, and golden outputs its own file
    gives (what each device checks on install)."""
    artefacts = result["artefacts"]
    targets = hub.registry.artefacts(name, result["version"])
    assert targets == {runtime: a["target"] for runtime, a in artefacts.items()}
    signed = signed_targets(hub)
    for runtime, target in targets.items():
        entry = signed[target]
        manifest = Manifest.from_custom(hub.trust.manifest(target) or {})
        assert (manifest.runtime, manifest.version) == (runtime, result["version"])
        assert manifest.format == ("tflite" if runtime == "tflite" else "onnx")
        assert dict(manifest.class_health["pi-litert"]) == PI_LITERT
        blob = hub.registry.store.get(entry["hashes"]["sha256"])
        assert len(blob) == entry["length"] == artefacts[runtime]["size_bytes"]
        golden = np.asarray(manifest.health.golden_inputs, np.float32)
        golden = golden.reshape(-1, *row_shape)
        got = open_runner(blob).run(golden, manifest.health.golden_output)
        want = np.asarray(manifest.health.golden_outputs, np.float32)
        np.testing.assert_allclose(got.reshape(len(golden), -1), want, atol=1e-6)


@pytest.mark.tflite
def test_a_retrain_for_litert_classes_signs_a_tflite_a_device_installs(
    stage: Stage, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    client, hub = stage.client, stage.hub
    t0 = time.perf_counter()
    job = client.train(
        n_train=2000,
        device_classes=["generic-linux", "pi-litert"],
        probation_s=1.0,
        probation_min_inferences=3,
    )
    base = client.wait_job(job["id"], timeout=JOB_TIMEOUT_S)["result"]
    name = base["name"]
    assert set(base["artefacts"]) == {"onnxruntime", "tflite"}
    x, y = generate(240, seed=11)
    dataset = stage.captured("cap-litert", name, base["version"], x, y)
    targets_before = signed_targets(hub)

    # a .tflite that answers unlike its ONNX sibling refuses the retrain: nothing signed
    with monkeypatch.context() as patch:
        converting_here(patch)
        patch.setattr(mlp_export, "convert_int8", swapping_class_scores(mlp_export.convert_int8))
        with pytest.raises(HubClientError, match="sibling"):
            stage.retrain(name, dataset)
    refused = [r for r in client.runs(name) if r["source"] == "retrained"]
    assert [(r["status"], r["version"]) for r in refused] == [("refused", None)]
    assert "sibling" in {g["name"] for g in refused[0]["gates"] if not g["passed"]}
    assert [m["version"] for m in client.models(name)] == [base["version"]]
    assert signed_targets(hub) == targets_before

    result = stage.retrain(name, dataset)
    seconds = time.perf_counter() - t0
    assert result["version"] == base["version"] + 1 and result["from_version"] == base["version"]
    artefacts = result["artefacts"]
    assert set(artefacts) == {"onnxruntime", "tflite"}
    assert artefacts["tflite"]["target"] == f"{name}/{result['version']}/model.tflite"
    assert {g["name"] for g in artefacts["tflite"]["gates"]} >= {"int8_loss", "sibling"}
    assert all(g["passed"] for g in artefacts["tflite"]["gates"])
    check_signed(hub, name, result, (x.shape[1],))
    (published,) = [r for r in client.runs(name) if r["version"] == result["version"]]
    assert (published["source"], published["status"]) == ("retrained", "published")
    print(
        f"\nretrained v{result['version']}: int8 ONNX {artefacts['onnxruntime']['size_bytes']:,} B"
        f" accuracy {artefacts['onnxruntime']['metrics']['accuracy']:.4f}; int8 .tflite"
        f" {artefacts['tflite']['size_bytes']:,} B accuracy"
        f" {artefacts['tflite']['metrics']['accuracy']:.4f}; train + 2 retrains {seconds:.1f} s"
    )

    # a LiteRT device installs the retrained .tflite, passes probation and serves it
    agents: list[tuple[AgentDaemon, threading.Thread, int]] = []
    try:
        agents.append(start_agent(client, stage.api.url, tmp_path, "pi-1", "pi-litert", "tflite"))
        wait_for(lambda: len(client.devices(status="online")) == 1, 15, "the device online")
        rollout = client.create_rollout(name, version=result["version"])
        rows = {"inputs": x[:4].tolist()}
        deadline = time.monotonic() + 90
        while client.rollout(rollout["id"])["state"] != "completed":
            post(agents[0][2], "/v1/predict", rows)  # probation's live traffic
            assert time.monotonic() < deadline, client.rollout(rollout["id"])
            time.sleep(0.1)
        status, body = post(agents[0][2], "/v1/predict", rows)
        assert status == 200 and body["version"] == result["version"]
        installed = list((tmp_path / "pi-1").rglob("model.*"))
        assert {p.suffix for p in installed} == {".tflite"}, installed
    finally:
        for daemon, thread, _ in agents:
            daemon.stop()
            thread.join(5)


@pytest.mark.tflite
def test_a_conv_net_retrains_for_litert_classes(stage: Stage, tmp_path: Path) -> None:
    """Captured image rows (as a device's reservoir keeps them, [rows, 8, 8]) retrain a
    conv net built for pi-litert: the new version has its .tflite, signed and checked."""
    client, hub = stage.client, stage.hub
    x, y = digits_images(seed=1, size=8)  # 8x8: the default conv net trains in seconds
    client.upload_dataset("digits", write_npz(tmp_path / "digits.npz", x[:1500], y[:1500]))
    job = client.train(name="digits", dataset="digits", kind="cnn", device_classes=["pi-litert"])
    base = client.wait_job(job["id"], timeout=JOB_TIMEOUT_S)["result"]
    assert set(base["artefacts"]) == {"onnxruntime", "tflite"}
    dataset = stage.captured("cap-digits", "digits", base["version"], x[1500:], y[1500:])
    result = stage.retrain("digits", dataset)
    assert result["rows_captured_holdout"] > 0 and result["base_config"] == "recorded"
    assert set(result["artefacts"]) == {"onnxruntime", "tflite"}
    assert all(g["passed"] for g in result["artefacts"]["tflite"]["gates"])
    check_signed(hub, "digits", result, (8, 8))
    assert client.lineage("digits", result["version"])["training"]["config"]["kind"] == "cnn"


def test_an_onnx_only_model_retrains_to_onnx_only(stage: Stage) -> None:
    client, hub = stage.client, stage.hub
    job = client.train(name="plain", n_train=2000, device_classes=["generic-linux"])
    base = client.wait_job(job["id"], timeout=JOB_TIMEOUT_S)["result"]
    x, y = generate(200, seed=12)
    result = stage.retrain("plain", stage.captured("cap-plain", "plain", base["version"], x, y))
    assert set(result["artefacts"]) == {"onnxruntime"}
    targets = hub.registry.artefacts("plain", result["version"])
    assert targets == {"onnxruntime": f"plain/{result['version']}/model.onnx"}
    assert targets["onnxruntime"] in signed_targets(hub)
    manifest = Manifest.from_custom(hub.trust.manifest(targets["onnxruntime"]) or {})
    # generic-linux's budgets come with the retrained version, as with the trained one
    assert set(manifest.class_health) == {"generic-linux"}
    assert not any(t.endswith(".tflite") for t in signed_targets(hub))
