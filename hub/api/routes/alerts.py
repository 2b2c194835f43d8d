"""Admin API: webhook receivers of alerts, and every delivery to them (hub/alerts/,
docs/alerts.md).

Receivers are admin work: their URLs are where the hub will send requests from inside
the network (docs/security.md), and a URL may carry a token. A receiver's secret is shown
once, when the hub made it, and never again. Deliveries are for viewers: they name the
receiver and the alert, never a URL or a secret.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query
from pydantic import BaseModel, Field, field_validator

from hub.alerts import DELIVERIES_LIMIT, ReceiverError, ReceiverSpec, public
from hub.alerts.receivers import (
    MAX_MODELS,
    MAX_SECRET,
    MAX_URL,
    MIN_SECRET,
    NAME_PATTERN,
    check_url,
)
from hub.api.deps import DENIALS, Audit, HubDep, operation_id
from hub.api.schemas import MODEL
from hub.api.security import Admin, Viewer
from hub.api.views.alerts import Delivery, ReceiverCreated, ReceiverView

router = APIRouter(generate_unique_id_function=operation_id)

Kind = Literal["drift", "rollout", "loop"]
ReceiverName = Annotated[str, Field(pattern=NAME_PATTERN)]
ModelName = Annotated[str, Field(pattern=MODEL)]


def _all_kinds() -> list[Kind]:
    return ["drift", "rollout", "loop"]


class ReceiverCreate(BaseModel):
    name: ReceiverName
    url: str = Field(max_length=MAX_URL, description="http:// or https:// only")
    secret: str | None = Field(
        None,
        min_length=MIN_SECRET,
        max_length=MAX_SECRET,
        description="the HMAC-SHA256 key; omitted: the hub makes one and shows it once",
    )
    kinds: list[Kind] = Field(default_factory=_all_kinds, min_length=1, max_length=3)
    models: list[ModelName] = Field(default_factory=list, max_length=MAX_MODELS)

    @field_validator("url")
    @classmethod
    def _http_url(cls, url: str) -> str:
        problems = check_url(url)
        if problems:
            raise ValueError("; ".join(problems))
        return url


@router.post(
    "/alert-receivers",
    name="alert_receiver.create",
    status_code=201,
    response_model=ReceiverCreated,
    responses={**DENIALS, 409: {"description": "a receiver of that name exists"}},
)
def create_receiver(req: ReceiverCreate, h: HubDep, who: Admin, audit: Audit) -> Any:
    """Add a webhook receiver of alerts. Its secret is never shown after this answer."""
    try:
        spec = ReceiverSpec(
            req.name, req.url, req.secret or "", tuple(dict.fromkeys(req.kinds)),
            tuple(dict.fromkeys(req.models)),
        )  # fmt: skip
        row, made = h.alerts.receivers.add(spec, by=who.keyid)
    except ReceiverError as e:
        raise HTTPException(409 if e.reason == "exists" else 422, str(e)) from e
    shown = public(row)
    audit.change(row.name, after=shown)  # never the secret
    return {**shown, "secret": made}


@router.get(
    "/alert-receivers",
    name="alert_receiver.list",
    response_model=list[ReceiverView],
    responses=DENIALS,
)
def list_receivers(h: HubDep, who: Admin) -> list[dict[str, Any]]:
    """Every receiver, without its secret."""
    return [public(r) for r in h.alerts.receivers.list()]


@router.get(
    "/alert-receivers/{name}",
    name="alert_receiver.get",
    response_model=ReceiverView,
    responses=DENIALS,
)
def get_receiver(name: str, h: HubDep, who: Admin) -> dict[str, Any]:
    try:
        return public(h.alerts.receivers.get(name))
    except ReceiverError as e:
        raise HTTPException(404, str(e)) from e


@router.delete(
    "/alert-receivers/{name}",
    name="alert_receiver.delete",
    response_model=ReceiverView,
    responses=DENIALS,
)
def delete_receiver(name: str, h: HubDep, who: Admin, audit: Audit) -> dict[str, Any]:
    """Delete a receiver; what was pending for it is dropped (its deliveries stay listed)."""
    try:
        row = h.alerts.receivers.delete(name)
    except ReceiverError as e:
        raise HTTPException(404, str(e)) from e
    shown = public(row)
    audit.change(name, before=shown)
    return shown


@router.post(
    "/alert-receivers/{name}/test",
    name="alert_receiver.test",
    response_model=Delivery,
    responses=DENIALS,
)
def send_test_alert(name: str, h: HubDep, who: Admin, audit: Audit) -> dict[str, Any]:
    """Send the receiver a test alert now; the delivery after its first try (or as it is
    after the timeout: still pending)."""
    try:
        delivery_id = h.alerts.send_test(name, who.name)
    except ReceiverError as e:
        raise HTTPException(404, str(e)) from e
    audit.change(name, after={"delivery": delivery_id})
    view = h.alerts.wait_tried(delivery_id, h.alerts.policy.timeout_s + 2.0)
    assert view is not None
    return view


@router.get(
    "/alert-deliveries",
    name="alert_delivery.list",
    response_model=list[Delivery],
    responses=DENIALS,
)
def list_deliveries(
    h: HubDep,
    who: Viewer,
    receiver: Annotated[str | None, Query(pattern=NAME_PATTERN)] = None,
    status: Annotated[Literal["pending", "sent", "failed", "dropped"] | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=DELIVERIES_LIMIT)] = 100,
) -> list[dict[str, Any]]:
    """Deliveries of alerts, newest first, each with every attempt (HTTP status or error,
    duration, time)."""
    return h.alerts.deliveries(receiver, status, limit)
