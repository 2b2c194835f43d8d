"""Admin API: the fleet as code. ``POST /fleet/diff`` says what a fleet file would change,
``POST /fleet/apply`` makes the changes (hub/declared/; ``edgefleet diff`` / ``apply``)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, HTTPException

from hub.access.keys import Role
from hub.api.deps import DENIALS, Audit, HubDep, operation_id
from hub.api.security import Operator, Viewer
from hub.api.views.fleet import FleetChanges
from hub.declared.apply import ApplyError, apply
from hub.declared.document import FleetDocument
from hub.declared.plan import DeclarationError, plan
from hub.fleet.rollout_spec import RolloutError

router = APIRouter(prefix="/fleet", generate_unique_id_function=operation_id)

Document = Annotated[FleetDocument, Body(description="a fleet file, as JSON")]


@router.post("/diff", name="fleet.diff", response_model=FleetChanges, responses=DENIALS)
def diff(h: HubDep, who: Viewer, doc: Document) -> dict[str, Any]:
    """What applying the file would change, in order, and what it would leave to a person;
    changes nothing."""
    try:
        return plan(h, doc).as_dict()
    except DeclarationError as e:
        raise _unresolved(e) from e


@router.post("/apply", name="fleet.apply", response_model=FleetChanges, responses=DENIALS)
def apply_file(h: HubDep, who: Operator, audit: Audit, doc: Document) -> dict[str, Any]:
    """Make the file's changes: tags and groups, rollout, drift and loop policies, alert
    receivers (an admin's key: as ``POST /alert-receivers``), and a rollout for each group
    whose desired version differs from what it runs."""
    if doc.receivers and not who.role.allows(Role.admin):
        raise HTTPException(403, "the file declares alert receivers: an admin key applies it")
    try:
        done = apply(h, doc, by=who.keyid)
    except DeclarationError as e:
        raise _unresolved(e) from e
    except ApplyError as e:
        status = 409 if isinstance(e.__cause__, RolloutError) else 500
        audit.change("fleet", after={"changes": [c.detail for c in e.made], "error": str(e)})
        raise HTTPException(status, str(e)) from e
    audit.change("fleet", after={"changes": [c.detail for c in done.changes]})
    return done.as_dict()


def _unresolved(e: DeclarationError) -> HTTPException:
    """A 422 in FastAPI's shape: each problem with its place in the body."""
    detail = [{"loc": ["body", *loc], "msg": msg, "type": "unresolved"} for loc, msg in e.problems]
    return HTTPException(422, detail)
