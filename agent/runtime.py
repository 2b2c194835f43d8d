"""The on-device model runtime: backends, sessions, a shared session cache, the Predictor.

One interface, several backends (DESIGN §5): a :class:`Backend` turns a model file into a
:class:`ModelSession` (I/O specs plus the runtime's own ``run``). :class:`OnnxBackend` wraps
onnxruntime; a TFLite backend plugs in the same way. :class:`SessionCache` shares one
session per model file (by sha256) between the many simulated devices of one process.
:class:`Predictor` is what local applications call (directly or through agent/endpoint.py):
it runs the active model, records telemetry, and is swapped atomically on activation.

Exceptions::

    ModelRuntimeError
    ├── ModelLoadError(detail)          the file is missing, corrupt or not loadable
    ├── NoModelError                    predict() before any model was activated
    └── InferenceError(model, version, detail)   the runtime refused an input or failed
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from time import perf_counter_ns
from typing import Any, NamedTuple, Protocol

import numpy as np
import numpy.typing as npt

from agent.telemetry import StatsRecorder
from shared.manifest import TensorSpec

Array = npt.NDArray[Any]
# A backend's own run: ``run(output_names, {input_name: array}, None)`` -> the outputs in
# that order. The third argument is backend-specific run options (onnxruntime's
# RunOptions); the agent always passes None.
RunFn = Callable[[list[str], dict[str, Array], None], Sequence[Array]]

_as_c_array = np.ascontiguousarray  # module-level names: one lookup less per call
_isfinite = math.isfinite

DEFAULT_CACHED_MODELS = 8  # sessions kept by a SessionCache (least recently used dropped)

log = logging.getLogger(__name__)


class RowObserver(Protocol):
    """Sees every successful predict call's rows (drift sketches, data capture).

    Called on the caller's thread after the outputs are computed, so it must be cheap
    and thread-safe. An exception is counted in ``Predictor.observer_errors`` and logged,
    never raised to the application.
    """

    def observe(self, model: str, version: int, x: Array, outputs: dict[str, Array]) -> None:
        """``x`` is the batch as the model saw it ([rows, features]); outputs are batched."""

    def observe_labels(self, predicted: Array, labels: Array) -> None:
        """True labels the application reported for predicted ones (same shape)."""


class ModelRuntimeError(Exception):
    """Root of the runtime's errors."""


class ModelLoadError(ModelRuntimeError):
    """A model file that cannot be read or loaded by the backend."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class NoModelError(ModelRuntimeError):
    """predict() while no model is active."""


class InferenceError(ModelRuntimeError):
    """The runtime failed on an input (wrong shape or type, or an internal error)."""

    def __init__(self, model: str, version: int, detail: str) -> None:
        super().__init__(f"{model} v{version}: {detail}")
        self.model = model
        self.version = version
        self.detail = detail


# --------------------------------------------------------------------------- sessions


@dataclass(frozen=True, eq=False)
class ModelSession:
    """A loaded model: its I/O specs and the backend's ``run``. Safe to share across threads.

    Attributes:
        inputs / outputs: what the model declares (dtype as a numpy name, None for a
            dynamic dimension).
        run_fn: the backend's run, called as ``run_fn(output_names, {input_name: x}, None)``.
        backend: the backend's name ("onnxruntime").
        sha256 / size: of the exact bytes that were loaded.
        native: the runtime's own session object, for diagnostics and benchmarks.
    """

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    run_fn: RunFn = field(repr=False)
    backend: str
    sha256: str
    size: int
    native: Any = field(default=None, repr=False)

    @property
    def input_name(self) -> str:
        return self.inputs[0].name

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(o.name for o in self.outputs)

    def run(self, x: Array) -> list[Array]:
        """All outputs, in declaration order, for one input (no conversion, no telemetry)."""
        return list(self.run_fn([o.name for o in self.outputs], {self.inputs[0].name: x}, None))


class Backend(Protocol):
    """Turns model files into sessions.

    ``sha256``, when given, is the file's expected (signed, verified) hash: a load whose
    bytes hash differently fails, and a cache may use it to answer without reading.
    """

    @property
    def name(self) -> str: ...

    def load(self, path: Path, sha256: str | None = None) -> ModelSession:
        """Raises: ModelLoadError."""
        ...

    def load_bytes(self, data: bytes, sha256: str | None = None) -> ModelSession:
        """Raises: ModelLoadError."""
        ...


def read_model(path: Path) -> bytes:
    """A model file's bytes.

    Raises:
        ModelLoadError: the file cannot be read.
    """
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise ModelLoadError(f"cannot read {path}: {e}") from e


def _digest(data: bytes, expected: str | None) -> str:
    digest = hashlib.sha256(data).hexdigest()
    if expected is not None and digest != expected:
        raise ModelLoadError(f"sha256 of the model is {digest}, expected {expected}")
    return digest


# onnxruntime's type strings -> numpy dtype names (TensorSpec.dtype).
_ORT_DTYPES = {
    "tensor(float)": "float32",
    "tensor(double)": "float64",
    "tensor(float16)": "float16",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
    "tensor(int16)": "int16",
    "tensor(uint16)": "uint16",
    "tensor(int32)": "int32",
    "tensor(uint32)": "uint32",
    "tensor(int64)": "int64",
    "tensor(uint64)": "uint64",
    "tensor(bool)": "bool",
    "tensor(string)": "str",
}


class OnnxBackend:
    """onnxruntime on the CPU, sequential execution.

    Args:
        intra_op_num_threads: threads per inference. 1 by default: a device shares its CPU
            with the applications it serves, and tiny models do not gain from more.
        allow_spinning: let idle pool threads spin (lower latency, burns CPU); only
            matters with more than one thread.
    """

    name = "onnxruntime"

    def __init__(self, *, intra_op_num_threads: int = 1, allow_spinning: bool = False) -> None:
        if intra_op_num_threads < 1:
            raise ValueError("intra_op_num_threads must be >= 1")
        self.intra_op_num_threads = intra_op_num_threads
        self.allow_spinning = allow_spinning

    def load(self, path: Path, sha256: str | None = None) -> ModelSession:
        """Load a model file (read once: the hash covers exactly the bytes loaded).

        Raises:
            ModelLoadError: unreadable, not the expected sha256, corrupt or unsupported.
        """
        return self.load_bytes(read_model(path), sha256)

    def load_bytes(self, data: bytes, sha256: str | None = None) -> ModelSession:
        """Load a model from memory.

        Raises:
            ModelLoadError: not the expected sha256, corrupt or unsupported.
        """
        digest = _digest(data, sha256)
        import onnxruntime as ort  # deferred: importing it costs ~30 MB RSS and ~0.3 s

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = self.intra_op_num_threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.add_session_config_entry(
            "session.intra_op.allow_spinning", "1" if self.allow_spinning else "0"
        )
        try:
            sess = ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime's errors derive from Exception only
            raise ModelLoadError(f"onnxruntime cannot load the model: {e}") from e
        return ModelSession(
            inputs=tuple(_ort_spec(a) for a in sess.get_inputs()),
            outputs=tuple(_ort_spec(a) for a in sess.get_outputs()),
            run_fn=_ort_run(sess),
            backend=self.name,
            sha256=digest,
            size=len(data),
            native=sess,
        )


def _ort_run(sess: Any) -> RunFn:
    """The run function of an onnxruntime session, without the Python wrapper if we can.

    ``InferenceSession.run`` is a Python wrapper around the C++ binding ``sess._sess.run``:
    it re-validates the feed's names, checks OrtValue ownership and WebGPU graph capture,
    and retries on an execution-provider failure — ~0.7 µs at batch 1, ~1 µs at batch
    256, more than all of the Predictor's own work. None of it applies here: the feed is
    one numpy array under the name the session declared (the C++ side still checks
    types and shapes and raises), and the CPU provider has no fallback. The binding has
    the same signature. If a release drops it we use the public run; if one changed its
    signature, the health check's golden run (agent/health.py) fails before activation,
    and tests/test_runtime.py pins the fast path to the installed release.
    """
    run = getattr(getattr(sess, "_sess", None), "run", None)
    return run if callable(run) else sess.run  # type: ignore[no-any-return]


def _ort_spec(arg: Any) -> TensorSpec:
    # Symbolic dimensions ("N", "batch") are dynamic, like None.
    shape = tuple(d if isinstance(d, int) else None for d in arg.shape)
    return TensorSpec(name=arg.name, dtype=_ORT_DTYPES.get(arg.type, arg.type), shape=shape)


class SessionCache:
    """Sessions keyed by the model file's sha256, shared by every device of a process.

    Thread-safe get-or-load: concurrent requests for the same file load it once. Bounded:
    beyond ``max_models`` the least recently used session is dropped from the cache (its
    users keep it alive until they let go). A cache is itself a :class:`Backend`
    (``load``/``load_bytes``), so it can stand wherever a backend is expected.
    """

    def __init__(self, backend: Backend, max_models: int = DEFAULT_CACHED_MODELS) -> None:
        if max_models < 1:
            raise ValueError("max_models must be >= 1")
        self.backend = backend
        self.max_models = max_models
        self.hits = 0
        self.loads = 0
        self._lock = threading.Lock()
        self._sessions: OrderedDict[str, ModelSession] = OrderedDict()
        self._loading: dict[str, threading.Lock] = {}

    def get(self, sha256: str | None, path: Path) -> ModelSession:
        """The session of a model file, loading it on first use.

        Args:
            sha256: the file's verified hash, or None to hash the file. When given, a
                cached session is returned without reading the file at all.
            path: where the file is.

        Raises:
            ModelLoadError: unreadable, not the expected sha256, or not loadable.
        """
        if sha256 is not None:
            with self._lock:
                cached = self._lookup(sha256)
            if cached is not None:
                return cached
        return self.load_bytes(read_model(path), sha256)

    def load(self, path: Path, sha256: str | None = None) -> ModelSession:
        """:meth:`get` in the :class:`Backend` protocol's argument order."""
        return self.get(sha256, path)

    def load_bytes(self, data: bytes, sha256: str | None = None) -> ModelSession:
        """The session of a model given as bytes (see :meth:`get`)."""
        # Never trust a claimed hash as the key: a wrong key would serve the wrong model to
        # every device of the process. Hashing costs ~1 ms per MB, once per load request.
        key = _digest(data, sha256)
        with self._lock:
            cached = self._lookup(key)
            if cached is not None:
                return cached
            key_lock = self._loading.setdefault(key, threading.Lock())
        with key_lock:  # one loader per file; the others wait here, then hit the cache
            with self._lock:
                cached = self._lookup(key)
                if cached is not None:
                    return cached
            try:
                session = self.backend.load_bytes(data, key)
            finally:
                with self._lock:
                    self._loading.pop(key, None)
            with self._lock:
                self.loads += 1
                self._sessions[key] = session
                while len(self._sessions) > self.max_models:
                    self._sessions.popitem(last=False)
        return session

    @property
    def name(self) -> str:
        return self.backend.name

    def _lookup(self, key: str) -> ModelSession | None:
        session = self._sessions.get(key)
        if session is not None:
            self._sessions.move_to_end(key)
            self.hits += 1
        return session

    def __len__(self) -> int:
        return len(self._sessions)

    def __contains__(self, sha256: object) -> bool:
        return sha256 in self._sessions


# --------------------------------------------------------------------------- predictor

_FAST_CHECK_DTYPES = ("float32", "float64")  # BLAS dot; other float types use np.isfinite


class Prediction(NamedTuple):
    """Outputs and the model version that computed them."""

    model: str
    version: int
    outputs: dict[str, Array]


class _Active(NamedTuple):
    """Everything predict needs, bound once per swap: one read and one unpack per call."""

    run: RunFn
    output_names: list[str]
    input_name: str
    input_dtype: np.dtype[Any]
    dot_checked: tuple[int, ...]  # float32/64 outputs: finite iff dot(v, v) is finite
    slow_checked: tuple[int, ...]  # other float outputs (float16): np.isfinite
    model: str
    version: int
    session: ModelSession


class Predictor:
    """The on-device inference API: predict on the active model, with telemetry.

    Thread-safe. :meth:`swap` replaces the active model with one reference assignment:
    calls already running finish on the model they started with.

    Args:
        recorder: where calls are recorded (a fresh one by default); the agent core
            drains it once per telemetry window.
    """

    __slots__ = ("_active", "observer_errors", "observers", "recorder")

    def __init__(self, recorder: StatsRecorder | None = None) -> None:
        self.recorder = recorder if recorder is not None else StatsRecorder()
        self._active: _Active | None = None
        # Replaced, never mutated in place, so a concurrent predict sees a whole tuple.
        self.observers: tuple[RowObserver, ...] = ()
        self.observer_errors = 0

    def add_observer(self, observer: RowObserver) -> None:
        """Let ``observer`` see every successful call from now on."""
        self.observers = (*self.observers, observer)

    def remove_observer(self, observer: RowObserver) -> None:
        self.observers = tuple(o for o in self.observers if o is not observer)

    def swap(self, session: ModelSession, model: str, version: int) -> None:
        """Make ``session`` the active model (atomic).

        Raises:
            ValueError: the model does not have exactly one input.
        """
        if len(session.inputs) != 1:
            raise ValueError(f"the Predictor serves single-input models; got {session.inputs}")
        kinds = [o.dtype for o in session.outputs]
        self._active = _Active(
            run=session.run_fn,
            output_names=[o.name for o in session.outputs],
            input_name=session.input_name,
            input_dtype=np.dtype(session.inputs[0].dtype),
            dot_checked=tuple(i for i, k in enumerate(kinds) if k in _FAST_CHECK_DTYPES),
            slow_checked=tuple(
                i
                for i, k in enumerate(kinds)
                if k.startswith("float") and k not in _FAST_CHECK_DTYPES
            ),
            model=model,
            version=version,
            session=session,
        )

    def deactivate(self) -> None:
        """No active model: predict raises NoModelError until the next swap."""
        self._active = None

    @property
    def active(self) -> tuple[str, int] | None:
        """``(model, version)`` of the active model, or None."""
        a = self._active
        return None if a is None else (a.model, a.version)

    @property
    def session(self) -> ModelSession | None:
        a = self._active
        return None if a is None else a.session

    def predict(self, x: npt.ArrayLike) -> dict[str, Array]:
        """Run the active model on one row (1-D) or a batch (2-D).

        The input is converted to the model's dtype and made C-contiguous only when it is
        not already (no copy otherwise). Outputs are always batched (a row gives 1 row).

        Raises:
            NoModelError: no model is active.
            InferenceError: the input was refused or the runtime failed (counted).
        """
        return self._predict(self._active, x)

    def predict_versioned(self, x: npt.ArrayLike) -> Prediction:
        """:meth:`predict`, tagged with the model and version that computed it.

        Reading :attr:`active` before or after :meth:`predict` could name another model
        if a swap happens in between; this cannot.
        """
        active = self._active
        outputs = self._predict(active, x)
        assert active is not None  # _predict raised otherwise
        return Prediction(active.model, active.version, outputs)

    def _predict(self, active: _Active | None, x: npt.ArrayLike) -> dict[str, Array]:
        if active is None:
            raise NoModelError("no model is active")
        run, names, input_name, dtype, dot_checked, slow_checked, model, version, _ = active
        try:
            arr = _as_c_array(x, dtype)  # x itself when already right: no copy
            if arr.ndim == 1:
                arr = arr.reshape(1, -1)
            t0 = perf_counter_ns()
            outs = run(names, {input_name: arr}, None)
            t1 = perf_counter_ns()
        except Exception as e:
            self.recorder.record_error()
            raise InferenceError(model, version, f"{type(e).__name__}: {e}") from e
        # Non-finite check on float outputs only (labels are ints). dot(v, v) is one BLAS
        # call, ~0.2 µs at batch 1 and ~0.45 µs at 256, against ~0.8 µs for v.sum() and
        # ~1.1 µs for np.isfinite(v).all(): a NaN or inf anywhere makes it non-finite
        # (squares cannot cancel). Caveat: |v| > 1.8e19 in float32 overflows and counts
        # as non-finite too, which for a model's output is as alarming.
        nonfinite = False
        for i in dot_checked:
            v = outs[i].ravel()
            if not _isfinite(v.dot(v)):
                nonfinite = True
        for i in slow_checked:
            if not np.isfinite(outs[i]).all():
                nonfinite = True
        self.recorder.record(t1 - t0, arr.shape[0], nonfinite)
        result = dict(zip(names, outs))  # noqa: B905  (strict=True costs 0.1 µs; same lengths)
        if self.observers:
            for observer in self.observers:
                try:
                    observer.observe(model, version, arr, result)
                except Exception:
                    self.observer_errors += 1
                    log.exception("predictor: observer %r failed", observer)
        return result

    def record_labels(self, predicted: npt.ArrayLike, labels: npt.ArrayLike) -> None:
        """Report true labels for predicted ones (live accuracy).

        Raises:
            ValueError: the two do not have the same shape.
        """
        p = np.asarray(predicted)
        y = np.asarray(labels)
        if p.shape != y.shape:
            raise ValueError(f"predicted {p.shape} and labels {y.shape} differ in shape")
        self.recorder.record_labels(int(p.size), int(np.count_nonzero(p == y)))
        for observer in self.observers:
            try:
                observer.observe_labels(p, y)
            except Exception:
                self.observer_errors += 1
                log.exception("predictor: observer %r failed on labels", observer)
