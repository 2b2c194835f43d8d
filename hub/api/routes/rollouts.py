"""Admin API: rollouts (canary, waves, rate, gate, halt with rollback) and device tags."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Body, HTTPException
from pydantic import BaseModel, ConfigDict, Field

from hub.api.audit import AuditContext
from hub.api.deps import DENIALS, Audit, HubDep, operation_id
from hub.api.schemas import MAX_INT, TAG
from hub.api.security import Operator, Viewer
from hub.api.views.devices import DeviceTags
from hub.api.views.rollouts import EventView, RolloutDeviceView, RolloutStatusView, RolloutView
from hub.app import Hub
from hub.declared.document import RolloutPolicySpec
from hub.fleet.rollout_spec import RolloutError, RolloutSpec
from hub.ml.registry import RegistryError
from hub.store.tables import RolloutDevice
from shared.protocol import is_device_id

router = APIRouter(generate_unique_id_function=operation_id)


class RolloutRequest(RolloutPolicySpec):
    """Which version to whom (the rest, how: a rollout policy's fields)."""

    model_config = ConfigDict(extra="ignore")  # as before fleet files: unknown keys ignored
    model: str = Field(min_length=1, max_length=64)
    version: int | None = Field(None, ge=1, le=MAX_INT)
    devices: list[str] | None = Field(None, min_length=1, max_length=100_000)
    device_class: str | None = Field(None, min_length=1, max_length=64)
    tags: list[Annotated[str, Field(pattern=TAG)]] = Field(default_factory=list, max_length=16)
    group: str | None = Field(None, pattern=TAG)
    seed: str | None = Field(None, min_length=1, max_length=64)  # shuffles the waves


class AbortRequest(BaseModel):
    rollback: bool = False  # also put back every device the rollout changed


class TagsRequest(BaseModel):
    tags: list[Annotated[str, Field(pattern=TAG)]] = Field(max_length=64)


@router.post(
    "/rollouts",
    name="rollout.create",
    status_code=201,
    response_model=RolloutStatusView,
    responses=DENIALS,
)
def create_rollout(
    h: HubDep, who: Operator, audit: Audit, req: Annotated[RolloutRequest, Body()]
) -> dict[str, Any]:
    """Start a rollout: the canary and first wave go out at once, the rest as gates pass."""
    if req.devices is not None and (bad := [d for d in req.devices if not is_device_id(d)]):
        raise HTTPException(422, f"invalid device id(s): {bad[:5]}")
    fields = req.model_dump()
    fields["devices"] = tuple(req.devices) if req.devices is not None else None
    fields["tags"] = tuple(req.tags)
    try:
        rollout = h.rollouts.create(RolloutSpec(**fields), created_by=who.keyid)
    except RegistryError as e:
        raise HTTPException(404, str(e)) from e
    except RolloutError as e:
        raise HTTPException(409, str(e)) from e
    status = h.rollouts.status(rollout.id)
    audit.change(
        rollout.id,
        after={
            "model": rollout.model,
            "version": rollout.version,
            "devices": status.devices,
            "waves": rollout.waves,
        },
    )
    return status.__dict__


@router.get("/rollouts", name="rollout.list", response_model=list[RolloutView], responses=DENIALS)
def list_rollouts(h: HubDep, who: Viewer) -> list[dict[str, Any]]:
    return [r.model_dump() for r in h.rollouts.list()]


@router.get(
    "/rollouts/{rollout_id}",
    name="rollout.get",
    response_model=RolloutStatusView,
    responses=DENIALS,
)
def get_rollout(rollout_id: str, h: HubDep, who: Viewer) -> dict[str, Any]:
    """Counts per device state, the current wave, the failure ratio."""
    return _status(h, rollout_id)


@router.get(
    "/rollouts/{rollout_id}/devices",
    name="rollout.devices",
    response_model=list[RolloutDeviceView],
    responses=DENIALS,
)
def rollout_devices(rollout_id: str, h: HubDep, who: Viewer) -> list[RolloutDevice]:
    try:
        return h.rollouts.devices(rollout_id)
    except RolloutError as e:
        raise HTTPException(404, str(e)) from e


@router.get(
    "/rollouts/{rollout_id}/events",
    name="rollout.events",
    response_model=list[EventView],
    responses=DENIALS,
)
def rollout_events(
    rollout_id: str, h: HubDep, who: Viewer, device: str | None = None
) -> list[dict[str, Any]]:
    """Every event devices reported for this rollout (one device's with ``device``)."""
    _status(h, rollout_id)
    return [e.model_dump() for e in h.deployments.events(rollout_id, device)]


@router.post(
    "/rollouts/{rollout_id}/pause",
    name="rollout.pause",
    response_model=RolloutStatusView,
    responses=DENIALS,
)
def pause_rollout(rollout_id: str, h: HubDep, who: Operator, audit: Audit) -> dict[str, Any]:
    return _change_state(h, audit, rollout_id, h.rollouts.pause)


@router.post(
    "/rollouts/{rollout_id}/resume",
    name="rollout.resume",
    response_model=RolloutStatusView,
    responses=DENIALS,
)
def resume_rollout(rollout_id: str, h: HubDep, who: Operator, audit: Audit) -> dict[str, Any]:
    return _change_state(h, audit, rollout_id, h.rollouts.resume)


@router.post(
    "/rollouts/{rollout_id}/abort",
    name="rollout.abort",
    response_model=RolloutStatusView,
    responses=DENIALS,
)
def abort_rollout(
    rollout_id: str,
    h: HubDep,
    who: Operator,
    audit: Audit,
    req: Annotated[AbortRequest | None, Body()] = None,
) -> dict[str, Any]:
    """Stop sending; with ``rollback``, put back every device it changed."""
    before = _status(h, rollout_id)["state"]
    try:
        h.rollouts.abort(rollout_id, rollback=(req or AbortRequest()).rollback)
    except RolloutError as e:
        raise HTTPException(409, str(e)) from e
    audit.change(rollout_id, before={"state": before}, after={"state": "aborted"})
    return _status(h, rollout_id)


@router.put(
    "/devices/{device_id}/tags", name="device.tags", response_model=DeviceTags, responses=DENIALS
)
def set_tags(
    device_id: str, h: HubDep, who: Operator, audit: Audit, req: Annotated[TagsRequest, Body()]
) -> dict[str, Any]:
    """Replace the device's tags. Joining a group sends it the group's version."""
    try:
        before = h.rollouts.tags(device_id)
        after = h.rollouts.set_tags(device_id, req.tags)
    except RolloutError as e:
        raise HTTPException(404, str(e)) from e
    audit.change(device_id, before={"tags": before}, after={"tags": after})
    return {"device": device_id, "tags": after}


def _change_state(
    h: Hub, audit: AuditContext, rollout_id: str, change: Callable[[str], object]
) -> dict[str, Any]:
    before = _status(h, rollout_id)["state"]
    try:
        change(rollout_id)
    except RolloutError as e:
        raise HTTPException(409, str(e)) from e
    after = _status(h, rollout_id)
    audit.change(rollout_id, before={"state": before}, after={"state": after["state"]})
    return after


def _status(h: Hub, rollout_id: str) -> dict[str, Any]:
    try:
        return dict(h.rollouts.status(rollout_id).__dict__)
    except RolloutError as e:
        raise HTTPException(404, str(e)) from e
