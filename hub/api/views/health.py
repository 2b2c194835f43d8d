"""Views of the hub's liveness and message counters (hub/api/routes/health.py)."""

from __future__ import annotations

from typing import Any

from hub.api.views.base import View

__all__ = ["Health", "Stats"]


class Health(View):
    ok: bool
    broker_connected: bool


class Stats(View):
    mqtt: dict[str, Any]
    dropped: dict[str, Any]
    ingest: dict[str, Any]
