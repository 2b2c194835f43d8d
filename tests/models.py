"""Real ONNX models for the agent's tests and benchmarks, built from the sensor dataset.

The hub's pipeline (hub/ml/pipeline.py) trains and quantises the production model; these
builders make models of the same shape here so the agent's tests do not depend on it:
input ``input`` float32 [None, 16], outputs ``label`` int64 [None] and ``probabilities``
float32 [None, 4] (skl2onnx with ``zipmap`` off).
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
