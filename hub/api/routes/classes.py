"""Admin API: the device classes the hub knows (firmware-images/<class>/profile.toml)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, HTTPException

from hub.api.deps import DENIALS, HubDep, operation_id
from hub.api.security import Viewer
from hub.api.views.devices import DeviceClassView
from hub.fleet.classes import ClassError

router = APIRouter(generate_unique_id_function=operation_id)


@router.get(
    "/device-classes",
    name="classes.list",
    response_model=list[DeviceClassView],
    responses=DENIALS,
)
def list_classes(h: HubDep, who: Viewer) -> list[dict[str, Any]]:
    """Every device class: its runtime and artefact, architectures, Python, budgets."""
    return [c.as_dict() for c in h.classes]


@router.get(
    "/device-classes/{name}", name="classes.get", response_model=DeviceClassView, responses=DENIALS
)
def get_class(name: str, h: HubDep, who: Viewer) -> dict[str, Any]:
    """One device class (404 naming the known ones when there is no such class)."""
    try:
        return h.classes.get(name).as_dict()
    except ClassError as e:
        raise HTTPException(404, e.detail) from e
