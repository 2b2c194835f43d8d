"""A model file opened to run on the hub, whatever its format: the runner seam.

Scoring (hub/ml/metrics.py), the check that a model fits a dataset
(hub/ml/compatibility.py), the golden rows and the drift baseline (hub/ml/pipeline.py)
run a model through ``ModelRunner`` and never name a runtime. ``open_runner`` reads the
format from the bytes, not from a file name: a TFLite flatbuffer has ``TFL3`` at byte 4
and opens in a TFLite interpreter (hub/ml/tflite.py); anything else is tried as ONNX in
onnxruntime (hub/ml/inference.py), and what is neither is refused.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import numpy.typing as npt

from hub.ml.errors import PipelineError
from hub.ml.inference import OnnxRunner, open_session
from hub.ml.tflite import TFLiteRunner, is_tflite
from hub.ml.training_data import FloatRows
from shared.manifest import TensorSpec

__all__ = ["ModelRunner", "open_runner"]


class ModelRunner(Protocol):
    """A model file ready to run rows, and what its tensors are."""

    @property
    def format(self) -> str:
        """The file's format in the manifest (and its target name): onnx | tflite."""

    @property
    def runtime(self) -> str:
        """The runtime a device needs for it: onnxruntime | tflite."""

    def inputs(self) -> tuple[TensorSpec, ...]:
        """The input tensors as the runtime sees them (None: a dynamic axis)."""

    def outputs(self) -> tuple[TensorSpec, ...]:
        """The output tensors as the runtime sees them."""

    def specs(self) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
        """The inputs and outputs the manifest declares."""

    def run(self, x: FloatRows, output: str) -> npt.NDArray[np.float32]:
        """The ``output`` tensor for rows ``x`` ``[N, *row shape]``, as float32.

        Raises:
            PipelineError: the model cannot run on these rows.
        """

    def run_row(self, row: FloatRows) -> None:
        """Run one row ``[1, *row shape]`` as a device does per inference (timed for latency)."""


def open_runner(model_bytes: bytes) -> ModelRunner:
    """The model in the runtime its bytes call for.

    Raises:
        PipelineError: neither a loadable ONNX model nor a TFLite one, or no runtime for it.
    """
    if is_tflite(model_bytes):
        return TFLiteRunner(model_bytes)
    try:
        session = open_session(model_bytes)
    except PipelineError as e:
        raise PipelineError(f"{e}; nor is it a TFLite file (no 'TFL3' at byte 4)") from e
    return OnnxRunner(model_bytes, session)
