"""Admin API: deployments of a model version to every device or a list of them, with
each device's status and reported events."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, HTTPException
from pydantic import BaseModel, Field

from hub.api.deps import DENIALS, Audit, HubDep, operation_id
from hub.api.schemas import MAX_INT
from hub.api.security import Operator, Viewer
from hub.api.views.rollouts import DeploymentStatusView, DeploymentView, EventView
from hub.app import Hub
from hub.fleet.deployments import DEVICE_TIMEOUT_S, RETRIES, DeploymentError
from hub.ml.registry import RegistryError
from shared.protocol import is_device_id

router = APIRouter(prefix="/deployments", generate_unique_id_function=operation_id)


class DeploymentRequest(BaseModel):
    model: str = Field(min_length=1, max_length=64)
    version: int | None = Field(None, ge=1, le=MAX_INT)
    devices: list[str] | None = Field(None, min_length=1, max_length=100_000)
    # silence while online, or absence, before a device times out (hub/fleet/deployments.py)
    device_timeout_s: float = Field(DEVICE_TIMEOUT_S, gt=0, le=7 * 86400)
    retries: int = Field(RETRIES, ge=0, le=100)
    # the devices' probation instead of the model manifest's (seconds; live inferences)
    probation_s: float | None = Field(None, ge=0, le=86400)
    probation_min_inferences: int | None = Field(None, ge=0, le=MAX_INT)


@router.post(
    "",
    name="deployment.create",
    status_code=201,
    response_model=DeploymentStatusView,
    responses=DENIALS,
)
def create_deployment(
    h: HubDep, who: Operator, audit: Audit, req: Annotated[DeploymentRequest, Body()]
) -> dict[str, Any]:
    if req.devices is not None:
        bad = [d for d in req.devices if not is_device_id(d)]
        if bad:
            raise HTTPException(422, f"invalid device id(s): {bad[:5]}")
    try:
        dep = h.deployments.create(
            req.model,
            req.version,
            req.devices,
            device_timeout_s=req.device_timeout_s,
            retries=req.retries,
            created_by=who.keyid,
            probation_s=req.probation_s,
            probation_min_inferences=req.probation_min_inferences,
        )
    except RegistryError as e:
        raise HTTPException(404, str(e)) from e
    except DeploymentError as e:
        raise HTTPException(409, str(e)) from e
    summary = _status(h, dep.id, per_device=False)
    audit.change(dep.id, after={k: v for k, v in summary.items() if k != "per_device"})
    return summary


@router.get("", name="deployment.list", response_model=list[DeploymentView], responses=DENIALS)
def list_deployments(h: HubDep, who: Viewer) -> list[dict[str, Any]]:
    return h.deployments.list()


@router.get(
    "/{deployment_id}",
    name="deployment.get",
    response_model=DeploymentStatusView,
    responses=DENIALS,
)
def deployment_status(
    deployment_id: str, h: HubDep, who: Viewer, devices: bool = True
) -> dict[str, Any]:
    return _status(h, deployment_id, per_device=devices)


@router.get(
    "/{deployment_id}/events",
    name="deployment.events",
    response_model=list[EventView],
    responses=DENIALS,
)
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
