"""Which backend runs a device's models: the ``runtime`` setting (agent/config.py).

``onnxruntime`` (the ``agent`` extra) runs int8 ONNX files; ``tflite`` (the
``agent-tflite`` extra) runs .tflite files with LiteRT, or tflite-runtime where only that
is installed (agent/litert.py). A manifest names the runtime its target needs, and a
device refuses a target for another runtime (``wrong_runtime``), so a device of a LiteRT
class only ever loads .tflite files.
"""

from __future__ import annotations

import importlib.util
from typing import Final

from agent.litert import TFLITE_RUNTIME, LiteRtBackend
from agent.runtime import Backend, OnnxBackend

__all__ = ["RUNTIMES", "BackendError", "backend_for"]

ONNX_RUNTIME: Final = "onnxruntime"
RUNTIMES: Final = (ONNX_RUNTIME, TFLITE_RUNTIME)
_INSTALL: Final = {
    ONNX_RUNTIME: "pip install 'edgefleet[agent]'",
    TFLITE_RUNTIME: "pip install 'edgefleet[agent-tflite]' (or tflite-runtime on numpy < 2)",
}


class BackendError(Exception):
    """An unknown runtime, or one whose package is not installed."""


def backend_for(runtime: str) -> Backend:
    """The backend of ``runtime``, its package checked to be installed (not imported yet:
    onnxruntime costs ~30 MB and 0.3 s, paid at the first model).

    Raises:
        BackendError: an unknown runtime, or its package is missing (what to install).
    """
    if runtime == ONNX_RUNTIME:
        if importlib.util.find_spec("onnxruntime") is None:
            raise BackendError(f"runtime {runtime} needs onnxruntime: {_INSTALL[runtime]}")
        return OnnxBackend()
    if runtime == TFLITE_RUNTIME:
        if not any(
            importlib.util.find_spec(p) is not None for p in ("ai_edge_litert", "tflite_runtime")
        ):
            raise BackendError(f"runtime {runtime} needs a TFLite interpreter: {_INSTALL[runtime]}")
        return LiteRtBackend()
    raise BackendError(f"unknown runtime {runtime!r}: one of {', '.join(RUNTIMES)}")
