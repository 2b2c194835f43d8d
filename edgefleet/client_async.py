"""The hub's admin API as coroutines (httpx.AsyncClient): every call of
:class:`edgefleet.client.HubClient`, from the same descriptions (edgefleet/endpoints.py,
edgefleet/client_observe.py), with the same answers and errors (docs/client.md)::

    async with AsyncHubClient(url, api_key=key) as hub:
        devices, jobs = await asyncio.gather(hub.devices(), hub.job(job_id))
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import IO, Any, TypeVar

import httpx

from edgefleet.calls import (
    AsyncRunner,
    Call,
    NeedsHubCheck,
    file_chunks,
    is_hub_health,
    read_answer,
    read_error,
)
from edgefleet.client import JOB_POLL_S, READY_REASONS, job_ended, not_ready, refusal
from edgefleet.client_observe import ObservingCalls
from edgefleet.connection import NOT_A_HUB, HubConnectionError, connection_error
from edgefleet.endpoints import FleetCalls
from hub.api.views.health import Health
from hub.api.views.models import JobView

__all__ = ["AsyncHubClient"]

T = TypeVar("T")


class AsyncHubClient(AsyncRunner, FleetCalls, ObservingCalls):
    def __init__(self, base_url: str, *, api_key: str | None = None, timeout: float = 30.0) -> None:
        headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
        self.url = base_url.rstrip("/")
        self._http = httpx.AsyncClient(base_url=base_url, timeout=timeout, headers=headers)

    async def close(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncHubClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _send(self, method: str, path: str, **kw: Any) -> httpx.Response:
        try:
            return await self._http.request(method, path, **kw)
        except httpx.TransportError as e:
            raise connection_error(self.url, _as_sync_says(e)) from e

    async def run(self, call: Call[T]) -> T:
        """Send ``call`` and read its answer into its response model."""
        kw = call.request()
        try:
            if call.upload is None:
                return read_answer(call, await self._send(call.method, call.path, **kw))
            up = call.upload
            with up.open() as f:
                body = _chunks(f, up.on_bytes) if up.on_bytes or up.path else up.data
                r = await self._send(call.method, call.path, content=body, headers=up.headers, **kw)
            return read_answer(call, r)
        except NeedsHubCheck as e:
            await self._check_is_hub()
            if e.error is None:
                raise HubConnectionError(self.url, NOT_A_HUB) from None
            raise e.error from None

    async def _check_is_hub(self) -> Health:
        """``/health``'s answer; HubConnectionError unless it answers as a hub does."""
        r = await self._send("GET", "/health")
        if not is_hub_health(r):
            raise HubConnectionError(self.url, NOT_A_HUB)
        return Health.model_validate(r.json())

    async def health(self) -> Health:
        return await self._check_is_hub()

    async def wait_ready(self, timeout: float = 60.0, interval: float = 0.25) -> Health:
        """Poll ``/health`` until a hub answers (as :meth:`HubClient.wait_ready`)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                return await self.health()
            except HubConnectionError as e:
                if not e.reason.startswith(READY_REASONS):
                    raise
                if time.monotonic() > deadline:
                    raise not_ready(self.url, timeout, e) from e
            await asyncio.sleep(interval)

    async def download_dataset(self, ref: str, dest: Path) -> Path:
        """Write the version's file, byte for byte, to ``dest``."""
        try:
            async with self._http.stream("GET", f"/datasets/{ref}/file") as r:
                if r.status_code >= 400:
                    await r.aread()
                    raise refusal(read_error(r))
                with dest.open("wb") as f:
                    async for block in r.aiter_bytes():
                        f.write(block)
        except httpx.TransportError as e:
            raise connection_error(self.url, _as_sync_says(e)) from e
        return dest

    async def wait_job(
        self,
        job_id: str,
        *,
        timeout: float = 600.0,
        on_progress: Callable[[JobView], None] | None = None,
    ) -> JobView:
        """Poll a job until it ends; raises HubClientError if it failed."""
        deadline = time.monotonic() + timeout
        while True:
            job = await self.job(job_id)
            if on_progress:
                on_progress(job)
            if job_ended(job, job_id, timeout, deadline):
                return job
            await asyncio.sleep(JOB_POLL_S)


async def _chunks(
    f: IO[bytes], on_bytes: Callable[[int], None] | None = None
) -> AsyncIterator[bytes]:
    """The file's blocks for httpx.AsyncClient (a body it streams is an async iterator)."""
    for block in file_chunks(f, on_bytes):
        yield block


def _as_sync_says(e: Exception) -> Exception:
    """The error as the sync client meets it: the async transport says "All connection
    attempts failed" where the sync one says "Connection refused" (the refusal is in the
    chain), so both clients raise the same HubConnectionError."""
    seen: BaseException | None = e
    while seen is not None:
        if isinstance(seen, ConnectionRefusedError):
            return ConnectionRefusedError("Connection refused")
        seen = seen.__cause__ or seen.__context__
    return e
