"""The hub's admin API (FastAPI; OpenAPI docs at /docs, served with no CDN by
hub/api/docs.py): :func:`create_app` puts it in front of a running :class:`~hub.app.Hub`.

Devices and their enrolment, signing keys, rollouts, telemetry, the closed loop,
captures and datasets, drift, models, deployments, alert receivers and deliveries, API
keys and the audit log: one router per resource in hub/api/routes/, listed in
:data:`ROUTERS`. Bad requests get a 4xx with a message that says what is wrong
(hub/api/errors.py).

Every route but ``/health`` (a liveness probe) and ``/enrol`` (which takes a one-time
enrolment token) needs an API key (``Authorization: Bearer ef_<keyid>_<secret>``) of the
role it names (hub/api/security.py): viewer for reading, operator for training, uploads,
deployments and enrolment tokens, admin for API keys, re-enrolment and the audit log.
The dashboard at ``/ui`` (hub/api/ui/) signs an operator in with a key and answers a
session cookie, which every route accepts in place of the key (with a CSRF token for a
change). The key is checked, and the request body capped (1 MiB for JSON; the uploads
keep their own caps), before anything reads the body (hub/api/limits.py).
Each route's name is its OpenAPI operationId and, for a mutating route, the action in its
audit records (hub/api/audit.py).
"""

from __future__ import annotations

from fastapi import APIRouter, FastAPI
from fastapi.exceptions import RequestValidationError
from sqlalchemy.exc import DataError
from starlette.exceptions import HTTPException as StarletteHTTPException

from hub.access.audit import AuditLog
from hub.access.keys import ApiKeys
from hub.api.audit import AuditMiddleware
from hub.api.deps import operation_id
from hub.api.docs import serve_docs
from hub.api.errors import database_refused, http_error, validation_error
from hub.api.limits import LIST_BODY_MAX, BodyLimit
from hub.api.metrics import RequestMetrics, metrics_registry
from hub.api.routes import (
    access,
    alerts,
    captures,
    certificates,
    classes,
    datasets,
    deployments,
    devices,
    drift,
    fleet,
    health,
    lineage,
    loop,
    models,
    rollouts,
    signing,
    telemetry,
)
from hub.api.ui import routes as ui
from hub.api.ui.headers import SecurityHeaders
from hub.api.ui.sessions import SessionPolicy, SessionStore, key_checker
from hub.app import Hub

# In the order of the OpenAPI document.
ROUTERS: tuple[APIRouter, ...] = (
    health.router,
    devices.router,
    classes.router,
    signing.router,
    certificates.router,
    rollouts.router,
    telemetry.router,
    loop.router,
    captures.router,
    datasets.router,
    drift.router,
    models.router,
    lineage.router,
    deployments.router,
    fleet.router,
    alerts.router,
    access.router,
    ui.router,
)


def create_app(hub: Hub, sessions: SessionPolicy | None = None) -> FastAPI:
    """The admin API of ``hub``, with its API keys and audit log in the hub's database,
    and the dashboard at /ui (its sessions live ``sessions`` long: the defaults of
    hub/api/ui/sessions.py unless given)."""
    app = FastAPI(
        title="edgefleet hub",
        version="0.1.0",
        description="Train, quantise, sign and deploy models to a fleet of edge devices.",
        generate_unique_id_function=operation_id,
        docs_url=None,  # served by serve_docs, from the hub itself (no CDN)
        redoc_url=None,
    )
    app.state.hub = hub
    app.state.api_keys = ApiKeys(hub.engine, dev_mode=hub.config.dev_mode)
    app.state.audit = AuditLog(hub.engine)
    app.state.metrics = metrics_registry(hub)
    app.state.sessions = SessionStore(
        key_checker(hub.engine, dev_mode=hub.config.dev_mode), sessions
    )
    # The audit middleware wraps the body limit, so a refusal there is audited too.
    caps = {
        "model.upload": models.MAX_UPLOAD_BYTES,
        "dataset.upload": hub.dataset_store.max_bytes,
        **dict.fromkeys(
            ("deployment.create", "rollout.create", "capture.label", "fleet.diff", "fleet.apply"),
            LIST_BODY_MAX,
        ),
    }
    app.add_middleware(BodyLimit, routes=app.router.routes, caps=caps)
    app.add_middleware(AuditMiddleware, log=app.state.audit)
    app.add_middleware(SecurityHeaders)  # the dashboard's CSP, on its refusals too
    app.add_middleware(RequestMetrics, registry=app.state.metrics)  # outermost: all requests
    app.add_exception_handler(StarletteHTTPException, http_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(DataError, database_refused)  # type: ignore[arg-type]
    for router in ROUTERS:
        _include(app, router)
    serve_docs(app)
    ui.serve_pages(app)
    return app


def _include(app: FastAPI, router: APIRouter) -> None:
    """Add the router's routes to the app itself, in order.

    ``app.include_router`` (FastAPI 0.137 and later) keeps an included router as one
    opaque entry of ``app.routes``; the role table and the audit check walk ``app.routes``
    for every route (docs/security.md), so each route goes there as it is.
    """
    app.router.routes.extend(router.routes)
