"""The API's error answers: FastAPI's own, plus the audit record's detail and the key check
a refused request must get first.

A request FastAPI refuses before the route's dependencies run (a malformed JSON body, a
path that fails validation) would otherwise tell a caller without a key what the route
expects: these handlers check the key first, so such a caller learns nothing but 401.
(hub/api/limits.py checks it earlier still, before the body is read.) A 422 never echoes a
large input back: each input is cut to :data:`INPUT_MAX` characters, at most
:data:`ERRORS_MAX` errors are listed. A value the database refuses to store or look up
(PostgreSQL: a NUL character in text; SQLite takes it) is a 422 too, never a 500.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import HTTPException, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from sqlalchemy.exc import DataError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from hub.api.audit import audit_context
from hub.api.security import authorize, bearer_key, required_role


async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
    """An HTTP error, after the key check; its detail goes in the audit record."""
    if exc.status_code not in (401, 403) and (denied := await _check_key_first(request)):
        return denied
    audit_context(request).detail = str(exc.detail)
    return await http_exception_handler(request, exc)


async def validation_error(request: Request, exc: RequestValidationError) -> Response:
    """A 422, after the key check; where and what was wrong goes in the audit record."""
    if denied := await _check_key_first(request):
        return denied
    # Where and what, never the input: it may hold a token.
    audit_context(request).detail = "; ".join(
        f"{'.'.join(str(p) for p in err.get('loc', ()))}: {err.get('msg', '')}"
        for err in exc.errors()
    )
    errors = [_brief(err) for err in exc.errors()[:ERRORS_MAX]]
    if len(exc.errors()) > ERRORS_MAX:
        errors.append({"msg": f"{len(exc.errors()) - ERRORS_MAX} more errors not listed"})
    return JSONResponse(status_code=422, content={"detail": jsonable_encoder(errors)})


async def database_refused(request: Request, exc: DataError) -> Response:
    """A 422 for a value the database cannot hold, in the database's words (never the value)."""
    if denied := await _check_key_first(request):
        return denied
    said = str(exc.orig).splitlines()[0] if exc.orig is not None else "a value out of range"
    detail = f"a value the database cannot store or search for: {said}"
    audit_context(request).detail = detail
    return JSONResponse(status_code=422, content={"detail": detail})


ERRORS_MAX = 20  # errors listed in a 422 answer
INPUT_MAX = 100  # characters of an offending input echoed in a 422 answer


def _brief(err: Any) -> dict[str, Any]:
    """One validation error with its input cut to :data:`INPUT_MAX` characters: a 422 never
    echoes a large input back."""
    brief = dict(err)
    if "input" in brief:
        value = brief["input"]
        text = value if isinstance(value, str) else json.dumps(jsonable_encoder(value))
        if len(text) > INPUT_MAX:
            brief["input"] = text[:INPUT_MAX] + f"... ({len(text)} characters)"
    return brief


async def _check_key_first(request: Request) -> Response | None:
    """The 401 or 403 for a request refused before its key was checked, else None.

    FastAPI reads and parses a JSON body before it runs the route's dependencies: when the
    body is malformed, check the key now, so a caller without one learns nothing but 401.
    """
    route = request.scope.get("route")
    role = required_role(route.dependant) if isinstance(route, APIRoute) else None
    if role is None or getattr(request.state, "principal", None) is not None:
        return None
    key = bearer_key(request.headers.get("authorization", ""))
    try:
        await run_in_threadpool(authorize, request, role, key)
    except HTTPException as e:
        audit_context(request).detail = str(e.detail)
        return await http_exception_handler(request, e)
    return None
