"""Admin API: liveness (public), the hub's message counters, and Prometheus metrics."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response

from hub.api.deps import DENIALS, HubDep, operation_id
from hub.api.metrics import CONTENT_TYPE, render
from hub.api.security import Viewer
from hub.api.views.health import Health, Stats

router = APIRouter(generate_unique_id_function=operation_id)


@router.get("/health", name="health", response_model=Health)
def health(h: HubDep) -> dict[str, Any]:
    """Liveness: public, so it says nothing but whether the hub and its broker link are up,
    and whether this process is the leader among hub replicas."""
    return {
        "ok": True,
        "broker_connected": h.mqtt.connected.is_set(),
        "leader": h.leader.leading(),
        "replica": h.config.replica,
    }


@router.get("/stats", name="stats", response_model=Stats, responses=DENIALS)
def stats(h: HubDep, who: Viewer) -> dict[str, Any]:
    return {
        "mqtt": dict(h.mqtt.counts),
        "dropped": dict(h.mqtt.dropped),
        "ingest": dict(h.ingest.counts),
    }


@router.get(
    "/metrics",
    name="metrics",
    responses={**DENIALS, 200: {"content": {CONTENT_TYPE: {}}}},
    response_class=Response,
)
def metrics(request: Request, who: Viewer) -> Response:
    """The hub and its fleet in the Prometheus text format (hub/api/metrics.py): a
    scraper authenticates with a viewer key (``Authorization: Bearer``)."""
    return Response(render(request.app.state.metrics), media_type=CONTENT_TYPE)
