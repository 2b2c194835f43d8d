"""The hub's .tflite export (hub/ml/tflite_export.py): a trained MLP becomes an int8
.tflite with float input and output that scores like the model it came from, on real
TensorFlow and a real LiteRT interpreter."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer, load_diabetes
from test_tflite_convnet import converting_here

from hub import pipeline_config
from hub.ml.compatibility import scores_output, value_output
from hub.ml.errors import ModelRefused, PipelineError
from hub.ml.gates import sibling
from hub.ml.pipeline import train
from hub.ml.tflite import TFLiteRunner
from hub.ml.tflite_export import export_tflite_int8
from hub.ml.training import Fitted, fit
from hub.ml.training_data import Dataset, builtin_dataset, split_arrays
from shared.tflite import TFLiteModel

pytestmark = [pytest.mark.tflite, pytest.mark.slow]


def ops_and_weights(blob: bytes) -> tuple[list[str], set[str]]:
    """The model's operators in order, and the dtypes of its fully connected weights."""
    it = TFLiteModel(blob).interpreter
    ops = it._get_ops_details()
    tensors = {t["index"]: t for t in it.get_tensor_details()}
    weights = {
        np.dtype(tensors[op["inputs"][1]]["dtype"]).name
        for op in ops
        if op["op_name"] == "FULLY_CONNECTED"
    }
    # (XNNPACK's DELEGATE nodes, appended when the interpreter allocates, are left out)
    return [op["op_name"] for op in ops if op["op_name"] != "DELEGATE"], weights


def trained(data: Dataset, hidden: tuple[int, ...]) -> Fitted:
    return fit(data, pipeline_config(hidden=hidden))


def test_a_classifier_exports_int8_layers_that_score_as_the_model() -> None:
    data = builtin_dataset(pipeline_config())
    fitted = trained(data, (64, 64))
    blob = export_tflite_int8(fitted, data.x_train)
    ops, weights = ops_and_weights(blob)
    # the input's standardisation in float, then every layer in int8
    assert ops == [
        "SUB",
        "MUL",
        "QUANTIZE",
        "FULLY_CONNECTED",
        "FULLY_CONNECTED",
        "FULLY_CONNECTED",
        "SOFTMAX",
        "DEQUANTIZE",
    ]
    assert weights == {"int8"}
    runner = TFLiteRunner(blob)
    assert runner.inputs()[0].shape == (None, 16) and runner.inputs()[0].dtype == "float32"
    scores = runner.run(data.x_holdout, scores_output(runner))
    accuracy = float(np.mean(scores.argmax(1) == data.y_holdout))
    reference = float(np.mean(fitted.model.predict(data.x_holdout) == data.y_holdout))
    print(
        f"\n16-64-64-4 MLP: int8 .tflite {len(blob):,} bytes, accuracy {accuracy:.4f}"
        f" against {reference:.4f} in float"
    )
    assert accuracy >= reference - 0.01
    assert len(blob) < 20_000


def test_two_classes_give_two_scores_as_scikit_learn_does() -> None:
    x, y = load_breast_cancer(return_X_y=True)
    data = split_arrays(x.astype(np.float32), y, task="classification", classes=("m", "b"))
    fitted = trained(data, (16,))
    runner = TFLiteRunner(export_tflite_int8(fitted, data.x_train))
    scores = runner.run(data.x_holdout, scores_output(runner))
    assert scores.shape == (len(data.x_holdout), 2)
    np.testing.assert_allclose(scores.sum(axis=1), 1.0, atol=0.02)
    agree = np.mean(scores.argmax(1) == fitted.model.predict(data.x_holdout))
    assert agree >= 0.97


def test_a_regressor_exports_its_value_with_the_target_scaling_undone() -> None:
    x, y = load_diabetes(return_X_y=True)
    data = split_arrays(x.astype(np.float32), y.astype(np.float32), task="regression")
    fitted = trained(data, (32,))
    runner = TFLiteRunner(export_tflite_int8(fitted, data.x_train))
    got = runner.run(data.x_holdout, value_output(runner)).reshape(-1)
    want = fitted.model.predict(data.x_holdout) * fitted.y_std + fitted.y_mean
    mae_int8 = float(np.mean(np.abs(got - data.y_holdout)))
    mae_float = float(np.mean(np.abs(want - data.y_holdout)))
    assert mae_int8 <= mae_float * 1.05 + 1.0


def test_the_same_model_converts_to_the_same_bytes_every_time() -> None:
    """Layer names go into the file: Keras' own would count up with every model the hub
    process builds (3,552 then 3,600 bytes for one 16-8-4 MLP, measured)."""
    data = builtin_dataset(pipeline_config(n_train=600))
    fitted = trained(data, (8,))
    blobs = {export_tflite_int8(fitted, data.x_train) for _ in range(3)}
    assert len(blobs) == 1


def test_without_tensorflow_the_error_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data = builtin_dataset(pipeline_config(n_train=300))
    fitted = trained(data, (8,))
    monkeypatch.setitem(sys.modules, "tensorflow", None)  # the import fails
    with pytest.raises(PipelineError, match=r"pip install 'edgefleet\[tflite-export\]'"):
        export_tflite_int8(fitted, data.x_train)


def test_an_artefact_that_answers_unlike_its_onnx_sibling_is_refused() -> None:
    rng = np.random.default_rng(0)
    onnx = rng.random((200, 4)).astype(np.float32)
    same = onnx + 0.001  # an int8 rounding away: the same classes
    assert sibling("classification", same, onnx, {"accuracy": 0.9}).passed
    shuffled = onnx[:, ::-1]  # other classes for most rows
    gate = sibling("classification", shuffled, onnx, {"accuracy": 0.9})
    assert not gate.passed and "under the 97% required" in gate.detail
    values = rng.random(200).astype(np.float32)
    off = sibling("regression", values + 1.0, values, {"mae": 0.5})
    assert not off.passed and "over the 0.125 allowed" in off.detail


def test_a_build_whose_tflite_artefact_is_refused_signs_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A .tflite that answers unlike the ONNX model (here: a converter that swaps the
    class scores) is refused by the sibling gate before anything is signed."""
    import hub.ml.tflite_export as export

    real = export.export_tflite_int8

    def swapped(fitted: Fitted, calibration: np.ndarray) -> bytes:
        fitted.model.steps[-1][1].coefs_[-1] = fitted.model.steps[-1][1].coefs_[-1][:, ::-1]
        return real(fitted, calibration)

    converting_here(monkeypatch)
    monkeypatch.setattr(export, "export_tflite_int8", swapped)
    with pytest.raises(ModelRefused) as refused:
        train(pipeline_config(n_train=1500, hidden=(16,)), runtimes=("tflite",))
    failed = {g["name"] for g in refused.value.gates if not g["passed"]}
    assert "sibling" in failed
