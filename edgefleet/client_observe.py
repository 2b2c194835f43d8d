"""The client's calls on what the fleet sees and learns from (a part of
:class:`edgefleet.client.HubClient`): telemetry windows, live performance, drift,
captures and retraining, and the closed loop (docs/telemetry.md, docs/drift.md,
docs/capture.md, docs/loop.md)."""

from __future__ import annotations

from typing import Any

__all__ = ["ObservingCalls"]


class ObservingCalls:
    """Calls that read telemetry, drift, captures and the loop; ``_call`` is the client's."""

    def _call(self, method: str, path: str, **kw: Any) -> Any:
        raise NotImplementedError

    def telemetry(
        self,
        *,
        device: str | None = None,
        group: str | None = None,
        start: float | str | None = None,
        end: float | str | None = None,
        resolution_s: float | None = None,
    ) -> dict[str, Any]:
        """One device's or one group's (tag) telemetry windows merged per ``resolution_s``
        over ``[start, end)`` (epoch seconds, ISO 8601 or relative like ``"-2h"``; the hub
        defaults to the last hour)."""
        if (device is None) == (group is None):
            raise ValueError("name exactly one of device and group")
        path = f"/telemetry/devices/{device}" if device else f"/telemetry/groups/{group}"
        params = {"start": start, "end": end, "resolution_s": resolution_s}
        return dict(
            self._call("GET", path, params={k: v for k, v in params.items() if v is not None})
        )

    def performance(
        self,
        model: str,
        *,
        version: int | None = None,
        device: str | None = None,
        group: str | None = None,
        start: float | str | None = None,
        end: float | str | None = None,
    ) -> dict[str, Any]:
        """Live accuracy or MAE / RMSE of ``model`` per version, from labelled predictions
        of one device, one group (tag) or the fleet (neither given), over ``[start, end)``
        (epoch seconds; the hub defaults to the last hour); for a classifier with a
        calibration table also ``estimated_accuracy`` / ``estimated_rows`` from the
        devices' confidence counts, labelled or not (docs/telemetry.md)."""
        params = {
            "model": model,
            "version": version,
            "device": device,
            "group": group,
            "start": start,
            "end": end,
        }
        return dict(
            self._call(
                "GET",
                "/telemetry/performance",
                params={k: v for k, v in params.items() if v is not None},
            )
        )

    def drift(
        self, model: str, scope: str = "fleet", id: str | None = None, **range_: float | str
    ) -> dict[str, Any]:
        """Per-feature PSI/JS of ``model`` for a device, group (tag) or the fleet;
        ``since``/``until`` (epoch seconds, ISO 8601 or relative like ``"-2h"``) bound the
        range. ``enough_data`` false (PSI/JS null) under the policy's ``min_rows``."""
        params: dict[str, Any] = {"scope": scope, **range_}
        if id is not None:
            params["id"] = id
        return dict(self._call("GET", f"/drift/models/{model}", params=params))

    def drift_alerts(
        self, state: str | None = None, model: str | None = None, limit: int | None = None
    ) -> list[Any]:
        """Drift alerts, newest first: scope, devices, drifted features, latest scores."""
        given = (("state", state), ("model", model), ("limit", limit))
        return list(self._call("GET", "/drift/alerts", params=_given(given)))

    def drift_events(
        self, since: float | str | None = None, model: str | None = None, limit: int | None = None
    ) -> list[dict[str, Any]]:
        """Alerts raised and cleared, oldest first from ``since``."""
        given = (("since", since), ("model", model), ("limit", limit))
        return list(self._call("GET", "/drift/events", params=_given(given)))

    def drift_policy(self, model: str) -> dict[str, Any]:
        return dict(self._call("GET", f"/drift/policies/{model}"))

    def set_drift_policy(self, model: str, **policy: Any) -> dict[str, Any]:
        return dict(self._call("PUT", f"/drift/policies/{model}", json=policy))

    # -- data capture and retraining (docs/capture.md)

    def start_capture(self, model: str, **spec: Any) -> dict[str, Any]:
        """Ask devices (``devices=[...]`` or ``group=``) for ``rows`` rows over
        ``duration_s`` seconds or ``windows`` telemetry windows."""
        return dict(self._call("POST", "/captures", json={"model": model, **spec}))

    def capture(self, capture_id: str) -> dict[str, Any]:
        return dict(self._call("GET", f"/captures/{capture_id}"))

    def capture_datasets(self, model: str | None = None) -> list[dict[str, Any]]:
        """The rows captures produced (docs/capture.md)."""
        params = {"model": model} if model else {}
        return list(self._call("GET", "/captures/datasets", params=params))

    def capture_dataset(self, dataset_id: str) -> dict[str, Any]:
        return dict(self._call("GET", f"/captures/datasets/{dataset_id}"))

    def label_capture(self, dataset_id: str, labels: list[tuple[int, int | str]]) -> dict[str, Any]:
        """Labels for captured rows ((row, class)): a new version of those rows."""
        body = {"labels": [{"row": r, "label": label} for r, label in labels]}
        return dict(self._call("POST", f"/captures/datasets/{dataset_id}/labels", json=body))

    def retrain(self, model: str, datasets: list[str], **options: Any) -> dict[str, Any]:
        """Start a retrain job (poll it with :meth:`wait_job`)."""
        body = {"datasets": datasets, **options}
        return dict(self._call("POST", f"/models/{model}/retrain", json=body))

    # -- the closed loop (docs/loop.md)

    def loop_policy(self, model: str) -> dict[str, Any]:
        """The model's closed-loop policy (off unless an operator turned it on)."""
        return dict(self._call("GET", f"/loop/policies/{model}"))

    def set_loop_policy(self, model: str, **policy: Any) -> dict[str, Any]:
        """Replace the model's loop policy (every field; the hub's defaults for the rest)."""
        return dict(self._call("PUT", f"/loop/policies/{model}", json=policy))

    def loop_runs(self, model: str | None = None, limit: int | None = None) -> list[Any]:
        """Runs of the loop, newest first, each with its steps."""
        params = _given((("model", model), ("limit", limit)))
        return list(self._call("GET", "/loop/runs", params=params))

    def loop_run(self, run_id: str) -> dict[str, Any]:
        return dict(self._call("GET", f"/loop/runs/{run_id}"))


def _given(pairs: tuple[tuple[str, Any], ...]) -> dict[str, Any]:
    return {k: v for k, v in pairs if v is not None}
