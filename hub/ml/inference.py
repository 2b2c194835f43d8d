"""Running an ONNX model on the hub with onnxruntime: sessions, class scores, tensor specs.

Every step that reads a model file (quantisation, evaluation, golden rows, the check of a
bring-your-own model) opens it here, with the same session options, and gets onnxruntime's
own exception types back as ``PipelineError``.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort

from hub.ml.errors import PipelineError
from hub.ml.training_data import Dataset, FloatRows
from shared.manifest import TensorSpec

__all__ = [
    "SCORES_OUTPUT",
    "check_compatible",
    "class_scores",
    "open_session",
    "scores_output",
    "tensor_specs",
    "value_output",
]

SCORES_OUTPUT = "probabilities"
VALUE_OUTPUT = "value"


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


def scores_output(session: ort.InferenceSession) -> str:
    """The name of the class-score output: ``probabilities``, or the only float [N, k]."""
    outputs = session.get_outputs()
    if any(o.name == SCORES_OUTPUT for o in outputs):
        return SCORES_OUTPUT
    candidates = [o.name for o in outputs if o.type == "tensor(float)" and len(o.shape) == 2]
    if len(candidates) != 1:
        described = ", ".join(f"{o.name} {o.type} {o.shape}" for o in outputs)
        raise PipelineError(
            f"no class-score output: need '{SCORES_OUTPUT}' or one float32 [N, classes] output,"
            f" found {described}"
        )
    return str(candidates[0])


def value_output(session: ort.InferenceSession) -> str:
    """The name of a regressor's output: ``value``, or the only float [N] / [N, 1]."""
    outputs = session.get_outputs()
    if any(o.name == VALUE_OUTPUT for o in outputs):
        return VALUE_OUTPUT
    candidates = [
        o.name
        for o in outputs
        if o.type == "tensor(float)"
        and (len(o.shape) == 1 or (len(o.shape) == 2 and o.shape[1] in (1, None)))
    ]
    if len(candidates) != 1:
        described = ", ".join(f"{o.name} {o.type} {o.shape}" for o in outputs)
        raise PipelineError(
            f"no regression output: need '{VALUE_OUTPUT}' or one float32 [N, 1] output,"
            f" found {described}"
        )
    return str(candidates[0])


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


def check_compatible(session: ort.InferenceSession, data: Dataset) -> str:
    """Refuse a model the dataset (and so the devices' rows) cannot feed or score.

    Returns:
        The name of the output that gives class scores or values.
    """
    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise PipelineError(f"the model must take one input, it takes {len(inputs)}")
    (inp,) = inputs
    want = [None, *data.row_shape]
    shown = "[N, " + ", ".join(map(str, data.row_shape)) + "]"
    if inp.type != "tensor(float)" or len(inp.shape) != len(want):
        raise PipelineError(
            f"input '{inp.name}' must be float32 {shown} for this dataset,"
            f" got {inp.type} {inp.shape}"
        )
    for axis, (got, need) in enumerate(zip(inp.shape[1:], data.row_shape, strict=True), 1):
        if isinstance(got, int) and got != need:
            what = "features" if len(data.row_shape) == 1 else f"values on axis {axis}"
            raise PipelineError(
                f"input '{inp.name}' takes {got} {what}; the dataset has {need} {shown}"
            )
    non_tensors = [o.name for o in session.get_outputs() if not o.type.startswith("tensor(")]
    if non_tensors:
        raise PipelineError(
            f"outputs {non_tensors} are not tensors (exported with ZipMap? use zipmap=False)"
        )
    if data.is_classifier:
        return _check_scores(session, data)
    name = value_output(session)
    got = class_scores(session, data.x_holdout[:2], name)
    if got.size != 2:
        raise PipelineError(f"output '{name}' gave shape {got.shape} for 2 rows, expected (2, 1)")
    return name


def _check_scores(session: ort.InferenceSession, data: Dataset) -> str:
    k = len(data.classes)
    name = scores_output(session)
    scores = next(o for o in session.get_outputs() if o.name == name)
    if scores.type != "tensor(float)" or len(scores.shape) != 2:
        raise PipelineError(
            f"output '{name}' must be float32 [N, {k}], got {scores.type} {scores.shape}"
        )
    if isinstance(scores.shape[1], int) and scores.shape[1] != k:
        raise PipelineError(
            f"output '{name}' gives {scores.shape[1]} class scores; the dataset has {k} classes"
        )
    got = class_scores(session, data.x_holdout[:2], name)
    if got.shape != (2, k):
        raise PipelineError(f"output '{name}' gave shape {got.shape} for 2 rows, expected (2, {k})")
    return name


def tensor_specs(model: onnx.ModelProto) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    initializers = {i.name for i in model.graph.initializer}
    inputs = tuple(_spec(v) for v in model.graph.input if v.name not in initializers)
    return inputs, tuple(_spec(v) for v in model.graph.output)


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
