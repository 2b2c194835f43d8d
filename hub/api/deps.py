"""What every route of the admin API depends on: the hub, the audit context, and the
401/403 answers a protected route documents."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Request

from hub.api.audit import AuditContext, audit_context
from hub.app import Hub

MAX_INT = 2**31 - 1  # the largest version, seed or count a request may carry

# The 401/403 every protected route may answer, for the OpenAPI document.
DENIALS: dict[int | str, dict[str, Any]] = {
    401: {"description": "missing, invalid or revoked API key"},
    403: {"description": "the key's role is below the role this route needs"},
}


def get_hub(request: Request) -> Hub:
    hub: Hub = request.app.state.hub
    return hub


HubDep = Annotated[Hub, Depends(get_hub)]
Audit = Annotated[AuditContext, Depends(audit_context)]
