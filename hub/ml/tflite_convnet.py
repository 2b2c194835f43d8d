"""A trained conv net as a full-int8 .tflite file with float input and output, for LiteRT
classes.

The hub trains its conv nets with PyTorch (hub/ml/convnet.py) and exports them to ONNX.
A LiteRT class (hub/fleet/classes.py) gets the same net as a .tflite file, made the way
the MLP's is (hub/ml/tflite_export.py, ADR 0028): the trained weights (``ConvWeights``,
standardisation folded in, as the ONNX file has them) are laid into a Keras model of the
same layers, the Keras model is checked against the fp32 ONNX file on real rows, and
TensorFlow's converter quantises it to int8, calibrated on training rows, with float
input and output.

What differs from PyTorch's layout, and how the Keras model takes it:

- Keras convolves channels-last: a window [T, C] goes in as it is stored (PyTorch
  transposes it to [C, T]), a grey image [H, W] gains a channel axis of 1, an image
  [H, W, C] goes in as it is. Kernels [out, in, K(, K)] become [K(, K), in, out].
- PyTorch flattens the last conv block's output channels-first (C, *spatial), Keras
  channels-last (*spatial, C): the first dense layer's input columns are permuted to
  match, so the weights stay the trained ones, only in another order.
- The first conv pads nothing (``valid``); the others pad K // 2 (``same``). Max-pool 2
  floors odd lengths in both.

Everything runs in int8 but the QUANTIZE of the float input and the DEQUANTIZE of the
float output: the input's standardisation is inside the first conv, so no float layer
is needed in front of it (as the int8 ONNX file, which quantises its input too).

Exceptions::

    PipelineError   TensorFlow is not installed, a layer this cannot lay out, the Keras
                    model answers unlike the ONNX file, or the converter failed
"""

from __future__ import annotations

import math
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from hub.ml.convnet import KERNEL, POOL, ConvLayer, ConvWeights
from hub.ml.errors import PipelineError
from hub.ml.runner import open_runner
from hub.ml.tflite_export import convert_int8, tensorflow

__all__ = ["CHECK_ROWS", "check_float", "export_convnet_tflite_int8", "keras_convnet"]

CHECK_ROWS: Final = 64  # training rows the Keras layout is checked on against ONNX, fp32
# How far the Keras model may answer from the fp32 ONNX file: the same float32 sums in
# another order. Measured on 500 rows of digits, colour digits and windows, (8, 16) and
# (48, 96) nets: at most 5e-7 on probabilities, 3e-6 on values up to 10. A layout mistake
# (a kernel transposed the wrong way, the flatten order) is off by far more.
FLOAT_TOLERANCE: Final = 1e-4  # probabilities; a regressor's value: times max(1, |value|)


def export_convnet_tflite_int8(
    weights: ConvWeights, calibration: npt.NDArray[np.float32], fp32_onnx: bytes
) -> bytes:
    """The trained conv net as a full-int8 .tflite file: float32 ``[N, *row_shape]`` in,
    ``probabilities`` ``[N, classes]`` or ``value`` ``[N, 1]`` out.

    Args:
        weights: the trained net (``TrainedConvNet.weights``).
        calibration: training rows, as the dataset stores them: int8 ranges come from
            these, and the Keras layout is checked on some of them.
        fp32_onnx: the net's fp32 ONNX file, the reference for that check.

    Raises:
        PipelineError: no TensorFlow, a layer this cannot lay out, a Keras model that
            answers unlike the ONNX file, or the converter failed.
    """
    rows = np.ascontiguousarray(calibration, dtype=np.float32)
    if rows.shape[1:] != weights.row_shape:
        raise PipelineError(
            f"calibration rows of shape {list(rows.shape[1:])} for a net trained on rows of"
            f" {list(weights.row_shape)}"
        )
    tf = tensorflow()
    model = keras_convnet(tf, weights)
    check_float(model, weights, rows, fp32_onnx)
    return convert_int8(tf, model, rows)


def keras_convnet(tf: Any, weights: ConvWeights) -> Any:
    """The conv net as a Keras model with the trained weights (float32).

    Raises:
        PipelineError: a layer this cannot lay out (named).
    """
    keras = tf.keras
    keras.utils.set_random_seed(0)
    window = weights.kind == "window"
    x = inputs = keras.Input(shape=weights.row_shape, name="input", dtype="float32")
    if not window and len(weights.row_shape) == 2:  # a grey image: one channel
        x = keras.layers.Reshape((*weights.row_shape, 1), name="channel")(x)
    conv = keras.layers.Conv1D if window else keras.layers.Conv2D
    pool = keras.layers.MaxPooling1D if window else keras.layers.MaxPooling2D
    # Layers named here, not by Keras' process-wide counters: the names go into the file,
    # so the same weights give the same bytes however many models the hub built before.
    for i, layer in enumerate(weights.convs):
        padding = _padding(layer, window)
        block = conv(
            layer.kernel.shape[0], KERNEL, padding=padding, activation="relu", name=f"conv{i}"
        )
        x = block(x)
        # [out, in, *K] → [*K, in, out]
        kernel = np.transpose(layer.kernel, (*range(2, layer.kernel.ndim), 1, 0))
        block.set_weights([np.ascontiguousarray(kernel), layer.bias])
        if layer.pooled:
            x = pool(POOL, name=f"pool{i}")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    for i, (w, b) in enumerate(weights.dense):
        last = i == len(weights.dense) - 1
        dense = keras.layers.Dense(
            w.shape[0], activation=None if last else "relu", name=f"dense{i}"
        )
        x = dense(x)
        kernel = _channels_last_columns(w, weights.features_shape) if i == 0 else w
        dense.set_weights([np.ascontiguousarray(kernel.T), b])
    if weights.classify:
        outputs = keras.layers.Softmax(name="probabilities")(x)
    else:  # the target's scaling is folded into the last layer already
        outputs = keras.layers.Identity(name="value")(x)
    return keras.Model(inputs, outputs, name="convnet")


def check_float(
    model: Any, weights: ConvWeights, rows: npt.NDArray[np.float32], fp32_onnx: bytes
) -> None:
    """Refuse a Keras model that answers unlike the fp32 ONNX file on ``CHECK_ROWS`` rows.

    Raises:
        PipelineError: the largest difference, over the tolerance.
    """
    step = max(1, len(rows) // CHECK_ROWS)
    sample = rows[::step][:CHECK_ROWS]
    output = "probabilities" if weights.classify else "value"
    want = open_runner(fp32_onnx).run(sample, output).reshape(len(sample), -1)
    got = np.asarray(model(sample, training=False), dtype=np.float32).reshape(len(sample), -1)
    scale = 1.0 if weights.classify else max(1.0, float(np.abs(want).max()))
    worst = float(np.abs(got - want).max()) if got.shape == want.shape else math.inf
    if not worst <= FLOAT_TOLERANCE * scale:
        raise PipelineError(
            f"the conv net laid out in Keras answers unlike its ONNX file (largest"
            f" difference {worst:.3g} on {len(sample)} training rows, over"
            f" {FLOAT_TOLERANCE * scale:.3g}): no .tflite made"
        )


def _padding(layer: ConvLayer, window: bool) -> str:
    """Keras' name for the layer's padding, or a PipelineError naming what it is."""
    kernel = tuple(layer.kernel.shape[2:])
    if kernel != (KERNEL,) * (1 if window else 2):
        raise PipelineError(f"no TFLite layout for a conv kernel of {list(kernel)}")
    if set(layer.padding) == {0}:
        return "valid"
    if set(layer.padding) == {KERNEL // 2}:
        return "same"  # stride 1, odd kernel: K // 2 on each side
    raise PipelineError(f"no TFLite layout for a conv padded by {list(layer.padding)}")


def _channels_last_columns(
    w: npt.NDArray[np.float32], features_shape: tuple[int, ...]
) -> npt.NDArray[np.float32]:
    """The first dense layer's weights [out, C·S] with its input columns in Keras' flatten
    order (*spatial, C) instead of PyTorch's (C, *spatial)."""
    if w.shape[1] != math.prod(features_shape):
        raise PipelineError(
            f"the first dense layer takes {w.shape[1]} inputs, the conv blocks give"
            f" {list(features_shape)}"
        )
    by_channel = w.reshape(w.shape[0], *features_shape)
    return np.moveaxis(by_channel, 1, -1).reshape(w.shape[0], -1)
