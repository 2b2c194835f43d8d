"""Probation, made visible: what a device said of its probation, and what the hub shows.

A device on probation serves the new version and watches its live traffic for
``probation_s`` seconds (longer, up to ``probation_max_s``, while it has seen fewer than
``probation_min_inferences``) before it calls the version ``healthy``. Its ``activated``
event carries those terms and its outcome the inferences and errors it judged
(docs/protocol.md); :func:`note` keeps them on the device's row of the rollout
(``RolloutDevice.probation``). A rollout may set the terms itself (``probation_s``,
``probation_min_inferences`` in its spec, sent in the deploy command); else the model's
manifest's apply.

While a device is on probation the inferences it has made so far come from its telemetry
windows of that version (:func:`on_probation`): they lag by up to one window.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

from sqlmodel import Session, col, func, select

from hub.store.tables import RolloutDevice, Telemetry

TERMS: Final = ("probation_s", "probation_min_inferences", "probation_max_s")  # activated
JUDGED: Final = ("inferences", "errors")  # on the outcome
SHOWN_MAX: Final = 10  # devices on probation listed in a status (the soonest to end first)


def note(row: RolloutDevice, stage: str, body: Mapping[str, Any], t: float) -> None:
    """Keep what an event says of the probation on the device's row (``t``: when)."""
    if stage == "activated" and any(k in body for k in TERMS):
        row.probation = {"since": t, **{k: body[k] for k in TERMS if k in body}}
    elif any(k in body for k in JUDGED):
        row.probation = {**(row.probation or {}), **{k: body[k] for k in JUDGED if k in body}}


def without_traffic(row: RolloutDevice) -> bool:
    """Healthy, but on no evidence: its probation saw no inference."""
    return row.state == "healthy" and (row.probation or {}).get("inferences") == 0


def outcome(row: RolloutDevice) -> str:
    """The device's state, with what its probation rested on when that is nothing."""
    return "healthy (no inferences during probation)" if without_traffic(row) else row.state


def on_probation(
    s: Session, rows: Sequence[RolloutDevice], model: str, version: int, t: float
) -> list[dict[str, Any]]:
    """The devices on probation now, the soonest to end first (at most ``SHOWN_MAX``):
    seconds left, the inferences seen so far and the minimum."""
    now_on = [r for r in rows if r.state == "activated" and r.probation]
    now_on.sort(key=lambda r: (_end(r), r.device_id))
    shown = now_on[:SHOWN_MAX]
    seen = _inferences_since(s, shown, model, version)
    out = []
    for r in shown:
        p = r.probation or {}
        out.append(
            {
                "device": r.device_id,
                "left_s": max(_end(r) - t, 0.0),
                "max_left_s": max(float(p["since"]) + float(p.get("probation_max_s", 0)) - t, 0),
                "inferences": seen.get(r.device_id, 0),
                "min_inferences": p.get("probation_min_inferences"),
            }
        )
    return out


def _end(r: RolloutDevice) -> float:
    p = r.probation or {}
    return float(p["since"]) + float(p.get("probation_s", 0.0))


def _inferences_since(
    s: Session, rows: Sequence[RolloutDevice], model: str, version: int
) -> dict[str, int]:
    """Inferences of ``model`` ``version`` in each device's windows since its activation."""
    out: dict[str, int] = {}
    for r in rows:
        since = float((r.probation or {})["since"])
        q = select(func.coalesce(func.sum(Telemetry.count), 0)).where(
            Telemetry.device_id == r.device_id,
            Telemetry.model == model,
            Telemetry.version == version,
            col(Telemetry.end) >= since,
        )
        out[r.device_id] = int(s.exec(q).one())
    return out
