"""Admin API: a model's closed-loop policy, and the runs of the loop (hub/loop.py)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, HTTPException, Query
from pydantic import ConfigDict

from hub.api.deps import DENIALS, Audit, HubDep, operation_id
from hub.api.schemas import MODEL
from hub.api.security import Operator, Viewer
from hub.api.views.observe import LoopPolicyView, LoopRunView
from hub.declared.document import LoopPolicySpec
from hub.loop import (
    RUNS_LIMIT,
    LoopError,
    PolicySettings,
)
from hub.ml.registry import RegistryError

router = APIRouter(prefix="/loop", generate_unique_id_function=operation_id)


class LoopPolicyRequest(LoopPolicySpec):
    model_config = ConfigDict(extra="ignore")  # as before fleet files: unknown keys ignored


@router.get(
    "/policies/{name}", name="loop.policy.get", response_model=LoopPolicyView, responses=DENIALS
)
def get_policy(name: str, h: HubDep, who: Viewer) -> dict[str, Any]:
    """The model's closed-loop policy (off unless an operator turned it on)."""
    return h.loop.policy(name).model_dump()


@router.put(
    "/policies/{name}", name="loop.policy.set", response_model=LoopPolicyView, responses=DENIALS
)
def set_policy(
    name: str,
    h: HubDep,
    who: Operator,
    audit: Audit,
    req: Annotated[LoopPolicyRequest, Body()],
) -> dict[str, Any]:
    """Turn the loop on or off for a model, and say how it captures and deploys."""
    before = h.loop.policy(name).model_dump(exclude={"updated_at", "updated_by"})
    try:
        row = h.loop.set_policy(name, PolicySettings(**req.model_dump()), by=who.keyid)
    except RegistryError as e:
        raise HTTPException(404, str(e)) from e
    except LoopError as e:
        raise HTTPException(422, str(e)) from e
    audit.change(name, before=before, after=req.model_dump())
    return row.model_dump()


@router.get("/runs", name="loop.runs", response_model=list[LoopRunView], responses=DENIALS)
def runs(
    h: HubDep,
    who: Viewer,
    model: Annotated[str | None, Query(pattern=MODEL)] = None,
    limit: Annotated[int, Query(ge=1, le=RUNS_LIMIT)] = RUNS_LIMIT,
) -> list[dict[str, Any]]:
    """Runs of the loop, newest first, each with its steps."""
    return [r.model_dump() for r in h.loop.runs(model, limit)]


@router.get("/runs/{run_id}", name="loop.run", response_model=LoopRunView, responses=DENIALS)
def run(run_id: str, h: HubDep, who: Viewer) -> dict[str, Any]:
    try:
        return h.loop.run(run_id).model_dump()
    except LoopError as e:
        raise HTTPException(404, str(e)) from e
