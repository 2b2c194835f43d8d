"""A Python client for the hub's admin API (httpx). The CLI and the demo use it."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx


class HubClientError(Exception):
    """The hub answered with an error; ``status`` and the hub's own message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"hub answered {status}: {message}")
        self.status = status
        self.message = message


class HubClient:
    def __init__(self, base_url: str, *, timeout: float = 30.0) -> None:
        self._http = httpx.Client(base_url=base_url, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> HubClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, path: str, **kw: Any) -> Any:
        r = self._http.request(method, path, **kw)
        if r.status_code >= 400:
            try:
                detail = r.json().get("detail", r.text)
            except ValueError:
                detail = r.text
            raise HubClientError(r.status_code, str(detail))
        return r.json()

    def health(self) -> dict[str, Any]:
        return dict(self._call("GET", "/health"))

    def stats(self) -> dict[str, Any]:
        return dict(self._call("GET", "/stats"))

    def devices(self, status: str | None = None) -> list[dict[str, Any]]:
        params = {"status": status} if status else {}
        return list(self._call("GET", "/devices", params=params))

    def enrol(self, device_id: str, token: str, device_class: str | None = None) -> dict[str, Any]:
        body = {"device_id": device_id, "token": token, "device_class": device_class}
        return dict(self._call("POST", "/enrol", json=body))

    def train(self, **settings: Any) -> dict[str, Any]:
        return dict(self._call("POST", "/models/train", json=settings))

    def upload(
        self, name: str, data: bytes, device_classes: list[str] | None = None
    ) -> dict[str, Any]:
        params = {"device_classes": device_classes} if device_classes else {}
        return dict(
            self._call(
                "POST",
                f"/models/{name}/upload",
                content=data,
                params=params,
                headers={"content-type": "application/octet-stream"},
            )
        )

    def job(self, job_id: str) -> dict[str, Any]:
        return dict(self._call("GET", f"/jobs/{job_id}"))

    def wait_job(
        self,
        job_id: str,
        *,
        timeout: float = 600.0,
        on_progress: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """Poll a job until it ends; raises HubClientError if it failed."""
        deadline = time.monotonic() + timeout
        while True:
            job = self.job(job_id)
            if on_progress:
                on_progress(job)
            if job["status"] == "done":
                return job
            if job["status"] == "failed":
                raise HubClientError(422, job["error"] or "job failed")
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {job['status']} after {timeout}s")
            time.sleep(0.25)

    def models(self, name: str | None = None) -> list[dict[str, Any]]:
        return list(self._call("GET", f"/models/{name}" if name else "/models"))

    def deploy(
        self, model: str, version: int | None = None, devices: list[str] | None = None
    ) -> dict[str, Any]:
        body = {"model": model, "version": version, "devices": devices}
        return dict(self._call("POST", "/deployments", json=body))

    def deployment(self, deployment_id: str, devices: bool = True) -> dict[str, Any]:
        return dict(self._call("GET", f"/deployments/{deployment_id}", params={"devices": devices}))

    def events(self, deployment_id: str, device: str | None = None) -> list[dict[str, Any]]:
        params = {"device": device} if device else {}
        return list(self._call("GET", f"/deployments/{deployment_id}/events", params=params))
