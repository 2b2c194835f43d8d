"""Admin API: data captures, the rows they produced, and retraining on them (docs/capture.md).

The operator's own dataset files are hub/api/routes/datasets.py's."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, HTTPException, Query
from pydantic import BaseModel, Field
from sqlmodel import select

from hub.api.deps import DENIALS, Audit, HubDep, operation_id
from hub.api.schemas import MAX_INT, TAG
from hub.api.security import Operator, Viewer
from hub.api.views.datasets import CapturedRows, CaptureView
from hub.api.views.models import JobView
from hub.app import Hub
from hub.ml.data.capture_labels import MAX_LABELS, label_captured
from hub.ml.data.captures import DatasetError
from hub.ml.registry import RegistryError
from hub.ml.retrain import MAX_CAPTURED_WEIGHT
from hub.store.tables import DeviceTag, session
from shared import protocol

router = APIRouter(generate_unique_id_function=operation_id)


class CaptureRequest(BaseModel):
    model: str = Field(min_length=1, max_length=64)
    devices: list[str] | None = Field(None, min_length=1, max_length=10_000)
    group: str | None = Field(None, pattern=TAG)  # every device tagged with it
    rows: int = Field(1000, ge=1, le=protocol.MAX_CAPTURE_ROWS)  # per device
    duration_s: float | None = Field(None, gt=0, le=protocol.MAX_CAPTURE_S)
    windows: int | None = Field(None, ge=1, le=protocol.MAX_CAPTURE_WINDOWS)
    seed: int = Field(0, ge=0, le=MAX_INT)


class RetrainRequest(BaseModel):
    datasets: list[Annotated[str, Field(min_length=1, max_length=64)]] = Field(
        min_length=1, max_length=64
    )
    holdout_fraction: float = Field(0.25, gt=0, lt=1)
    captured_weight: int = Field(1, ge=1, le=MAX_CAPTURED_WEIGHT)
    seed: int | None = Field(None, ge=0, le=MAX_INT)


@router.post(
    "/captures",
    name="capture.create",
    status_code=201,
    response_model=CaptureView,
    responses=DENIALS,
)
def create_capture(
    h: HubDep, who: Operator, audit: Audit, req: Annotated[CaptureRequest, Body()]
) -> dict[str, Any]:
    """Ask devices (a list, or a group) for a sample of their model's rows."""
    devices = _devices(h, req)
    try:
        h.registry.get(req.model)
    except RegistryError as e:
        raise HTTPException(404, str(e)) from e
    try:
        capture_id = h.datasets.start_capture(
            req.model,
            devices,
            req.rows,
            req.duration_s,
            windows=req.windows,
            seed=req.seed,
            created_by=who.keyid,
        )
    except DatasetError as e:
        raise HTTPException(422, e.detail) from e
    status = h.datasets.capture(capture_id)
    audit.change(
        capture_id,
        after={k: status[k] for k in ("model", "max_rows", "duration_s", "windows")}
        | {"devices": len(devices)},
    )
    return status


@router.get(
    "/captures/datasets",
    name="capture.datasets",
    response_model=list[CapturedRows],
    responses=DENIALS,
)
def list_datasets(
    h: HubDep, who: Viewer, model: Annotated[str | None, Query(max_length=64)] = None
) -> list[Any]:
    return h.datasets.datasets(model)


@router.get(
    "/captures/datasets/{dataset_id}",
    name="capture.dataset",
    response_model=CapturedRows,
    responses=DENIALS,
)
def get_dataset(dataset_id: str, h: HubDep, who: Viewer) -> Any:
    try:
        return h.datasets.dataset_row(dataset_id)
    except DatasetError as e:
        raise HTTPException(404, e.detail) from e


class CaptureLabel(BaseModel):
    row: int = Field(ge=0, le=MAX_INT)
    label: int | str = Field(union_mode="left_to_right")  # a class index or name


class CaptureLabels(BaseModel):
    labels: list[CaptureLabel] = Field(min_length=1, max_length=MAX_LABELS)


@router.post(
    "/captures/datasets/{dataset_id}/labels",
    name="capture.label",
    status_code=201,
    response_model=CapturedRows,
    responses=DENIALS,
)
def label_capture(
    dataset_id: str, h: HubDep, who: Operator, audit: Audit, req: Annotated[CaptureLabels, Body()]
) -> Any:
    """Labels for captured rows, by row index: a new version of those rows."""
    try:
        row = h.datasets.dataset_row(dataset_id)
        version = label_captured(
            h.datasets,
            dataset_id,
            [(item.row, item.label) for item in req.labels],
            h.capture_versions.classes(row.model),
        )
    except DatasetError as e:
        raise HTTPException(404 if e.reason == "not_found" else 422, e.detail) from e
    audit.change(version.id, after={"from": dataset_id, "labels": len(req.labels)})
    return version


@router.get(
    "/captures/{capture_id}", name="capture.get", response_model=CaptureView, responses=DENIALS
)
def get_capture(capture_id: str, h: HubDep, who: Viewer) -> dict[str, Any]:
    """The capture, each device's status, and the dataset it produced (when done)."""
    try:
        return h.datasets.capture(capture_id)
    except DatasetError as e:
        raise HTTPException(404, e.detail) from e


@router.post(
    "/models/{name}/retrain",
    name="model.retrain",
    status_code=202,
    response_model=JobView,
    responses=DENIALS,
)
def retrain_model(
    name: str, h: HubDep, who: Operator, audit: Audit, req: Annotated[RetrainRequest, Body()]
) -> dict[str, Any]:
    """Retrain on the model's baseline rows plus the datasets' labelled rows (a job)."""
    try:
        job = h.retrainer.submit(
            name,
            req.datasets,
            holdout_fraction=req.holdout_fraction,
            captured_weight=req.captured_weight,
            seed=req.seed,
        )
    except (RegistryError, DatasetError) as e:
        raise HTTPException(404, str(e)) from e
    audit.change(job.id, after={"job": job.id, "model": name, **req.model_dump()})
    fields = ("id", "kind", "status", "stage", "progress", "error")
    return {f: getattr(job, f) for f in fields} | {"result": None}


def _devices(h: Hub, req: CaptureRequest) -> list[str]:
    if (req.devices is None) == (req.group is None):
        raise HTTPException(422, "name the devices or a group (one of them)")
    if req.devices is not None:
        bad = [d for d in req.devices if not protocol.is_device_id(d)]
        if bad:
            raise HTTPException(422, f"invalid device id(s): {bad[:5]}")
        return req.devices
    with session(h.engine) as s:
        members = list(s.exec(select(DeviceTag.device_id).where(DeviceTag.tag == req.group)))
    if not members:
        raise HTTPException(404, f"no device in group {req.group!r}")
    return members
