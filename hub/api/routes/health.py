"""Admin API: liveness (public) and the hub's message counters."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from hub.api.deps import DENIALS, HubDep, operation_id
from hub.api.security import Viewer

router = APIRouter(generate_unique_id_function=operation_id)


@router.get("/health", name="health")
def health(h: HubDep) -> dict[str, Any]:
    """Liveness: public, so it says nothing but whether the hub and its broker link are up."""
    return {"ok": True, "broker_connected": h.mqtt.connected.is_set()}


@router.get("/stats", name="stats", responses=DENIALS)
def stats(h: HubDep, who: Viewer) -> dict[str, Any]:
    return {
        "mqtt": dict(h.mqtt.counts),
        "dropped": dict(h.mqtt.dropped),
        "ingest": dict(h.ingest.counts),
    }
