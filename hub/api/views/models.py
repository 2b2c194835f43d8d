"""Views of models, their builds and lineage, and jobs (hub/api/routes/models.py,
lineage.py)."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from hub.api.views.base import Exact, View

__all__ = ["JobView", "LineageView", "ModelVersionView", "TrainingRunView"]


class JobView(View):
    id: str
    kind: str
    status: str  # queued | running | done | failed
    stage: str
    progress: float
    error: str | None
    result: dict[str, Any] | None


class ModelVersionView(Exact):
    name: str
    version: int
    sha256: str
    format: str = "onnx"
    runtime: str = "onnxruntime"
    size_bytes: int
    chunk_size: int
    size_fp32: int | None = None
    accuracy_fp32: float | None = None
    accuracy_int8: float | None = None
    target: str
    source: str = "trained"  # trained | uploaded
    device_classes: str = ""  # comma-separated; empty = any
    task: str = "classification"  # classification | regression | unevaluated
    mae_fp32: float | None = None
    mae_int8: float | None = None
    dataset: str | None = None  # the dataset version that judged it (NAME:SEQ)
    created_at: float


class TrainingRunView(View):
    """One build of a model: trained, uploaded or retrained; published or refused."""

    id: str
    model: str
    version: int | None = None  # the version it published; None when refused
    status: str  # running | published | refused | failed
    source: str  # trained | uploaded | retrained
    job_id: str | None = None
    datasets: list[str] = Field(default_factory=list)
    split: dict[str, Any] = Field(default_factory=dict)
    config: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, Any] = Field(default_factory=dict)
    gates: list[dict[str, Any]] = Field(default_factory=list)
    trials: list[dict[str, Any]] = Field(default_factory=list)
    refusal: str | None = None
    package_version: str | None = None
    source_revision: str | None = None
    created_by: str | None = None
    created_at: float


class LineageView(View):
    """Datasets, training, metrics, gates, signature, rollouts and devices of a version."""

    model: str
    version: int
    created_at: float
    source: str
    evaluated: bool
    datasets: list[dict[str, Any]]
    training: dict[str, Any]
    signature: dict[str, Any]
