"""Views of the hub's liveness and message counters (hub/api/routes/health.py)."""

from __future__ import annotations

from typing import Any

from hub.api.views.base import View

__all__ = ["Health", "Stats"]


class Health(View):
    ok: bool
    broker_connected: bool
    leader: bool = True  # this process runs the leader's work (always, for a single hub)
    replica: int | None = None  # its index among hub replicas (ADR 0032); None: single


class Stats(View):
    mqtt: dict[str, Any]
    dropped: dict[str, Any]
    ingest: dict[str, Any]
