"""Admin API: models (train from the built-in dataset, upload an ONNX or TFLite file, list
versions with their metrics) and the jobs that build them."""

from __future__ import annotations

import hashlib
import json
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query, Request
from pydantic import BaseModel, Field

from hub.api.deps import DENIALS, Audit, HubDep, operation_id
from hub.api.schemas import MAX_INT
from hub.api.security import Operator, Viewer
from hub.api.views.models import JobView, ModelVersionView
from hub.app import Hub, pipeline_config
from hub.ml.builds import BuildError, TrainSpec, UploadSpec
from hub.ml.jobs import Progress
from hub.ml.pipeline import PipelineConfig

router = APIRouter(generate_unique_id_function=operation_id)

MAX_UPLOAD_BYTES = 64 * 2**20  # bytes; larger model files are refused


class TrainRequest(BaseModel):
    name: str = Field(default="vibration", pattern=r"^[a-z0-9][a-z0-9_-]{0,47}$")
    # NAME[:VERSION] of an uploaded dataset; none: the built-in generator's rows (n_train)
    dataset: str | None = Field(default=None, min_length=1, max_length=140)
    kind: Literal["mlp", "cnn"] = "mlp"
    task: Literal["classification", "regression"] | None = None  # the dataset's by default
    holdout_fraction: float = Field(default=0.2, gt=0, lt=1)
    min_accuracy: float | None = Field(default=None, ge=0, le=1)  # floor gate
    max_mae: float | None = Field(default=None, ge=0)  # ceiling gate (regressors)
    max_int8_mae_increase: float = Field(default=0.05, ge=0, le=100)  # relative
    champion: bool = False  # refuse unless it beats the deployed version
    tune: int = Field(default=0, ge=0, le=200)  # tuner trials
    tune_timeout_s: float = Field(default=600, gt=0, le=86400)
    tune_max_bytes: int | None = Field(default=None, ge=1024, le=2**31)  # int8 size budget
    n_train: int = Field(default=12000, ge=500, le=1_000_000)
    seed: int = Field(default=7, ge=0, le=2**32 - 1)
    hidden: list[Annotated[int, Field(ge=1, le=4096)]] = Field(
        default=[64, 64], min_length=1, max_length=4
    )
    max_int8_loss_points: float = Field(default=1.0, ge=0, le=100)
    device_classes: list[Annotated[str, Field(min_length=1, max_length=64)]] = Field(
        default_factory=list, max_length=32
    )
    probation_s: float = Field(default=5.0, ge=0, le=86400)
    probation_min_inferences: int = Field(default=20, ge=0, le=MAX_INT)
    golden_tolerance: float | None = Field(default=None, ge=0, le=1)
    latency_budget_us: float | None = Field(default=None, gt=0, le=1e9)


@router.post(
    "/models/train",
    name="model.train",
    status_code=202,
    response_model=JobView,
    responses=DENIALS,
)
def train_model(req: TrainRequest, h: HubDep, who: Operator, audit: Audit) -> JobView:
    overrides: dict[str, Any] = {
        "name": req.name,
        "n_train": req.n_train,
        "seed": req.seed,
        "hidden": tuple(req.hidden),
        "max_int8_loss_points": req.max_int8_loss_points,
        "probation_s": req.probation_s,
        "probation_min_inferences": req.probation_min_inferences,
    }
    if req.golden_tolerance is not None:
        overrides["tolerance"] = req.golden_tolerance
    if req.latency_budget_us is not None:
        overrides["latency_budget_us"] = req.latency_budget_us
    for key in (
        "kind",
        "holdout_fraction",
        "min_accuracy",
        "max_mae",
        "max_int8_mae_increase",
    ):
        overrides[key] = getattr(req, key)
    cfg = _config(overrides)
    classes = tuple(req.device_classes)
    try:
        h.builds.extra_runtimes(classes)  # an unknown device class: refused now, not in the job
    except BuildError as e:
        raise HTTPException(e.status, e.detail) from e
    if req.dataset is None:
        if req.kind != "mlp" or req.tune or req.task == "regression":
            raise HTTPException(
                422,
                "name a dataset (upload one with `edgefleet datasets upload`) to train"
                " a conv net, a regressor, or with the tuner",
            )

        def build(progress: Progress) -> dict[str, Any]:
            return h.build_and_publish(cfg, progress, device_classes=classes)

        job = h.jobs.submit("train", build)
    else:
        spec = TrainSpec(
            config=cfg,
            dataset=req.dataset,
            task=req.task,
            champion=req.champion,
            tune_trials=req.tune,
            tune_timeout_s=req.tune_timeout_s,
            tune_max_bytes=req.tune_max_bytes,
            device_classes=classes,
            created_by=who.keyid,
        )
        try:
            job = h.builds.train(spec)
        except BuildError as e:
            raise HTTPException(e.status, e.detail) from e
    audit.change(job.id, after={"job": job.id, **req.model_dump()})
    return _job(h, job.id)


@router.post(
    "/models/{name}/upload",
    name="model.upload",
    status_code=202,
    response_model=JobView,
    responses=DENIALS,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
            },
        }
    },
)
async def upload_model(
    name: str,
    request: Request,
    h: HubDep,
    who: Operator,
    audit: Audit,
    device_classes: Annotated[list[str] | None, Query(max_length=32)] = None,
    dataset: Annotated[str | None, Query(min_length=1, max_length=140)] = None,
    quantize: bool = True,
    unevaluated: bool = False,
    champion: bool = False,
    min_accuracy: Annotated[float | None, Query(ge=0, le=1)] = None,
    max_mae: Annotated[float | None, Query(ge=0)] = None,
    filename: Annotated[str, Query(max_length=256)] = "",
) -> JobView:
    """Import your own ONNX or TFLite model (the request body), judged on a dataset's hold-out.

    The format is read from the bytes. An fp32 ONNX model is quantised to int8 through the
    same gates unless ``quantize=false``; a TFLite file always ships as it is.
    With no dataset the model is accepted only with ``unevaluated=true``.
    """
    cfg = _named_config(name, min_accuracy=min_accuracy, max_mae=max_mae)
    data = await _read_capped(request, MAX_UPLOAD_BYTES)
    if not data:
        raise HTTPException(400, "empty body: send the .onnx or .tflite file as the request body")
    classes = tuple(device_classes or ())
    spec = UploadSpec(
        config=cfg,
        model_bytes=data,
        dataset=dataset,
        quantize=quantize,
        unevaluated=unevaluated,
        champion=champion,
        device_classes=classes,
        created_by=who.keyid,
        filename=filename,
    )
    try:
        job = h.builds.upload(spec)
    except BuildError as e:
        raise HTTPException(e.status, e.detail) from e
    audit.change(
        job.id,
        after={
            "job": job.id,
            "name": name,
            "size_bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
            "device_classes": list(classes),
            "dataset": dataset,
            "quantize": quantize,
            "unevaluated": unevaluated,
        },
    )
    return _job(h, job.id)


@router.get("/jobs/{job_id}", name="job.get", response_model=JobView, responses=DENIALS)
def get_job(job_id: str, h: HubDep, who: Viewer) -> JobView:
    return _job(h, job_id)


@router.get("/models", name="model.list", response_model=list[ModelVersionView], responses=DENIALS)
def list_models(h: HubDep, who: Viewer) -> list[Any]:
    return h.registry.versions()


@router.get(
    "/models/{name}",
    name="model.versions",
    response_model=list[ModelVersionView],
    responses=DENIALS,
)
def model_versions(name: str, h: HubDep, who: Viewer) -> list[Any]:
    rows = h.registry.versions(name)
    if not rows:
        raise HTTPException(404, f"no model {name!r}")
    return rows


def _config(overrides: dict[str, Any]) -> PipelineConfig:
    try:
        return pipeline_config(**overrides)
    except ValueError as e:  # the pipeline's own checks, beyond the request model's
        raise HTTPException(422, str(e)) from e


def _named_config(name: str, **gates: float | None) -> PipelineConfig:
    try:
        valid = TrainRequest(name=name).name
    except ValueError as e:
        raise HTTPException(422, f"invalid model name {name!r}") from e
    return _config({"name": valid, **gates})


async def _read_capped(request: Request, cap: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > cap:
        raise HTTPException(413, f"model file over {cap} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > cap:
            raise HTTPException(413, f"model file over {cap} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _job(h: Hub, job_id: str) -> JobView:
    job = h.jobs.get(job_id)
    if job is None:
        raise HTTPException(404, f"no job {job_id!r}")
    return JobView(
        id=job.id,
        kind=job.kind,
        status=job.status,
        stage=job.stage,
        progress=job.progress,
        error=job.error,
        result=json.loads(job.result) if job.result else None,
    )
