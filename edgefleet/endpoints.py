"""The client's calls on the fleet, each described once (edgefleet/calls.py): devices and
their enrolment, device classes, keys, models and jobs, datasets, deployments, rollouts,
the fleet file and alert receivers. :class:`edgefleet.client.HubClient` runs them as
they are, :class:`edgefleet.client_async.AsyncHubClient` as coroutines."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgefleet.calls import Call, Upload, endpoint, given
from hub.api.views.access import (
    ApiKeyCreated,
    ApiKeyView,
    AuditRecordView,
    KeyRotation,
    SigningKeys,
)
from hub.api.views.alerts import Delivery, ReceiverCreated, ReceiverView
from hub.api.views.certificates import BrokerRenewal, CaFinish, CaPrompt, CaRotation, CaStatus
from hub.api.views.datasets import DatasetUploaded, DataVersionView
from hub.api.views.devices import (
    DeviceClassView,
    DeviceTags,
    DeviceView,
    EnrolResponse,
    EnrolTokenCreated,
    EnrolTokenView,
    RevocationResult,
)
from hub.api.views.fleet import FleetChanges
from hub.api.views.health import Stats
from hub.api.views.models import JobView, LineageView, ModelVersionView, TrainingRunView
from hub.api.views.rollouts import (
    DeploymentStatusView,
    DeploymentView,
    EventView,
    RolloutDeviceView,
    RolloutStatusView,
    RolloutView,
)

__all__ = ["FleetCalls"]


class FleetCalls:
    """Calls on devices, keys, models, datasets, deployments, rollouts and receivers."""

    @endpoint
    def stats(self, /) -> Call[Stats]:
        return Call("stats", Stats)

    @endpoint
    def metrics(self, /) -> Call[str]:
        """The hub and its fleet in the Prometheus text format."""
        return Call("metrics", str)

    # -- devices and enrolment

    @endpoint
    def devices(self, /, status: str | None = None) -> Call[list[DeviceView]]:
        return Call("device.list", list[DeviceView], params=given(status=status or None))

    @endpoint
    def device(self, /, device_id: str) -> Call[DeviceView]:
        """One device as last reported: status, class, model and version, last seen."""
        return Call("device.get", DeviceView, at={"device_id": device_id})

    @endpoint
    def device_classes(self, /) -> Call[list[DeviceClassView]]:
        """The device classes the hub knows: runtime, artefact, architectures, budgets."""
        return Call("classes.list", list[DeviceClassView])

    @endpoint
    def device_class(self, /, name: str) -> Call[DeviceClassView]:
        """One device class: runtime, artefact, architectures, budgets."""
        return Call("classes.get", DeviceClassView, at={"name": name})

    @endpoint
    def enrol(
        self,
        /,
        device_id: str,
        token: str,
        device_class: str | None = None,
        csr: str | None = None,
    ) -> Call[EnrolResponse]:
        """Trade a one-time enrolment token for the hub's root and broker (needs no key)."""
        body = {"device_id": device_id, "token": token, "device_class": device_class, "csr": csr}
        return Call("device.enrol", EnrolResponse, json=body)

    @endpoint
    def create_enrol_token(
        self, /, device_id: str | None = None, ttl_s: int | None = None
    ) -> Call[EnrolTokenCreated]:
        """A one-time enrolment token (``token``, shown once) and its ``expires_at``."""
        body: dict[str, Any] = {"device_id": device_id, **given(ttl_s=ttl_s)}
        return Call("enrol_token.create", EnrolTokenCreated, json=body)

    @endpoint
    def enrol_tokens(self, /, limit: int | None = None) -> Call[list[EnrolTokenView]]:
        """Enrolment tokens, newest first (never the tokens themselves)."""
        return Call("enrol_token.list", list[EnrolTokenView], params=given(limit=limit or None))

    @endpoint
    def revoke_enrol_token(self, /, token_id: str) -> Call[EnrolTokenView]:
        return Call("enrol_token.revoke", EnrolTokenView, at={"token_id": token_id})

    @endpoint
    def reenrol(self, /, device_id: str) -> Call[EnrolTokenCreated]:
        """A fresh enrolment token bound to a known device (admin)."""
        return Call("device.reenrol", EnrolTokenCreated, at={"device_id": device_id})

    @endpoint
    def revoke_device(
        self, /, device_id: str, reason: str = "unspecified"
    ) -> Call[RevocationResult]:
        """Revoke the device's certificates (admin); re-enrolment lifts it."""
        at = {"device_id": device_id}
        return Call("device.revoke", RevocationResult, at=at, json={"reason": reason})

    @endpoint
    def set_tags(self, /, device_id: str, tags: list[str]) -> Call[DeviceTags]:
        at = {"device_id": device_id}
        return Call("device.tags", DeviceTags, at=at, json={"tags": tags})

    # -- keys and the audit log

    @endpoint
    def signing_keys(self, /) -> Call[SigningKeys]:
        return Call("signing_key.list", SigningKeys)

    @endpoint
    def rotate_signing_key(
        self, /, role: str, threshold: int | None = None, keys: int | None = None
    ) -> Call[KeyRotation]:
        """Replace a TUF role's (or the director's) keys; root N+1 is signed by N (admin)."""
        body = {k: v for k, v in (("threshold", threshold), ("keys", keys)) if v}
        return Call("signing_key.rotate", KeyRotation, at={"role": role}, json=body)

    # -- the CA and the broker's certificate (docs/operations.md "Certificates")

    @endpoint
    def ca(self, /) -> Call[CaStatus]:
        """The CA, the retired ones, the devices behind, the broker's certificate (admin)."""
        return Call("ca.show", CaStatus)

    @endpoint
    def begin_ca_rotation(self, /, name: str | None = None) -> Call[CaRotation]:
        """A new CA; the broker trusts both; the devices are asked to renew (admin)."""
        return Call("ca.rotate", CaRotation, json=given(name=name))

    @endpoint
    def prompt_ca_rotation(self, /) -> Call[CaPrompt]:
        """Ask the devices still on a retired CA to renew now (admin)."""
        return Call("ca.prompt", CaPrompt)

    @endpoint
    def finish_ca_rotation(self, /, force: bool = False) -> Call[CaFinish]:
        """Drop the retired CAs; refused (409) while a device is behind, unless ``force``."""
        return Call("ca.finish", CaFinish, json={"force": force})

    @endpoint
    def renew_broker_certificate(self, /) -> Call[BrokerRenewal]:
        """Re-issue the broker's server certificate now and reload the broker (admin)."""
        return Call("broker.certificate.renew", BrokerRenewal)

    @endpoint
    def create_api_key(self, /, name: str, role: str) -> Call[ApiKeyCreated]:
        """A new API key; ``key`` in the answer is the only time it is shown."""
        return Call("api_key.create", ApiKeyCreated, json={"name": name, "role": role})

    @endpoint
    def api_keys(self, /) -> Call[list[ApiKeyView]]:
        return Call("api_key.list", list[ApiKeyView])

    @endpoint
    def revoke_api_key(self, /, keyid: str) -> Call[ApiKeyView]:
        return Call("api_key.revoke", ApiKeyView, at={"keyid": keyid})

    @endpoint
    def audit(self, /, **filters: Any) -> Call[list[AuditRecordView]]:
        """Audit records, newest first; filters: actor, action, outcome, since, limit."""
        return Call("audit.list", list[AuditRecordView], params=given(**filters))

    # -- models and jobs

    @endpoint
    def train(self, /, **settings: Any) -> Call[JobView]:
        return Call("model.train", JobView, json=settings)

    @endpoint
    def upload(
        self,
        /,
        name: str,
        data: bytes,
        device_classes: list[str] | None = None,
        *,
        dataset: str | None = None,
        quantize: bool = True,
        unevaluated: bool = False,
        on_bytes: Callable[[int], None] | None = None,
        **gates: Any,
    ) -> Call[JobView]:
        """Import an ONNX or TFLite model judged on ``dataset`` (a job); ``on_bytes`` is
        called with the bytes sent so far."""
        params: dict[str, Any] = {"quantize": quantize, "unevaluated": unevaluated}
        params |= given(**gates) | given(dataset=dataset)
        if device_classes:
            params["device_classes"] = device_classes
        body = Upload(data=data, on_bytes=on_bytes)
        return Call("model.upload", JobView, at={"name": name}, params=params, upload=body)

    @endpoint
    def runs(self, /, model: str) -> Call[list[TrainingRunView]]:
        """Every build of ``model``: published and refused, with figures and gates."""
        return Call("model.runs", list[TrainingRunView], at={"name": model})

    @endpoint
    def lineage(self, /, model: str, version: int) -> Call[LineageView]:
        return Call("model.lineage", LineageView, at={"name": model, "version": version})

    @endpoint
    def job(self, /, job_id: str) -> Call[JobView]:
        return Call("job.get", JobView, at={"job_id": job_id})

    @endpoint
    def models(self, /, name: str | None = None) -> Call[list[ModelVersionView]]:
        if name:
            return Call("model.versions", list[ModelVersionView], at={"name": name})
        return Call("model.list", list[ModelVersionView])

    # -- datasets

    @endpoint
    def upload_dataset(
        self,
        /,
        name: str,
        path: Path,
        *,
        label: str | None = None,
        task: str | None = None,
        fmt: str | None = None,
        on_bytes: Callable[[int], None] | None = None,
    ) -> Call[DatasetUploaded]:
        """Upload a CSV, Parquet or NPZ file (streamed from disk) as a dataset version;
        ``on_bytes`` is called with the bytes sent so far. ``created`` in the answer is
        False when the same bytes were already that version."""
        params = given(label=label, task=task, format=fmt, filename=path.name)
        body = Upload(path=path, on_bytes=on_bytes)
        at = {"name": name}
        return Call("dataset.upload", DatasetUploaded, at, params, upload=body, created=True)

    @endpoint
    def datasets(self, /, name: str | None = None) -> Call[list[DataVersionView]]:
        return Call("dataset.list", list[DataVersionView], params=given(name=name or None))

    @endpoint
    def dataset(self, /, ref: str) -> Call[DataVersionView]:
        """One dataset version: ``NAME``, ``NAME:SEQ`` or ``NAME:SHA256-PREFIX``."""
        return Call("dataset.get", DataVersionView, at={"ref": ref})

    # -- deployments and rollouts

    @endpoint
    def deploy(
        self, /, model: str, version: int | None = None, devices: list[str] | None = None
    ) -> Call[DeploymentStatusView]:
        body = {"model": model, "version": version, "devices": devices}
        return Call("deployment.create", DeploymentStatusView, json=body)

    @endpoint
    def create_deployment(self, /, model: str, **body: Any) -> Call[DeploymentStatusView]:
        """``POST /deployments`` with any of its fields (devices, device_timeout_s, …)."""
        return Call("deployment.create", DeploymentStatusView, json={"model": model, **body})

    @endpoint
    def deployments(self, /) -> Call[list[DeploymentView]]:
        """Deployments, newest first."""
        return Call("deployment.list", list[DeploymentView])

    @endpoint
    def deployment(self, /, deployment_id: str, devices: bool = True) -> Call[DeploymentStatusView]:
        at = {"deployment_id": deployment_id}
        return Call("deployment.get", DeploymentStatusView, at, params={"devices": devices})

    @endpoint
    def events(self, /, deployment_id: str, device: str | None = None) -> Call[list[EventView]]:
        at, params = {"deployment_id": deployment_id}, given(device=device or None)
        return Call("deployment.events", list[EventView], at, params)

    @endpoint
    def create_rollout(self, /, model: str, **spec: Any) -> Call[RolloutStatusView]:
        """Start a rollout (operator); ``spec``: see hub/fleet/rollouts.py ``RolloutSpec``."""
        return Call("rollout.create", RolloutStatusView, json={"model": model, **spec})

    @endpoint
    def rollouts(self, /) -> Call[list[RolloutView]]:
        return Call("rollout.list", list[RolloutView])

    @endpoint
    def rollout(self, /, rollout_id: str) -> Call[RolloutStatusView]:
        return Call("rollout.get", RolloutStatusView, at={"rollout_id": rollout_id})

    @endpoint
    def rollout_devices(self, /, rollout_id: str) -> Call[list[RolloutDeviceView]]:
        at = {"rollout_id": rollout_id}
        return Call("rollout.devices", list[RolloutDeviceView], at=at)

    @endpoint
    def rollout_events(
        self, /, rollout_id: str, device: str | None = None
    ) -> Call[list[EventView]]:
        at, params = {"rollout_id": rollout_id}, given(device=device or None)
        return Call("rollout.events", list[EventView], at, params)

    @endpoint
    def rollout_action(
        self, /, rollout_id: str, action: str, **body: Any
    ) -> Call[RolloutStatusView]:
        """``pause``, ``resume`` or ``abort`` (``rollback=True`` to put devices back)."""
        if action not in ("pause", "resume", "abort"):
            raise ValueError(f"no rollout action {action!r}: pause, resume or abort")
        at = {"rollout_id": rollout_id}
        return Call(f"rollout.{action}", RolloutStatusView, at, json=body or None)

    # -- the fleet file and alert receivers

    @endpoint
    def fleet_diff(self, /, document: dict[str, Any]) -> Call[FleetChanges]:
        """What applying a fleet file (as parsed from TOML) would change; changes nothing."""
        return Call("fleet.diff", FleetChanges, json=document)

    @endpoint
    def fleet_apply(self, /, document: dict[str, Any]) -> Call[FleetChanges]:
        """Make a fleet file's changes; the changes made and what is left to a person."""
        return Call("fleet.apply", FleetChanges, json=document)

    @endpoint
    def create_receiver(self, /, name: str, url: str, **spec: Any) -> Call[ReceiverCreated]:
        """A webhook receiver of alerts (admin); ``secret`` in the answer, when the hub
        made it, is the only time it is shown. ``spec``: secret, kinds, models."""
        body = {"name": name, "url": url, **given(**spec)}
        return Call("alert_receiver.create", ReceiverCreated, json=body)

    @endpoint
    def receivers(self, /) -> Call[list[ReceiverView]]:
        return Call("alert_receiver.list", list[ReceiverView])

    @endpoint
    def receiver(self, /, name: str) -> Call[ReceiverView]:
        return Call("alert_receiver.get", ReceiverView, at={"name": name})

    @endpoint
    def delete_receiver(self, /, name: str) -> Call[ReceiverView]:
        return Call("alert_receiver.delete", ReceiverView, at={"name": name})

    @endpoint
    def send_test_alert(self, /, name: str) -> Call[Delivery]:
        """Send the receiver a test alert now; the delivery after its first try."""
        return Call("alert_receiver.test", Delivery, at={"name": name})

    @endpoint
    def deliveries(
        self, /, receiver: str | None = None, status: str | None = None, limit: int | None = None
    ) -> Call[list[Delivery]]:
        """Deliveries of alerts, newest first, each with every attempt."""
        params = given(receiver=receiver, status=status, limit=limit)
        return Call("alert_delivery.list", list[Delivery], params=params)
