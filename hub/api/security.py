"""The API's access check: FastAPI dependencies that authenticate a request's API key
(hub/access/keys.py) and require a role; ``Viewer``, ``Operator`` and ``Admin`` are what
routes declare.

A request without a Bearer key may come from the dashboard with its session cookie
(hub/api/ui/sessions.py): the session stands for the key it was opened with, same role;
a change made that way must carry the session's CSRF token (403 otherwise)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from hub.access.keys import Principal, Role, Unauthenticated
from hub.api.audit import MUTATING_METHODS, audit_context
from hub.api.deps import get_api_keys
from hub.api.ui.sessions import COOKIE, CSRF_HEADER, CsrfRefused, SessionStore, check_csrf

bearer = HTTPBearer(auto_error=False, description="An API key: ef_<keyid>_<secret>")
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]


def authorize(request: Request, role: Role, key: str | None) -> Principal:
    """Check the key (or the session cookie) and the role of a request.

    Raises:
        HTTPException: 401 (no usable key or session, with ``WWW-Authenticate: Bearer``),
            403 (the key's role is below ``role``, or a change by cookie without its CSRF
            token).
    """
    ctx = audit_context(request)
    who = getattr(request.state, "principal", None)
    if not isinstance(who, Principal):  # not yet checked (hub/api/limits.py checks first)
        try:
            who = _caller(request, key)
        except Unauthenticated as e:
            ctx.unauthenticated(e.keyid)
            raise HTTPException(401, str(e), headers={"WWW-Authenticate": "Bearer"}) from e
        except CsrfRefused as e:
            ctx.actor(e.principal)
            raise HTTPException(403, str(e)) from e
        ctx.actor(who)
        request.state.principal = who
    if not who.role.allows(role):
        raise HTTPException(403, f"role {role.value} required; this key's role is {who.role}")
    return who


def _caller(request: Request, key: str | None) -> Principal:
    """Who a request comes from: its Bearer key, else its session cookie.

    Raises:
        Unauthenticated: no usable key or session.
        CsrfRefused: a change by cookie without the session's CSRF token.
    """
    cookie = request.cookies.get(COOKIE)
    if key is not None or cookie is None:
        return get_api_keys(request).authenticate(key)
    found = get_sessions(request).get(cookie)
    if request.method in MUTATING_METHODS:
        check_csrf(found, request.headers.get(CSRF_HEADER))
    return found.principal


def get_sessions(request: Request) -> SessionStore:
    """The dashboard's sessions (made by create_app, hub/api/main.py)."""
    sessions: SessionStore = request.app.state.sessions
    return sessions


def bearer_key(authorization: str) -> str | None:
    """The key of an ``Authorization: Bearer <key>`` header, else None."""
    scheme, _, key = authorization.partition(" ")
    return key.strip() if scheme.lower() == "bearer" else None


def require(role: Role) -> Callable[..., Principal]:
    """A dependency that lets in keys of ``role`` or above and returns the caller."""

    def dependency(request: Request, credentials: Credentials) -> Principal:
        return authorize(request, role, credentials.credentials if credentials else None)

    dependency.required_role = role  # type: ignore[attr-defined]  # read by required_role()
    return dependency


def required_role(dependant: Any) -> Role | None:
    """The role a route's dependency tree requires (None for a public route)."""
    for dep in getattr(dependant, "dependencies", []):
        role = getattr(dep.call, "required_role", None)
        if isinstance(role, Role):
            return role
        found = required_role(dep)
        if found is not None:
            return found
    return None


Viewer = Annotated[Principal, Depends(require(Role.viewer))]
Operator = Annotated[Principal, Depends(require(Role.operator))]
Admin = Annotated[Principal, Depends(require(Role.admin))]
