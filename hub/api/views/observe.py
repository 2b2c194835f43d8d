"""Views of what the fleet sees: telemetry series, live performance, drift reports,
alerts, events and policies, and the closed loop (hub/api/routes/telemetry.py, drift.py,
loop.py)."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from hub.api.views.base import View

__all__ = [
    "DriftAlertView",
    "DriftEventView",
    "DriftPolicyView",
    "DriftReport",
    "LoopPolicyView",
    "LoopRunView",
    "Performance",
    "Series",
]


class Series(View):
    """One device's (``device``) or group's (``group``) windows merged per resolution."""

    devices: int
    start: float
    end: float
    resolution_s: float
    points: list[dict[str, Any]]


class Performance(View):
    """Live accuracy or MAE / RMSE per version, of one device, a group or the fleet."""

    model: str
    version: int | None
    scope: str  # device | group | fleet
    devices: int | None
    start: float
    end: float
    versions: list[dict[str, Any]]


class DriftReport(View):
    model: str
    scope: str
    id: str
    since: float | None
    until: float | None
    policy: dict[str, Any]
    versions: list[dict[str, Any]]


class DriftAlertView(View):
    id: int
    model: str
    version: int | None = None
    scope: str  # device | group | fleet
    scope_id: str
    state: str  # open | stale | cleared
    opened_at: float
    updated_at: float
    cleared_at: float | None = None
    stale_reason: str | None = None  # while stale: which device is silent since when
    devices: list[str] = Field(default_factory=list)
    features: list[str] = Field(default_factory=list)
    scores: dict[str, Any] = Field(default_factory=dict)


class DriftEventView(View):
    id: int
    ts: float
    alert_id: int
    kind: str  # raised | cleared | stale | resumed
    model: str
    scope: str
    scope_id: str
    features: list[str] = Field(default_factory=list)
    devices: list[str] = Field(default_factory=list)
    detail: str | None = None


class DriftPolicyView(View):
    model: str
    psi_threshold: float
    js_threshold: float
    k: int
    n: int
    min_rows: int
    scope_window_s: float
    silence_s: float


class LoopPolicyView(View):
    model: str
    enabled: bool
    capture_rows: int
    capture_s: float
    canary_percent: float
    waves: int
    max_failure_ratio: float
    min_sample: int
    cooldown_s: float
    gather_s: float
    updated_by: str | None = None
    updated_at: float | None = None


class LoopRunView(View):
    """One turn of the loop: alert, capture, retrain, canary to the drifted devices."""

    id: str
    model: str
    from_version: int | None = None
    alerts: list[int] = Field(default_factory=list)
    devices: list[str] = Field(default_factory=list)
    features: list[str] = Field(default_factory=list)
    stage: str  # capturing | retraining | deploying | done | failed | skipped
    capture_id: str | None = None
    dataset_id: str | None = None
    job_id: str | None = None
    version: int | None = None
    rollout_id: str | None = None
    detail: str | None = None
    steps: list[dict[str, Any]] = Field(default_factory=list)
    created_at: float
    updated_at: float
    ended_at: float | None = None
