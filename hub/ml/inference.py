"""Running an ONNX model on the hub with onnxruntime: sessions, class scores, tensor specs.

Every step that reads an ONNX file (quantisation, evaluation, golden rows, the check of a
bring-your-own model) opens it here, with the same session options, and gets onnxruntime's
own exception types back as ``PipelineError``. ``OnnxRunner`` is the ONNX side of the
runner seam (hub/ml/runner.py); hub/ml/tflite.py is the TFLite side.
"""

from __future__ import annotations

from typing import Final

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort

from hub.ml.errors import PipelineError
from hub.ml.training_data import FloatRows
from shared.manifest import TensorSpec

__all__ = ["OnnxRunner", "class_scores", "open_session", "tensor_specs"]

# onnxruntime's element types whose numpy name differs (the others: int8 -> int8, ...)
ORT_DTYPES = {"float": "float32", "double": "float64", "string": "str"}


def open_session(model_bytes: bytes) -> ort.InferenceSession:
    """An onnxruntime CPU session on ``model_bytes`` (one thread, errors-only logging).

    Raises:
        PipelineError: not a loadable ONNX model.
    """
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: keep onnxruntime's C++ warnings off stderr
    options.intra_op_num_threads = 1  # tiny models; spinning worker threads only add contention
    try:
        return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own pybind exception types
        raise PipelineError(f"not a loadable ONNX model: {type(e).__name__}: {e}") from e


class OnnxRunner:
    """An ONNX file in an onnxruntime session (one thread, as a device runs it)."""

    format: Final = "onnx"
    runtime: Final = "onnxruntime"

    def __init__(self, model_bytes: bytes, session: ort.InferenceSession | None = None) -> None:
        """Open ``model_bytes`` (in ``session`` when it is already open).

        Raises:
            PipelineError: not a loadable ONNX model, or outputs that are not tensors.
        """
        self.session = session if session is not None else open_session(model_bytes)
        self._bytes = model_bytes
        self._input = next((i.name for i in self.session.get_inputs()), "")
        non_tensors = [o.name for o in self.session.get_outputs() if not _is_tensor(o.type)]
        if non_tensors:
            raise PipelineError(
                f"outputs {non_tensors} are not tensors (exported with ZipMap? use zipmap=False)"
            )

    def inputs(self) -> tuple[TensorSpec, ...]:
        return tuple(_session_spec(i) for i in self.session.get_inputs())

    def outputs(self) -> tuple[TensorSpec, ...]:
        return tuple(_session_spec(o) for o in self.session.get_outputs())

    def specs(self) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
        """The manifest's tensors, from the graph itself."""
        return tensor_specs(onnx.load_model_from_string(self._bytes))

    def run(self, x: FloatRows, output: str) -> npt.NDArray[np.float32]:
        return class_scores(self.session, x, output)

    def run_row(self, row: FloatRows) -> None:
        """Run one row (``[1, *row shape]``), every output: what the latency figure times."""
        self.session.run(None, {self._input: row})


def class_scores(
    session: ort.InferenceSession, x: FloatRows, output: str
) -> npt.NDArray[np.float32]:
    """The ``output`` tensor of the model on rows ``x``, as float32.

    Raises:
        PipelineError: the model cannot run on these rows.
    """
    try:
        (scores,) = session.run([output], {session.get_inputs()[0].name: x})
    except Exception as e:  # onnxruntime raises its own pybind exception types
        raise PipelineError(f"running the model failed: {type(e).__name__}: {e}") from e
    return np.asarray(scores, dtype=np.float32)


def tensor_specs(model: onnx.ModelProto) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    initializers = {i.name for i in model.graph.initializer}
    inputs = tuple(_spec(v) for v in model.graph.input if v.name not in initializers)
    return inputs, tuple(_spec(v) for v in model.graph.output)


def _is_tensor(ort_type: str) -> bool:
    return ort_type.startswith("tensor(")


def _session_spec(value: ort.NodeArg) -> TensorSpec:
    inner = value.type.removeprefix("tensor(").removesuffix(")")
    shape = tuple(d if isinstance(d, int) else None for d in value.shape)
    return TensorSpec(name=value.name, dtype=ORT_DTYPES.get(inner, inner), shape=shape)


def _spec(value: onnx.ValueInfoProto) -> TensorSpec:
    if not value.type.HasField("tensor_type"):
        raise PipelineError(f"'{value.name}' is not a tensor")
    tensor = value.type.tensor_type
    try:
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name
    except (KeyError, ValueError) as e:
        raise PipelineError(f"'{value.name}' has an element type numpy cannot name") from e
    shape = tuple(d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim)
    return TensorSpec(name=value.name, dtype=dtype, shape=shape)
