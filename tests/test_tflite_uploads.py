"""Bring your own .tflite: judged on the operator's dataset through the real hub and API.

As tests/test_builds.py does for ONNX: a real hub with a real Mosquitto, the admin API
behind a real uvicorn, datasets uploaded as CSV, and every upload run in the hub's job
thread. The .tflite files are TensorFlow's (tests/tflite_models.py); what the hub signed
is checked against a fresh LiteRT interpreter driven here, row by row, as a device runs it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from ai_edge_litert.interpreter import Interpreter
from sklearn.datasets import load_wine
from tflite_models import wine_tflite  # tests/tflite_models.py

from edgefleet.cli import main as cli
from edgefleet.client import HubClient, HubClientError
from edgefleet.demo import ApiServer
from hub import Hub, HubConfig, pipeline_config
from hub.access.keys import ApiKeys, Role
from hub.ml.training_data import Dataset
from hub.transport.broker import Mosquitto

pytestmark = [pytest.mark.broker, pytest.mark.slow, pytest.mark.tflite]

JOB_TIMEOUT_S = 300.0


@pytest.fixture(scope="module")
def stage(
    mosquitto: Mosquitto, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Hub, HubClient, list[str]]]:
    tmp = tmp_path_factory.mktemp("tflite-uploads")
    hub = Hub(
        HubConfig(data_dir=tmp / "hub", broker_url=mosquitto.address.url, client_id="hub-tflite")
    ).start()
    api = ApiServer(hub).start()
    key = ApiKeys(hub.engine).create("o", Role.operator, "t").key
    client = HubClient(api.url, api_key=key)
    wine = load_wine()
    labels = [f"c{t}" for t in wine.target]
    z = (wine.data - wine.data.mean(axis=0)) / wine.data.std(axis=0)
    write_csv(tmp / "wine.csv", wine.data, labels)
    write_csv(tmp / "wine-z.csv", z, labels)  # standardised: what a full-int8 input wants
    client.upload_dataset("wine", tmp / "wine.csv", label="label")
    client.upload_dataset("wine-z", tmp / "wine-z.csv", label="label")
    yield hub, client, ["--hub", api.url, "--api-key", key]
    client.close()
    api.stop()
    hub.stop()


def write_csv(path: Path, x: np.ndarray, y: list[str]) -> None:
    header = ",".join([*(f"f{i}" for i in range(x.shape[1])), "label"])
    rows = [",".join([*(f"{v:.6g}" for v in r), t]) for r, t in zip(x, y, strict=True)]
    path.write_text("\n".join([header, *rows]) + "\n")


def upload(client: HubClient, name: str, data: bytes, **kw: Any) -> dict[str, Any]:
    job = client.upload(name, data, **kw)
    return client.wait_job(job["id"], timeout=JOB_TIMEOUT_S)["result"]


def refused_upload(client: HubClient, name: str, data: bytes, **kw: Any) -> str:
    with pytest.raises(HubClientError) as caught:
        upload(client, name, data, **kw)
    return caught.value.message


def manifest_of(hub: Hub, target: str) -> dict[str, Any]:
    """The signed manifest of ``target`` (its manifest target, ADR 0037)."""
    manifest = hub.trust.manifest(target)
    assert manifest is not None, target
    return manifest


def hub_rows(hub: Hub, dataset: str) -> Dataset:
    """The dataset's rows exactly as an upload's build split them."""
    return hub.builds.base_rows(dataset, pipeline_config())


def litert_rows(model: bytes, rows: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """The model's only output for each row, one invoke per row in a fresh interpreter."""
    it = Interpreter(model_content=model, num_threads=1)
    it.allocate_tensors()
    (inp,), (out,) = it.get_input_details(), it.get_output_details()
    got = []
    for row in rows:
        it.set_tensor(inp["index"], np.asarray(row, np.float32).reshape(inp["shape"]))
        it.invoke()
        got.append(it.get_tensor(out["index"])[0].copy())
    return np.array(got)


def test_a_float_tflite_is_judged_on_the_dataset_and_signed_as_it_is(
    stage: tuple[Hub, HubClient, list[str]],
) -> None:
    hub, client, _ = stage
    model = wine_tflite(int8=False)
    r = upload(client, "wine-tfl", model, dataset="wine")
    assert (r["format"], r["runtime"], r["target"]) == (
        "tflite",
        "tflite",
        "wine-tfl/1/model.tflite",
    )
    assert r["size_bytes"] == len(model) and r["datasets"] == ["wine:1"]
    assert any("ships as uploaded" in n for n in r["notes"])
    assert hub.registry.store.get(r["sha256"]) == model  # the exact bytes, not a conversion

    rows = hub_rows(hub, "wine")
    figures = r["metrics"]["int8"]
    expected = litert_rows(model, rows.x_holdout).argmax(axis=1)
    assert figures["accuracy"] == float(np.mean(expected == rows.y_holdout)) >= 0.9
    assert figures["rows"] == 36 and np.array(figures["confusion"]).shape == (3, 3)
    assert figures["latency_us_per_row"] > 0 and r["metrics"]["fp32"] == figures
    assert [g["name"] for g in r["gates"]] == ["int8_loss"] and r["gates"][0]["passed"]

    manifest = manifest_of(hub, r["target"])
    assert (manifest["format"], manifest["runtime"]) == ("tflite", "tflite")
    assert manifest["inputs"][0]["shape"] == [None, 13]
    assert manifest["inputs"][0]["dtype"] == manifest["outputs"][0]["dtype"] == "float32"
    health = manifest["health"]
    assert health["golden_output"] == manifest["outputs"][0]["name"]
    golden = litert_rows(model, np.array(health["golden_inputs"], np.float32))
    assert np.abs(golden - np.array(health["golden_outputs"])).max() <= 1e-6
    shares = np.bincount(litert_rows(model, rows.x_train).argmax(axis=1), minlength=3)
    assert manifest["baseline"]["outputs"]["hist"] == (shares / len(rows.x_train)).tolist()
    models = {(m["name"], m["version"]): m for m in client.models()}
    assert (models[("wine-tfl", 1)]["format"], models[("wine-tfl", 1)]["runtime"]) == (
        "tflite",
        "tflite",
    )


def test_a_full_int8_tflite_runs_row_by_row(stage: tuple[Hub, HubClient, list[str]]) -> None:
    hub, client, _ = stage
    model = wine_tflite(int8=True, standardized=True)
    r = upload(client, "wine-int8", model, dataset="wine-z")
    assert r["target"] == "wine-int8/1/model.tflite" and r["size_bytes"] == len(model)
    rows = hub_rows(hub, "wine-z")
    expected = litert_rows(model, rows.x_holdout).argmax(axis=1)
    assert r["accuracy_int8"] == float(np.mean(expected == rows.y_holdout)) >= 0.9
    manifest = manifest_of(hub, r["target"])
    assert manifest["inputs"][0]["shape"] == [1, 13]  # a batch of one, as converted
    golden = np.array(manifest["health"]["golden_outputs"])
    assert (golden * 256 == np.round(golden * 256)).all()  # int8 scores: steps of 1/256
    inputs = np.array(manifest["health"]["golden_inputs"], np.float32)
    np.testing.assert_array_equal(litert_rows(model, inputs), golden.astype(np.float32))


def test_refusals_say_what_differs(stage: tuple[Hub, HubClient, list[str]]) -> None:
    _, client, _ = stage
    before = len(client.models())
    narrow = wine_tflite(int8=False, features=10)
    message = refused_upload(client, "bad-tfl", narrow, dataset="wine")
    assert "takes 10 features; the dataset has 13 [N, 13]" in message

    # A full-int8 file on raw features: one input scale for proline (to 1680) and hue
    # (0.5..1.7) leaves too few steps for the small ones. The floor refuses it.
    collapsed = wine_tflite(int8=True)
    message = refused_upload(client, "bad-tfl", collapsed, dataset="wine", min_accuracy=0.9)
    assert "floor" in message and "< the floor 0.9000" in message
    run = client.runs("bad-tfl")[-1]
    assert run["status"] == "refused" and run["metrics"]["int8"]["accuracy"] < 0.9
    assert {g["name"]: g["passed"] for g in run["gates"]} == {"int8_loss": True, "floor": False}

    message = refused_upload(client, "bad-tfl", b"\x08\x07garbage bytes" * 8, dataset="wine")
    assert "not a loadable ONNX model" in message and "nor is it a TFLite file" in message
    message = refused_upload(client, "bad-tfl", wine_tflite(int8=False)[:256], dataset="wine")
    assert "not a loadable TFLite model" in message
    assert client.runs("bad-tfl")[-1]["status"] == "failed"
    assert len(client.models()) == before  # nothing refused was published


def test_champion_gate_across_formats(stage: tuple[Hub, HubClient, list[str]]) -> None:
    _, client, _ = stage
    job = client.train(name="champ-tfl", dataset="wine")
    champion = client.wait_job(job["id"], timeout=JOB_TIMEOUT_S)["result"]
    assert champion["format"] == "onnx"
    message = refused_upload(
        client, "champ-tfl", wine_tflite(int8=True), dataset="wine", champion=True
    )
    assert "champion" in message and "of the deployed v1 on the same hold-out" in message
    r = upload(client, "champ-tfl", wine_tflite(int8=False), dataset="wine", champion=True)
    assert r["version"] == 2
    assert (r["gates"][-1]["name"], r["gates"][-1]["passed"]) == ("champion", True)
    assert r["metrics"]["int8"]["accuracy"] >= champion["accuracy_int8"]

    # The reverse: an ONNX challenger scored against the TFLite champion, in LiteRT.
    job = client.train(name="champ-tfl", dataset="wine", champion=True)
    with contextlib.suppress(HubClientError):  # published or refused: the gate says which
        client.wait_job(job["id"], timeout=JOB_TIMEOUT_S)
    gate = client.runs("champ-tfl")[-1]["gates"][-1]
    assert gate["name"] == "champion"
    assert f"vs {r['accuracy_int8']:.4f} of the deployed v2 on the same hold-out" in gate["detail"]


def test_the_cli_uploads_a_tflite_file(
    stage: tuple[Hub, HubClient, list[str]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _, _, api = stage
    path = tmp_path / "wine.tflite"
    path.write_bytes(wine_tflite(int8=False))
    code = cli(["models", "upload", str(path), "--name", "cli-tfl", "--dataset", "wine", *api])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "cli-tfl v1 signed: cli-tfl/1/model.tflite (classification)" in out
    assert "accuracy" in out and "note: a TFLite file ships as uploaded" in out

    named_onnx = tmp_path / "model.onnx"  # the name says nothing: the bytes decide
    named_onnx.write_bytes(wine_tflite(int8=False))
    code = cli(
        ["models", "upload", str(named_onnx), "--name", "cli-tfl", "--dataset", "wine", *api]
    )
    assert code == 0 and "cli-tfl v2 signed: cli-tfl/2/model.tflite" in capsys.readouterr().out

    garbage = tmp_path / "garbage.tflite"
    garbage.write_bytes(b"not a model at all" * 10)
    code = cli(["models", "upload", str(garbage), "--name", "cli-tfl", "--dataset", "wine", *api])
    out, err = capsys.readouterr()
    assert code == 1 and "refused:" in err and "nor is it a TFLite file" in err
