"""The request-body limits of the admin API, enforced before anything reads a body.

:class:`BodyLimit` is a pure ASGI middleware (it sees the body as it streams): it finds the
route a request is for, checks its key (or its dashboard session cookie, with the CSRF
token a change by cookie needs: hub/api/ui/sessions.py) and role first (a refused caller
gets 401 or 403 and not one byte of its body is read), refuses a declared
``Content-Length`` over the route's cap with 413, and cuts off a body that crosses the cap
as it arrives (a chunked one included) with 413. JSON routes, the public ones too, get
:data:`JSON_BODY_MAX`; the two upload routes keep their own caps (``caps``, by route name).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from fastapi import HTTPException, Request
from fastapi.routing import APIRoute
from starlette.concurrency import run_in_threadpool
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hub.api.errors import http_error
from hub.api.security import authorize, bearer_key, required_role

JSON_BODY_MAX = 2**20  # bytes; every route that takes JSON (or nothing)
# bytes; the JSON routes whose schema allows 100,000 device ids (64 characters each) or
# capture labels: the most such a body can validly be, with room to spare
LIST_BODY_MAX = 8 * 2**20


class BodyTooLarge(HTTPException):
    """413: the request body is over its route's cap."""

    def __init__(self, cap: int) -> None:
        super().__init__(413, f"request body over the {cap} byte limit of this route")


class BodyLimit:
    """Checks the key, then caps the body, of every HTTP request (see the module doc).

    Args:
        app: the app inside (FastAPI's exception handling and router).
        routes: the routes to match a request against (``app.routes``).
        caps: the body cap in bytes of the routes that take more than JSON, by route name.
    """

    def __init__(self, app: ASGIApp, routes: Sequence[BaseRoute], caps: Mapping[str, int]) -> None:
        self.app = app
        self.routes = routes
        self.caps = dict(caps)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route = self._route(scope)
        cap = self.caps.get(route.name, JSON_BODY_MAX) if route else JSON_BODY_MAX
        request = Request(scope)
        try:
            role = required_role(route.dependant) if route else None
            if role is not None:
                key = bearer_key(request.headers.get("authorization", ""))
                await run_in_threadpool(authorize, request, role, key)
            declared = request.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > cap:
                raise BodyTooLarge(cap)
        except HTTPException as e:
            if route is not None:  # the audit record names the route refused
                scope.update(route.matches(scope)[1], route=route)
            response = await http_error(request, e)
            await response(scope, receive, send)
            return
        await self.app(scope, _capped(receive, cap), send)

    def _route(self, scope: Scope) -> APIRoute | None:
        """The API route ``scope`` is for (path and method), else None."""
        for route in self.routes:
            if isinstance(route, APIRoute):
                match, _ = route.matches(scope)
                if match is Match.FULL:
                    return route
        return None


def _capped(receive: Receive, cap: int) -> Receive:
    """``receive``, raising :class:`BodyTooLarge` once the body crosses ``cap`` bytes."""
    size = 0

    async def receive_capped() -> Message:
        nonlocal size
        message = await receive()
        if message["type"] == "http.request":
            size += len(message.get("body", b""))
            if size > cap:
                raise BodyTooLarge(cap)
        return message

    return receive_capped
