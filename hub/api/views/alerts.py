"""Views of alert receivers and deliveries (hub/api/routes/alerts.py)."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from hub.api.views.base import View

__all__ = ["Delivery", "ReceiverCreated", "ReceiverView"]


class ReceiverView(View):
    name: str
    url: str
    kinds: list[str]
    models: list[str]
    created_at: float
    created_by: str | None


class ReceiverCreated(ReceiverView):
    secret: str | None = Field(
        None, description="the secret the hub made: shown this once (None: you gave it)"
    )


class Delivery(View):
    """A delivery of an alert to a receiver, with every attempt."""

    id: int
    receiver: str
    status: str  # pending | sent | failed | dropped
    kind: str
    model: str | None = None
    attempts: int
    created_at: float
    updated_at: float
    history: list[dict[str, Any]]  # each attempt: HTTP status or error, duration, time
