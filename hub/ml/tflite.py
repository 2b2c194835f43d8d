"""Running a TFLite model on the hub: shared/tflite.py's interpreter, its errors as the
pipeline's.

The interpreter is LiteRT's (``ai-edge-litert``, in the hub extra), or ``tflite_runtime``
where only that is installed (shared/tflite.py says how they differ). TensorFlow itself
never runs here: it only makes .tflite files (the ``tflite-export`` extra).
"""

from __future__ import annotations

from typing import Final

import numpy as np
import numpy.typing as npt

from hub.ml.errors import PipelineError
from hub.ml.training_data import FloatRows
from shared.manifest import TensorSpec
from shared.tflite import (
    BATCH_ROWS,
    TFLITE_MAGIC,
    NoInterpreter,
    TFLiteError,
    TFLiteModel,
    is_tflite,
)

__all__ = ["BATCH_ROWS", "TFLITE_MAGIC", "TFLiteRunner", "is_tflite"]

INSTALL_HINT: Final = "pip install 'edgefleet[hub]'"


class TFLiteRunner:
    """A TFLite file in an interpreter of its own (one thread, as a device runs it)."""

    format: Final = "tflite"
    runtime: Final = "tflite"

    def __init__(self, model_bytes: bytes) -> None:
        """Open ``model_bytes``.

        Raises:
            PipelineError: no interpreter installed, or not a loadable TFLite model.
        """
        try:
            self._model = TFLiteModel(model_bytes)
        except NoInterpreter as e:
            raise PipelineError(
                f"judging a TFLite model on the hub needs ai-edge-litert: {INSTALL_HINT}"
            ) from e
        except TFLiteError as e:
            raise PipelineError(e.detail) from e

    def inputs(self) -> tuple[TensorSpec, ...]:
        return self._model.inputs()

    def outputs(self) -> tuple[TensorSpec, ...]:
        return self._model.outputs()

    def specs(self) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
        """The manifest's tensors: as the interpreter shows them (-1: None)."""
        return self.inputs(), self.outputs()

    def run(self, x: FloatRows, output: str) -> npt.NDArray[np.float32]:
        """The ``output`` tensor of the model on rows ``x``, as float32.

        Raises:
            PipelineError: the model cannot run on these rows.
        """
        try:
            (out,) = self._model.run(x, [output])
        except TFLiteError as e:
            raise PipelineError(e.detail) from e
        return np.asarray(out, dtype=np.float32)

    def run_row(self, row: FloatRows) -> None:
        """Run one row (``[1, *row shape]``), as a device does per inference: the latency."""
        try:
            self._model.run_row(row)
        except TFLiteError as e:
            raise PipelineError(e.detail) from e
