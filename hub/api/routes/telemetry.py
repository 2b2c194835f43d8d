"""Admin API: telemetry series per device or group, merged to a resolution, and live
model performance per version from labelled predictions, beside the accuracy estimated
from the devices' confidence counts where labels never come (hub/telemetry/queries.py,
hub/telemetry/estimates.py)."""

from __future__ import annotations

import time
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Query

from hub.api.deps import DENIALS, HubDep, operation_id
from hub.api.schemas import DEVICE, MAX_INT, MODEL, TAG
from hub.api.security import Viewer
from hub.api.views.observe import Performance, Series
from hub.app import Hub
from hub.store.tables import Device, session
from hub.telemetry.estimates import CalibrationSource
from hub.telemetry.instants import FORMS, InstantError, parse_instant
from hub.telemetry.queries import TelemetryQueryError, group_devices, performance, series
from shared.calibration import Calibration

router = APIRouter(prefix="/telemetry", generate_unique_id_function=operation_id)

DEFAULT_RANGE_S = 3600.0  # seconds: the last hour when no start is given
DEFAULT_RESOLUTION_S = 60.0  # seconds per point

# ``start`` / ``end``: epoch seconds, ISO 8601 or relative to now (hub/telemetry/instants.py)
Instant = Annotated[str | None, Query(max_length=64, description=f"a time: {FORMS}")]


def instants(start: str | None, end: str | None) -> tuple[float, float]:
    """``[start, end)`` in epoch seconds; the last hour up to now by default.

    Raises:
        HTTPException: 422 naming the accepted forms, for a value that is none of them.
    """
    now = time.time()
    try:
        until = parse_instant("end", end, now)
        since = parse_instant("start", start, now)
    except InstantError as e:
        raise HTTPException(422, str(e)) from e
    until = now if until is None else until
    return (until - DEFAULT_RANGE_S if since is None else since), until


@router.get(
    "/devices/{device_id}", name="telemetry.device", response_model=Series, responses=DENIALS
)
def device_series(
    device_id: Annotated[str, Path(pattern=DEVICE)],
    h: HubDep,
    who: Viewer,
    start: Instant = None,
    end: Instant = None,
    resolution_s: Annotated[float, Query(gt=0)] = DEFAULT_RESOLUTION_S,
) -> dict[str, Any]:
    """One device's windows that started in ``[start, end)`` (epoch seconds, ISO 8601 or
    relative to now like ``-2h``; the last hour by default), merged per ``resolution_s``:
    counts summed, latency percentiles from the merged histograms. 404 for a device the
    hub has never seen."""
    with session(h.engine) as s:
        if s.get(Device, device_id) is None:
            raise HTTPException(404, f"no device {device_id!r}")
    return _answer(h, [device_id], start, end, resolution_s, device=device_id)


@router.get("/groups/{group}", name="telemetry.group", response_model=Series, responses=DENIALS)
def group_series(
    group: Annotated[str, Path(pattern=TAG)],
    h: HubDep,
    who: Viewer,
    start: Instant = None,
    end: Instant = None,
    resolution_s: Annotated[float, Query(gt=0)] = DEFAULT_RESOLUTION_S,
) -> dict[str, Any]:
    """The windows of every device tagged ``group``, merged as for one device."""
    with session(h.engine) as s:
        devices = group_devices(s, group)
    return _answer(h, devices, start, end, resolution_s, group=group)


@router.get(
    "/performance",
    name="telemetry.performance",
    response_model=Performance,
    responses=DENIALS,
)
def model_performance(
    h: HubDep,
    who: Viewer,
    model: Annotated[str, Query(pattern=MODEL)],
    version: Annotated[int | None, Query(ge=1, le=MAX_INT)] = None,
    device: Annotated[str | None, Query(pattern=DEVICE)] = None,
    group: Annotated[str | None, Query(pattern=TAG)] = None,
    start: Instant = None,
    end: Instant = None,
) -> dict[str, Any]:
    """Live accuracy (a classifier) or MAE and RMSE (a regressor) of ``model``, per
    version, from the true labels devices joined to its predictions in windows that
    started in ``[start, end)`` (as for a device's series; the last hour by default). Of one
    ``device``, one ``group`` (a tag), or the fleet when neither is given. Labels count
    for the version that made the prediction, even when they came after a rollout.

    Beside it, for a classifier whose baseline has a calibration table,
    ``estimated_accuracy`` (and ``estimated_rows``, ``estimated_devices``): the accuracy
    its confidence predicts for the rows the same devices sketched in drift windows that
    ended in the range, labelled or not. A version shows what it has: either or both."""
    if device is not None and group is not None:
        raise HTTPException(422, "name at most one of device and group")
    since, until = instants(start, end)
    scope: dict[str, Any] = {"scope": "fleet", "devices": None}
    devices: list[str] | None = None
    with session(h.engine) as s:
        if device is not None:
            devices, scope = [device], {"scope": "device", "device": device, "devices": 1}
        elif group is not None:
            devices = group_devices(s, group)
            scope = {"scope": "group", "group": group, "devices": len(devices)}
        try:
            versions = performance(
                s, model, version, devices, since, until, calibration=_calibration(h, model)
            )
        except TelemetryQueryError as e:
            raise HTTPException(422, str(e)) from e
    return {
        "model": model,
        "version": version,
        **scope,
        "start": since,
        "end": until,
        "versions": versions,
    }


def _calibration(h: Hub, model: str) -> CalibrationSource:
    """A version's calibration table, from its signed baseline (cached by the monitor)."""

    def source(version: int) -> Calibration | None:
        baseline = h.drift.baseline(model, version)
        return None if baseline is None else baseline.calibration

    return source


def _answer(
    h: Hub,
    devices: list[str],
    start_text: str | None,
    end_text: str | None,
    resolution_s: float,
    **scope: str,
) -> dict[str, Any]:
    start, end = instants(start_text, end_text)
    try:
        with session(h.engine) as s:
            points = series(s, devices, start, end, resolution_s)
    except TelemetryQueryError as e:
        raise HTTPException(422, str(e)) from e
    return {
        **scope,
        "devices": len(devices),
        "start": start,
        "end": end,
        "resolution_s": resolution_s,
        "points": points,
    }
