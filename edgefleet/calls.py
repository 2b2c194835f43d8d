"""Each call of the hub's admin API described once, executed by the sync client
(edgefleet/client.py, httpx.Client) and the async one (edgefleet/client_async.py,
httpx.AsyncClient) alike (docs/adr/0029-typed-client-from-shared-views.md).

A client method decorated with :class:`endpoint` returns a :class:`Call`: the route's
operation (its OpenAPI operationId, a key of :data:`ROUTES`), the path's parameters, the
query, the body, and the response model the answer is read into. Looked up on a
:class:`SyncRunner` the method runs the call and returns the model; on an
:class:`AsyncRunner` it returns a coroutine of it. How an answer becomes a model or an
error is here too (:func:`read_answer`), so both clients raise the same errors.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Concatenate, Generic, ParamSpec, TypeVar, overload

import httpx
from pydantic import TypeAdapter

from edgefleet.refusals import render_detail

__all__ = [
    "ROUTES",
    "UPLOAD_BLOCK",
    "AsyncRunner",
    "Call",
    "HubClientError",
    "NeedsHubCheck",
    "SyncRunner",
    "Upload",
    "endpoint",
    "file_chunks",
    "given",
    "is_hub_health",
    "read_answer",
    "read_error",
]

T = TypeVar("T")
P = ParamSpec("P")

# Every route the client calls: operationId -> "METHOD /path" (the route's own template).
# tests/test_client_routes.py holds it against the app's routes.
ROUTES: dict[str, str] = {
    "health": "GET /health",
    "stats": "GET /stats",
    "device.enrol": "POST /enrol",
    "device.list": "GET /devices",
    "device.get": "GET /devices/{device_id}",
    "device.reenrol": "POST /devices/{device_id}/reenrol",
    "device.revoke": "POST /devices/{device_id}/revoke",
    "device.tags": "PUT /devices/{device_id}/tags",
    "enrol_token.create": "POST /enrol-tokens",
    "enrol_token.list": "GET /enrol-tokens",
    "enrol_token.revoke": "DELETE /enrol-tokens/{token_id}",
    "classes.list": "GET /device-classes",
    "classes.get": "GET /device-classes/{name}",
    "signing_key.list": "GET /signing-keys",
    "signing_key.rotate": "POST /signing-keys/{role}/rotate",
    "ca.show": "GET /ca",
    "ca.rotate": "POST /ca/rotation",
    "ca.prompt": "POST /ca/rotation/prompt",
    "ca.finish": "POST /ca/rotation/finish",
    "broker.certificate.renew": "POST /broker/certificate",
    "api_key.create": "POST /api-keys",
    "api_key.list": "GET /api-keys",
    "api_key.revoke": "DELETE /api-keys/{keyid}",
    "audit.list": "GET /audit",
    "model.train": "POST /models/train",
    "model.upload": "POST /models/{name}/upload",
    "model.retrain": "POST /models/{name}/retrain",
    "model.list": "GET /models",
    "model.versions": "GET /models/{name}",
    "model.runs": "GET /models/{name}/runs",
    "model.lineage": "GET /models/{name}/versions/{version}/lineage",
    "job.get": "GET /jobs/{job_id}",
    "dataset.upload": "POST /datasets/{name}",
    "dataset.list": "GET /datasets",
    "dataset.get": "GET /datasets/{ref}",
    "dataset.download": "GET /datasets/{ref}/file",
    "deployment.create": "POST /deployments",
    "deployment.list": "GET /deployments",
    "deployment.get": "GET /deployments/{deployment_id}",
    "deployment.events": "GET /deployments/{deployment_id}/events",
    "rollout.create": "POST /rollouts",
    "rollout.list": "GET /rollouts",
    "rollout.get": "GET /rollouts/{rollout_id}",
    "rollout.devices": "GET /rollouts/{rollout_id}/devices",
    "rollout.events": "GET /rollouts/{rollout_id}/events",
    "rollout.pause": "POST /rollouts/{rollout_id}/pause",
    "rollout.resume": "POST /rollouts/{rollout_id}/resume",
    "rollout.abort": "POST /rollouts/{rollout_id}/abort",
    "fleet.diff": "POST /fleet/diff",
    "fleet.apply": "POST /fleet/apply",
    "alert_receiver.create": "POST /alert-receivers",
    "alert_receiver.list": "GET /alert-receivers",
    "alert_receiver.get": "GET /alert-receivers/{name}",
    "alert_receiver.delete": "DELETE /alert-receivers/{name}",
    "alert_receiver.test": "POST /alert-receivers/{name}/test",
    "alert_delivery.list": "GET /alert-deliveries",
    "telemetry.device": "GET /telemetry/devices/{device_id}",
    "telemetry.group": "GET /telemetry/groups/{group}",
    "telemetry.performance": "GET /telemetry/performance",
    "drift.get": "GET /drift/models/{model}",
    "drift.alerts": "GET /drift/alerts",
    "drift.events": "GET /drift/events",
    "drift.policy": "GET /drift/policies/{model}",
    "drift.set_policy": "PUT /drift/policies/{model}",
    "capture.create": "POST /captures",
    "capture.get": "GET /captures/{capture_id}",
    "capture.datasets": "GET /captures/datasets",
    "capture.dataset": "GET /captures/datasets/{dataset_id}",
    "capture.label": "POST /captures/datasets/{dataset_id}/labels",
    "loop.policy.get": "GET /loop/policies/{name}",
    "loop.policy.set": "PUT /loop/policies/{name}",
    "loop.runs": "GET /loop/runs",
    "loop.run": "GET /loop/runs/{run_id}",
    "metrics": "GET /metrics",
}


class HubClientError(Exception):
    """The hub answered with an error; ``status``, the hub's own message, and its
    ``detail`` as sent (a 422's list of errors, each with its ``loc``)."""

    def __init__(self, status: int, message: str, detail: Any = None) -> None:
        super().__init__(f"hub answered {status}: {message}")
        self.status = status
        self.message = message
        self.detail = detail


class NeedsHubCheck(Exception):
    """The answer may not be the hub's (a 404, a 405, or not JSON): the client asks
    ``/health`` (HubConnectionError when it is not a hub's), then raises ``error`` (None:
    an answer no hub gives, HubConnectionError all the same)."""

    def __init__(self, error: HubClientError | None) -> None:
        super().__init__(str(error))
        self.error = error


@dataclass(frozen=True)
class Call(Generic[T]):
    """One request to the hub and the model its answer is read into (``answer``:
    a view class, ``list[View]``, or ``str`` for a text answer)."""

    op: str  # the route's operationId: a key of ROUTES
    answer: Any
    at: dict[str, Any] = field(default_factory=dict)  # the path's parameters
    params: dict[str, Any] | None = None
    json: Any = None
    upload: Upload | None = None  # the request body: a file's bytes, streamed
    created: bool = False  # add ``created``: whether the hub answered 201 Created

    @property
    def method(self) -> str:
        return ROUTES[self.op].split(" ", 1)[0]

    @property
    def path(self) -> str:
        return ROUTES[self.op].split(" ", 1)[1].format(**self.at)

    def request(self) -> dict[str, Any]:
        """httpx's keyword arguments for the request (what is set of them)."""
        kw = {"params": self.params, "json": self.json}
        return {k: v for k, v in kw.items() if v is not None}


@dataclass(frozen=True)
class Upload:
    """A request body sent as it is read: ``data``, or the file at ``path``;
    ``on_bytes`` is called with the bytes sent so far."""

    data: bytes | None = None
    path: Path | None = None
    on_bytes: Callable[[int], None] | None = None
    headers: dict[str, str] = field(
        default_factory=lambda: {"content-type": "application/octet-stream"}
    )

    def open(self) -> IO[bytes]:
        return self.path.open("rb") if self.path is not None else io.BytesIO(self.data or b"")


class SyncRunner:
    """A client that runs calls and returns their answers (HubClient)."""

    def run(self, call: Call[T]) -> T:
        raise NotImplementedError


class AsyncRunner:
    """A client that runs calls as coroutines (AsyncHubClient)."""

    async def run(self, call: Call[T]) -> T:
        raise NotImplementedError


class endpoint(Generic[P, T]):
    """A client method described once: ``describe(self, ...)`` returns the Call; on a sync
    client the method returns the answer, on an async one a coroutine of it."""

    def __init__(self, describe: Callable[Concatenate[Any, P], Call[T]]) -> None:
        self.describe = describe
        functools.update_wrapper(self, describe)  # type: ignore[arg-type]

    @overload
    def __get__(self, obj: None, owner: type) -> endpoint[P, T]: ...
    @overload
    def __get__(self, obj: SyncRunner, owner: type) -> Callable[P, T]: ...
    @overload
    def __get__(self, obj: AsyncRunner, owner: type) -> Callable[P, Coroutine[Any, Any, T]]: ...
    def __get__(self, obj: Any, owner: type) -> Any:
        if obj is None:
            return self
        describe = self.describe

        @functools.wraps(describe)
        def bound(*args: P.args, **kwargs: P.kwargs) -> Any:
            return obj.run(describe(obj, *args, **kwargs))

        return bound


def read_answer(call: Call[T], r: httpx.Response) -> T:
    """The answer as ``call.answer``.

    Raises:
        HubClientError: the hub refused or failed (4xx, 5xx).
        NeedsHubCheck: the answer may be something else's: check the URL is a hub's.
    """
    if r.status_code >= 400:
        raise read_error(r)
    if call.answer is str:
        return r.text  # type: ignore[return-value]
    try:
        body = r.json()
    except ValueError as e:
        raise NeedsHubCheck(None) from e
    if call.created and isinstance(body, dict):
        body["created"] = r.status_code == 201
    return TypeAdapter(call.answer).validate_python(body)  # type: ignore[no-any-return]


def read_error(r: httpx.Response) -> HubClientError | NeedsHubCheck:
    """The hub's refusal as a HubClientError (NeedsHubCheck around it when the answer
    may not be the hub's)."""
    error = HubClientError(r.status_code, _detail(r), _raw_detail(r))
    if r.status_code in (404, 405) or not _is_json(r):
        return NeedsHubCheck(error)  # a 404 from something else is "wrong --hub"
    return error


def is_hub_health(r: httpx.Response) -> bool:
    """``/health`` answered as a hub's does."""
    try:
        body = r.json()
    except ValueError:
        return False
    return r.status_code == 200 and isinstance(body, dict) and "broker_connected" in body


def given(**values: Any) -> dict[str, Any]:
    """The values that are not None."""
    return {k: v for k, v in values.items() if v is not None}


UPLOAD_BLOCK = 1 << 20  # bytes read from disk per request chunk


def file_chunks(f: IO[bytes], on_bytes: Callable[[int], None] | None = None) -> Iterator[bytes]:
    sent = 0
    while block := f.read(UPLOAD_BLOCK):
        yield block
        sent += len(block)
        if on_bytes:
            on_bytes(sent)


def _is_json(r: httpx.Response) -> bool:
    return str(r.headers.get("content-type", "")).startswith("application/json")


def _raw_detail(r: httpx.Response) -> Any:
    try:
        body = r.json()
    except ValueError:
        return None
    return body.get("detail") if isinstance(body, dict) else body


def _detail(r: httpx.Response) -> str:
    try:
        body = r.json()
        detail = body.get("detail", r.text) if isinstance(body, dict) else body
    except ValueError:
        return r.text[:300]
    return render_detail(detail)
