"""The audit trail of the API: every mutating request (POST, PUT, PATCH, DELETE), allowed
or not, writes one record to the audit log (hub/access/audit.py), committed before the
response goes out (:class:`AuditMiddleware`). Routes add what they changed through
:func:`audit_context`. Secrets (API keys, enrolment tokens) never go in.

A refused call by nobody verified (its key failed, or it named no route) is recorded with
the actor ``unauthenticated`` and the keyid it claimed in ``claimed_keyid``, and is
summarised per caller and interval instead of one row each (hub/access/audit.py)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi import Request
from fastapi.routing import APIRoute
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hub.access.audit import UNAUTHENTICATED, AuditLog
from hub.access.keys import Principal
from hub.store.tables import AuditRecord


@dataclass
class AuditContext:
    """What one mutating request tells the audit log, filled in while it is handled."""

    actor_keyid: str | None = None
    actor_name: str | None = None
    role: str | None = None
    target: str | None = None
    before: dict[str, Any] | None = None
    after: dict[str, Any] | None = None
    detail: str | None = None
    claimed_keyid: str | None = None  # the keyid of a refused key: unverified
    verified: bool = False  # the caller's API key was accepted

    def actor(self, who: Principal) -> None:
        self.actor_keyid, self.actor_name, self.role = who.keyid, who.name, who.role.value
        self.verified = True

    def unauthenticated(self, claimed_keyid: str | None) -> None:
        """The caller's key was refused: the keyid it claimed is not who it is."""
        self.actor_keyid, self.actor_name, self.role = UNAUTHENTICATED, None, None
        self.claimed_keyid, self.verified = claimed_keyid, False

    def change(
        self,
        target: str,
        before: dict[str, Any] | None = None,
        after: dict[str, Any] | None = None,
    ) -> None:
        self.target, self.before, self.after = target, before, after


class AuditMiddleware:
    """Writes one audit record for every mutating request (POST, PUT, PATCH, DELETE).

    The record is committed before the response starts, so a client never sees the
    outcome of a call that left no record; a call that raised is recorded as a 500. A
    refused call by nobody verified goes to :meth:`AuditLog.write_refused` (summarised).
    """

    def __init__(self, app: ASGIApp, log: AuditLog) -> None:
        self.app = app
        self.log = log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in MUTATING_METHODS:
            await self.app(scope, receive, send)
            return
        ctx = AuditContext()
        scope.setdefault("state", {})["audit"] = ctx
        written = False

        async def record(status: int) -> None:
            nonlocal written
            if not written:
                written = True
                rec = audit_record(scope, ctx, status)
                summarised = rec.outcome != "ok" and not ctx.verified
                write = self.log.write_refused if summarised else self.log.write
                await run_in_threadpool(write, rec)

        async def send_recorded(message: Message) -> None:
            if message["type"] == "http.response.start":
                await record(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_recorded)
        except Exception:
            await record(500)
            raise


MUTATING_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
DETAIL_MAX = 500  # characters of an error message kept in a record
PATH_MAX = 300  # characters of a request path kept in a record


def audit_record(scope: Scope, ctx: AuditContext, status: int) -> AuditRecord:
    """The record of one request: the route's name is the action."""
    method = scope["method"]
    route = scope.get("route")
    # A route matched by path only (a 405) is not the action that was asked for.
    routed = isinstance(route, APIRoute) and method in (route.methods or ())
    action = route.name if routed and isinstance(route, APIRoute) else "unrouted"
    params = scope.get("path_params") or {}
    target = ctx.target or (str(next(iter(params.values()))) if routed and params else None)
    client = scope.get("client")
    ok = status < 400
    return AuditRecord(
        actor_keyid=ctx.actor_keyid,
        actor_name=ctx.actor_name,
        role=ctx.role,
        action=action,
        method=method,
        path=scope["path"][:PATH_MAX],
        target=target,
        before=ctx.before if ok else None,
        after=ctx.after if ok else None,
        outcome="ok" if ok else "denied" if status in (401, 403) else "error",
        status=status,
        detail=ctx.detail[:DETAIL_MAX] if ctx.detail else None,
        client=client[0] if client else None,
        claimed_keyid=ctx.claimed_keyid,
    )


def audit_context(request: Request) -> AuditContext:
    """The request's audit context (a throwaway one for requests that are not audited)."""
    ctx = getattr(request.state, "audit", None)
    if isinstance(ctx, AuditContext):
        return ctx
    return AuditContext()
