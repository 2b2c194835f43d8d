"""A bring-your-own model accepted without a dataset (``--unevaluated``).

Nothing judges it: no metrics, no gates, no drift baseline. The device's health check
still runs: golden inputs are seeded standard-normal rows of the model's input shape and
golden outputs what the file gives for them, so a device whose runtime computes something
else refuses it. Every listing shows such a version as unevaluated.
"""

from __future__ import annotations

import numpy as np
import onnx

from hub.ml.config import PipelineConfig
from hub.ml.errors import PipelineError
from hub.ml.inference import class_scores, open_session, tensor_specs
from hub.ml.manifest import BuiltModel

__all__ = ["import_unevaluated"]


def import_unevaluated(model_bytes: bytes, config: PipelineConfig) -> BuiltModel:
    """The model as it is, with golden rows of its own making.

    Raises:
        PipelineError: not a runnable ONNX model with one float input of fixed row shape.
    """
    session = open_session(model_bytes)
    inputs = session.get_inputs()
    if len(inputs) != 1 or inputs[0].type != "tensor(float)":
        raise PipelineError("the model must take one float32 input")
    row_shape = inputs[0].shape[1:]
    if not row_shape or not all(isinstance(d, int) and d > 0 for d in row_shape):
        raise PipelineError(
            f"input '{inputs[0].name}' has shape {inputs[0].shape}: an unevaluated model needs"
            " fixed sizes after the batch axis (or name a dataset)"
        )
    floats = [o.name for o in session.get_outputs() if o.type == "tensor(float)"]
    if not floats:
        raise PipelineError("the model has no float32 output to check on the device")
    rng = np.random.default_rng(config.seed)
    golden = rng.standard_normal((config.n_golden, *row_shape)).astype(np.float32)
    out = class_scores(session, golden, floats[0])
    specs_in, specs_out = tensor_specs(onnx.load_model_from_string(model_bytes))
    return BuiltModel(
        name=config.name,
        model_bytes=model_bytes,
        fp32_bytes=model_bytes,
        accuracy_fp32=None,
        accuracy_int8=None,
        size_fp32=len(model_bytes),
        size_int8=len(model_bytes),
        classes=(),
        inputs=specs_in,
        outputs=specs_out,
        baseline={},
        golden_inputs=tuple(tuple(float(v) for v in r) for r in golden.reshape(len(golden), -1)),
        golden_outputs=tuple(tuple(float(v) for v in r) for r in out.reshape(len(out), -1)),
        train_seconds=0.0,
        quantize_seconds=0.0,
        golden_output=floats[0],
        source="imported",
        task="unevaluated",
    )
