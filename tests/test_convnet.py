"""Conv nets (hub/ml/convnet.py) with the real parts: PyTorch, the ONNX export, onnxruntime,
the int8 quantizer; and the shipped sample datasets (hub/ml/data/samples.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
import pytest

from hub.ml.convnet import MISSING_TORCH, ConvConfig, fit_convnet, row_kind
from hub.ml.data.samples import (
    DIGIT_CLASSES,
    WINDOW_CLASSES,
    digits_images,
    windows_dataset,
    write_npz,
)
from hub.ml.errors import ConfigError, PipelineError
from hub.ml.evaluation import evaluate
from hub.ml.quantize import quantize_int8

QUICK = ConvConfig(epochs=6)  # the measured architecture (hub/ml/convnet.py), trained briefly
TINY = ConvConfig(channels=(4,), dense=8, epochs=1)  # for shapes and refusals only
N_HOLDOUT = 450  # digits rows kept apart (of 1,797)


@dataclass(frozen=True)
class Digits:
    x_train: npt.NDArray[np.float32]
    y_train: npt.NDArray[np.int64]
    x_holdout: npt.NDArray[np.float32]
    y_holdout: npt.NDArray[np.int64]


@pytest.fixture(scope="module")
def digits() -> Digits:
    x, y = digits_images(seed=3)  # [N, 16, 16]
    return Digits(x[N_HOLDOUT:], y[N_HOLDOUT:], x[:N_HOLDOUT], y[:N_HOLDOUT])


@pytest.fixture(scope="module")
def classifier(digits: Digits) -> bytes:
    return fit_convnet(
        digits.x_train, digits.y_train, task="classification", n_outputs=10, config=QUICK
    )


def _run(model: bytes, x: npt.NDArray[np.float32]) -> dict[str, npt.NDArray[Any]]:
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, {"input": x}), strict=True))


# ------------------------------------------------------------------------ classifier


def test_classifier_outputs_labels_and_probabilities_for_any_batch(
    classifier: bytes, digits: Digits
) -> None:
    session = ort.InferenceSession(classifier, providers=["CPUExecutionProvider"])
    (inp,) = session.get_inputs()
    assert (inp.name, inp.type, inp.shape[1:]) == ("input", "tensor(float)", [16, 16])
    assert [o.name for o in session.get_outputs()] == ["label", "probabilities"]
    for n in (1, 7):
        out = _run(classifier, digits.x_holdout[:n])
        assert out["label"].dtype == np.int64 and out["label"].shape == (n,)
        assert out["probabilities"].dtype == np.float32 and out["probabilities"].shape == (n, 10)
        np.testing.assert_allclose(out["probabilities"].sum(axis=1), 1.0, atol=1e-5)
        assert (out["label"] == out["probabilities"].argmax(axis=1)).all()


def test_classifier_learns_the_digits(classifier: bytes, digits: Digits) -> None:
    assert evaluate(classifier, digits.x_holdout, digits.y_holdout) > 0.95


def test_int8_keeps_accuracy_within_a_point_and_shrinks_the_file(
    classifier: bytes, digits: Digits
) -> None:
    int8 = quantize_int8(classifier, digits.x_train[:512], per_channel=False)
    assert len(int8) <= 0.3 * len(classifier)
    fp32_acc = evaluate(classifier, digits.x_holdout, digits.y_holdout)
    int8_acc = evaluate(int8, digits.x_holdout, digits.y_holdout)
    assert (fp32_acc - int8_acc) * 100 <= 1.0
    assert _run(int8, digits.x_holdout[:3])["probabilities"].shape == (3, 10)


def test_training_is_deterministic_and_follows_the_seed(digits: Digits) -> None:
    x, y = digits.x_train[:300], digits.y_train[:300]

    def fit(seed: int) -> bytes:
        config = ConvConfig(channels=(4,), dense=8, epochs=2, seed=seed)
        return fit_convnet(x, y, task="classification", n_outputs=10, config=config)

    first = fit(7)
    assert fit(7) == first
    assert fit(8) != first


def test_progress_rises_per_epoch_to_one_and_a_budget_stops_early(digits: Digits) -> None:
    x, y = digits.x_train[:200], digits.y_train[:200]
    seen: list[float] = []
    three = ConvConfig(channels=(4,), dense=8, epochs=3)
    fit_convnet(x, y, task="classification", n_outputs=10, config=three, progress=seen.append)
    assert seen == pytest.approx([1 / 3, 2 / 3, 1.0])
    seen.clear()
    budget = ConvConfig(channels=(4,), dense=8, epochs=50, time_budget_s=1e-9)
    fit_convnet(x, y, task="classification", n_outputs=10, config=budget, progress=seen.append)
    assert seen == [1.0]  # stopped after the first epoch, which crossed the budget


@pytest.mark.parametrize("opset", [13, 17])  # the range PipelineConfig allows
def test_export_follows_the_pipelines_opset_and_quantises(opset: int, digits: Digits) -> None:
    x, y = digits.x_train[:200], digits.y_train[:200]
    model = fit_convnet(x, y, task="classification", n_outputs=10, config=TINY, opset=opset)
    assert [o.version for o in onnx.load_from_string(model).opset_import] == [opset]
    int8 = quantize_int8(model, x[:64])
    assert _run(int8, x[:2])["probabilities"].shape == (2, 10)


# ------------------------------------------------------------------------ regression


def test_regression_outputs_a_value_in_the_targets_units(digits: Digits) -> None:
    def ink(x: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        # Far from 0 and not unit-scaled: wrong without the target's standardisation undone.
        return (x.mean(axis=(1, 2)) * 100.0 + 50.0).astype(np.float32)

    model = fit_convnet(
        digits.x_train, ink(digits.x_train), task="regression", n_outputs=1, config=QUICK
    )
    out = _run(model, digits.x_holdout)
    assert list(out) == ["value"]
    assert out["value"].dtype == np.float32 and out["value"].shape == (N_HOLDOUT, 1)
    target = ink(digits.x_holdout)
    residual = out["value"][:, 0] - target
    assert 1 - residual.var() / target.var() > 0.9  # R²
    assert abs(residual.mean()) < 0.1 * target.std()


# ---------------------------------------------------------------- other row shapes


def test_windows_train_with_1d_convolutions_over_time() -> None:
    x, y = windows_dataset(800, seed=4)
    model = fit_convnet(
        x[:600], y[:600], task="classification", n_outputs=4, config=QUICK, kind="window"
    )
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape[1:] == [128, 3]
    assert _run(model, x[600:603])["probabilities"].shape == (3, len(WINDOW_CLASSES))
    assert evaluate(model, x[600:], y[600:]) > 0.6  # 4 classes: a guess gets ~0.4


def test_images_with_channels_keep_their_row_shape(digits: Digits) -> None:
    x = np.stack([digits.x_train[:100], 1 - digits.x_train[:100]], axis=-1)  # [N, 16, 16, 2]
    model = fit_convnet(x, digits.y_train[:100], task="classification", n_outputs=10, config=TINY)
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape[1:] == [16, 16, 2]
    assert _run(model, x[:2])["probabilities"].shape == (2, 10)


def test_row_kind_guesses_windows_from_long_narrow_rows() -> None:
    assert row_kind((128, 3)) == "window"
    assert [row_kind(s) for s in ((8, 8), (28, 28), (16, 16, 3))] == ["image"] * 3


# ----------------------------------------------------------------------- refusals

X = np.zeros((10, 8, 8), dtype=np.float32)
Y = np.arange(10, dtype=np.int64) % 2


@pytest.mark.parametrize(
    ("x", "y", "arguments", "message"),
    [
        (np.zeros((10, 64), np.float32), Y, {}, r"got an array of shape \[10, 64\]"),
        (np.zeros((10, 2, 8, 8, 1), np.float32), Y, {}, r"\[N, H, W\], \[N, H, W, C\]"),
        (X, Y[:9], {}, r"y must be \[10\] \(one per row\), got shape \[9\]"),
        (X, Y.astype(np.float32), {}, r"class labels must be integers .* got dtype float32"),
        (X, Y + 5, {}, r"indices 0\.\.1 .* got 5\.\.6"),
        (np.full((10, 8, 8), np.nan, np.float32), Y, {}, "NaN or infinity"),
        (X.astype(str), Y, {}, "rows must be numbers"),
        (X, Y, {"task": "ranking"}, "task must be one of classification, regression"),
        (X, Y, {"task": "regression", "n_outputs": 2}, "a regression has n_outputs 1"),
        (np.zeros((10, 8, 8, 1), np.float32), Y, {"kind": "window"}, r"window rows are \[T, C\]"),
        (np.zeros((10, 2, 8), np.float32), Y, {}, r"at least 3 long along H and W"),
        (X, Y, {"kind": "video"}, "kind must be one of image, window"),
    ],
)
def test_bad_rows_are_refused_with_what_was_wrong(
    x: npt.NDArray[Any], y: npt.NDArray[Any], arguments: dict[str, Any], message: str
) -> None:
    kwargs: dict[str, Any] = {"task": "classification", "n_outputs": 2, "config": TINY}
    kwargs.update(arguments)
    with pytest.raises(PipelineError, match=message):
        fit_convnet(x, y, **kwargs)


def test_config_refuses_settings_out_of_range() -> None:
    with pytest.raises(ConfigError, match="channels must be >= 1 each; epochs must be >= 1"):
        ConvConfig(channels=(8, 0), epochs=0)
    with pytest.raises(ConfigError, match="time_budget_s must be > 0"):
        ConvConfig(time_budget_s=0)


def test_without_torch_the_error_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch now raises ImportError
    monkeypatch.delitem(sys.modules, "hub.ml.convnet_torch", raising=False)
    with pytest.raises(PipelineError, match=r"pip install 'edgefleet\[hub-torch\]'") as e:
        fit_convnet(X, Y, task="classification", n_outputs=2, config=TINY)
    assert str(e.value) == MISSING_TORCH


def test_importing_the_module_does_not_import_torch() -> None:
    code = "import sys, hub.ml.convnet; assert 'torch' not in sys.modules"
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root)}
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root, env=env)


# -------------------------------------------------------------------- sample data


def test_digits_images_are_seeded_and_upscale() -> None:
    x, y = digits_images(seed=1)
    assert (x.shape, x.dtype, y.dtype) == ((1797, 16, 16), np.float32, np.int64)
    assert x.min() >= 0 and x.max() <= 1 and set(np.unique(y)) == set(range(len(DIGIT_CLASSES)))
    again, _ = digits_images(seed=1)
    other, _ = digits_images(seed=2)
    assert np.array_equal(x, again) and not np.array_equal(x, other)
    small, y8 = digits_images(seed=1, size=8)
    assert small.shape == (1797, 8, 8) and np.array_equal(y8, y)
    # Upscaling keeps the picture: every 8x8 pixel is near its 2x2 block's mean.
    blocks = x.reshape(-1, 8, 2, 8, 2).mean(axis=(2, 4))
    assert np.abs(blocks - small).mean() < 0.1
    with pytest.raises(PipelineError, match="multiple of 8"):
        digits_images(seed=1, size=12)


def test_windows_dataset_is_seeded() -> None:
    x, y = windows_dataset(50, seed=1)
    assert (x.shape, x.dtype, y.shape, y.dtype) == ((50, 128, 3), np.float32, (50,), np.int64)
    assert np.array_equal(x, windows_dataset(50, seed=1)[0])
    assert not np.array_equal(x, windows_dataset(50, seed=2)[0])


def test_write_npz_writes_the_upload_format_byte_for_byte_again(tmp_path: Path) -> None:
    x, y = windows_dataset(20, seed=1)
    first = write_npz(tmp_path / "a.npz", x, y)
    second = write_npz(tmp_path / "b.npz", x, y)
    assert first.read_bytes() == second.read_bytes()
    with np.load(first, allow_pickle=False) as z:
        assert sorted(z.files) == ["x", "y"]
        assert np.array_equal(z["x"], x) and np.array_equal(z["y"], y)
    with pytest.raises(PipelineError, match="y \\[N\\]"):
        write_npz(tmp_path / "c.npz", x, y[:5])
