"""The hub's admin API (FastAPI; OpenAPI docs at /docs).

Devices, models (train from the built-in dataset, upload an ONNX file, list versions
with their metrics), deployments (create for all devices or a list of ids; status per
device) and enrolment. Bad requests get a 4xx with a message that says what is wrong.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import Body, Depends, FastAPI, HTTPException, Query, Request
from pydantic import BaseModel, Field
from sqlmodel import col, select

from hub.db import Device, DevicePublic, ModelVersionPublic, session
from hub.deployments import DeploymentError
from hub.registry import RegistryError
from hub.service import Hub, pipeline_config
from shared.protocol import is_device_id

MAX_UPLOAD_BYTES = 64 * 2**20  # bytes; larger model files are refused


class TrainRequest(BaseModel):
    name: str = Field("vibration", pattern=r"^[a-z0-9][a-z0-9_-]{0,47}$")
    n_train: int = Field(12000, ge=500, le=1_000_000)
    seed: int = Field(7, ge=0)
    hidden: list[int] = Field([64, 64], min_length=1, max_length=4)
    max_int8_loss_points: float = Field(1.0, ge=0, le=100)
    device_classes: list[str] = Field(default_factory=list, max_length=32)
    probation_s: float = Field(5.0, ge=0, le=86400)
    probation_min_inferences: int = Field(20, ge=0)
    golden_tolerance: float | None = Field(None, ge=0, le=1)
    latency_budget_us: float | None = Field(None, gt=0)


class JobPublic(BaseModel):
    id: str
    kind: str
    status: str
    stage: str
    progress: float
    error: str | None
    result: dict[str, Any] | None


class DeploymentRequest(BaseModel):
    model: str = Field(min_length=1, max_length=64)
    version: int | None = Field(None, ge=1)
    devices: list[str] | None = Field(None, min_length=1, max_length=100_000)


class EnrolRequest(BaseModel):
    device_id: str
    token: str = Field(min_length=1, max_length=256)
    device_class: str | None = None


class EnrolResponse(BaseModel):
    device_id: str
    root: str  # the TUF root.json to pin
    broker: str


def get_hub(request: Request) -> Hub:
    hub: Hub = request.app.state.hub
    return hub


HubDep = Annotated[Hub, Depends(get_hub)]


def create_app(hub: Hub) -> FastAPI:
    app = FastAPI(
        title="edgefleet hub",
        version="0.1.0",
        description="Train, quantise, sign and deploy models to a fleet of edge devices.",
    )

    app.state.hub = hub

    @app.get("/health")
    def health(h: HubDep) -> dict[str, Any]:
        return {"ok": True, "broker": h.broker.url, "broker_connected": h.mqtt.connected.is_set()}

    @app.get("/stats")
    def stats(h: HubDep) -> dict[str, Any]:
        return {
            "mqtt": dict(h.mqtt.counts),
            "dropped": dict(h.mqtt.dropped),
            "ingest": dict(h.ingest.counts),
        }

    # ---------------------------------------------------------------- enrolment

    @app.post("/enrol", response_model=EnrolResponse)
    def enrol(req: EnrolRequest, h: HubDep) -> EnrolResponse:
        if not is_device_id(req.device_id):
            raise HTTPException(422, f"invalid device id {req.device_id!r}: letters, digits, _.-")
        if not h.check_enrol_token(req.token):
            raise HTTPException(403, "enrolment token refused")
        return EnrolResponse(
            device_id=req.device_id, root=h.trust.pinned_root().decode(), broker=h.broker.url
        )

    # ---------------------------------------------------------------- devices

    @app.get("/devices", response_model=list[DevicePublic])
    def list_devices(h: HubDep, status: str | None = None) -> list[Device]:
        with session(h.engine) as s:
            q = select(Device).order_by(col(Device.id))
            if status is not None:
                q = q.where(Device.status == status)
            return list(s.exec(q))

    @app.get("/devices/{device_id}", response_model=DevicePublic)
    def get_device(device_id: str, h: HubDep) -> Device:
        with session(h.engine) as s:
            dev = s.get(Device, device_id)
        if dev is None:
            raise HTTPException(404, f"no device {device_id!r}")
        return dev

    # ---------------------------------------------------------------- models

    @app.post("/models/train", status_code=202, response_model=JobPublic)
    def train_model(req: TrainRequest, h: HubDep) -> JobPublic:
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
        cfg = pipeline_config(**overrides)
        classes = tuple(req.device_classes)
        job = h.jobs.submit(
            "train", lambda progress: h.build_and_publish(cfg, progress, device_classes=classes)
        )
        return _job(h, job.id)

    @app.post("/models/{name}/upload", status_code=202, response_model=JobPublic)
    async def upload_model(
        name: str,
        request: Request,
        h: HubDep,
        device_classes: Annotated[list[str] | None, Query()] = None,
    ) -> JobPublic:
        cfg = _named_config(name)
        data = await _read_capped(request, MAX_UPLOAD_BYTES)
        if not data:
            raise HTTPException(400, "empty body: send the ONNX file as the request body")
        classes = tuple(device_classes or ())
        job = h.jobs.submit(
            "upload",
            lambda progress: h.build_and_publish(
                cfg, progress, device_classes=classes, onnx_bytes=data
            ),
        )
        return _job(h, job.id)

    @app.get("/jobs/{job_id}", response_model=JobPublic)
    def get_job(job_id: str, h: HubDep) -> JobPublic:
        return _job(h, job_id)

    @app.get("/models", response_model=list[ModelVersionPublic])
    def list_models(h: HubDep) -> list[Any]:
        return h.registry.versions()

    @app.get("/models/{name}", response_model=list[ModelVersionPublic])
    def model_versions(name: str, h: HubDep) -> list[Any]:
        rows = h.registry.versions(name)
        if not rows:
            raise HTTPException(404, f"no model {name!r}")
        return rows

    # ---------------------------------------------------------------- deployments

    @app.post("/deployments", status_code=201)
    def create_deployment(h: HubDep, req: Annotated[DeploymentRequest, Body()]) -> dict[str, Any]:
        if req.devices is not None:
            bad = [d for d in req.devices if not is_device_id(d)]
            if bad:
                raise HTTPException(422, f"invalid device id(s): {bad[:5]}")
        try:
            dep = h.deployments.create(req.model, req.version, req.devices)
        except RegistryError as e:
            raise HTTPException(404, str(e)) from e
        except DeploymentError as e:
            raise HTTPException(409, str(e)) from e
        return _status(h, dep.id, per_device=False)

    @app.get("/deployments")
    def list_deployments(h: HubDep) -> list[dict[str, Any]]:
        return [d.model_dump() for d in h.deployments.list()]

    @app.get("/deployments/{deployment_id}")
    def deployment_status(deployment_id: str, h: HubDep, devices: bool = True) -> dict[str, Any]:
        return _status(h, deployment_id, per_device=devices)

    @app.get("/deployments/{deployment_id}/events")
    def deployment_events(
        deployment_id: str, h: HubDep, device: str | None = None
    ) -> list[dict[str, Any]]:
        _status(h, deployment_id, per_device=False)  # 404 when unknown
        return [e.model_dump() for e in h.deployments.events(deployment_id, device)]

    return app


def _named_config(name: str) -> Any:
    try:
        return pipeline_config(name=TrainRequest(name=name).name)
    except ValueError as e:
        raise HTTPException(422, f"invalid model name {name!r}") from e


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


def _job(h: Hub, job_id: str) -> JobPublic:
    job = h.jobs.get(job_id)
    if job is None:
        raise HTTPException(404, f"no job {job_id!r}")
    return JobPublic(
        id=job.id,
        kind=job.kind,
        status=job.status,
        stage=job.stage,
        progress=job.progress,
        error=job.error,
        result=json.loads(job.result) if job.result else None,
    )


def _status(h: Hub, deployment_id: str, *, per_device: bool) -> dict[str, Any]:
    try:
        st = h.deployments.status(deployment_id, per_device=per_device)
    except DeploymentError as e:
        raise HTTPException(404, str(e)) from e
    return st.__dict__
