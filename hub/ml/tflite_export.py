"""A trained MLP as a full-int8 .tflite file with float input and output, for LiteRT classes.

The hub trains a StandardScaler + MLP with scikit-learn (hub/ml/training.py) and exports
it to ONNX. A device class that runs LiteRT (hub/fleet/classes.py) needs the same model as
a .tflite file: the same weights are laid into a Keras model of the same layers (the
scaler as a ``Normalization`` layer, each ``Dense`` with the MLP's activation, the output
as scikit-learn computes it: softmax, or for two classes the logistic unit spread into
two scores, or a regressor's value with its target scaling undone), then TensorFlow's
converter quantises it to int8, calibrated on the training rows, with float input and
output (DESIGN §8: what runs fastest on a device): every dense layer and the softmax in
int8, only the input's standardisation in float (``FLOAT_OPS`` says why). The batch axis
stays dynamic.

TensorFlow is the ``tflite-export`` extra (about 1.5 GB): never a default install, and
imported only here (``tensorflow``), when a LiteRT artefact is asked for. The conv nets'
export (hub/ml/tflite_convnet.py) lays out its own Keras model and converts it with
``convert_int8``, the same calibration and int8 settings. The artefact is judged on the
hold-out and gated on its own like any model (hub/ml/pipeline.py); this module only makes
the file.

Exceptions::

    PipelineError       TensorFlow is not installed, the model is not an MLP this can
                        lay out, or the converter failed
"""

from __future__ import annotations

import os
import warnings
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from hub.ml.errors import PipelineError
from hub.ml.training import Fitted

__all__ = ["CALIBRATION_ROWS", "convert_int8", "export_tflite_int8", "tensorflow"]

CALIBRATION_ROWS: Final = 300  # training rows the converter calibrates int8 ranges on
# The standardisation's ops stay float: int8 quantises a tensor with one scale, and raw
# features span 0.02 to 55 (the built-in sensor rows), so quantising the raw input wiped
# out the small ones: hold-out accuracy 0.296 against 0.918 with the scaler in float
# (16-64-64-4 MLP). Every layer after it runs in int8.
FLOAT_OPS: Final = ("SUB", "MUL")
INSTALL_HINT: Final = "pip install 'edgefleet[tflite-export]'"
_ACTIVATIONS: Final = {"relu": "relu", "tanh": "tanh", "logistic": "sigmoid", "identity": None}


def export_tflite_int8(fitted: Fitted, calibration: npt.NDArray[np.float32]) -> bytes:
    """The fitted MLP as a full-int8 .tflite file: float32 ``[N, features]`` in, class
    scores ``[N, classes]`` or a value ``[N, 1]`` out.

    Raises:
        PipelineError: no TensorFlow, a model other than StandardScaler + MLP, or the
            converter failed.
    """
    scaler, mlp = _parts(fitted)
    tf = tensorflow()
    rows = np.ascontiguousarray(calibration.reshape(len(calibration), -1), dtype=np.float32)
    model = _keras(tf, scaler, mlp, fitted, rows.shape[1])
    return convert_int8(tf, model, rows, FLOAT_OPS)


def convert_int8(
    tf: Any, model: Any, rows: npt.NDArray[np.float32], float_ops: tuple[str, ...] = ()
) -> bytes:
    """A Keras model as a full-int8 .tflite file with float input and output, its int8
    ranges calibrated on up to ``CALIBRATION_ROWS`` of ``rows`` (spread over them), the
    ``float_ops`` left in float.

    Raises:
        PipelineError: the converter failed.
    """
    step = max(1, len(rows) // CALIBRATION_ROWS)
    sample = np.ascontiguousarray(rows[::step][:CALIBRATION_ROWS], dtype=np.float32)

    def calibration_rows() -> Any:
        return ([row[None]] for row in sample)

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = calibration_rows
    # int8 kernels wherever there are some, float where a layer is left out (below)
    converter.target_spec.supported_ops = [
        tf.lite.OpsSet.TFLITE_BUILTINS_INT8,
        tf.lite.OpsSet.TFLITE_BUILTINS,
    ]
    try:
        with warnings.catch_warnings():
            # "Statistics for quantized inputs were expected": float input, as intended.
            warnings.simplefilter("ignore", UserWarning)
            debugger = tf.lite.experimental.QuantizationDebugger(
                converter=converter,
                debug_dataset=calibration_rows,
                debug_options=tf.lite.experimental.QuantizationDebugOptions(
                    denylisted_ops=list(float_ops)
                ),
            )
            return bytes(debugger.get_nondebug_quantized_model())
    except Exception as e:  # the converter raises ConverterError, RuntimeError, ...
        raise PipelineError(f"TFLite conversion failed: {type(e).__name__}: {e}") from e


def _parts(fitted: Fitted) -> tuple[Any, Any]:
    steps = [step for _, step in fitted.model.steps]
    names = [type(s).__name__ for s in steps]
    if names not in (["StandardScaler", "MLPClassifier"], ["StandardScaler", "MLPRegressor"]):
        raise PipelineError(f"a .tflite export takes a StandardScaler + MLP, not {names}")
    scaler, mlp = steps
    if mlp.activation not in _ACTIVATIONS:
        raise PipelineError(f"no TFLite layout for the activation {mlp.activation!r}")
    return scaler, mlp


def _keras(tf: Any, scaler: Any, mlp: Any, fitted: Fitted, n_features: int) -> Any:
    keras = tf.keras
    keras.utils.set_random_seed(0)
    x = inputs = keras.Input(shape=(n_features,), name="input", dtype="float32")
    # Every layer named here, not by Keras' process-wide counters: the names go into the
    # file, so the same model gives the same bytes however many the hub built before.
    x = keras.layers.Normalization(
        mean=np.asarray(scaler.mean_, np.float32),
        variance=np.asarray(scaler.scale_, np.float32) ** 2,
        name="standardise",
    )(x)
    hidden = _ACTIVATIONS[mlp.activation]
    layers = list(zip(mlp.coefs_, mlp.intercepts_, strict=True))
    for i, (w, b) in enumerate(layers):
        last = i == len(layers) - 1
        dense = keras.layers.Dense(
            w.shape[1], activation=None if last else hidden, name=f"dense{i}"
        )
        x = dense(x)
        dense.set_weights([np.asarray(w, np.float32), np.asarray(b, np.float32)])
    if fitted.regressor:
        outputs = keras.layers.Rescaling(fitted.y_std, offset=fitted.y_mean, name="value")(x)
    elif mlp.out_activation_ == "softmax":
        outputs = keras.layers.Softmax(name="probabilities")(x)
    else:  # two classes: one logistic unit, as scikit-learn's predict_proba spreads it
        p = keras.layers.Activation("sigmoid", name="logistic")(x)
        outputs = keras.layers.Concatenate(name="probabilities")(
            [keras.layers.Rescaling(-1.0, offset=1.0, name="complement")(p), p]
        )
    return keras.Model(inputs, outputs, name="mlp")


def tensorflow() -> Any:
    """TensorFlow, imported now, or a PipelineError naming the extra to install."""
    # Before the import: no C++ info lines, and oneDNN off so conversions repeat bit for bit.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    try:
        import tensorflow as tf
    except ImportError as e:
        raise PipelineError(
            f"a .tflite artefact needs TensorFlow's converter: {INSTALL_HINT}"
        ) from e
    return tf
