"""The view of a fleet file's plan and of the changes applying it made
(hub/api/routes/fleet.py)."""

from __future__ import annotations

from typing import Any

from hub.api.views.base import View

__all__ = ["FleetChanges"]


class FleetChanges(View):
    """What a fleet file changes (``diff``: would change), in order, and what it leaves
    to a person (``notes``)."""

    changes: list[dict[str, Any]]
    notes: list[Any]
