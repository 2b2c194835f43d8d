"""The client's calls on what the fleet sees and learns from, each described once
(edgefleet/calls.py; a part of :class:`edgefleet.client.HubClient` and
:class:`edgefleet.client_async.AsyncHubClient`): telemetry windows, live performance,
drift, captures and retraining, and the closed loop (docs/telemetry.md, docs/drift.md,
docs/capture.md, docs/loop.md)."""

from __future__ import annotations

from typing import Any

from edgefleet.calls import Call, endpoint, given
from hub.api.views.datasets import CapturedRows, CaptureView
from hub.api.views.models import JobView
from hub.api.views.observe import (
    DriftAlertView,
    DriftEventView,
    DriftPolicyView,
    DriftReport,
    LoopPolicyView,
    LoopRunView,
    Performance,
    Series,
)

__all__ = ["ObservingCalls"]


class ObservingCalls:
    """Calls that read telemetry, drift, captures and the loop."""

    @endpoint
    def telemetry(
        self,
        /,
        *,
        device: str | None = None,
        group: str | None = None,
        start: float | str | None = None,
        end: float | str | None = None,
        resolution_s: float | None = None,
    ) -> Call[Series]:
        """One device's or one group's (tag) telemetry windows merged per ``resolution_s``
        over ``[start, end)`` (epoch seconds, ISO 8601 or relative like ``"-2h"``; the hub
        defaults to the last hour)."""
        if (device is None) == (group is None):
            raise ValueError("name exactly one of device and group")
        params = given(start=start, end=end, resolution_s=resolution_s)
        if device is not None:
            return Call("telemetry.device", Series, at={"device_id": device}, params=params)
        return Call("telemetry.group", Series, at={"group": group}, params=params)

    @endpoint
    def performance(
        self,
        /,
        model: str,
        *,
        version: int | None = None,
        device: str | None = None,
        group: str | None = None,
        start: float | str | None = None,
        end: float | str | None = None,
    ) -> Call[Performance]:
        """Live accuracy or MAE / RMSE of ``model`` per version, from labelled predictions
        of one device, one group (tag) or the fleet (neither given), over ``[start, end)``
        (epoch seconds; the hub defaults to the last hour); for a classifier with a
        calibration table also ``estimated_accuracy`` / ``estimated_rows`` from the
        devices' confidence counts, labelled or not (docs/telemetry.md)."""
        params = given(
            model=model, version=version, device=device, group=group, start=start, end=end
        )
        return Call("telemetry.performance", Performance, params=params)

    @endpoint
    def drift(
        self, /, model: str, scope: str = "fleet", id: str | None = None, **range_: float | str
    ) -> Call[DriftReport]:
        """Per-feature PSI/JS of ``model`` for a device, group (tag) or the fleet;
        ``since``/``until`` (epoch seconds, ISO 8601 or relative like ``"-2h"``) bound the
        range. ``enough_data`` false (PSI/JS null) under the policy's ``min_rows``."""
        params: dict[str, Any] = {"scope": scope, **range_, **given(id=id)}
        return Call("drift.get", DriftReport, at={"model": model}, params=params)

    @endpoint
    def drift_alerts(
        self, /, state: str | None = None, model: str | None = None, limit: int | None = None
    ) -> Call[list[DriftAlertView]]:
        """Drift alerts, newest first: scope, devices, drifted features, latest scores."""
        params = given(state=state, model=model, limit=limit)
        return Call("drift.alerts", list[DriftAlertView], params=params)

    @endpoint
    def drift_events(
        self,
        /,
        since: float | str | None = None,
        model: str | None = None,
        limit: int | None = None,
    ) -> Call[list[DriftEventView]]:
        """Alerts raised and cleared, oldest first from ``since``."""
        params = given(since=since, model=model, limit=limit)
        return Call("drift.events", list[DriftEventView], params=params)

    @endpoint
    def drift_policy(self, /, model: str) -> Call[DriftPolicyView]:
        return Call("drift.policy", DriftPolicyView, at={"model": model})

    @endpoint
    def set_drift_policy(self, /, model: str, **policy: Any) -> Call[DriftPolicyView]:
        return Call("drift.set_policy", DriftPolicyView, at={"model": model}, json=policy)

    # -- data capture and retraining (docs/capture.md)

    @endpoint
    def start_capture(self, /, model: str, **spec: Any) -> Call[CaptureView]:
        """Ask devices (``devices=[...]`` or ``group=``) for ``rows`` rows over
        ``duration_s`` seconds or ``windows`` telemetry windows."""
        return Call("capture.create", CaptureView, json={"model": model, **spec})

    @endpoint
    def capture(self, /, capture_id: str) -> Call[CaptureView]:
        return Call("capture.get", CaptureView, at={"capture_id": capture_id})

    @endpoint
    def capture_datasets(self, /, model: str | None = None) -> Call[list[CapturedRows]]:
        """The rows captures produced (docs/capture.md)."""
        return Call("capture.datasets", list[CapturedRows], params=given(model=model or None))

    @endpoint
    def capture_dataset(self, /, dataset_id: str) -> Call[CapturedRows]:
        return Call("capture.dataset", CapturedRows, at={"dataset_id": dataset_id})

    @endpoint
    def label_capture(
        self, /, dataset_id: str, labels: list[tuple[int, int | str]]
    ) -> Call[CapturedRows]:
        """Labels for captured rows ((row, class)): a new version of those rows."""
        body = {"labels": [{"row": r, "label": label} for r, label in labels]}
        return Call("capture.label", CapturedRows, at={"dataset_id": dataset_id}, json=body)

    @endpoint
    def retrain(self, /, model: str, datasets: list[str], **options: Any) -> Call[JobView]:
        """Start a retrain job (poll it with ``wait_job``)."""
        body = {"datasets": datasets, **options}
        return Call("model.retrain", JobView, at={"name": model}, json=body)

    # -- the closed loop (docs/loop.md)

    @endpoint
    def loop_policy(self, /, model: str) -> Call[LoopPolicyView]:
        """The model's closed-loop policy (off unless an operator turned it on)."""
        return Call("loop.policy.get", LoopPolicyView, at={"name": model})

    @endpoint
    def set_loop_policy(self, /, model: str, **policy: Any) -> Call[LoopPolicyView]:
        """Replace the model's loop policy (every field; the hub's defaults for the rest)."""
        return Call("loop.policy.set", LoopPolicyView, at={"name": model}, json=policy)

    @endpoint
    def loop_runs(
        self, /, model: str | None = None, limit: int | None = None
    ) -> Call[list[LoopRunView]]:
        """Runs of the loop, newest first, each with its steps."""
        return Call("loop.runs", list[LoopRunView], params=given(model=model, limit=limit))

    @endpoint
    def loop_run(self, /, run_id: str) -> Call[LoopRunView]:
        return Call("loop.run", LoopRunView, at={"run_id": run_id})
