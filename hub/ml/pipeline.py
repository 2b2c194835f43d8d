"""The model pipeline (DESIGN §6): rows → train → ONNX → int8 → evaluate → gate → manifest.

``train`` fits a StandardScaler + MLPClassifier (scikit-learn), exports it with skl2onnx
(ZipMap off, pinned opset), quantises it to int8 with onnxruntime (static, QDQ, MinMax
calibration on training rows), evaluates both files with onnxruntime on held-out rows and
refuses the int8 file when it loses more accuracy than the gate allows. It then computes
the drift baseline and the golden rows of the health check, all from the exact bytes that
ship. ``import_model`` lets a bring-your-own ONNX or TFLite model enter at "evaluate".
``build_manifest`` turns the result into the signed manifest's custom fields.

This module runs the stages in order and reports progress; each stage has a module of
its own, and every public name is importable from here:

- hub/ml/config.py           ``PipelineConfig``
- hub/ml/training_data.py    ``Dataset``, the built-in rows, ``dataset_from_arrays``
- hub/ml/training.py         fit and ``export_onnx``
- hub/ml/quantize.py         ``quantize_int8`` (and what was measured to choose its settings)
- hub/ml/runner.py           ``open_runner``: a model file in its runtime, by its bytes
- hub/ml/inference.py        onnxruntime sessions (the ONNX runner)
- hub/ml/tflite.py           a TFLite interpreter (the TFLite runner)
- hub/ml/tflite_export.py    the .tflite artefact of an MLP (hub/ml/tflite_convnet.py:
                             of a conv net), for LiteRT classes
- hub/ml/compatibility.py    does a model fit a dataset; which output is scored
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
from dataclasses import replace
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from hub.ml.baseline import baseline_stats
from hub.ml.compact import compact
from hub.ml.compatibility import check_compatible, scores_output, value_output
from hub.ml.config import PipelineConfig
from hub.ml.convnet import ConvWeights
from hub.ml.errors import ConfigError, GateError, ModelRefused, PipelineError
from hub.ml.evaluation import evaluate, golden_indices, spread_indices
from hub.ml.gates import enforce, judge, sibling
from hub.ml.manifest import BuiltModel, build_manifest
from hub.ml.metrics import model_outputs, score
from hub.ml.quantize import is_quantized, quantize_int8
from hub.ml.runner import open_runner
from hub.ml.training import Fitted, export_onnx, fit
from hub.ml.training_data import (
    Dataset,
    builtin_dataset,
    calibration_rows,
    dataset_from_arrays,
    split_arrays,
)

__all__ = [
    "BuiltModel",
    "ConfigError",
    "Dataset",
    "GateError",
    "ModelRefused",
    "PipelineConfig",
    "PipelineError",
    "baseline_stats",
    "build_manifest",
    "builtin_dataset",
    "dataset_from_arrays",
    "evaluate",
    "export_onnx",
    "fit_model",
    "import_model",
    "quantize_int8",
    "split_arrays",
    "to_int8",
    "train",
]

log = logging.getLogger(__name__)

Progress = Callable[[str, float], None]
Champion = tuple[int, bytes]  # the deployed version and its file

SHIPS_AS_IS: Final = (
    "a TFLite file ships as uploaded: the hub quantises ONNX only, so this file is int8"
    " or float as you built it"
)

# Overall job fraction reached at the start of each stage. The hub's job runner goes on
# to "sign" at 0.95, so the pipeline stays below it.
STAGES: dict[str, float] = {
    "dataset": 0.0,
    "train": 0.05,
    "quantize": 0.65,
    "evaluate": 0.75,
    "gate": 0.8,
    "baseline": 0.85,
    "golden": 0.9,
    "tflite": 0.92,
}


def train(
    config: PipelineConfig,
    progress: Progress | None = None,
    *,
    dataset: Dataset | None = None,
    champion: Champion | None = None,
    params: dict[str, Any] | None = None,
    runtimes: tuple[str, ...] = (),
) -> BuiltModel:
    """Train, export, quantise, evaluate and gate a model; compute baseline and golden rows.

    Args:
        config: what to train (``config.kind``: an MLP, or a conv net for image and window
            rows).
        progress: called with (stage, overall fraction 0..1) as each stage starts.
        dataset: rows to use; the built-in generator's (``builtin_dataset``) by default.
        champion: the deployed version to beat on the same hold-out (champion gate).
        params: the tuner's settings for this one build.
        runtimes: further runtimes the version must run on (``tflite``): each gets its
            own artefact, judged and gated on its own and against the ONNX one
            (``siblings``).

    Raises:
        ModelRefused (GateError for a classifier's int8 loss alone): a gate refused it.
        PipelineError: a step failed.
    """
    report = _reporter(progress)
    report("dataset")
    data = dataset if dataset is not None else builtin_dataset(config)
    report("train")
    t0 = time.perf_counter()
    fp32, fitted = _fit(data, config, params, progress)
    train_seconds = time.perf_counter() - t0
    report("quantize")
    t0 = time.perf_counter()
    int8 = to_int8(fp32, data, config)
    quantize_seconds = time.perf_counter() - t0
    report("evaluate")
    metrics = {"fp32": score(fp32, data), "int8": score(int8, data)}
    report("gate")
    gates = judge(data.task, metrics["fp32"], metrics["int8"], config, _champion(champion, data))
    enforce(data.task, gates, metrics, config)
    log.info("%s: %s", config.name, "; ".join(g.detail for g in gates))
    built = _finish(
        int8,
        data,
        config,
        report,
        fp32_bytes=fp32,
        metrics=metrics,
        gates=[g.to_json() for g in gates],
        train_seconds=train_seconds,
        quantize_seconds=quantize_seconds,
        source="trained",
    )
    siblings = tuple(_sibling(r, fitted, built, data, config, report) for r in runtimes)
    return replace(built, siblings=siblings, fitted=fitted)


def _sibling(
    runtime: str,
    fitted: Fitted | ConvWeights,
    onnx: BuiltModel,
    data: Dataset,
    config: PipelineConfig,
    report: Callable[[str], None],
) -> BuiltModel:
    """The version's artefact for ``runtime``: exported, judged, gated, then finished like
    the ONNX one (its own baseline and golden rows, from its own bytes).

    Raises:
        ModelRefused: a gate refused it (``sibling`` when it answers unlike the ONNX one).
        PipelineError: no such runtime, or a model this cannot export.
    """
    if runtime != "tflite":
        raise PipelineError(f"no artefact for the runtime {runtime!r}: onnxruntime or tflite")
    report("tflite")
    t0 = time.perf_counter()
    blob = _export_tflite(fitted, data, onnx.fp32_bytes)
    seconds = time.perf_counter() - t0
    metrics = {"fp32": onnx.metrics["fp32"], "int8": score(blob, data)}
    gates = judge(data.task, metrics["fp32"], metrics["int8"], config)
    mine = model_outputs(open_runner(blob), data.x_holdout, data.task)
    theirs = model_outputs(open_runner(onnx.model_bytes), data.x_holdout, data.task)
    gates.append(sibling(data.task, mine, theirs, onnx.metrics["int8"]))
    enforce(data.task, gates, metrics, config)
    return _finish(
        blob,
        data,
        config,
        report,
        fp32_bytes=onnx.fp32_bytes,
        metrics=metrics,
        gates=[g.to_json() for g in gates],
        train_seconds=0.0,
        quantize_seconds=seconds,
        source="trained",
        notes=("full int8 .tflite with float input and output, for LiteRT classes",),
    )


def _export_tflite(fitted: Fitted | ConvWeights, data: Dataset, fp32: bytes) -> bytes:
    """The .tflite file of a model trained here: the MLP's (hub/ml/tflite_export.py) or
    the conv net's (hub/ml/tflite_convnet.py, checked against its ``fp32`` ONNX file).
    TensorFlow is imported only then, and in the converter process, never in the hub's
    (hub/ml/tflite_process.py).

    Raises:
        PipelineError: the export failed (each exporter names what it cannot lay out).
    """
    from hub.ml.tflite_process import run_converter

    if isinstance(fitted, Fitted):
        from hub.ml.tflite_export import export_tflite_int8

        return run_converter(export_tflite_int8, fitted, data.x_train)
    from hub.ml.tflite_convnet import export_convnet_tflite_int8

    return run_converter(export_convnet_tflite_int8, fitted, data.x_train, fp32)


def fit_model(
    data: Dataset,
    config: PipelineConfig,
    params: dict[str, Any] | None = None,
    progress: Progress | None = None,
) -> bytes:
    """The fp32 ONNX file of an MLP (tabular rows) or a conv net (images, windows)."""
    return _fit(data, config, params, progress)[0]


def _fit(
    data: Dataset,
    config: PipelineConfig,
    params: dict[str, Any] | None = None,
    progress: Progress | None = None,
) -> tuple[bytes, Fitted | ConvWeights]:
    """:func:`fit_model`, and the trained model: the fitted MLP, or the conv net's weights."""

    def epoch(fraction: float) -> None:
        if progress is not None:
            progress("train", STAGES["train"] + fraction * (STAGES["quantize"] - STAGES["train"]))

    if config.kind == "mlp":
        fitted = fit(data, config, params, epoch)
        return compact(export_onnx(fitted, len(data.features), config.opset)), fitted
    if len(data.row_shape) < 2:
        raise PipelineError(
            "a conv net needs image [H, W(, C)] or window [T, C] rows; this dataset has rows"
            f" of {data.row_shape[0]} features: train an mlp"
        )

    from hub.ml.convnet import conv_config, train_convnet  # torch only where conv nets are

    trained = train_convnet(
        data.x_train,
        data.y_train,
        task=data.task,
        n_outputs=len(data.classes) if data.is_classifier else 1,
        config=conv_config(config.seed, params),
        opset=config.opset,
        progress=epoch,
        kind=data.kind,
    )
    return compact(trained.onnx), trained.weights


def to_int8(fp32: bytes, data: Dataset, config: PipelineConfig) -> bytes:
    """The int8 file of ``fp32``: static QDQ calibrated on training rows, names compacted."""
    calibration = calibration_rows(data.x_train, config.n_calibration, config.seed)
    return compact(quantize_int8(fp32, calibration, per_channel=config.per_channel))


def import_model(
    model_bytes: bytes,
    config: PipelineConfig,
    progress: Progress | None = None,
    *,
    dataset: Dataset | None = None,
    quantize: bool = False,
    champion: Champion | None = None,
) -> BuiltModel:
    """Bring-your-own ONNX or TFLite: check it fits the dataset, judge it; quantise when asked.

    The format comes from the bytes (hub/ml/runner.py). The model needs one float32 input
    ``[N, *row shape]`` and class scores ``[N, classes]`` (named ``probabilities``, or the
    only float output of that shape) for a classifier, or one value per row (``value``,
    or the only float [N, 1]) for a regressor (hub/ml/compatibility.py). With ``quantize``
    an ONNX model not already quantised gets an int8 copy, gated like a trained one;
    otherwise, and always for TFLite, the file ships as is and its figures fill both slots.

    Raises:
        ModelRefused: a gate refused it.
        PipelineError: neither ONNX nor TFLite, not runnable, or not compatible with the
            dataset.
    """
    report = _reporter(progress)
    report("dataset")
    data = dataset if dataset is not None else builtin_dataset(config)
    report("evaluate")
    runner = open_runner(model_bytes)
    check_compatible(runner, data)
    fp32 = model_bytes
    quantize_seconds = 0.0
    # The hub's quantizer is onnxruntime's: a .tflite ships as the operator built it.
    if quantize and runner.format == "onnx" and not is_quantized(model_bytes):
        report("quantize")
        t0 = time.perf_counter()
        try:
            model_bytes = to_int8(fp32, data, config)
        except PipelineError as e:
            raise PipelineError(f"{e} (to ship it as it is, upload with --no-quantize)") from e
        quantize_seconds = time.perf_counter() - t0
    figures = score(fp32, data)
    metrics = {
        "fp32": figures,
        "int8": score(model_bytes, data) if model_bytes != fp32 else figures,
    }
    report("gate")
    gates = judge(data.task, metrics["fp32"], metrics["int8"], config, _champion(champion, data))
    enforce(data.task, gates, metrics, config)
    return _finish(
        model_bytes,
        data,
        config,
        report,
        fp32_bytes=fp32,
        metrics=metrics,
        gates=[g.to_json() for g in gates],
        train_seconds=0.0,
        quantize_seconds=quantize_seconds,
        source="imported",
        notes=(SHIPS_AS_IS,) if runner.format == "tflite" else (),
    )


def _champion(champion: Champion | None, data: Dataset) -> dict[str, Any] | None:
    """The deployed version's figures on this hold-out (it must fit the same rows)."""
    if champion is None:
        return None
    version, model_bytes = champion
    try:
        check_compatible(open_runner(model_bytes), data)
        figures = score(model_bytes, data, latency=False)
    except PipelineError as e:
        raise PipelineError(
            f"the champion v{version} cannot be scored on this dataset's hold-out: {e}"
        ) from e
    return figures | {"version": version}


def _finish(
    model_bytes: bytes,
    data: Dataset,
    config: PipelineConfig,
    report: Callable[[str], None],
    *,
    fp32_bytes: bytes,
    metrics: dict[str, Any],
    gates: list[dict[str, Any]],
    train_seconds: float,
    quantize_seconds: float,
    source: str,
    notes: tuple[str, ...] = (),
) -> BuiltModel:
    """Baseline and golden rows from the bytes that ship, in their own runtime; the BuiltModel.

    The drift baseline's bins come from the training rows; a classifier's calibration
    table from the hold-out rows, which the model never trained on (hub/ml/baseline.py).
    """
    runner = open_runner(model_bytes)
    out_name = scores_output(runner) if data.is_classifier else value_output(runner)
    report("baseline")
    holdout_out = model_outputs(runner, data.x_holdout, data.task)
    baseline = baseline_stats(
        data.x_train,
        model_outputs(runner, data.x_train, data.task),
        config.baseline_bins,
        features=data.features,
        classes=data.classes,
        task=data.task,
        holdout=(holdout_out, data.y_holdout) if data.is_classifier else None,
        scores_output=out_name,
    )
    report("golden")
    if data.is_classifier:
        pick = golden_indices(data.y_holdout, holdout_out, config.n_golden, len(data.classes))
    else:
        pick = spread_indices(data.y_holdout, config.n_golden)
    golden = data.x_holdout[pick]
    # A fresh runner, as the device will have; one batch equals row by row (measured for
    # onnxruntime, and for TFLite in hub/ml/tflite.py).
    fresh = open_runner(model_bytes)
    golden_out = fresh.run(golden, out_name)
    inputs, outputs = fresh.specs()
    accuracy = (
        (metrics["fp32"]["accuracy"], metrics["int8"]["accuracy"])
        if data.is_classifier
        else (None, None)
    )
    return BuiltModel(
        name=config.name,
        model_bytes=model_bytes,
        fp32_bytes=fp32_bytes,
        accuracy_fp32=accuracy[0],
        accuracy_int8=accuracy[1],
        size_fp32=len(fp32_bytes),
        size_int8=len(model_bytes),
        classes=data.classes,
        inputs=inputs,
        outputs=outputs,
        baseline=baseline,
        golden_inputs=_rows(golden.reshape(len(golden), -1)),
        golden_outputs=_rows(golden_out.reshape(len(golden_out), -1)),
        train_seconds=train_seconds,
        quantize_seconds=quantize_seconds,
        golden_output=out_name,
        source=source,
        task=data.task,
        metrics=metrics,
        gates=tuple(gates),
        split=dict(data.split),
        format=fresh.format,
        runtime=fresh.runtime,
        notes=notes,
    )


def _rows(a: npt.NDArray[np.float32]) -> tuple[tuple[float, ...], ...]:
    return tuple(tuple(float(v) for v in row) for row in a)


def _reporter(progress: Progress | None) -> Callable[[str], None]:
    def report(stage: str) -> None:
        log.debug("pipeline stage %s", stage)
        if progress is not None:
            progress(stage, STAGES[stage])

    return report
