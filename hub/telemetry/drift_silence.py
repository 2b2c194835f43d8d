"""Drift alerts whose devices fell silent: stale, with the reason, until they report again.

A device alert follows its device's windows (hub/telemetry/drift.py): while the device
sends nothing, nothing would ever clear it. :func:`sweep` (the leader's maintenance runs it
every ``HubConfig.maintenance_s``) marks an open device alert ``stale`` once the hub has heard
nothing from its device for the model's ``Policy.silence_s`` (a telemetry window, idle
heartbeats included, or a drift window of that model), with the reason
(``stale: device d silent since <UTC time>``), and writes a ``stale`` event: the API, the
dashboard, ``GET /metrics`` and the webhooks (hub/alerts/) show it. A stale alert whose
device is heard from again is ``resumed`` (open again); the k-of-n rule then follows its
windows as before, and clears it when they are calm.

Group and fleet alerts do not go stale: they clear when their scope's buckets hold no
exceeding window, which :meth:`DriftMonitor.evaluate_scopes` sees at each sweep too (it
otherwise runs only when drift arrives).

:func:`record` writes every drift event (raised, cleared, stale, resumed).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Final

from sqlalchemy import Engine, func
from sqlmodel import Session, col, select

from hub.store.tables import DriftAlert, DriftEvent, DriftWindow, Telemetry, session
from hub.telemetry.drift_policy import load_policy

__all__ = ["STALE", "last_heard", "record", "resume", "sweep"]

log = logging.getLogger(__name__)

STALE: Final = "stale"  # DriftAlert.state while its device is silent


def record(s: Session, alert: DriftAlert, kind: str, now: float, detail: str | None = None) -> None:
    """Write one drift event of ``alert`` (and log it)."""
    assert alert.id is not None
    s.add(
        DriftEvent(
            ts=now,
            alert_id=alert.id,
            kind=kind,
            model=alert.model,
            scope=alert.scope,
            scope_id=alert.scope_id,
            features=list(alert.features),
            devices=list(alert.devices),
            detail=detail,
        )
    )
    log.warning(
        "drift: alert %s %s for %s, %s %s: %s",
        alert.id,
        kind,
        alert.model,
        alert.scope,
        alert.scope_id,
        detail or ", ".join(alert.features) or "-",
    )


def last_heard(s: Session, device_id: str, model: str) -> float | None:
    """When the device last reported: its newest telemetry window's end, or drift window
    of ``model`` (the device's clock, as stored); None if never."""
    telemetry = s.exec(select(func.max(Telemetry.end)).where(Telemetry.device_id == device_id))
    drift = s.exec(
        select(func.max(DriftWindow.ts)).where(
            DriftWindow.device_id == device_id, DriftWindow.model == model
        )
    )
    heard = [t for t in (telemetry.one(), drift.one()) if t is not None]
    return max(heard) if heard else None


def resume(s: Session, alert: DriftAlert, now: float, why: str) -> None:
    """A stale alert open again: its device reports."""
    alert.state, alert.stale_reason, alert.updated_at = "open", None, now
    s.add(alert)
    record(s, alert, "resumed", now, why)


def sweep(engine: Engine, now: float) -> dict[str, int]:
    """Mark silent devices' open alerts stale and heard-from stale ones open again; how
    many of each. One alert per transaction, its row locked (PostgreSQL): an ingest that
    judges or resumes it meanwhile waits, or is waited for and then seen, so one return
    is one event; and holding one lock at a time, the sweep cannot deadlock with it."""
    counts = {"stale": 0, "resumed": 0}
    with session(engine) as s:
        ids = s.exec(
            select(DriftAlert.id).where(
                DriftAlert.scope == "device", col(DriftAlert.state).in_(("open", STALE))
            )
        ).all()
    for alert_id in ids:
        with session(engine) as s:
            alert = s.exec(
                select(DriftAlert).where(DriftAlert.id == alert_id).with_for_update()
            ).first()
            if alert is None or alert.state not in ("open", STALE):
                continue
            kind = _judge(s, alert, now, load_policy(s, alert.model).silence_s)
            s.commit()
        if kind is not None:
            counts[kind] += 1
    return counts


def _judge(s: Session, alert: DriftAlert, now: float, silence_s: float) -> str | None:
    heard = last_heard(s, alert.scope_id, alert.model)
    silent = heard is None or now - heard > silence_s
    if alert.state == "open" and silent:
        since = heard if heard is not None else alert.updated_at
        reason = f"stale: device {alert.scope_id} silent since {_utc(since)}"
        alert.state, alert.stale_reason, alert.updated_at = STALE, reason, now
        s.add(alert)
        record(s, alert, STALE, now, reason)
        return "stale"
    if alert.state == STALE and not silent:
        resume(s, alert, now, f"device {alert.scope_id} reports again")
        return "resumed"
    return None


def _utc(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
