"""A Python client for the hub's admin API (httpx). The CLI and the demo use it.

``HubClient(url, api_key="ef_...")`` sends the key as ``Authorization: Bearer``; every
route but ``/health`` and ``/enrol`` needs one (each route in hub/api/routes/ names its role).
Every call answers the route's own response model (hub/api/views/), read by attribute
(``client.device(d).status``) or, as the dicts it used to return, by key
(``client.device(d)["status"]``). :class:`edgefleet.client_async.AsyncHubClient` makes the
same calls as coroutines: both run the descriptions in edgefleet/endpoints.py and
edgefleet/client_observe.py (docs/client.md).

Errors, each one line an operator can act on::

    HubClientError         the hub answered 4xx/5xx (``status``, ``message``: a 422's
                           FastAPI list rendered one sentence per field; ``detail``: as sent)
    HubConnectionError     no edgefleet hub answered at that URL (``url``, ``reason``):
                           nothing listening, http vs https, or something else's endpoint
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx

from edgefleet.calls import (
    Call,
    HubClientError,
    NeedsHubCheck,
    SyncRunner,
    file_chunks,
    is_hub_health,
    read_answer,
    read_error,
)
from edgefleet.client_observe import ObservingCalls
from edgefleet.connection import NOT_A_HUB, HubConnectionError, connection_error
from edgefleet.endpoints import FleetCalls
from edgefleet.refusals import render_detail
from hub.api.views.health import Health
from hub.api.views.models import JobView

__all__ = ["HubClient", "HubClientError", "HubConnectionError", "render_detail"]

T = TypeVar("T")

READY_REASONS = ("connection refused", "no answer in time")  # a hub still starting


class HubClient(SyncRunner, FleetCalls, ObservingCalls):
    def __init__(self, base_url: str, *, api_key: str | None = None, timeout: float = 30.0) -> None:
        headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self.url = base_url.rstrip("/")
        self._http = httpx.Client(base_url=base_url, timeout=timeout, headers=headers)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> HubClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _send(self, method: str, path: str, **kw: Any) -> httpx.Response:
        try:
            return self._http.request(method, path, **kw)
        except httpx.TransportError as e:
            raise connection_error(self.url, e) from e

    def run(self, call: Call[T]) -> T:
        """Send ``call`` and read its answer into its response model."""
        kw = call.request()
        try:
            if call.upload is None:
                return read_answer(call, self._send(call.method, call.path, **kw))
            up = call.upload
            with up.open() as f:
                body = file_chunks(f, up.on_bytes) if up.on_bytes or up.path else up.data
                r = self._send(call.method, call.path, content=body, headers=up.headers, **kw)
            return read_answer(call, r)
        except NeedsHubCheck as e:
            raise self._unless_not_a_hub(e) from None

    def _unless_not_a_hub(self, e: NeedsHubCheck) -> Exception:
        """The error to raise for an answer that may not be a hub's: HubConnectionError
        when the server's /health is not a hub's, else the hub's refusal."""
        self._check_is_hub()
        return e.error or HubConnectionError(self.url, NOT_A_HUB)

    def _check_is_hub(self) -> Health:
        """``/health``'s answer; HubConnectionError unless it answers as a hub does."""
        r = self._send("GET", "/health")
        if not is_hub_health(r):
            raise HubConnectionError(self.url, NOT_A_HUB)
        return Health.model_validate(r.json())

    def health(self) -> Health:
        return self._check_is_hub()

    def wait_ready(self, timeout: float = 60.0, interval: float = 0.25) -> Health:
        """Poll ``/health`` until a hub answers (one starting in the background, say).

        Raises:
            HubConnectionError: still nothing after ``timeout`` seconds, or the server
                that answers is not a hub.
        """
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self.health()
            except HubConnectionError as e:
                # refused: not listening yet; no answer in time: `hub serve` binds its
                # port first and answers once the hub has started (seconds, on a busy box)
                if not e.reason.startswith(READY_REASONS):
                    raise
                if time.monotonic() > deadline:
                    raise not_ready(self.url, timeout, e) from e
            time.sleep(interval)

    def download_dataset(self, ref: str, dest: Path) -> Path:
        """Write the version's file, byte for byte, to ``dest``."""
        try:
            with self._http.stream("GET", f"/datasets/{ref}/file") as r:
                if r.status_code >= 400:
                    r.read()
                    raise refusal(read_error(r))
                with dest.open("wb") as f:
                    for block in r.iter_bytes():
                        f.write(block)
        except httpx.TransportError as e:
            raise connection_error(self.url, e) from e
        return dest

    def wait_job(
        self,
        job_id: str,
        *,
        timeout: float = 600.0,
        on_progress: Callable[[JobView], None] | None = None,
    ) -> JobView:
        """Poll a job until it ends; raises HubClientError if it failed."""
        deadline = time.monotonic() + timeout
        while True:
            job = self.job(job_id)
            if on_progress:
                on_progress(job)
            if job_ended(job, job_id, timeout, deadline):
                return job
            time.sleep(JOB_POLL_S)


JOB_POLL_S = 0.25  # seconds between polls of a job


def job_ended(job: JobView, job_id: str, timeout: float, deadline: float) -> bool:
    """Whether ``job`` is done.

    Raises:
        HubClientError: it failed.
        TimeoutError: it still runs past ``deadline``.
    """
    if job.status == "done":
        return True
    if job.status == "failed":
        raise HubClientError(422, job.error or "job failed")
    if time.monotonic() > deadline:
        raise TimeoutError(f"job {job_id} still {job.status} after {timeout}s")
    return False


def refusal(error: HubClientError | NeedsHubCheck) -> HubClientError:
    """The hub's refusal of a download (no /health check on a stream)."""
    if isinstance(error, NeedsHubCheck):
        return error.error or HubClientError(502, "not the hub's answer")
    return error


def not_ready(url: str, timeout: float, e: HubConnectionError) -> HubConnectionError:
    return HubConnectionError(
        url, f"nothing answered in {timeout:g} s ({e.reason.split(':')[0]}):"
        " is the hub running (`edgefleet hub serve`), and on this port?"
    )  # fmt: skip
