"""Views of rollouts, plain deployments, their devices and events
(hub/api/routes/rollouts.py, deployments.py)."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from hub.api.views.base import View

__all__ = [
    "DeploymentStatusView",
    "DeploymentView",
    "EventView",
    "RolloutDeviceView",
    "RolloutStatusView",
    "RolloutView",
]


class RolloutStatusView(View):
    """Counts per device state, the current wave (1-based), the failure ratio."""

    id: str
    model: str
    version: int
    state: str  # running | paused | completed | halted | aborted
    wave: int
    waves: int
    devices: int
    counts: dict[str, int]
    converged: int
    failures: int
    failure_ratio: float
    rolled_back: int
    offline: int
    finished: bool
    halted_reason: str | None
    created_at: float
    ended_at: float | None
    spec: dict[str, Any] = Field(default_factory=dict)
    in_probation: int = 0
    probation: list[dict[str, Any]] = Field(default_factory=list)
    healthy_without_traffic: int = 0
    by_class: dict[str, dict[str, Any]] = Field(default_factory=dict)


class RolloutView(View):
    """A rollout as listed (its row: the wave here is 0-based)."""

    id: str
    model: str
    version: int
    target: str
    state: str
    spec: dict[str, Any] = Field(default_factory=dict)
    waves: int
    wave: int
    group: str | None = None
    halted_reason: str | None = None
    created_by: str | None = None
    created_at: float
    ended_at: float | None = None


class RolloutDeviceView(View):
    rollout_id: str
    device_id: str
    wave: int = 0
    state: str  # pending | sent | a protocol stage | timed_out | skipped | rollback_sent
    reason: str | None = None
    detail: str | None = None
    previous_version: int | None = None
    attempts: int = 0
    timeouts: int = 0
    sent_at: float | None = None
    rollback_at: float | None = None
    updated_at: float
    probation: dict[str, Any] | None = None


class EventView(View):
    """An event a device reported for a deployment or rollout."""

    id: int | None = None
    device_id: str
    deployment_id: str
    model: str
    version: int
    stage: str
    reason: str | None = None
    detail: str | None = None
    ts: float


class DeploymentView(View):
    id: str
    model: str
    version: int
    target: str
    created_at: float
    devices: int


class DeploymentStatusView(View):
    id: str
    model: str
    version: int
    created_at: float
    devices: int
    stages: dict[str, int]
    reasons: dict[str, int]
    converged: int
    finished: bool
    per_device: list[dict[str, Any]] = Field(default_factory=list)
    state: str = "completed"
    offline: int = 0
    device_timeout_s: float | None = None
    in_probation: int = 0
    probation: list[dict[str, Any]] = Field(default_factory=list)
    healthy_without_traffic: int = 0
