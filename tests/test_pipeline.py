"""The model pipeline with the real parts: scikit-learn, skl2onnx, onnxruntime quantisation."""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper
from skl2onnx import to_onnx
from skl2onnx.common.data_types import FloatTensorType
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from hub.ml.pipeline import (
    BuiltModel,
    ConfigError,
    GateError,
    PipelineConfig,
    PipelineError,
    baseline_stats,
    build_manifest,
    dataset_from_arrays,
    evaluate,
    import_model,
    quantize_int8,
    train,
)
from shared.chunks import chunk_hashes
from shared.manifest import Manifest, ManifestError, TensorSpec
from shared.sensors import CLASSES, FEATURES, N_FEATURES, generate

SMALL = PipelineConfig(n_train=3000, n_holdout=1500, n_calibration=256)
CHUNK = 4096  # bytes: several chunks for a ~12 KB model


@pytest.fixture(scope="module")
def trained() -> tuple[BuiltModel, list[tuple[str, float]]]:
    stages: list[tuple[str, float]] = []
    built = train(SMALL, lambda stage, fraction: stages.append((stage, fraction)))
    return built, stages


@pytest.fixture(scope="module")
def built(trained: tuple[BuiltModel, list[tuple[str, float]]]) -> BuiltModel:
    return trained[0]


def _session(model_bytes: bytes) -> ort.InferenceSession:
    return ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])


def _tiny_model(width: int, outputs: str) -> bytes:
    """A one-layer graph on ``width`` inputs; ``outputs`` is "probabilities" or "label"."""
    rng = np.random.default_rng(0)
    weights = helper.make_tensor(
        "w", TensorProto.FLOAT, [width, 4], rng.normal(size=width * 4).tolist()
    )
    nodes = [helper.make_node("MatMul", ["input", "w"], ["logits"])]
    if outputs == "probabilities":
        nodes.append(helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1))
        out = helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, 4])
    else:
        nodes.append(helper.make_node("ArgMax", ["logits"], ["label"], axis=1, keepdims=0))
        out = helper.make_tensor_value_info("label", TensorProto.INT64, [None])
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, width])],
        [out],
        initializer=[weights],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 15)])
    model.ir_version = 8  # what onnxruntime accepts; newer onnx releases default higher
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


def _zipmap_model() -> bytes:
    """A classifier exported with skl2onnx's default ZipMap: probabilities as maps."""
    x, y = generate(400, seed=3)
    clf = make_pipeline(StandardScaler(), LogisticRegression()).fit(x, y)
    onx = to_onnx(clf, initial_types=[("input", FloatTensorType([None, N_FEATURES]))])
    return bytes(onx.SerializeToString())


# ---------------------------------------------------------------------------- train


def test_train_ships_a_smaller_int8_model_within_the_gate(built: BuiltModel) -> None:
    assert built.size_int8 == len(built.model_bytes) < built.size_fp32 == len(built.fp32_bytes)
    assert built.accuracy_fp32 > 0.7 and built.accuracy_int8 > 0.7
    assert (built.accuracy_fp32 - built.accuracy_int8) * 100 <= SMALL.max_int8_loss_points
    assert built.accuracy_int8 == evaluate(built.model_bytes, *_holdout(SMALL))
    assert built.inputs == (TensorSpec("input", "float32", (None, N_FEATURES)),)
    assert built.outputs == (
        TensorSpec("label", "int64", (None,)),
        TensorSpec("probabilities", "float32", (None, len(CLASSES))),
    )
    ops = {node.op_type for node in onnx.load_model_from_string(built.model_bytes).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops  # QDQ format
    assert built.classes == CLASSES and built.source == "trained"


def _holdout(config: PipelineConfig) -> tuple[np.ndarray, np.ndarray]:
    x, y = generate(config.n_train + config.n_holdout, seed=config.seed)
    return x[config.n_train :], y[config.n_train :]


def test_train_reports_progress_in_order(
    trained: tuple[BuiltModel, list[tuple[str, float]]],
) -> None:
    _, stages = trained
    names = [s for s, _ in stages]
    assert list(dict.fromkeys(names))[:3] == ["dataset", "train", "quantize"]
    assert names.count("train") > 10  # an update per epoch: the bar moves while it trains
    assert names[-1] == "golden" and "gate" in names
    fractions = [f for _, f in stages]
    assert fractions == sorted(fractions) and fractions[0] >= 0 and fractions[-1] < 0.95


def test_train_is_deterministic(built: BuiltModel) -> None:
    again = train(SMALL)
    assert again.model_bytes == built.model_bytes
    assert again.fp32_bytes == built.fp32_bytes
    assert again.golden_outputs == built.golden_outputs
    assert again.baseline == built.baseline


def test_train_on_arrays_keeps_their_names() -> None:
    x, y = generate(2500, seed=11)
    data = dataset_from_arrays(x, y, features=[f"s{i}" for i in range(N_FEATURES)])
    built = train(SMALL, dataset=data)
    assert built.classes == ("0", "1", "2", "3")
    assert [f["name"] for f in built.baseline["features"]] == list(data.features)
    assert built.accuracy_int8 > 0.7


def test_dataset_from_arrays_refuses_inconsistent_rows() -> None:
    x, y = generate(200, seed=1)
    with pytest.raises(PipelineError, match="classes"):
        dataset_from_arrays(x, np.where(y == 3, 0, y), classes=CLASSES)  # class 3 missing
    with pytest.raises(PipelineError, match="y must hold class indices"):
        dataset_from_arrays(x, y.astype(np.float64))
    with pytest.raises(PipelineError, match="NaN"):
        dataset_from_arrays(np.where(x > 5, np.nan, x), y)


def test_config_refuses_an_opset_outside_what_we_measured() -> None:
    with pytest.raises(ConfigError, match="opset"):
        PipelineConfig(opset=21)
    with pytest.raises(ValueError, match="n_calibration"):  # what the hub's API catches
        PipelineConfig(n_calibration=0)


# ---------------------------------------------------------------------------- gate


def test_gate_refuses_a_loss_over_the_limit(built: BuiltModel) -> None:
    # A negative allowance asks int8 to beat fp32 by 100 points: impossible.
    with pytest.raises(GateError) as caught:
        train(
            PipelineConfig(
                n_train=3000, n_holdout=1500, n_calibration=256, max_int8_loss_points=-100.0
            )
        )
    err = caught.value
    assert (err.accuracy_fp32, err.accuracy_int8) == (built.accuracy_fp32, built.accuracy_int8)
    assert err.max_loss_points == -100.0
    assert f"{built.accuracy_fp32:.4f}" in str(err)
    assert f"{built.accuracy_int8:.4f}" in str(err)


# ------------------------------------------------------------------------ manifest


def test_manifest_round_trips_and_matches_the_file(built: BuiltModel) -> None:
    manifest = build_manifest(
        built, version=3, chunk_size=CHUNK, device_classes=("rpi4",), config=SMALL
    )
    custom = json.loads(json.dumps(manifest.to_custom()))  # what the TUF target carries
    assert Manifest.from_custom(custom) == manifest
    manifest.check_length(len(built.model_bytes))
    with pytest.raises(ManifestError):
        manifest.check_length(len(built.model_bytes) + CHUNK)
    assert list(manifest.chunks) == chunk_hashes(built.model_bytes, CHUNK)
    assert len(manifest.chunks) > 1
    assert manifest.metrics == {
        "accuracy_fp32": built.accuracy_fp32,
        "accuracy_int8": built.accuracy_int8,
        "size_fp32": built.size_fp32,
        "size_int8": built.size_int8,
    }
    assert manifest.health.golden_output == "probabilities"
    assert len(manifest.health.golden_inputs) == SMALL.n_golden


def test_golden_outputs_reproduce_row_by_row_in_a_fresh_session(built: BuiltModel) -> None:
    health = build_manifest(built, version=1, chunk_size=CHUNK, config=SMALL).health
    session = _session(built.model_bytes)
    for row, expected in zip(health.golden_inputs, health.golden_outputs, strict=True):
        (got,) = session.run([health.golden_output], {"input": np.array([row], np.float32)})
        assert np.abs(got[0] - np.array(expected)).max() <= health.tolerance
    # Golden rows say more than 0/1: every row has some doubt, and several classes win.
    golden = np.array(health.golden_outputs)
    assert (golden.max(axis=1) < 0.99).all()
    assert len(set(golden.argmax(axis=1))) >= 3


def test_health_tolerance_tells_the_int8_file_from_its_fp32_twin(built: BuiltModel) -> None:
    rows = np.array(built.golden_inputs, np.float32)
    (fp32,) = _session(built.fp32_bytes).run(["probabilities"], {"input": rows})
    assert np.abs(fp32 - np.array(built.golden_outputs)).max() > SMALL.tolerance


# -------------------------------------------------------------------------- import


def test_import_accepts_an_fp32_model_and_ships_it_as_is(built: BuiltModel) -> None:
    imported = import_model(built.fp32_bytes, SMALL)
    assert imported.model_bytes == built.fp32_bytes
    assert imported.accuracy_int8 == imported.accuracy_fp32 == built.accuracy_fp32
    assert imported.source == "imported" and imported.outputs == built.outputs
    manifest = build_manifest(imported, version=1, chunk_size=CHUNK, config=SMALL)
    manifest.check_length(len(imported.model_bytes))


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: b"this is not an onnx model", "not a loadable ONNX model"),
        (lambda: b"", "not a loadable ONNX model"),
        (lambda: _tiny_model(8, "probabilities"), "takes 8 features; the dataset has 16"),
        (lambda: _tiny_model(N_FEATURES, "label"), "no class-score output"),
        (_zipmap_model, "ZipMap"),
    ],
    ids=["garbage", "empty", "wrong-width", "no-scores", "zipmap"],
)
def test_import_refuses_what_the_devices_cannot_use(
    make: Callable[[], bytes], message: str
) -> None:
    with pytest.raises(PipelineError, match=message):
        import_model(make(), SMALL)


def test_import_accepts_a_hand_built_model_of_the_right_shape() -> None:
    imported = import_model(_tiny_model(N_FEATURES, "probabilities"), SMALL)
    assert 0 <= imported.accuracy_int8 <= 1  # random weights: any accuracy, but it runs
    assert imported.golden_output == "probabilities"


# ------------------------------------------------------------------------ baseline


def test_baseline_of_the_trained_model(built: BuiltModel) -> None:
    x, _ = generate(SMALL.n_train + SMALL.n_holdout, seed=SMALL.seed)
    x = x[: SMALL.n_train]
    assert [f["name"] for f in built.baseline["features"]] == list(FEATURES)
    for j, feature in enumerate(built.baseline["features"]):
        edges = np.array(feature["edges"])
        assert len(edges) == SMALL.baseline_bins + 1 and (np.diff(edges) > 0).all()
        assert edges[0] <= x[:, j].min() and x[:, j].max() <= edges[-1]
        assert len(feature["hist"]) == SMALL.baseline_bins
        assert sum(feature["hist"]) == pytest.approx(1.0)
        assert feature["mean"] == pytest.approx(float(x[:, j].mean()), rel=1e-5)
    outputs = built.baseline["outputs"]
    assert outputs["classes"] == list(CLASSES)
    assert sum(outputs["hist"]) == pytest.approx(1.0)
    assert outputs["hist"][0] > 0.4  # "normal" dominates the built-in data (55%)
    # the calibration table: the shipped int8 file's confidence on the hold-out rows
    table = outputs["calibration"]
    assert table["output"] == built.golden_output == "probabilities"
    assert sum(table["rows"]) == SMALL.n_holdout
    holdout_estimate = np.dot(table["rows"], table["accuracy"]) / SMALL.n_holdout
    assert holdout_estimate == pytest.approx(built.accuracy_int8, abs=0.01)


def test_baseline_edges_stay_strictly_increasing_on_tied_values() -> None:
    rng = np.random.default_rng(0)
    x = np.stack(
        [
            np.full(500, 3.0),  # constant
            rng.integers(0, 3, 500),  # three values for ten bins
            rng.normal(size=500),
        ],
        axis=1,
    ).astype(np.float32)
    probabilities = np.eye(2, dtype=np.float32)[rng.integers(0, 2, 500)]
    stats = baseline_stats(x, probabilities, 10, features=("c", "d", "n"), classes=("a", "b"))
    json.dumps(stats)  # JSON-able as it is
    for feature in stats["features"]:
        edges = np.array(feature["edges"])
        assert len(edges) == 11 and (np.diff(edges) > 0).all()
        assert (np.diff(edges.astype(np.float32)) > 0).all()  # also as float32 on a device
        assert sum(feature["hist"]) == pytest.approx(1.0)
    assert stats["features"][0]["hist"][0] == 1.0


def test_baseline_refuses_mismatched_names() -> None:
    x, _ = generate(50, seed=2)
    with pytest.raises(PipelineError, match="x must be"):
        baseline_stats(x, np.zeros((50, 4)), 10, features=FEATURES[:3])


# ---------------------------------------------------------------------- quantizer


def test_quantizer_cleans_up_and_keeps_quiet(
    built: BuiltModel,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    handlers = list(logging.getLogger().handlers)
    caplog.set_level(logging.INFO)
    x, _ = generate(64, seed=5)
    int8 = quantize_int8(built.fp32_bytes, x)
    assert len(int8) < len(built.fp32_bytes)
    assert list(tmp_path.iterdir()) == []  # temporary model files removed
    out, err = capfd.readouterr()
    assert (out, err) == ("", "")
    assert [r for r in caplog.records if r.levelno >= logging.INFO] == []
    assert logging.getLogger().handlers == handlers


def test_evaluate_refuses_garbage() -> None:
    x, y = generate(10, seed=1)
    with pytest.raises(PipelineError, match="not a loadable ONNX model"):
        evaluate(b"\x00\x01garbage", x, y)
