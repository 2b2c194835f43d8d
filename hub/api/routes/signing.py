"""Admin API: the hub's signing keys (TUF roles and the director) and their rotation.

Rotation signs root N+1 with the root keys of N, so it needs them on the hub's machine
(``HubConfig.root_keys_dir``); with the root kept offline, stop the hub and use
``edgefleet keys rotate`` where the keys are.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, HTTPException
from pydantic import BaseModel, Field

from hub.api.deps import DENIALS, Audit, HubDep, operation_id
from hub.api.security import Admin
from hub.api.views.access import KeyRotation, SigningKeys
from hub.trust.repository import MAX_THRESHOLD, RepositoryError

router = APIRouter(prefix="/signing-keys", generate_unique_id_function=operation_id)

RoleName = Literal["root", "targets", "snapshot", "timestamp", "director"]


class RotateRequest(BaseModel):
    threshold: int | None = Field(default=None, ge=1, le=MAX_THRESHOLD)  # default: unchanged
    keys: int | None = Field(default=None, ge=1, le=MAX_THRESHOLD)  # default: as many as now


@router.get("", name="signing_key.list", response_model=SigningKeys, responses=DENIALS)
def signing_keys(h: HubDep, who: Admin) -> dict[str, Any]:
    """Each role's threshold and key ids, and how many of its private keys are here."""
    return h.trust.keys()


@router.post(
    "/{role}/rotate",
    name="signing_key.rotate",
    response_model=KeyRotation,
    responses={**DENIALS, 409: {"description": "the root keys are not on this machine"}},
)
def rotate(
    role: RoleName,
    h: HubDep,
    who: Admin,
    audit: Audit,
    req: Annotated[RotateRequest | None, Body()] = None,
) -> dict[str, Any]:
    """Replace every key of ``role``; devices learn it by walking the root chain."""
    before = h.trust.keys()[role]
    try:
        spec = req or RotateRequest()
        version = h.trust.rotate(role, threshold=spec.threshold, keys=spec.keys)
    except RepositoryError as e:
        raise HTTPException(409, str(e)) from e
    after = h.trust.keys()[role]
    audit.change(
        role,
        before={"keyids": before["keyids"], "threshold": before["threshold"]},
        after={"keyids": after["keyids"], "threshold": after["threshold"], "root": version},
    )
    return {"role": role, "root_version": version, **after}
