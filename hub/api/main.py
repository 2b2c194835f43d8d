"""The hub's admin API (FastAPI; OpenAPI docs at /docs).

Devices, models (train from the built-in dataset, upload an ONNX file, list versions
with their metrics), deployments (create for all devices or a list of ids; status per
device), enrolment, API keys and the audit log. Bad requests get a 4xx with a message
that says what is wrong.

Every route but ``/health`` (a liveness probe) and ``/enrol`` (which takes a one-time
enrolment token) needs an API key (``Authorization: Bearer ef_<keyid>_<secret>``) of the
role it names: viewer for reading, operator for training, uploads, deployments and
enrolment tokens, admin for API keys, re-enrolment and the audit log. Each route's name
is its OpenAPI operationId and, for a mutating route, the action in its audit records.
"""

from __future__ import annotations

import hashlib
import json
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, FastAPI, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from hub.access.audit import AUDIT_LIMIT_DEFAULT, AUDIT_LIMIT_MAX, AuditLog
from hub.access.keys import KEY_NAME_PATTERN, ApiKeyError, ApiKeys, Role
from hub.api.audit import AuditMiddleware
from hub.api.deps import DENIALS, Audit, HubDep
from hub.api.errors import http_error, validation_error
from hub.api.routes import datasets, devices, drift, loop, rollouts, signing, telemetry
from hub.api.schemas import MAX_INT
from hub.api.security import Admin, Operator, Viewer
from hub.app import Hub, pipeline_config
from hub.fleet.deployments import DeploymentError
from hub.ml.jobs import Progress
from hub.ml.registry import RegistryError
from hub.store.tables import (
    ApiKeyPublic,
    AuditRecord,
    AuditRecordPublic,
    ModelVersionPublic,
)
from shared.protocol import is_device_id

MAX_UPLOAD_BYTES = 64 * 2**20  # bytes; larger model files are refused


class TrainRequest(BaseModel):
    name: str = Field("vibration", pattern=r"^[a-z0-9][a-z0-9_-]{0,47}$")
    n_train: int = Field(12000, ge=500, le=1_000_000)
    seed: int = Field(7, ge=0, le=2**32 - 1)
    hidden: list[Annotated[int, Field(ge=1, le=4096)]] = Field([64, 64], min_length=1, max_length=4)
    max_int8_loss_points: float = Field(1.0, ge=0, le=100)
    device_classes: list[Annotated[str, Field(min_length=1, max_length=64)]] = Field(
        default_factory=list, max_length=32
    )
    probation_s: float = Field(5.0, ge=0, le=86400)
    probation_min_inferences: int = Field(20, ge=0, le=MAX_INT)
    golden_tolerance: float | None = Field(None, ge=0, le=1)
    latency_budget_us: float | None = Field(None, gt=0, le=1e9)


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
    version: int | None = Field(None, ge=1, le=MAX_INT)
    devices: list[str] | None = Field(None, min_length=1, max_length=100_000)


class ApiKeyCreate(BaseModel):
    name: str = Field(pattern=KEY_NAME_PATTERN)
    role: Role


class ApiKeyCreated(ApiKeyPublic):
    key: str  # shown once: the hub keeps only a hash


def create_app(hub: Hub) -> FastAPI:
    app = FastAPI(
        title="edgefleet hub",
        version="0.1.0",
        description="Train, quantise, sign and deploy models to a fleet of edge devices.",
        generate_unique_id_function=lambda route: route.name,
    )
    app.state.hub = hub
    app.state.api_keys = ApiKeys(hub.engine, dev_mode=hub.config.dev_mode)
    app.state.audit = AuditLog(hub.engine)
    app.add_middleware(AuditMiddleware, log=app.state.audit)
    app.add_exception_handler(StarletteHTTPException, http_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, validation_error)  # type: ignore[arg-type]

    @app.get("/health", name="health")
    def health(h: HubDep) -> dict[str, Any]:
        """Liveness: public, so it says nothing but whether the hub and its broker link are up."""
        return {"ok": True, "broker_connected": h.mqtt.connected.is_set()}

    @app.get("/stats", name="stats", responses=DENIALS)
    def stats(h: HubDep, who: Viewer) -> dict[str, Any]:
        return {
            "mqtt": dict(h.mqtt.counts),
            "dropped": dict(h.mqtt.dropped),
            "ingest": dict(h.ingest.counts),
        }

    for router in (
        devices.router,
        signing.router,
        rollouts.router,
        telemetry.router,
        loop.router,
        datasets.router,
        drift.router,
    ):
        include(app, router)
    _model_routes(app)
    _deployment_routes(app)
    _access_routes(app)
    return app


def include(app: FastAPI, router: APIRouter) -> None:
    """Add the router's routes to the app itself, in order.

    ``app.include_router`` (FastAPI 0.137 and later) keeps an included router as one
    opaque entry of ``app.routes``; the role table and the audit check walk ``app.routes``
    for every route (docs/security.md), so each route goes there as it is.
    """
    app.router.routes.extend(router.routes)


# ---------------------------------------------------------------- models


def _model_routes(app: FastAPI) -> None:
    @app.post(
        "/models/train",
        name="model.train",
        status_code=202,
        response_model=JobPublic,
        responses=DENIALS,
    )
    def train_model(req: TrainRequest, h: HubDep, who: Operator, audit: Audit) -> JobPublic:
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
        cfg = _config(overrides)
        classes = tuple(req.device_classes)

        def build(progress: Progress) -> dict[str, Any]:
            return h.build_and_publish(cfg, progress, device_classes=classes)

        job = h.jobs.submit("train", build)
        audit.change(job.id, after={"job": job.id, **req.model_dump()})
        return _job(h, job.id)

    @app.post(
        "/models/{name}/upload",
        name="model.upload",
        status_code=202,
        response_model=JobPublic,
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
    ) -> JobPublic:
        """Import your own ONNX model (the request body) through the same gates."""
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
        audit.change(
            job.id,
            after={
                "job": job.id,
                "name": name,
                "size_bytes": len(data),
                "sha256": hashlib.sha256(data).hexdigest(),
                "device_classes": list(classes),
            },
        )
        return _job(h, job.id)

    @app.get("/jobs/{job_id}", name="job.get", response_model=JobPublic, responses=DENIALS)
    def get_job(job_id: str, h: HubDep, who: Viewer) -> JobPublic:
        return _job(h, job_id)

    @app.get(
        "/models", name="model.list", response_model=list[ModelVersionPublic], responses=DENIALS
    )
    def list_models(h: HubDep, who: Viewer) -> list[Any]:
        return h.registry.versions()

    @app.get(
        "/models/{name}",
        name="model.versions",
        response_model=list[ModelVersionPublic],
        responses=DENIALS,
    )
    def model_versions(name: str, h: HubDep, who: Viewer) -> list[Any]:
        rows = h.registry.versions(name)
        if not rows:
            raise HTTPException(404, f"no model {name!r}")
        return rows


def _config(overrides: dict[str, Any]) -> Any:
    try:
        return pipeline_config(**overrides)
    except ValueError as e:  # the pipeline's own checks, beyond the request model's
        raise HTTPException(422, str(e)) from e


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


# ---------------------------------------------------------------- deployments


def _deployment_routes(app: FastAPI) -> None:
    @app.post("/deployments", name="deployment.create", status_code=201, responses=DENIALS)
    def create_deployment(
        h: HubDep, who: Operator, audit: Audit, req: Annotated[DeploymentRequest, Body()]
    ) -> dict[str, Any]:
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
        summary = _status(h, dep.id, per_device=False)
        audit.change(dep.id, after={k: v for k, v in summary.items() if k != "per_device"})
        return summary

    @app.get("/deployments", name="deployment.list", responses=DENIALS)
    def list_deployments(h: HubDep, who: Viewer) -> list[dict[str, Any]]:
        return [d.model_dump() for d in h.deployments.list()]

    @app.get("/deployments/{deployment_id}", name="deployment.get", responses=DENIALS)
    def deployment_status(
        deployment_id: str, h: HubDep, who: Viewer, devices: bool = True
    ) -> dict[str, Any]:
        return _status(h, deployment_id, per_device=devices)

    @app.get("/deployments/{deployment_id}/events", name="deployment.events", responses=DENIALS)
    def deployment_events(
        deployment_id: str, h: HubDep, who: Viewer, device: str | None = None
    ) -> list[dict[str, Any]]:
        _status(h, deployment_id, per_device=False)  # 404 when unknown
        return [e.model_dump() for e in h.deployments.events(deployment_id, device)]


def _status(h: Hub, deployment_id: str, *, per_device: bool) -> dict[str, Any]:
    try:
        st = h.deployments.status(deployment_id, per_device=per_device)
    except DeploymentError as e:
        raise HTTPException(404, str(e)) from e
    return st.__dict__


# ---------------------------------------------------------------- API keys and audit


def _access_routes(app: FastAPI) -> None:
    keys: ApiKeys = app.state.api_keys
    log: AuditLog = app.state.audit

    @app.post(
        "/api-keys",
        name="api_key.create",
        status_code=201,
        response_model=ApiKeyCreated,
        responses=DENIALS,
    )
    def create_api_key(req: ApiKeyCreate, who: Admin, audit: Audit) -> ApiKeyCreated:
        """A new API key. The answer holds the key itself: the only time it is shown."""
        new = keys.create(req.name, req.role, created_by=who.keyid)
        public = ApiKeyPublic.model_validate(new.record)
        audit.change(public.keyid, after=public.model_dump())
        return ApiKeyCreated(**public.model_dump(), key=new.key)

    @app.get("/api-keys", name="api_key.list", response_model=list[ApiKeyPublic], responses=DENIALS)
    def list_api_keys(who: Admin) -> list[Any]:
        """Every key, revoked ones too; never a secret or its hash."""
        return keys.list()

    @app.delete(
        "/api-keys/{keyid}",
        name="api_key.revoke",
        response_model=ApiKeyPublic,
        responses={**DENIALS, 409: {"description": "already revoked, or the last admin key"}},
    )
    def revoke_api_key(keyid: str, who: Admin, audit: Audit) -> Any:
        """Revoke a key at once. The last active admin key cannot be revoked."""
        try:
            row = keys.revoke(keyid)
        except ApiKeyError as e:
            raise HTTPException(404 if e.reason == "unknown" else 409, str(e)) from e
        audit.change(keyid, before={"revoked_at": None}, after={"revoked_at": row.revoked_at})
        return row

    @app.get("/audit", name="audit.list", response_model=list[AuditRecordPublic], responses=DENIALS)
    def audit_log(
        who: Admin,
        actor: Annotated[str | None, Query(description="keyid or key name")] = None,
        action: Annotated[str | None, Query(description="e.g. deployment.create")] = None,
        outcome: Literal["ok", "denied", "error"] | None = None,
        since: Annotated[float | None, Query(ge=0, description="seconds since the epoch")] = None,
        limit: Annotated[int, Query(ge=1, le=AUDIT_LIMIT_MAX)] = AUDIT_LIMIT_DEFAULT,
    ) -> list[AuditRecord]:
        """Audit records of mutating calls, newest first."""
        return log.query(actor=actor, action=action, outcome=outcome, since=since, limit=limit)
