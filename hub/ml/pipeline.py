"""The model pipeline (DESIGN §6): rows → train → ONNX → int8 → evaluate → gate → manifest.

``train`` fits a StandardScaler + MLPClassifier (scikit-learn), exports it with skl2onnx
(ZipMap off, pinned opset), quantises it to int8 with onnxruntime (static, QDQ, MinMax
calibration on training rows), evaluates both files with onnxruntime on held-out rows and
refuses the int8 file when it loses more accuracy than the gate allows. It then computes
the drift baseline and the golden rows of the health check, all from the exact bytes that
ship. ``import_onnx`` lets a bring-your-own ONNX model enter at "evaluate".
``build_manifest`` turns the result into the signed manifest's custom fields.

Measured (scikit-learn 1.9, skl2onnx 1.20, onnxruntime 1.31, 2 cores):
- per-tensor scales: per-channel moved accuracy ±0.1 point over five seeds, +700 bytes.
- no ``quant_pre_process``: its optimiser step makes the quantizer fail (a Softmax
  output it no longer finds); without that step it changes nothing.
- int8 probabilities (steps of 1/255) are bit-identical between fused integer kernels
  and the unfused path, 1 and 2 threads, one row and a batch.
- training is seeded and runs on one BLAS thread (BLAS_THREADS), so the same config gives
  the same bytes on any core count.

Exceptions::

    PipelineError(detail)                      bad data, unusable model, failed step
    ├── ConfigError(detail)                    a setting out of range (also a ValueError)
    └── GateError(accuracy_fp32, accuracy_int8, max_loss_points)
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
import onnxruntime as ort
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from skl2onnx import to_onnx
from skl2onnx.common.data_types import FloatTensorType
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from shared.chunks import chunk_hashes
from shared.manifest import HealthCheck, Manifest, TensorSpec
from shared.sensors import CLASSES, FEATURES, generate

__all__ = [
    "BuiltModel",
    "ConfigError",
    "Dataset",
    "GateError",
    "PipelineConfig",
    "PipelineError",
    "baseline_stats",
    "build_manifest",
    "builtin_dataset",
    "dataset_from_arrays",
    "evaluate",
    "export_onnx",
    "import_onnx",
    "quantize_int8",
    "train",
]

log = logging.getLogger(__name__)

Progress = Callable[[str, float], None]
FloatRows = npt.NDArray[np.float32]
IntLabels = npt.NDArray[np.int64]

INPUT_NAME = "input"
SCORES_OUTPUT = "probabilities"
MAX_EPOCHS = 200  # early stopping ends training long before (about 30 epochs here)
# One BLAS thread: a 16-64-64-4 MLP gains nothing from more (0.55 s either way), two
# OpenBLAS threads on two busy cores took 25-34 s instead of 0.8-1.5 s, and the
# trained weights then depend on the core count.
BLAS_THREADS = 1
CALIBRATION_BATCH = 128  # rows per calibration batch fed to the quantizer
# Overall job fraction reached at the start of each stage. The hub's job runner goes on
# to "sign" at 0.95, so the pipeline stays below it.
STAGES: dict[str, float] = {
    "dataset": 0.0,
    "train": 0.05,
    "export": 0.6,
    "quantize": 0.65,
    "evaluate": 0.75,
    "gate": 0.8,
    "baseline": 0.85,
    "golden": 0.9,
}
SATURATED = 0.99  # a golden row's top score stays below this, so it tests more than 0/1


class PipelineError(Exception):
    """A pipeline step could not produce a usable model (bad data, bad model, failed step)."""


class ConfigError(PipelineError, ValueError):
    """A pipeline setting out of range (a ValueError too, like other bad arguments)."""


class GateError(PipelineError):
    """The int8 model lost more accuracy than the gate allows.

    Attributes:
        accuracy_fp32: held-out accuracy of the float model (0..1).
        accuracy_int8: held-out accuracy of the int8 model (0..1).
        max_loss_points: the largest loss allowed, in percentage points.
    """

    def __init__(self, accuracy_fp32: float, accuracy_int8: float, max_loss_points: float):
        self.accuracy_fp32 = accuracy_fp32
        self.accuracy_int8 = accuracy_int8
        self.max_loss_points = max_loss_points
        loss = (accuracy_fp32 - accuracy_int8) * 100
        super().__init__(
            f"int8 model refused: accuracy {accuracy_int8:.4f} (int8) vs {accuracy_fp32:.4f}"
            f" (fp32) is a loss of {loss:.2f} points, over the {max_loss_points:.2f} allowed"
        )


@dataclass(frozen=True)
class PipelineConfig:
    """What to train and the health check to ship with it."""

    name: str = "vibration"
    n_train: int = 12_000  # rows of the built-in dataset to train on
    n_holdout: int = 4_000  # rows kept apart to evaluate and pick golden rows from
    n_calibration: int = 512  # training rows the quantizer calibrates on
    seed: int = 7
    hidden: tuple[int, ...] = (64, 64)  # MLP hidden layer widths
    opset: int = 15  # ONNX opset; the quantizer mishandles some graphs at 21/22
    per_channel: bool = False  # per-channel weight scales (measured: no gain here)
    max_int8_loss_points: float = 1.0  # percentage points of accuracy int8 may lose
    baseline_bins: int = 10  # quantile bins per feature for drift
    n_golden: int = 8  # rows in the device health check
    # Health check. Probabilities of the int8 file come in steps of 1/255 (~0.0039) and
    # reproduce exactly on this machine; 0.01 allows a rounding step or two on another
    # CPU's integer kernels and still refuses a wrong model (fp32 and int8 of the same
    # model differ by up to ~0.2).
    tolerance: float = 0.01  # max absolute difference per golden value
    latency_budget_us: float = 5000.0  # p95 of single-row inference
    memory_budget_mb: float = 64.0  # RSS growth allowed by loading the model
    probation_s: float = 5.0  # seconds
    probation_min_inferences: int = 20
    max_error_ratio: float = 0.05  # errors / inferences during probation

    def __post_init__(self) -> None:
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))
        problems = [
            msg
            for bad, msg in (
                (not self.name, "name must not be empty"),
                (self.n_train < 10, "n_train must be >= 10"),
                (self.n_holdout < 1, "n_holdout must be >= 1"),
                (self.n_calibration < 1, "n_calibration must be >= 1"),
                (not self.hidden or min(self.hidden) < 1, "hidden layers must be >= 1 wide"),
                (not 13 <= self.opset <= 17, "opset must be within 13..17"),
                (self.baseline_bins < 1, "baseline_bins must be >= 1"),
                (self.n_golden < 1, "n_golden must be >= 1"),
                (self.tolerance < 0, "tolerance must be >= 0"),
                (self.latency_budget_us <= 0, "latency_budget_us must be > 0"),
                (self.memory_budget_mb <= 0, "memory_budget_mb must be > 0"),
                (self.probation_s < 0, "probation_s must be >= 0"),
                (not 0 <= self.max_error_ratio <= 1, "max_error_ratio must be within 0..1"),
            )
            if bad
        ]
        if problems:
            raise ConfigError("bad pipeline config: " + "; ".join(problems))


@dataclass(frozen=True)
class Dataset:
    """Labelled rows: training rows (also calibration) and held-out rows."""

    x_train: FloatRows
    y_train: IntLabels
    x_holdout: FloatRows
    y_holdout: IntLabels
    features: tuple[str, ...]
    classes: tuple[str, ...]

    def __post_init__(self) -> None:
        width, k = len(self.features), len(self.classes)
        for part, x, y in (
            ("train", self.x_train, self.y_train),
            ("holdout", self.x_holdout, self.y_holdout),
        ):
            if x.dtype != np.float32 or x.ndim != 2 or x.shape[1] != width or len(x) == 0:
                raise PipelineError(
                    f"{part} rows must be float32 [n>0, {width}], got {x.dtype} {x.shape}"
                )
            if y.dtype != np.int64 or y.shape != (len(x),):
                raise PipelineError(
                    f"{part} labels must be int64 [{len(x)}], got {y.dtype} {y.shape}"
                )
            if not np.isfinite(x).all():
                raise PipelineError(f"{part} rows contain NaN or infinity")
            if y.min() < 0 or y.max() >= k:
                raise PipelineError(f"{part} labels must be class indices 0..{k - 1}")
        if len(np.unique(self.y_train)) != k:
            raise PipelineError(f"the training rows must contain all {k} classes")


@dataclass(frozen=True)
class BuiltModel:
    """A model ready to sign: the bytes that ship and everything the manifest needs."""

    name: str
    model_bytes: bytes  # the file that ships (int8 when trained here)
    fp32_bytes: bytes  # the float model it came from (the same bytes when imported)
    accuracy_fp32: float  # held-out accuracy, 0..1
    accuracy_int8: float  # held-out accuracy of model_bytes, 0..1
    size_fp32: int  # bytes
    size_int8: int  # bytes of model_bytes
    classes: tuple[str, ...]
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    baseline: dict[str, Any]
    golden_inputs: tuple[tuple[float, ...], ...]
    golden_outputs: tuple[tuple[float, ...], ...]  # model_bytes' scores for golden_inputs
    train_seconds: float
    quantize_seconds: float
    golden_output: str = SCORES_OUTPUT  # name of the output the golden rows check
    source: str = "trained"  # "trained" | "imported"


# ------------------------------------------------------------------ entry points


def train(
    config: PipelineConfig, progress: Progress | None = None, *, dataset: Dataset | None = None
) -> BuiltModel:
    """Train, export, quantise, evaluate and gate a model; compute baseline and golden rows.

    Args:
        config: what to train.
        progress: called with (stage, overall fraction 0..1) as each stage starts.
        dataset: rows to use; the built-in generator's (``builtin_dataset``) by default.

    Raises:
        GateError: the int8 model loses more accuracy than ``config.max_int8_loss_points``.
        PipelineError: a step failed.
    """
    report = _reporter(progress)
    report("dataset")
    data = dataset if dataset is not None else builtin_dataset(config)
    report("train")
    t0 = time.perf_counter()
    model = _fit(data, config)
    train_seconds = time.perf_counter() - t0
    report("export")
    fp32 = export_onnx(model, len(data.features), config.opset)
    report("quantize")
    t0 = time.perf_counter()
    calibration = _calibration_rows(data.x_train, config.n_calibration, config.seed)
    int8 = quantize_int8(fp32, calibration, per_channel=config.per_channel)
    quantize_seconds = time.perf_counter() - t0
    report("evaluate")
    acc_fp32 = evaluate(fp32, data.x_holdout, data.y_holdout)
    acc_int8 = evaluate(int8, data.x_holdout, data.y_holdout)
    report("gate")
    if (acc_fp32 - acc_int8) * 100 > config.max_int8_loss_points:
        raise GateError(acc_fp32, acc_int8, config.max_int8_loss_points)
    log.info("%s: accuracy fp32 %.4f, int8 %.4f", config.name, acc_fp32, acc_int8)
    return _finish(
        int8,
        data,
        config,
        report,
        fp32_bytes=fp32,
        accuracy_fp32=acc_fp32,
        accuracy_int8=acc_int8,
        train_seconds=train_seconds,
        quantize_seconds=quantize_seconds,
        source="trained",
    )


def import_onnx(
    model_bytes: bytes,
    config: PipelineConfig,
    progress: Progress | None = None,
    *,
    dataset: Dataset | None = None,
) -> BuiltModel:
    """Bring-your-own ONNX: check it fits the dataset, evaluate it; it ships as is.

    The model needs one float32 input [N, features] and a float32 output of class scores
    [N, classes] (named ``probabilities``, or the only one of that shape). Being neither
    trained nor quantised here, its figures fill both the fp32 and the int8 slots.

    Raises:
        PipelineError: not ONNX, not runnable, or not compatible with the dataset.
    """
    report = _reporter(progress)
    report("dataset")
    data = dataset if dataset is not None else builtin_dataset(config)
    report("evaluate")
    session = _session(model_bytes)
    _check_compatible(session, data)
    accuracy = evaluate(model_bytes, data.x_holdout, data.y_holdout)
    return _finish(
        model_bytes,
        data,
        config,
        report,
        fp32_bytes=model_bytes,
        accuracy_fp32=accuracy,
        accuracy_int8=accuracy,
        train_seconds=0.0,
        quantize_seconds=0.0,
        source="imported",
    )


def build_manifest(
    built: BuiltModel,
    *,
    version: int,
    chunk_size: int,
    device_classes: tuple[str, ...] = (),
    channel: str = "stable",
    config: PipelineConfig,
) -> Manifest:
    """The manifest (TUF target custom fields) for ``built.model_bytes``.

    Raises:
        ManifestError: version, chunk size or golden rows out of range.
    """
    health = HealthCheck(
        golden_inputs=built.golden_inputs,
        golden_outputs=built.golden_outputs,
        golden_output=built.golden_output,
        tolerance=config.tolerance,
        latency_budget_us=config.latency_budget_us,
        memory_budget_mb=config.memory_budget_mb,
        probation_s=config.probation_s,
        probation_min_inferences=config.probation_min_inferences,
        max_error_ratio=config.max_error_ratio,
    )
    return Manifest(
        model=built.name,
        channel=channel,
        version=version,
        format="onnx",
        runtime="onnxruntime",
        device_classes=tuple(device_classes),
        inputs=built.inputs,
        outputs=built.outputs,
        classes=built.classes,
        chunk_size=chunk_size,
        chunks=tuple(chunk_hashes(built.model_bytes, chunk_size)),
        health=health,
        baseline=built.baseline,
        metrics={
            "accuracy_fp32": built.accuracy_fp32,
            "accuracy_int8": built.accuracy_int8,
            "size_fp32": float(built.size_fp32),
            "size_int8": float(built.size_int8),
        },
    )


# ------------------------------------------------------------------------ data


def builtin_dataset(config: PipelineConfig) -> Dataset:
    """The seeded sensor rows: one draw, split into training and held-out rows."""
    x, y = generate(config.n_train + config.n_holdout, seed=config.seed)
    n = config.n_train
    return Dataset(x[:n], y[:n], x[n:], y[n:], FEATURES, CLASSES)


def dataset_from_arrays(
    x: npt.ArrayLike,
    y: npt.ArrayLike,
    *,
    holdout_fraction: float = 0.25,
    seed: int = 7,
    features: Sequence[str] | None = None,
    classes: Sequence[str] | None = None,
) -> Dataset:
    """A dataset from X (rows of floats) and y (class indices 0..k-1), split at random.

    Raises:
        PipelineError: shapes, values or names do not fit together.
    """
    xa = np.asarray(x, dtype=np.float32)
    ya = np.asarray(y)
    if xa.ndim != 2 or ya.shape != (len(xa),):
        raise PipelineError(f"X must be [n, features] and y [n], got {xa.shape} and {ya.shape}")
    if not np.issubdtype(ya.dtype, np.integer):
        raise PipelineError(f"y must hold class indices (integers), got {ya.dtype}")
    if not 0 < holdout_fraction < 1:
        raise PipelineError("holdout_fraction must be within (0, 1)")
    n_holdout = max(1, round(len(xa) * holdout_fraction))
    order = np.random.default_rng(seed).permutation(len(xa))
    hold, tr = np.sort(order[:n_holdout]), np.sort(order[n_holdout:])
    k = int(ya.max()) + 1 if len(ya) else 0
    names_f = (
        tuple(features) if features is not None else tuple(f"x{i}" for i in range(xa.shape[1]))
    )
    names_c = tuple(classes) if classes is not None else tuple(str(i) for i in range(k))
    ya = ya.astype(np.int64)
    return Dataset(xa[tr], ya[tr], xa[hold], ya[hold], names_f, names_c)


def _calibration_rows(x: FloatRows, n: int, seed: int) -> FloatRows:
    """``n`` training rows picked at random (all of them when there are fewer)."""
    if n >= len(x):
        return x
    pick = np.random.default_rng(seed).choice(len(x), size=n, replace=False)
    return x[np.sort(pick)]


def _golden_indices(
    y: IntLabels, scores: npt.NDArray[np.float32], n: int, n_classes: int
) -> npt.NDArray[np.intp]:
    """``n`` rows taking classes in turn, so the health check sees every class, among
    rows the model is not saturated on (all rows if too few)."""
    pool = np.flatnonzero(scores.max(axis=1) < SATURATED)
    if len(pool) < n:
        pool = np.arange(len(y))
    rank = np.zeros(len(pool), dtype=np.int64)
    for c in range(n_classes):
        members = np.flatnonzero(y[pool] == c)
        rank[members] = np.arange(len(members))
    return pool[np.argsort(rank * n_classes + y[pool], kind="stable")[:n]]


# ---------------------------------------------------------------- model steps


def _fit(data: Dataset, config: PipelineConfig) -> Pipeline:
    model = make_pipeline(
        StandardScaler(),
        MLPClassifier(
            hidden_layer_sizes=config.hidden,
            early_stopping=True,
            max_iter=MAX_EPOCHS,
            random_state=config.seed,
        ),
    )
    try:
        with threadpool_limits(limits=BLAS_THREADS, user_api="blas"):
            model.fit(data.x_train, data.y_train)
    except ValueError as e:
        raise PipelineError(f"training failed: {e}") from e
    return model


def export_onnx(model: Pipeline, n_features: int, opset: int) -> bytes:
    """The fitted scikit-learn model as ONNX: ``input`` float32 [N, n_features] →
    ``label`` int64 [N], ``probabilities`` float32 [N, classes]."""
    onx = to_onnx(
        model,
        initial_types=[(INPUT_NAME, FloatTensorType([None, n_features]))],
        options={"zipmap": False},  # plain tensors, not a sequence of maps
        target_opset={"": opset, "ai.onnx.ml": 1},
    )
    return bytes(onx.SerializeToString())


def quantize_int8(
    fp32_bytes: bytes, calibration_x: npt.ArrayLike, *, per_channel: bool = False
) -> bytes:
    """Static int8 quantisation (QDQ, int8 weights and activations, MinMax calibration).

    Args:
        fp32_bytes: the float ONNX model; its first input receives the calibration rows.
        calibration_x: representative rows, float [n, features].
        per_channel: one weight scale per output channel instead of per tensor.

    Raises:
        PipelineError: the quantizer failed.
    """
    rows = np.ascontiguousarray(calibration_x, dtype=np.float32)
    if rows.ndim != 2 or len(rows) == 0:
        raise PipelineError(f"calibration rows must be [n>0, features], got {rows.shape}")
    input_name = _session(fp32_bytes).get_inputs()[0].name
    with tempfile.TemporaryDirectory(prefix="edgefleet-quant-") as tmp:
        src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        src.write_bytes(fp32_bytes)
        try:
            with _quiet_quantizer():
                quantize_static(
                    src,
                    dst,
                    _CalibrationRows(input_name, rows),
                    quant_format=QuantFormat.QDQ,
                    per_channel=per_channel,
                    activation_type=QuantType.QInt8,
                    weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax,
                )
        except Exception as e:  # the quantizer raises anything from ValueError to RuntimeError
            raise PipelineError(f"int8 quantisation failed: {type(e).__name__}: {e}") from e
        return dst.read_bytes()


def evaluate(model_bytes: bytes, x: npt.ArrayLike, y: npt.ArrayLike) -> float:
    """Accuracy (0..1) of the model's class scores (argmax) on labelled rows.

    Raises:
        PipelineError: the model cannot be loaded or run on these rows.
    """
    session = _session(model_bytes)
    scores = _scores(session, np.asarray(x, dtype=np.float32), _scores_output(session))
    labels = np.asarray(y)
    if len(scores) != len(labels):
        raise PipelineError(f"{len(scores)} score rows for {len(labels)} labels")
    return float(np.mean(scores.argmax(axis=1) == labels))


class _CalibrationRows(CalibrationDataReader):  # type: ignore[misc]
    def __init__(self, input_name: str, rows: FloatRows) -> None:
        self._batches = iter(
            [
                {input_name: rows[i : i + CALIBRATION_BATCH]}
                for i in range(0, len(rows), CALIBRATION_BATCH)
            ]
        )

    def get_next(self) -> dict[str, FloatRows] | None:
        return next(self._batches, None)


class _QuantizerLogFilter(logging.Filter):
    """Moves onnxruntime.quantization's root-logger chatter below ERROR to our debug log.

    It logs with ``logging.warning(...)`` on the root logger, e.g. advice to run
    pre-processing, which we measured and chose not to (module docstring).
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR and "onnxruntime" in Path(record.pathname).parts:
            log.debug("onnxruntime.quantization: %s", record.getMessage())
            return False
        return True


@contextlib.contextmanager
def _quiet_quantizer() -> Iterator[None]:
    root = logging.getLogger()
    # logging.warning() calls basicConfig() when the root logger has no handler, which
    # would install a stderr handler for the whole process; a NullHandler prevents that.
    guard, quiet = logging.NullHandler(), _QuantizerLogFilter()
    root.addHandler(guard)
    root.addFilter(quiet)
    try:
        yield
    finally:
        root.removeFilter(quiet)
        root.removeHandler(guard)


# ------------------------------------------------------------ shared ending


def _finish(
    model_bytes: bytes,
    data: Dataset,
    config: PipelineConfig,
    report: Callable[[str], None],
    *,
    fp32_bytes: bytes,
    accuracy_fp32: float,
    accuracy_int8: float,
    train_seconds: float,
    quantize_seconds: float,
    source: str,
) -> BuiltModel:
    """Baseline and golden rows from the bytes that ship; the BuiltModel."""
    session = _session(model_bytes)
    scores_name = _scores_output(session)
    report("baseline")
    train_scores = _scores(session, data.x_train, scores_name)
    baseline = baseline_stats(
        data.x_train,
        train_scores,
        config.baseline_bins,
        features=data.features,
        classes=data.classes,
    )
    report("golden")
    holdout_scores = _scores(session, data.x_holdout, scores_name)
    pick = _golden_indices(data.y_holdout, holdout_scores, config.n_golden, len(data.classes))
    golden = data.x_holdout[pick]
    # A fresh session, as the device will have; one batch equals row by row (measured).
    golden_scores = _scores(_session(model_bytes), golden, scores_name)
    inputs, outputs = _specs(onnx.load_model_from_string(model_bytes))
    return BuiltModel(
        name=config.name,
        model_bytes=model_bytes,
        fp32_bytes=fp32_bytes,
        accuracy_fp32=accuracy_fp32,
        accuracy_int8=accuracy_int8,
        size_fp32=len(fp32_bytes),
        size_int8=len(model_bytes),
        classes=data.classes,
        inputs=inputs,
        outputs=outputs,
        baseline=baseline,
        golden_inputs=_rows(golden),
        golden_outputs=_rows(golden_scores),
        train_seconds=train_seconds,
        quantize_seconds=quantize_seconds,
        golden_output=scores_name,
        source=source,
    )


def baseline_stats(
    x: npt.ArrayLike,
    probabilities: npt.ArrayLike,
    bins: int,
    *,
    features: Sequence[str] = FEATURES,
    classes: Sequence[str] = CLASSES,
) -> dict[str, Any]:
    """Reference statistics for drift, JSON-able.

    Per feature: ``edges`` (bins+1 quantiles of ``x``, strictly increasing, float32
    values), ``hist`` (proportion of rows per bin, numpy.histogram convention: bins are
    [e_i, e_i+1) and the last one is closed, so every row of ``x`` falls in one), ``mean``
    and ``std``. A live row below ``edges[0]`` or above ``edges[-1]`` belongs in the
    agent's underflow / overflow bins, whose reference share is 0. Outputs: the share of
    rows whose argmax is each class.

    Raises:
        PipelineError: shapes or names do not fit, or values are not finite.
    """
    xa = np.asarray(x, dtype=np.float32)
    pa = np.asarray(probabilities, dtype=np.float64)
    if xa.ndim != 2 or xa.shape[1] != len(features) or len(xa) == 0:
        raise PipelineError(f"x must be [n>0, {len(features)}], got {xa.shape}")
    if pa.shape != (len(xa), len(classes)):
        raise PipelineError(f"probabilities must be [{len(xa)}, {len(classes)}], got {pa.shape}")
    if bins < 1 or not np.isfinite(xa).all():
        raise PipelineError("baseline needs bins >= 1 and finite rows")
    qs = np.linspace(0.0, 1.0, bins + 1)
    stats = []
    for j, name in enumerate(features):
        col = xa[:, j]
        edges = _strictly_increasing(np.quantile(col, qs).astype(np.float32))
        counts, _ = np.histogram(col, bins=edges.astype(np.float64))
        stats.append(
            {
                "name": str(name),
                "edges": [float(e) for e in edges],
                "hist": [float(c) / len(col) for c in counts],
                "mean": float(np.mean(col, dtype=np.float64)),
                "std": float(np.std(col, dtype=np.float64)),
            }
        )
    predicted = np.bincount(pa.argmax(axis=1), minlength=len(classes))
    return {
        "n": len(xa),
        "features": stats,
        "outputs": {
            "classes": [str(c) for c in classes],
            "hist": [float(c) / len(xa) for c in predicted],
        },
    }


def _strictly_increasing(edges: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """Nudge tied quantiles (a constant or discrete feature) up by one float32 step each."""
    out = edges.copy()
    for i in range(1, len(out)):
        if out[i] <= out[i - 1]:
            out[i] = np.nextafter(out[i - 1], np.float32(np.inf))
    return out


# ------------------------------------------------------------ onnx helpers


def _session(model_bytes: bytes) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: keep onnxruntime's C++ warnings off stderr
    options.intra_op_num_threads = 1  # tiny models; spinning worker threads only add contention
    try:
        return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own pybind exception types
        raise PipelineError(f"not a loadable ONNX model: {type(e).__name__}: {e}") from e


def _scores_output(session: ort.InferenceSession) -> str:
    """The name of the class-score output: ``probabilities``, or the only float [N, k]."""
    outputs = session.get_outputs()
    if any(o.name == SCORES_OUTPUT for o in outputs):
        return SCORES_OUTPUT
    candidates = [o.name for o in outputs if o.type == "tensor(float)" and len(o.shape) == 2]
    if len(candidates) != 1:
        described = ", ".join(f"{o.name} {o.type} {o.shape}" for o in outputs)
        raise PipelineError(
            f"no class-score output: need '{SCORES_OUTPUT}' or one float32 [N, classes] output,"
            f" found {described}"
        )
    return str(candidates[0])


def _scores(session: ort.InferenceSession, x: FloatRows, output: str) -> npt.NDArray[np.float32]:
    try:
        (scores,) = session.run([output], {session.get_inputs()[0].name: x})
    except Exception as e:  # onnxruntime raises its own pybind exception types
        raise PipelineError(f"running the model failed: {type(e).__name__}: {e}") from e
    return np.asarray(scores, dtype=np.float32)


def _check_compatible(session: ort.InferenceSession, data: Dataset) -> None:
    """Refuse a model the dataset (and so the devices' rows) cannot feed or score."""
    width, k = len(data.features), len(data.classes)
    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise PipelineError(f"the model must take one input, it takes {len(inputs)}")
    (inp,) = inputs
    if inp.type != "tensor(float)" or len(inp.shape) != 2:
        raise PipelineError(
            f"input '{inp.name}' must be float32 [N, {width}], got {inp.type} {inp.shape}"
        )
    if isinstance(inp.shape[1], int) and inp.shape[1] != width:
        raise PipelineError(
            f"input '{inp.name}' takes {inp.shape[1]} features; the dataset has {width}"
        )
    non_tensors = [o.name for o in session.get_outputs() if not o.type.startswith("tensor(")]
    if non_tensors:
        raise PipelineError(
            f"outputs {non_tensors} are not tensors (exported with ZipMap? use zipmap=False)"
        )
    name = _scores_output(session)
    scores = next(o for o in session.get_outputs() if o.name == name)
    if scores.type != "tensor(float)" or len(scores.shape) != 2:
        raise PipelineError(
            f"output '{name}' must be float32 [N, {k}], got {scores.type} {scores.shape}"
        )
    if isinstance(scores.shape[1], int) and scores.shape[1] != k:
        raise PipelineError(
            f"output '{name}' gives {scores.shape[1]} class scores; the dataset has {k} classes"
        )
    got = _scores(session, data.x_holdout[:2], name)
    if got.shape != (2, k):
        raise PipelineError(f"output '{name}' gave shape {got.shape} for 2 rows, expected (2, {k})")


def _specs(model: onnx.ModelProto) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
    initializers = {i.name for i in model.graph.initializer}
    inputs = tuple(_spec(v) for v in model.graph.input if v.name not in initializers)
    return inputs, tuple(_spec(v) for v in model.graph.output)


def _spec(value: onnx.ValueInfoProto) -> TensorSpec:
    if not value.type.HasField("tensor_type"):
        raise PipelineError(f"'{value.name}' is not a tensor")
    tensor = value.type.tensor_type
    try:
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name
    except (KeyError, ValueError) as e:
        raise PipelineError(f"'{value.name}' has an element type numpy cannot name") from e
    shape = tuple(d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim)
    return TensorSpec(name=value.name, dtype=dtype, shape=shape)


def _rows(a: npt.NDArray[np.float32]) -> tuple[tuple[float, ...], ...]:
    return tuple(tuple(float(v) for v in row) for row in a)


def _reporter(progress: Progress | None) -> Callable[[str], None]:
    def report(stage: str) -> None:
        log.debug("pipeline stage %s", stage)
        if progress is not None:
            progress(stage, STAGES[stage])

    return report
