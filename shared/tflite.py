"""A TFLite model in an interpreter: its tensors, and runs in batches. Hub and agent alike.

The hub judges uploaded and exported .tflite files with it (hub/ml/tflite.py); the agent
serves them with it (agent/litert.py). The interpreter is LiteRT's (``ai-edge-litert``,
numpy 1 and 2, Python 3.11-3.13); ``tflite_runtime`` is used when it is the only one
installed (numpy < 2 and Python <= 3.11 only; DESIGN §8: it cannot load newer ops and
once gave silently wrong answers on a dynamic-range model, which the health check's golden
outputs exist to catch).

A model whose input's batch axis is dynamic runs in batches of up to ``BATCH_ROWS`` rows
(the input resized to each batch); one whose batch axis is 1 runs row by row. Measured
(ai-edge-litert 2.3, wine MLPs, fp32 and full int8): a batch gives bit-identical outputs
to row-by-row runs, and XNNPACK (the default delegate, as a device has it) differs from
the plain kernels by at most 1.2e-7 (fp32) and not at all (int8).

An interpreter is not thread-safe: :class:`TFLiteModel` runs one call at a time (a lock).

Exceptions::

    TFLiteError(detail)      not a loadable model, a failed run
    └── NoInterpreter        neither ai-edge-litert nor tflite-runtime is installed
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from shared.manifest import TensorSpec

__all__ = [
    "BATCH_ROWS",
    "TFLITE_MAGIC",
    "NoInterpreter",
    "TFLiteError",
    "TFLiteModel",
    "interpreter_class",
    "interpreter_name",
    "is_tflite",
]

TFLITE_MAGIC: Final = b"TFL3"  # the flatbuffer's file identifier, at bytes 4..8
BATCH_ROWS: Final = 1024  # rows per invoke when the batch axis is dynamic


class TFLiteError(Exception):
    """A TFLite model that cannot be loaded or run, or no interpreter to do it."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class NoInterpreter(TFLiteError):
    """Neither ai-edge-litert nor tflite-runtime is installed."""


def is_tflite(model_bytes: bytes) -> bool:
    """Whether the bytes are a TFLite flatbuffer (``TFL3`` at offset 4), by content alone."""
    return model_bytes[4:8] == TFLITE_MAGIC


def interpreter_class() -> Any:
    """LiteRT's ``Interpreter``, else tflite_runtime's.

    Raises:
        NoInterpreter: neither is installed.
    """
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        try:
            from tflite_runtime.interpreter import Interpreter
        except ImportError as e:
            raise NoInterpreter("no TFLite interpreter: install ai-edge-litert") from e
    return Interpreter


def interpreter_name() -> str:
    """``ai-edge-litert`` or ``tflite-runtime``: the package :func:`interpreter_class` uses.

    Raises:
        TFLiteError: neither is installed.
    """
    module = str(interpreter_class().__module__)
    return "ai-edge-litert" if module.startswith("ai_edge_litert") else "tflite-runtime"


class TFLiteModel:
    """One .tflite file in an interpreter of its own, one thread of it (as a device runs
    it). Safe to call from several threads: one run at a time."""

    def __init__(self, model_bytes: bytes, *, num_threads: int = 1) -> None:
        """Open ``model_bytes``.

        Raises:
            TFLiteError: no interpreter installed, or not a loadable TFLite model.
        """
        interpreter = interpreter_class()
        if not is_tflite(model_bytes):
            raise TFLiteError("not a TFLite model (no TFL3 identifier)")
        try:
            self._it = interpreter(model_content=model_bytes, num_threads=num_threads)
            self._it.allocate_tensors()
        except Exception as e:  # the interpreter raises ValueError/RuntimeError of its own
            raise TFLiteError(f"not a loadable TFLite model: {type(e).__name__}: {e}") from e
        self._in = list(self._it.get_input_details())
        self._fed: tuple[int, ...] = tuple(int(d) for d in self._in[0]["shape"]) if self._in else ()
        self._out = {str(d["name"]): d for d in self._it.get_output_details()}
        self._lock = threading.Lock()
        self._rows_per_invoke = 0  # known at the first run (_step)

    @property
    def interpreter(self) -> Any:
        """The interpreter itself (for a benchmark's raw ``invoke()``)."""
        return self._it

    def inputs(self) -> tuple[TensorSpec, ...]:
        return tuple(_spec(d) for d in self._in)

    def outputs(self) -> tuple[TensorSpec, ...]:
        return tuple(_spec(d) for d in self._out.values())

    def run(self, x: npt.NDArray[Any], outputs: Sequence[str]) -> list[npt.NDArray[Any]]:
        """The ``outputs`` tensors of the model on rows ``x``, in that order (copies).

        One invoke when the rows fit one feed (a row, or up to ``BATCH_ROWS`` rows of a
        model whose batch axis is dynamic): the device's usual call, kept short (at batch
        1 the interpreter itself takes ~2.4 µs for a 16-64-64-4 MLP, bench/predict.py).

        Raises:
            TFLiteError: an unknown output, no rows, a model this cannot feed (not one
                input, a batch axis other than 1 or dynamic), or the run failed.
        """
        try:
            wanted = [self._out[name]["index"] for name in outputs]
        except KeyError as e:
            raise TFLiteError(f"the model has no output {e.args[0]!r}") from None
        n = len(x)
        get = self._it.get_tensor  # a copy of the tensor
        with self._lock:
            step = self._step()
            if 0 < n <= step:
                self._feed(x)
                return [get(i) for i in wanted]
            if n == 0:
                raise TFLiteError("no rows to run the model on")
            parts: list[list[npt.NDArray[Any]]] = [[] for _ in wanted]
            for start in range(0, n, step):
                self._feed(x[start : start + step])
                for part, index in zip(parts, wanted, strict=True):
                    part.append(get(index))
        return [np.concatenate(p) for p in parts]

    def run_row(self, row: npt.NDArray[Any]) -> None:
        """Run one row (``[1, *row shape]``), as a device does per inference: the latency."""
        with self._lock:
            self._step()
            self._feed(row)

    def _step(self) -> int:
        """Rows per invoke: ``BATCH_ROWS`` with a dynamic batch axis, else 1."""
        if self._rows_per_invoke:
            return self._rows_per_invoke
        (inp,) = self._single_input()
        signature = inp.get("shape_signature", inp["shape"])
        if len(signature) and int(signature[0]) in (-1, 1):
            self._rows_per_invoke = BATCH_ROWS if int(signature[0]) == -1 else 1
            return self._rows_per_invoke
        raise TFLiteError(
            f"input '{inp['name']}' is {_shown(signature)}: its batch axis must be 1 or dynamic"
        )

    def _single_input(self) -> list[dict[str, Any]]:
        if len(self._in) != 1:
            raise TFLiteError(f"the model must take one input, it takes {len(self._in)}")
        return self._in

    def _feed(self, x: npt.NDArray[Any]) -> None:
        """Set the input to ``x`` (resized to its batch when that differs) and invoke."""
        index = self._in[0]["index"]  # one input: _step() checked it
        rows = np.ascontiguousarray(x, dtype=np.float32)  # float input, as the hub exports
        try:
            if self._fed != rows.shape:
                self._it.resize_tensor_input(index, list(rows.shape))
                self._it.allocate_tensors()
                self._fed = rows.shape
            self._it.set_tensor(index, rows)
            self._it.invoke()
        except Exception as e:  # the interpreter raises ValueError/RuntimeError of its own
            # a refused shape may have been half applied (resized, not allocated): the next
            # run resizes again whatever it feeds
            self._fed = ()
            raise TFLiteError(f"running the model failed: {type(e).__name__}: {e}") from e


def _spec(detail: dict[str, Any]) -> TensorSpec:
    signature = detail.get("shape_signature", detail["shape"])
    return TensorSpec(
        name=str(detail["name"]),
        dtype=np.dtype(detail["dtype"]).name,
        shape=tuple(None if int(d) < 0 else int(d) for d in signature),
    )


def _shown(shape: Any) -> str:
    return "[" + ", ".join("N" if int(d) < 0 else str(int(d)) for d in shape) + "]"
