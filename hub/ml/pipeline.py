"""The model pipeline (DESIGN §6): rows → train → ONNX → int8 → evaluate → gate → manifest.

``train`` fits a StandardScaler + MLPClassifier (scikit-learn), exports it with skl2onnx
(ZipMap off, pinned opset), quantises it to int8 with onnxruntime (static, QDQ, MinMax
calibration on training rows), evaluates both files with onnxruntime on held-out rows and
refuses the int8 file when it loses more accuracy than the gate allows. It then computes
the drift baseline and the golden rows of the health check, all from the exact bytes that
ship. ``import_onnx`` lets a bring-your-own ONNX model enter at "evaluate".
``build_manifest`` turns the result into the signed manifest's custom fields.

This module runs the stages in order and reports progress; each stage has a module of
its own, and every public name is importable from here:

- hub/ml/config.py           ``PipelineConfig``
- hub/ml/training_data.py    ``Dataset``, the built-in rows, ``dataset_from_arrays``
- hub/ml/training.py         fit and ``export_onnx``
- hub/ml/quantize.py         ``quantize_int8`` (and what was measured to choose its settings)
- hub/ml/inference.py        onnxruntime sessions and class scores
- hub/ml/evaluation.py       ``evaluate``, the gate, the golden rows
- hub/ml/baseline.py         ``baseline_stats`` (the drift baseline)
- hub/ml/manifest.py         ``BuiltModel``, ``build_manifest``
- hub/ml/errors.py           the errors below

Exceptions::

    PipelineError(detail)                      bad data, unusable model, failed step
    ├── ConfigError(detail)                    a setting out of range (also a ValueError)
    └── GateError(accuracy_fp32, accuracy_int8, max_loss_points)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import numpy as np
import numpy.typing as npt
import onnx

from hub.ml.baseline import baseline_stats
from hub.ml.config import PipelineConfig
from hub.ml.errors import ConfigError, GateError, PipelineError
from hub.ml.evaluation import evaluate, gate, golden_indices
from hub.ml.inference import (
    check_compatible,
    class_scores,
    open_session,
    scores_output,
    tensor_specs,
)
from hub.ml.manifest import BuiltModel, build_manifest
from hub.ml.quantize import quantize_int8
from hub.ml.training import export_onnx, fit
from hub.ml.training_data import Dataset, builtin_dataset, calibration_rows, dataset_from_arrays

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
    model = fit(data, config)
    train_seconds = time.perf_counter() - t0
    report("export")
    fp32 = export_onnx(model, len(data.features), config.opset)
    report("quantize")
    t0 = time.perf_counter()
    calibration = calibration_rows(data.x_train, config.n_calibration, config.seed)
    int8 = quantize_int8(fp32, calibration, per_channel=config.per_channel)
    quantize_seconds = time.perf_counter() - t0
    report("evaluate")
    acc_fp32 = evaluate(fp32, data.x_holdout, data.y_holdout)
    acc_int8 = evaluate(int8, data.x_holdout, data.y_holdout)
    report("gate")
    gate(acc_fp32, acc_int8, config.max_int8_loss_points)
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
    session = open_session(model_bytes)
    check_compatible(session, data)
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
    session = open_session(model_bytes)
    scores_name = scores_output(session)
    report("baseline")
    train_scores = class_scores(session, data.x_train, scores_name)
    baseline = baseline_stats(
        data.x_train,
        train_scores,
        config.baseline_bins,
        features=data.features,
        classes=data.classes,
    )
    report("golden")
    holdout_scores = class_scores(session, data.x_holdout, scores_name)
    pick = golden_indices(data.y_holdout, holdout_scores, config.n_golden, len(data.classes))
    golden = data.x_holdout[pick]
    # A fresh session, as the device will have; one batch equals row by row (measured).
    golden_scores = class_scores(open_session(model_bytes), golden, scores_name)
    inputs, outputs = tensor_specs(onnx.load_model_from_string(model_bytes))
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


def _rows(a: npt.NDArray[np.float32]) -> tuple[tuple[float, ...], ...]:
    return tuple(tuple(float(v) for v in row) for row in a)


def _reporter(progress: Progress | None) -> Callable[[str], None]:
    def report(stage: str) -> None:
        log.debug("pipeline stage %s", stage)
        if progress is not None:
            progress(stage, STAGES[stage])

    return report
