"""A Python client for the hub's admin API (httpx). The CLI and the demo use it.

``HubClient(url, api_key="ef_...")`` sends the key as ``Authorization: Bearer``; every
route but ``/health`` and ``/enrol`` needs one (each route in hub/api/routes/ names its role).

Errors, each one line an operator can act on::

    HubClientError         the hub answered 4xx/5xx (``status``, ``message``: a 422's
                           FastAPI list rendered one sentence per field)
    HubConnectionError     no edgefleet hub answered at that URL (``url``, ``reason``):
                           nothing listening, http vs https, or something else's endpoint
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import httpx

from edgefleet.client_observe import ObservingCalls
from edgefleet.connection import NOT_A_HUB, HubConnectionError, connection_error
from edgefleet.refusals import render_detail

__all__ = ["HubClient", "HubClientError", "HubConnectionError", "render_detail"]


class HubClientError(Exception):
    """The hub answered with an error; ``status``, the hub's own message, and its
    ``detail`` as sent (a 422's list of errors, each with its ``loc``)."""

    def __init__(self, status: int, message: str, detail: Any = None) -> None:
        super().__init__(f"hub answered {status}: {message}")
        self.status = status
        self.message = message
        self.detail = detail


class HubClient(ObservingCalls):
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

    def _call(self, method: str, path: str, **kw: Any) -> Any:
        r = self._send(method, path, **kw)
        if r.status_code >= 400:
            if r.status_code in (404, 405) or not _is_json(r):
                self._check_is_hub()  # a 404 from something else is "wrong --hub"
            raise HubClientError(r.status_code, _detail(r), _raw_detail(r))
        try:
            return r.json()
        except ValueError as e:
            self._check_is_hub()
            raise HubConnectionError(self.url, NOT_A_HUB) from e

    def _check_is_hub(self) -> dict[str, Any]:
        """``/health``'s answer; HubConnectionError unless it answers as a hub does."""
        r = self._send("GET", "/health")
        try:
            body = r.json()
        except ValueError:
            body = None
        if r.status_code != 200 or not isinstance(body, dict) or "broker_connected" not in body:
            raise HubConnectionError(self.url, NOT_A_HUB)
        return body

    def health(self) -> dict[str, Any]:
        return self._check_is_hub()

    def wait_ready(self, timeout: float = 60.0, interval: float = 0.25) -> dict[str, Any]:
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
                if not e.reason.startswith(("connection refused", "no answer in time")):
                    raise
                if time.monotonic() > deadline:
                    raise HubConnectionError(
                        self.url, f"nothing answered in {timeout:g} s ({e.reason.split(':')[0]}):"
                        " is the hub running (`edgefleet hub serve`), and on this port?"
                    ) from e  # fmt: skip
            time.sleep(interval)

    def stats(self) -> dict[str, Any]:
        return dict(self._call("GET", "/stats"))

    def devices(self, status: str | None = None) -> list[dict[str, Any]]:
        params = {"status": status} if status else {}
        return list(self._call("GET", "/devices", params=params))

    def device(self, device_id: str) -> dict[str, Any]:
        """One device as last reported: status, class, model and version, last seen."""
        return dict(self._call("GET", f"/devices/{device_id}"))

    def device_classes(self) -> list[dict[str, Any]]:
        """The device classes the hub knows: runtime, artefact, architectures, budgets."""
        return list(self._call("GET", "/device-classes"))

    def device_class(self, name: str) -> dict[str, Any]:
        """One device class: runtime, artefact, architectures, budgets."""
        return dict(self._call("GET", f"/device-classes/{name}"))

    def enrol(
        self,
        device_id: str,
        token: str,
        device_class: str | None = None,
        csr: str | None = None,
    ) -> dict[str, Any]:
        """Trade a one-time enrolment token for the hub's root and broker (needs no key)."""
        body = {"device_id": device_id, "token": token, "device_class": device_class, "csr": csr}
        return dict(self._call("POST", "/enrol", json=body))

    def create_enrol_token(
        self, device_id: str | None = None, ttl_s: int | None = None
    ) -> dict[str, Any]:
        """A one-time enrolment token (``token``, shown once) and its ``expires_at``."""
        body: dict[str, Any] = {"device_id": device_id}
        if ttl_s is not None:
            body["ttl_s"] = ttl_s
        return dict(self._call("POST", "/enrol-tokens", json=body))

    def enrol_tokens(self, limit: int | None = None) -> list[dict[str, Any]]:
        """Enrolment tokens, newest first (never the tokens themselves)."""
        params = {"limit": limit} if limit else {}
        return list(self._call("GET", "/enrol-tokens", params=params))

    def revoke_enrol_token(self, token_id: str) -> dict[str, Any]:
        return dict(self._call("DELETE", f"/enrol-tokens/{token_id}"))

    def reenrol(self, device_id: str) -> dict[str, Any]:
        """A fresh enrolment token bound to a known device (admin)."""
        return dict(self._call("POST", f"/devices/{device_id}/reenrol"))

    def revoke_device(self, device_id: str, reason: str = "unspecified") -> dict[str, Any]:
        """Revoke the device's certificates (admin); re-enrolment lifts it."""
        return dict(self._call("POST", f"/devices/{device_id}/revoke", json={"reason": reason}))

    def signing_keys(self) -> dict[str, Any]:
        return dict(self._call("GET", "/signing-keys"))

    def rotate_signing_key(
        self, role: str, threshold: int | None = None, keys: int | None = None
    ) -> dict[str, Any]:
        """Replace a TUF role's (or the director's) keys; root N+1 is signed by N (admin)."""
        body = {k: v for k, v in (("threshold", threshold), ("keys", keys)) if v}
        return dict(self._call("POST", f"/signing-keys/{role}/rotate", json=body))

    def create_api_key(self, name: str, role: str) -> dict[str, Any]:
        """A new API key; ``key`` in the answer is the only time it is shown."""
        return dict(self._call("POST", "/api-keys", json={"name": name, "role": role}))

    def api_keys(self) -> list[dict[str, Any]]:
        return list(self._call("GET", "/api-keys"))

    def revoke_api_key(self, keyid: str) -> dict[str, Any]:
        return dict(self._call("DELETE", f"/api-keys/{keyid}"))

    def audit(self, **filters: Any) -> list[dict[str, Any]]:
        """Audit records, newest first; filters: actor, action, outcome, since, limit."""
        params = {k: v for k, v in filters.items() if v is not None}
        return list(self._call("GET", "/audit", params=params))

    def train(self, **settings: Any) -> dict[str, Any]:
        return dict(self._call("POST", "/models/train", json=settings))

    def upload(
        self,
        name: str,
        data: bytes,
        device_classes: list[str] | None = None,
        *,
        dataset: str | None = None,
        quantize: bool = True,
        unevaluated: bool = False,
        on_bytes: Callable[[int], None] | None = None,
        **gates: Any,
    ) -> dict[str, Any]:
        """Import an ONNX or TFLite model judged on ``dataset`` (a job); ``on_bytes`` is
        called with the bytes sent so far.

        ``POST /models/{name}/upload``.
        """
        params: dict[str, Any] = {"quantize": quantize, "unevaluated": unevaluated}
        params |= {k: v for k, v in gates.items() if v is not None}
        if device_classes:
            params["device_classes"] = device_classes
        if dataset is not None:
            params["dataset"] = dataset
        return dict(
            self._call(
                "POST",
                f"/models/{name}/upload",
                content=_file_chunks(io.BytesIO(data), on_bytes) if on_bytes else data,
                params=params,
                headers={"content-type": "application/octet-stream"},
            )
        )

    def runs(self, model: str) -> list[dict[str, Any]]:
        """Every build of ``model``: published and refused, with figures and gates."""
        return list(self._call("GET", f"/models/{model}/runs"))

    def lineage(self, model: str, version: int) -> dict[str, Any]:
        return dict(self._call("GET", f"/models/{model}/versions/{version}/lineage"))

    # ------------------------------------------------------------------ datasets

    def upload_dataset(
        self,
        name: str,
        path: Path,
        *,
        label: str | None = None,
        task: str | None = None,
        fmt: str | None = None,
        on_bytes: Callable[[int], None] | None = None,
    ) -> dict[str, Any]:
        """Upload a CSV, Parquet or NPZ file (streamed from disk) as a dataset version;
        ``on_bytes`` is called with the bytes sent so far.

        The answer has ``created``: False when the same bytes were already that version.
        """
        params = {"label": label, "task": task, "format": fmt, "filename": path.name}
        with path.open("rb") as f:
            r = self._send(
                "POST",
                f"/datasets/{name}",
                content=_file_chunks(f, on_bytes),
                params={k: v for k, v in params.items() if v is not None},
                headers={"content-type": "application/octet-stream"},
            )
        if r.status_code >= 400:
            raise HubClientError(r.status_code, _detail(r))
        return dict(r.json()) | {"created": r.status_code == 201}

    def datasets(self, name: str | None = None) -> list[dict[str, Any]]:
        return list(self._call("GET", "/datasets", params={"name": name} if name else {}))

    def dataset(self, ref: str) -> dict[str, Any]:
        """One dataset version: ``NAME``, ``NAME:SEQ`` or ``NAME:SHA256-PREFIX``."""
        return dict(self._call("GET", f"/datasets/{ref}"))

    def download_dataset(self, ref: str, dest: Path) -> Path:
        """Write the version's file, byte for byte, to ``dest``."""
        try:
            with self._http.stream("GET", f"/datasets/{ref}/file") as r:
                if r.status_code >= 400:
                    r.read()
                    raise HubClientError(r.status_code, _detail(r))
                with dest.open("wb") as f:
                    for block in r.iter_bytes():
                        f.write(block)
        except httpx.TransportError as e:
            raise connection_error(self.url, e) from e
        return dest

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

    def create_rollout(self, model: str, **spec: Any) -> dict[str, Any]:
        """Start a rollout (operator); ``spec``: see hub/fleet/rollouts.py ``RolloutSpec``."""
        return dict(self._call("POST", "/rollouts", json={"model": model, **spec}))

    def rollouts(self) -> list[dict[str, Any]]:
        return list(self._call("GET", "/rollouts"))

    def rollout(self, rollout_id: str) -> dict[str, Any]:
        return dict(self._call("GET", f"/rollouts/{rollout_id}"))

    def rollout_devices(self, rollout_id: str) -> list[dict[str, Any]]:
        return list(self._call("GET", f"/rollouts/{rollout_id}/devices"))

    def rollout_events(self, rollout_id: str, device: str | None = None) -> list[dict[str, Any]]:
        params = {"device": device} if device else None
        return list(self._call("GET", f"/rollouts/{rollout_id}/events", params=params))

    def rollout_action(self, rollout_id: str, action: str, **body: Any) -> dict[str, Any]:
        """``pause``, ``resume`` or ``abort`` (``rollback=True`` to put devices back)."""
        return dict(self._call("POST", f"/rollouts/{rollout_id}/{action}", json=body or None))

    def fleet_diff(self, document: dict[str, Any]) -> dict[str, Any]:
        """What applying a fleet file (as parsed from TOML) would change; changes nothing."""
        return dict(self._call("POST", "/fleet/diff", json=document))

    def fleet_apply(self, document: dict[str, Any]) -> dict[str, Any]:
        """Make a fleet file's changes; the changes made and what is left to a person."""
        return dict(self._call("POST", "/fleet/apply", json=document))

    def set_tags(self, device_id: str, tags: list[str]) -> dict[str, Any]:
        return dict(self._call("PUT", f"/devices/{device_id}/tags", json={"tags": tags}))

    def deployment(self, deployment_id: str, devices: bool = True) -> dict[str, Any]:
        return dict(self._call("GET", f"/deployments/{deployment_id}", params={"devices": devices}))

    def events(self, deployment_id: str, device: str | None = None) -> list[dict[str, Any]]:
        params = {"device": device} if device else {}
        return list(self._call("GET", f"/deployments/{deployment_id}/events", params=params))

    # -- fleet: plain deployments with their options, revocation by the CLI (fleetux)

    def create_deployment(self, model: str, **body: Any) -> dict[str, Any]:
        """``POST /deployments`` with any of its fields (devices, device_timeout_s, …)."""
        return dict(self._call("POST", "/deployments", json={"model": model, **body}))

    def deployments(self) -> list[dict[str, Any]]:
        """Deployments, newest first."""
        return list(self._call("GET", "/deployments"))


UPLOAD_BLOCK = 1 << 20  # bytes read from disk per request chunk


def _file_chunks(f: IO[bytes], on_bytes: Callable[[int], None] | None = None) -> Iterator[bytes]:
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
