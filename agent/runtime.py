"""The on-device model runtime: backends, sessions and a shared session cache.

One interface, several backends (DESIGN §5): a :class:`Backend` turns a model file into a
:class:`ModelSession` (I/O specs plus the runtime's own ``run``). :class:`OnnxBackend` wraps
onnxruntime; a TFLite backend plugs in the same way. :class:`SessionCache` shares one
session per model file (by sha256) between the many simulated devices of one process.
What local applications call, the :class:`~agent.predictor.Predictor`, runs a session of
this module (agent/predictor.py).

Exceptions::

    ModelRuntimeError
    ├── ModelLoadError(detail)          the file is missing, corrupt or not loadable
    ├── NoModelError                    predict() before any model was activated
    └── InferenceError(model, version, detail)   the runtime refused an input or failed
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy.typing as npt

from shared.manifest import TensorSpec

Array = npt.NDArray[Any]
# A backend's own run: ``run(output_names, {input_name: array}, None)`` -> the outputs in
# that order. The third argument is backend-specific run options (onnxruntime's
# RunOptions); the agent always passes None.
RunFn = Callable[[list[str], dict[str, Array], None], Sequence[Array]]

DEFAULT_CACHED_MODELS = 8  # sessions kept by a SessionCache (least recently used dropped)

log = logging.getLogger(__name__)


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


def checked_digest(data: bytes, expected: str | None) -> str:
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
        digest = checked_digest(data, sha256)
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
        key = checked_digest(data, sha256)
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
