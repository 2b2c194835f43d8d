"""Real ONNX models for the agent's tests and benchmarks, built from the sensor dataset.

The hub's pipeline (hub/ml/pipeline.py) trains and quantises the production model; these
builders make models of the same shape here so the agent's tests do not depend on it:
input ``input`` float32 [None, 16], outputs ``label`` int64 [None] and ``probabilities``
float32 [None, 4] (skl2onnx with ``zipmap`` off). Beside them, onnx.helper graphs of the
other shapes ADR 0014 allows: conv nets on images ``[N, H, W(, C)]`` and windows
``[N, T, C]``, and regressors whose one output is ``value`` float32 [N, 1].
"""

from __future__ import annotations

import tempfile
import warnings
from functools import cache
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import FloatTensorType
from sklearn.exceptions import ConvergenceWarning
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from shared.sensors import N_FEATURES, generate

TARGET_OPSET = 15  # DESIGN §8: the quantizer is confused by some graphs at opset 21/22


@cache  # seeded, so the same arguments train the same model: once per session is enough
def make_mlp_onnx(hidden: tuple[int, ...] = (64, 64), seed: int = 0, n: int = 2000) -> bytes:
    """A StandardScaler + MLPClassifier trained on ``n`` sensor rows, as ONNX bytes (fp32)."""
    x, y = generate(n, seed=seed)
    clf = make_pipeline(
        StandardScaler(),
        MLPClassifier(hidden_layer_sizes=hidden, max_iter=60, random_state=seed),
    )
    with warnings.catch_warnings():
        # A short training run is enough for tests; it need not converge.
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(x, y)
    model = convert_sklearn(
        clf,
        initial_types=[("input", FloatTensorType([None, N_FEATURES]))],
        options={"zipmap": False},
        target_opset=TARGET_OPSET,
    )
    return bytes(model.SerializeToString())


def make_log_onnx(width: int = N_FEATURES) -> bytes:
    """A one-node graph ``probabilities = Log(input)``: negative inputs give NaN.

    It also has a ``label`` output (ArgMax) so it fits the usual output names.
    """
    inp = helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, width])
    probs = helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, width])
    label = helper.make_tensor_value_info("label", TensorProto.INT64, [None])
    graph = helper.make_graph(
        [
            helper.make_node("Log", ["input"], ["probabilities"]),
            helper.make_node("ArgMax", ["input"], ["label"], axis=1, keepdims=0),
        ],
        "log",
        [inp],
        [label, probs],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", TARGET_OPSET)])
    model.ir_version = 8  # onnxruntime supports it; new onnx releases default higher
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


def quantize_int8(model: bytes, *, calibration_rows: int = 256, seed: int = 1) -> bytes:
    """Static int8 QDQ quantisation (onnxruntime.quantization) calibrated on sensor rows.

    The calibration rows come from a seed apart from the training rows.
    """
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    rows = generate(calibration_rows, seed=seed)[0]

    class Rows(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self._batches = iter(np.array_split(rows, max(1, len(rows) // 32)))

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self._batches, None)
            return None if batch is None else {"input": batch}

    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp, "fp32.onnx"), Path(tmp, "int8.onnx")
        src.write_bytes(model)
        # No quant_pre_process, though the quantizer logs a hint to run it: on this graph
        # its optimisation renames the softmax output and quantize_static then fails
        # ("Only an existing tensor can be modified").
        quantize_static(
            src,
            dst,
            Rows(),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
        )
        return dst.read_bytes()


def _initializer(name: str, values: np.ndarray) -> onnx.TensorProto:
    return helper.make_tensor(name, TensorProto.FLOAT, values.shape, values.ravel().tolist())


def make_conv_onnx(
    row_shape: tuple[int, ...] = (8, 8, 1),
    *,
    task: str = "classification",
    window: bool = False,
    classes: int = 3,
    channels: int = 4,
    seed: int = 0,
) -> bytes:
    """A small conv net on image-like or window inputs, with random (seeded) weights.

    Input ``input`` float32 ``[None, *row_shape]``: ``[H, W]`` (one channel), ``[H, W, C]``
    (channels last, as datasets store them) or, with ``window``, ``[T, C]``. The graph
    moves the channels first, then Conv (3x3, or 3 along time) -> Relu ->
    GlobalAveragePool -> Flatten -> Gemm. A ``classification`` net outputs ``label`` int64
    [None] and ``probabilities`` float32 [None, classes]; a ``regression`` one ``value``
    float32 [None, 1] (ADR 0014).
    """
    rng = np.random.default_rng(seed)
    inits: list[onnx.TensorProto] = []
    if window and len(row_shape) == 2:  # [T, C]: a 1-D conv over time
        in_ch, kernel = row_shape[1], [3]
        first = helper.make_node("Transpose", ["input"], ["nct"], perm=[0, 2, 1])
    elif len(row_shape) == 2:  # [H, W]: one channel
        in_ch, kernel = 1, [3, 3]
        inits.append(helper.make_tensor("axes", TensorProto.INT64, [1], [1]))
        first = helper.make_node("Unsqueeze", ["input", "axes"], ["nct"])
    elif len(row_shape) == 3 and not window:  # [H, W, C]
        in_ch, kernel = row_shape[2], [3, 3]
        first = helper.make_node("Transpose", ["input"], ["nct"], perm=[0, 3, 1, 2])
    else:
        raise ValueError(f"row_shape {row_shape}: want [H, W], [H, W, C] or a window [T, C]")
    out_dim = 1 if task == "regression" else classes
    inits += [
        _initializer("w", rng.normal(0, 0.5, (channels, in_ch, *kernel)).astype(np.float32)),
        _initializer("b", rng.normal(0, 0.1, (channels,)).astype(np.float32)),
        _initializer("fc_w", rng.normal(0, 1.0, (channels, out_dim)).astype(np.float32)),
        _initializer("fc_b", rng.normal(0, 0.1, (out_dim,)).astype(np.float32)),
    ]
    nodes = [
        first,
        helper.make_node("Conv", ["nct", "w", "b"], ["conv"], pads=[1] * (2 * len(kernel))),
        helper.make_node("Relu", ["conv"], ["relu"]),
        helper.make_node("GlobalAveragePool", ["relu"], ["pool"]),
        helper.make_node("Flatten", ["pool"], ["flat"]),
    ]
    inp = helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, *row_shape])
    if task == "regression":
        nodes.append(helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["value"]))
        outputs = [helper.make_tensor_value_info("value", TensorProto.FLOAT, [None, 1])]
    else:
        nodes += [
            helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
            helper.make_node("ArgMax", ["logits"], ["label"], axis=1, keepdims=0),
        ]
        outputs = [
            helper.make_tensor_value_info("label", TensorProto.INT64, [None]),
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, classes]),
        ]
    return _finish(helper.make_graph(nodes, "conv", [inp], outputs, initializer=inits))


def make_regressor_onnx(width: int = N_FEATURES, *, seed: int = 0) -> bytes:
    """A linear regressor: ``value`` float32 [None, 1] = Gemm(``input`` [None, width])."""
    rng = np.random.default_rng(seed)
    inits = [
        _initializer("w", rng.normal(0, 1.0, (width, 1)).astype(np.float32)),
        _initializer("b", np.array([0.5], dtype=np.float32)),
    ]
    inp = helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, width])
    out = helper.make_tensor_value_info("value", TensorProto.FLOAT, [None, 1])
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["input", "w", "b"], ["value"])],
        "regressor",
        [inp],
        [out],
        initializer=inits,
    )
    return _finish(graph)


def _finish(graph: onnx.GraphProto) -> bytes:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", TARGET_OPSET)])
    model.ir_version = 8  # onnxruntime supports it; new onnx releases default higher
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())
