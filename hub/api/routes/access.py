"""Admin API: API keys (create, list, revoke) and the audit log, admin work all of it
(hub/access/ keeps them; docs/adr/0006-api-keys-roles-and-audit.md)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query
from pydantic import BaseModel, Field

from hub.access.audit import AUDIT_LIMIT_DEFAULT, AUDIT_LIMIT_MAX
from hub.access.keys import KEY_NAME_PATTERN, ApiKeyError, Role
from hub.api.deps import DENIALS, Audit, AuditLogDep, KeysDep, operation_id
from hub.api.security import Admin
from hub.api.views.access import ApiKeyCreated, ApiKeyView, AuditRecordView
from hub.store.tables import AuditRecord

router = APIRouter(generate_unique_id_function=operation_id)


class ApiKeyCreate(BaseModel):
    name: str = Field(pattern=KEY_NAME_PATTERN)
    role: Role


@router.post(
    "/api-keys",
    name="api_key.create",
    status_code=201,
    response_model=ApiKeyCreated,
    responses=DENIALS,
)
def create_api_key(req: ApiKeyCreate, who: Admin, keys: KeysDep, audit: Audit) -> ApiKeyCreated:
    """A new API key. The answer holds the key itself: the only time it is shown."""
    new = keys.create(req.name, req.role, created_by=who.keyid)
    public = ApiKeyView.model_validate(new.record)
    audit.change(public.keyid, after=public.model_dump())
    return ApiKeyCreated(**public.model_dump(), key=new.key)


@router.get("/api-keys", name="api_key.list", response_model=list[ApiKeyView], responses=DENIALS)
def list_api_keys(who: Admin, keys: KeysDep) -> list[Any]:
    """Every key, revoked ones too; never a secret or its hash."""
    return keys.list()


@router.delete(
    "/api-keys/{keyid}",
    name="api_key.revoke",
    response_model=ApiKeyView,
    responses={**DENIALS, 409: {"description": "already revoked, or the last admin key"}},
)
def revoke_api_key(keyid: str, who: Admin, keys: KeysDep, audit: Audit) -> Any:
    """Revoke a key at once. The last active admin key cannot be revoked."""
    try:
        row = keys.revoke(keyid)
    except ApiKeyError as e:
        raise HTTPException(404 if e.reason == "unknown" else 409, str(e)) from e
    audit.change(keyid, before={"revoked_at": None}, after={"revoked_at": row.revoked_at})
    return row


@router.get("/audit", name="audit.list", response_model=list[AuditRecordView], responses=DENIALS)
def audit_log(
    who: Admin,
    log: AuditLogDep,
    actor: Annotated[str | None, Query(description="keyid or key name")] = None,
    action: Annotated[str | None, Query(description="e.g. deployment.create")] = None,
    outcome: Literal["ok", "denied", "error"] | None = None,
    since: Annotated[float | None, Query(ge=0, description="seconds since the epoch")] = None,
    limit: Annotated[int, Query(ge=1, le=AUDIT_LIMIT_MAX)] = AUDIT_LIMIT_DEFAULT,
) -> list[AuditRecord]:
    """Audit records of mutating calls, newest first."""
    return log.query(actor=actor, action=action, outcome=outcome, since=since, limit=limit)
