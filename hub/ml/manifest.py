"""A built model (``BuiltModel``: the bytes that ship and their figures) and its manifest.

``build_manifest`` turns a built model into the custom fields of its signed TUF target
(shared/manifest.py): tensors, classes, chunk hashes, the health check and the drift
baseline.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from hub.ml.compatibility import SCORES_OUTPUT
from hub.ml.config import PipelineConfig
from shared.chunks import chunk_hashes
from shared.manifest import HealthCheck, Manifest, TensorSpec

__all__ = ["BuiltModel", "build_manifest"]


@dataclass(frozen=True)
class BuiltModel:
    """A model ready to sign: the bytes that ship and everything the manifest needs."""

    name: str
    model_bytes: bytes  # the file that ships (int8 when trained here)
    fp32_bytes: bytes  # the float model it came from (the same bytes when imported)
    accuracy_fp32: float | None  # held-out accuracy, 0..1 (None for a regressor)
    accuracy_int8: float | None  # held-out accuracy of model_bytes, 0..1
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
    task: str = "classification"  # or "regression"
    metrics: dict[str, Any] = field(default_factory=dict)  # {"fp32": {...}, "int8": {...}}
    gates: tuple[dict[str, Any], ...] = ()  # every gate judged (hub/ml/gates.py)
    split: dict[str, Any] = field(default_factory=dict)  # how the rows were split
    format: str = "onnx"  # of model_bytes: "onnx" | "tflite" (hub/ml/runner.py)
    runtime: str = "onnxruntime"  # what a device needs to run it: "onnxruntime" | "tflite"
    notes: tuple[str, ...] = ()  # what the operator should know about this build
    # the same version for other runtimes (a .tflite for LiteRT classes), each judged and
    # gated on its own (ADR 0020): signed beside this one as further targets
    siblings: tuple[BuiltModel, ...] = ()
    # the trained estimator, for exports to other runtimes (None for an imported file)
    fitted: Any = field(default=None, repr=False, compare=False)


def build_manifest(
    built: BuiltModel,
    *,
    version: int,
    chunk_size: int,
    device_classes: tuple[str, ...] = (),
    channel: str = "stable",
    config: PipelineConfig,
    class_health: Mapping[str, Mapping[str, float]] | None = None,
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
        format=built.format,
        runtime=built.runtime,
        device_classes=tuple(device_classes),
        inputs=built.inputs,
        outputs=built.outputs,
        classes=built.classes,
        chunk_size=chunk_size,
        chunks=tuple(chunk_hashes(built.model_bytes, chunk_size)),
        health=health,
        baseline=built.baseline,
        metrics=_headline_metrics(built),
        class_health={c: dict(b) for c, b in (class_health or {}).items()},
    )


def _headline_metrics(built: BuiltModel) -> dict[str, float]:
    """The figures a manifest carries: quality of both files, and their sizes."""
    figures = {"size_fp32": float(built.size_fp32), "size_int8": float(built.size_int8)}
    if built.accuracy_fp32 is not None and built.accuracy_int8 is not None:
        figures |= {"accuracy_fp32": built.accuracy_fp32, "accuracy_int8": built.accuracy_int8}
    for part in ("fp32", "int8"):
        mae = built.metrics.get(part, {}).get("mae")
        if mae is not None:
            figures[f"mae_{part}"] = float(mae)
    return figures
