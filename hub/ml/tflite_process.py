"""TensorFlow's converter in a process of its own, never in the hub's.

TensorFlow brings its own BoringSSL, whose symbols shadow the system OpenSSL's: a
PKCS#11 module that links OpenSSL (SoftHSM2 here; many HSM and TPM modules do) crashes
the process with SIGSEGV once TensorFlow is imported in it (measured, tests/softhsm.py).
A hub whose online keys live in a token (ADR 0038) and that builds .tflite artefacts
would die at its next signature. The exports therefore run in one spawned child
process, started at the first export and kept for the next ones (TensorFlow is
imported once, as before, and its ~0.5 GB stays out of the hub's memory).
"""

from __future__ import annotations

import multiprocessing
import threading
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from hub.ml.errors import PipelineError

_lock = threading.Lock()
_pool: ProcessPoolExecutor | None = None


def run_converter(export: Callable[..., bytes], *args: Any) -> bytes:
    """``export(*args)`` in the converter process; its bytes, or its error re-raised here.

    ``export`` and ``args`` are pickled to the child: a module-level function and plain
    data (numpy arrays, dataclasses, fitted scikit-learn pipelines).

    Raises:
        PipelineError: the export's own, or the converter process died (a new one starts
            at the next export).
    """
    global _pool
    with _lock:
        if _pool is None:
            _pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"))
        pool = _pool
    try:
        return pool.submit(export, *args).result()
    except BrokenProcessPool as e:
        with _lock:
            if _pool is pool:
                _pool = None
        raise PipelineError(f"the TFLite converter process died: {e}") from e
