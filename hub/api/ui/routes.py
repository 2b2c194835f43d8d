"""The dashboard's routes: its page, sign-in and sign-out, and the one read the API lacks.

``GET /ui`` answers the sign-in page, or the dashboard itself for a live session (with
the session's CSRF token and the caller's role in ``<meta>`` tags). ``POST /ui/session``
takes an API key and answers a session cookie (hub/api/ui/sessions.py);
``POST /ui/session/end`` signs out. ``GET /ui/data/drift-series`` gives per-feature PSI
and JS over time and ``GET /ui/data/groups`` the device groups (hub/api/ui/reads.py).
The page's files are under ``/ui/static``.
"""

from __future__ import annotations

import html
from functools import cache
from importlib.resources import files
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, FastAPI, HTTPException, Query, Request, Response
from pydantic import BaseModel, Field
from starlette.responses import HTMLResponse, RedirectResponse
from starlette.staticfiles import StaticFiles

from hub.access.keys import Unauthenticated
from hub.api.deps import DENIALS, Audit, HubDep, KeysDep, operation_id
from hub.api.schemas import MODEL, TAG
from hub.api.security import Viewer, bearer_key, get_sessions
from hub.api.ui.reads import BUCKETS_MAX, device_groups, drift_series
from hub.api.ui.sessions import COOKIE, Session, SessionStore

__all__ = ["STATIC_PATH", "router", "serve_pages"]

STATIC_PATH = "/ui/static"  # where the dashboard's CSS and JavaScript are served
KEY_MAX = 200  # characters of an API key (ours are ~70)

router = APIRouter(prefix="/ui", generate_unique_id_function=operation_id, tags=["dashboard"])


class SignIn(BaseModel):
    key: str = Field(min_length=1, max_length=KEY_MAX)


@router.post("/session", name="ui.sign_in", include_in_schema=False)
def sign_in(
    request: Request,
    response: Response,
    keys: KeysDep,
    audit: Audit,
    req: Annotated[SignIn | None, Body()] = None,
) -> dict[str, Any]:
    """Check an API key (``{"key": ...}``, as the sign-in form sends it, or a script's
    ``Authorization: Bearer`` header) and open a session: the answer sets its cookie."""
    _same_origin(request)
    key = req.key if req is not None else bearer_key(request.headers.get("authorization", ""))
    if not key:
        raise HTTPException(422, 'send the API key to sign in with: {"key": "ef_..."}')
    try:
        who = keys.authenticate(key)
    except Unauthenticated as e:
        audit.unauthenticated(e.keyid)
        raise HTTPException(401, f"sign-in refused: {e}") from e
    audit.actor(who)
    sessions = get_sessions(request)
    token, _ = sessions.open(who)
    audit.change(who.keyid, after={"session": "opened"})
    response.set_cookie(
        COOKIE,
        token,
        max_age=int(sessions.policy.absolute_s),
        path="/",
        secure=request.url.scheme == "https",
        httponly=True,
        samesite="strict",
    )
    return {"name": who.name, "keyid": who.keyid, "role": who.role.value}


@router.post("/session/end", name="ui.sign_out", include_in_schema=False, responses=DENIALS)
def sign_out(request: Request, response: Response, who: Viewer) -> dict[str, Any]:
    """End the caller's session (a Bearer caller has none: nothing changes)."""
    ended = get_sessions(request).close(request.cookies.get(COOKIE))
    response.delete_cookie(COOKIE, path="/", httponly=True, samesite="strict")
    return {"signed_out": ended}


@router.get("/data/drift-series", name="ui.drift_series", responses=DENIALS)
def drift_over_time(
    h: HubDep,
    who: Viewer,
    model: Annotated[str, Query(pattern=MODEL)],
    scope: Literal["fleet", "device"] = "fleet",
    id: Annotated[str | None, Query(pattern=TAG)] = None,
    range_s: Annotated[float, Query(gt=0, le=7 * 86400)] = 1800.0,
    buckets: Annotated[int, Query(ge=1, le=BUCKETS_MAX)] = 30,
) -> dict[str, Any]:
    """Per-feature PSI and JS of the merged windows of each time bucket over the last
    ``range_s`` seconds, for the fleet or one device (``id``)."""
    if scope == "device" and id is None:
        raise HTTPException(422, "scope device needs an id")
    return drift_series(h.drift, model, id if scope == "device" else None, range_s, buckets)


@router.get("/data/groups", name="ui.groups", responses=DENIALS)
def groups(h: HubDep, who: Viewer) -> dict[str, list[str]]:
    """Every group (device tag) and its devices."""
    return device_groups(h.engine)


def serve_pages(app: FastAPI) -> None:
    """Add ``/ui`` (the page) and ``/ui/static`` (its files) to ``app``: plain routes, not
    API routes, like /docs; the data they show comes from the API with the session."""
    static = files("hub.api.ui") / "static"
    app.mount(STATIC_PATH, StaticFiles(directory=str(static)), name="ui-static")

    async def page(request: Request) -> Response:
        if request.url.path != "/ui":
            return RedirectResponse("/ui", status_code=308)
        sessions = get_sessions(request)
        found = _live_session(sessions, request.cookies.get(COOKIE))
        if found is None:
            return HTMLResponse(_template("signin.html"))
        return HTMLResponse(_dashboard(found))

    app.add_route("/ui", page, include_in_schema=False)
    app.add_route("/ui/", page, include_in_schema=False)


def _live_session(sessions: SessionStore, token: str | None) -> Session | None:
    try:
        return sessions.get(token)
    except Unauthenticated:
        return None


def _dashboard(s: Session) -> str:
    """The dashboard's page for session ``s``: its CSRF token, the caller's name and role."""
    who = s.principal
    fill = {
        "csrf": s.csrf,
        "role": who.role.value,
        "name": who.name,
        "keyid": who.keyid,
    }
    text = _template("dashboard.html")
    for name, value in fill.items():
        text = text.replace("{{" + name + "}}", html.escape(value, quote=True))
    return text


@cache
def _template(name: str) -> str:
    return (files("hub.api.ui") / "templates" / name).read_text(encoding="utf-8")


def _same_origin(request: Request) -> None:
    """Refuse a sign-in posted from another site (login CSRF): a browser names the page's
    origin in ``Origin``; a script without one (curl) is let through."""
    origin = request.headers.get("origin")
    if origin is None:
        return
    expected = f"{request.url.scheme}://{request.headers.get('host', '')}"
    if origin != expected:
        raise HTTPException(403, f"sign-in from another origin ({origin}) refused")
