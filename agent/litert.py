"""The LiteRT backend: .tflite models on the device, beside onnxruntime (agent/runtime.py).

:class:`LiteRtBackend` turns a .tflite file into a :class:`~agent.runtime.ModelSession`
like :class:`~agent.runtime.OnnxBackend` does an ONNX file, so the predictor, the health
check (golden outputs, p95 latency, memory), probation, rollback, telemetry, drift and
capture run unchanged on it. The interpreter is LiteRT's (``ai-edge-litert``, the
``agent-tflite`` extra), or ``tflite-runtime`` where only that is installed
(shared/tflite.py). A session runs one call at a time (an interpreter is not
thread-safe); rows of a batch go through in one invoke when the model's batch axis is
dynamic, row by row when it is 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Final

from agent.runtime import (
    Array,
    ModelLoadError,
    ModelSession,
    RunFn,
    checked_digest,
    read_model,
)
from shared.tflite import TFLiteError, TFLiteModel, interpreter_name

__all__ = ["TFLITE_RUNTIME", "LiteRtBackend"]

TFLITE_RUNTIME: Final = "tflite"  # the runtime a manifest names for a .tflite target


class LiteRtBackend:
    """Loads .tflite models into LiteRT interpreters (``num_threads`` each)."""

    def __init__(self, *, num_threads: int = 1) -> None:
        self.num_threads = num_threads

    @property
    def name(self) -> str:
        return TFLITE_RUNTIME

    @staticmethod
    def interpreter() -> str:
        """The interpreter package in use (``ai-edge-litert`` or ``tflite-runtime``).

        Raises:
            ModelLoadError: neither is installed.
        """
        try:
            return interpreter_name()
        except TFLiteError as e:
            raise ModelLoadError(e.detail) from e

    def load(self, path: Path, sha256: str | None = None) -> ModelSession:
        """Load a model file (read once: the hash covers exactly the bytes loaded).

        Raises:
            ModelLoadError: unreadable, not the expected sha256, not a loadable .tflite.
        """
        return self.load_bytes(read_model(path), sha256)

    def load_bytes(self, data: bytes, sha256: str | None = None) -> ModelSession:
        """Load a model from memory.

        Raises:
            ModelLoadError: not the expected sha256, not a loadable .tflite, or no
                interpreter installed.
        """
        digest = checked_digest(data, sha256)
        try:
            model = TFLiteModel(data, num_threads=self.num_threads)
            inputs, outputs = model.inputs(), model.outputs()
        except TFLiteError as e:
            raise ModelLoadError(f"LiteRT cannot load the model: {e.detail}") from e
        if len(inputs) != 1:
            raise ModelLoadError(f"the model must take one input, it takes {len(inputs)}")
        return ModelSession(
            inputs=inputs,
            outputs=outputs,
            run_fn=_run(model),
            backend=self.name,
            sha256=digest,
            size=len(data),
            native=model,
        )


def _run(model: TFLiteModel) -> RunFn:
    """``run(output_names, {input_name: x}, None)`` over the interpreter, as onnxruntime's."""

    def run(names: list[str], feed: dict[str, Array], _options: None) -> Sequence[Array]:
        (x,) = feed.values()
        # a TFLiteError is wrapped by the predictor with the model's name and version
        return model.run(x, names)

    return run
