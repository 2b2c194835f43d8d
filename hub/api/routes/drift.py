"""Admin API: fleet drift (per-feature PSI/JS per device, group or fleet), alerts, the
drift event stream, and each model's drift policy (hub/telemetry/drift.py has the rules)."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, HTTPException, Path, Query
from pydantic import ConfigDict

from hub.api.deps import DENIALS, Audit, HubDep, operation_id
from hub.api.schemas import MODEL, TAG
from hub.api.security import Operator, Viewer
from hub.api.views.observe import DriftAlertView, DriftEventView, DriftPolicyView, DriftReport
from hub.declared.document import DriftPolicySpec
from hub.telemetry.drift_policy import Policy
from hub.telemetry.instants import FORMS, InstantError, parse_instant

router = APIRouter(prefix="/drift", generate_unique_id_function=operation_id)

SCOPE_ID = TAG  # a device id or a tag
LIMIT_MAX = 1000  # rows per page of alerts or events
# ``since`` / ``until``: epoch seconds, ISO 8601 or relative to now (hub/telemetry/instants.py)
Instant = Annotated[str | None, Query(max_length=64, description=f"a time: {FORMS}")]


class PolicyRequest(DriftPolicySpec):
    model_config = ConfigDict(extra="ignore")  # as before fleet files: unknown keys ignored


@router.get("/models/{model}", name="drift.get", response_model=DriftReport, responses=DENIALS)
def drift(
    model: Annotated[str, Path(pattern=MODEL)],
    h: HubDep,
    who: Viewer,
    scope: Literal["device", "group", "fleet"] = "fleet",
    id: Annotated[str | None, Query(pattern=SCOPE_ID)] = None,
    since: Instant = None,
    until: Instant = None,
) -> dict[str, Any]:
    """Per model version: windows, devices, rows and per-feature PSI/JS of the merged
    sketches of one device (``id``), one group (tag ``id``) or the fleet, over
    ``[since, until]`` (epoch seconds, ISO 8601 or relative like ``-2h``; open ends by
    default). Under the policy's ``min_rows`` rows: ``enough_data`` false, a ``note``,
    and PSI/JS ``null`` rather than a figure that means nothing (docs/drift.md)."""
    if scope != "fleet" and id is None:
        raise HTTPException(422, f"scope {scope} needs an id")
    try:
        start, end = parse_instant("since", since), parse_instant("until", until)
    except InstantError as e:
        raise HTTPException(422, str(e)) from e
    return h.drift.report(model, scope, id, start, end)


@router.get("/alerts", name="drift.alerts", response_model=list[DriftAlertView], responses=DENIALS)
def alerts(
    h: HubDep,
    who: Viewer,
    state: Literal["open", "stale", "cleared"] | None = None,
    model: Annotated[str | None, Query(pattern=MODEL)] = None,
    limit: Annotated[int, Query(ge=1, le=LIMIT_MAX)] = 100,
) -> list[dict[str, Any]]:
    """Drift alerts, newest first: scope, devices, drifted features, latest scores."""
    rows = h.drift.alerts(state=state, model=model, limit=limit)
    return [a.model_dump() for a in rows]


@router.get("/events", name="drift.events", response_model=list[DriftEventView], responses=DENIALS)
def events(
    h: HubDep,
    who: Viewer,
    since: Instant = None,
    model: Annotated[str | None, Query(pattern=MODEL)] = None,
    limit: Annotated[int, Query(ge=1, le=LIMIT_MAX)] = 100,
) -> list[dict[str, Any]]:
    """The drift event stream, oldest first from ``since`` (a time as for a report):
    alerts raised and cleared."""
    try:
        start = parse_instant("since", since)
    except InstantError as e:
        raise HTTPException(422, str(e)) from e
    rows = h.drift.events(since=start, model=model, limit=limit)
    return [e.model_dump() for e in rows]


@router.get(
    "/policies/{model}", name="drift.policy", response_model=DriftPolicyView, responses=DENIALS
)
def get_policy(
    model: Annotated[str, Path(pattern=MODEL)], h: HubDep, who: Viewer
) -> dict[str, Any]:
    """The model's thresholds and persistence rule (the defaults until one is set)."""
    return {"model": model, **asdict(h.drift.policy(model))}


@router.put(
    "/policies/{model}",
    name="drift.set_policy",
    response_model=DriftPolicyView,
    responses=DENIALS,
)
def set_policy(
    model: Annotated[str, Path(pattern=MODEL)],
    h: HubDep,
    who: Operator,
    audit: Audit,
    req: Annotated[PolicyRequest, Body()],
) -> dict[str, Any]:
    """Replace the model's drift policy; alerts follow it from the next window."""
    try:
        policy = Policy(**req.model_dump())
    except ValueError as e:
        raise HTTPException(422, str(e)) from e
    before = asdict(h.drift.policy(model))
    h.drift.set_policy(model, policy, by=who.keyid)
    audit.change(model, before=before, after=asdict(policy))
    return {"model": model, **asdict(policy)}
