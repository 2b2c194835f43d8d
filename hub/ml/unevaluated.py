"""A bring-your-own model accepted without a dataset (``--unevaluated``).

Nothing judges it: no metrics, no gates, no drift baseline. The device's health check
still runs: golden inputs are seeded standard-normal rows of the model's input shape and
golden outputs what the file gives for them, so a device whose runtime computes something
else refuses it. Every listing shows such a version as unevaluated.
"""

from __future__ import annotations

import numpy as np

from hub.ml.compatibility import shape_text
from hub.ml.config import PipelineConfig
from hub.ml.errors import PipelineError
from hub.ml.manifest import BuiltModel
from hub.ml.runner import open_runner

__all__ = ["import_unevaluated"]


def import_unevaluated(model_bytes: bytes, config: PipelineConfig) -> BuiltModel:
    """The model as it is, with golden rows of its own making.

    Raises:
        PipelineError: not a runnable ONNX or TFLite model with one float input of fixed
            row shape.
    """
    runner = open_runner(model_bytes)
    inputs = runner.inputs()
    if len(inputs) != 1 or inputs[0].dtype != "float32":
        raise PipelineError("the model must take one float32 input")
    row_shape = [d for d in inputs[0].shape[1:] if d is not None and d > 0]
    if not row_shape or len(row_shape) != len(inputs[0].shape) - 1:
        raise PipelineError(
            f"input '{inputs[0].name}' has shape {shape_text(inputs[0].shape)}: an unevaluated"
            " model needs fixed sizes after the batch axis (or name a dataset)"
        )
    floats = [o.name for o in runner.outputs() if o.dtype == "float32"]
    if not floats:
        raise PipelineError("the model has no float32 output to check on the device")
    rng = np.random.default_rng(config.seed)
    golden = rng.standard_normal((config.n_golden, *row_shape)).astype(np.float32)
    out = runner.run(golden, floats[0])
    specs_in, specs_out = runner.specs()
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
        format=runner.format,
        runtime=runner.runtime,
    )
