"""Views of devices, device classes, enrolment and revocation (hub/api/routes/devices.py,
classes.py, and a device's tags from rollouts.py)."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from hub.api.views.base import Exact, View

__all__ = [
    "DeviceClassView",
    "DeviceTags",
    "DeviceView",
    "EnrolResponse",
    "EnrolTokenCreated",
    "EnrolTokenView",
    "RevocationResult",
    "RevokedSince",
]


class RevokedSince(View):
    revoked_at: float
    reason: str  # an x509 CRL reason name
    by: str | None  # the API key id that revoked it


class DeviceView(Exact):
    """A device as the API shows it: ``status`` is ``revoked`` while it is, whatever the
    device last reported, and ``revoked`` says since when and why; ``tags`` are its tags
    (a group is a tag)."""

    id: str
    device_class: str | None = None
    runtime: str | None = None
    agent_version: str | None = None
    status: str = "unknown"  # online | offline | unknown | revoked
    root_version: int | None = None
    model: str | None = None  # the first model it runs (all of them: ``models``)
    version: int | None = None
    sha256: str | None = None
    models: dict[str, Any] | None = None  # {name: {"version", "sha256"}}
    first_seen: float
    last_seen: float
    revoked: RevokedSince | None = None
    tags: list[str] = Field(default_factory=list)


class DeviceClassView(View):
    """A device class, as its profile.toml describes it (hub/fleet/classes.py)."""

    name: str
    runtime: str  # onnxruntime | tflite
    artefact: str  # onnx | tflite
    interpreter: str
    architectures: list[str]
    memory_budget_mb: float
    latency_budget_us: float


class EnrolResponse(View):
    device_id: str
    root: str  # the TUF root.json to pin
    broker: str
    certificate: str | None = None  # PEM, for the key in the request's CSR
    ca: str | None = None  # PEM: the CA that signs device and broker certificates
    # from the device class's profile, when the hub knows the class: what the agent's
    # config should say
    runtime: str | None = None
    memory_budget_mb: float | None = None


class RevocationResult(View):
    device_id: str
    revoked_at: float
    reason: str
    by: str | None
    serials: list[str]
    # what the broker was told: reloaded, left to the operator, or a failed reload
    broker: str
    # what became of its open connection: "disconnected: …" (the broker's
    # dynamic-security plugin cut it and denies it every topic) or "not disconnected: …"
    connection: str = "not disconnected: unknown"


class EnrolTokenCreated(View):
    id: str
    token: str  # shown once: the hub keeps only a hash
    device_id: str | None
    expires_at: float


class EnrolTokenView(Exact):
    """An enrolment token as listed: never the token, never its hash."""

    id: str
    device_id: str | None = None  # when set, only this device may use the token
    reenrol: bool = False  # issued by an admin for a known device
    expires_at: float
    created_at: float
    created_by: str
    used_at: float | None = None
    used_by_device: str | None = None
    revoked_at: float | None = None


class DeviceTags(View):
    device: str
    tags: list[str]
