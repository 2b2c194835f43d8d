"""What every route of the admin API depends on: the hub, the API keys, the audit log and
the request's audit context, each an ``Annotated`` dependency; the 401/403 answers a
protected route documents; and the rule that names each route's OpenAPI operation.

Routes reach the hub one way, ``h: HubDep``: create_app (hub/api/main.py) puts the hub and
the API's own parts on ``app.state``, and the getters here read them back.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.routing import APIRoute

from hub.access.audit import AuditLog
from hub.access.keys import ApiKeys
from hub.api.audit import AuditContext, audit_context
from hub.app import Hub

# The 401/403 every protected route may answer, for the OpenAPI document.
DENIALS: dict[int | str, dict[str, Any]] = {
    401: {"description": "missing, invalid or revoked API key"},
    403: {"description": "the key's role is below the role this route needs"},
}


def operation_id(route: APIRoute) -> str:
    """A route's OpenAPI operationId: its name, which is also the action its audit records
    name (``deployment.create``)."""
    return route.name


def get_hub(request: Request) -> Hub:
    hub: Hub = request.app.state.hub
    return hub


def get_api_keys(request: Request) -> ApiKeys:
    keys: ApiKeys = request.app.state.api_keys
    return keys


def get_audit_log(request: Request) -> AuditLog:
    log: AuditLog = request.app.state.audit
    return log


HubDep = Annotated[Hub, Depends(get_hub)]
KeysDep = Annotated[ApiKeys, Depends(get_api_keys)]
AuditLogDep = Annotated[AuditLog, Depends(get_audit_log)]
Audit = Annotated[AuditContext, Depends(audit_context)]
