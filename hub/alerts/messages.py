"""The alerts the hub sends, made from the rows that record what happened.

- a drift alert raised (``DriftEvent`` kind ``raised``) is ``EdgefleetDrift`` firing; its
  clear is the same alert (same fingerprint) resolved; gone stale (its device silent,
  hub/telemetry/drift_silence.py) it is resolved too, its annotations saying ``stale``
  and why; resumed (the device reports again) it fires again;
- a rollout halted by its failure gate is ``EdgefleetRolloutHalted`` firing (a halt is
  final: no resolved follows);
- a closed-loop run that ended is ``EdgefleetLoopRun``: ``failed`` firing with the reason,
  ``done`` resolved (``outcome`` ``succeeded``): nothing left to do.

Each message's ``source_key`` names the row it came from, so reading a row twice makes
one message.
"""

from __future__ import annotations

import time
import uuid
from typing import Final

from hub.alerts.payload import fingerprint
from hub.store.alert_tables import AlertMessage
from hub.store.tables import DriftAlert, DriftEvent, LoopRun, Rollout

__all__ = ["KINDS", "drift_message", "loop_message", "probe_message", "rollout_message"]

KINDS: Final = ("drift", "rollout", "loop")  # what a receiver may ask for


def drift_message(event: DriftEvent, alert: DriftAlert | None) -> AlertMessage:
    """A drift alert raised or resumed (firing), cleared or gone stale (resolved)."""
    identity = {
        "alertname": "EdgefleetDrift",
        "model": event.model,
        "scope": event.scope,
        "scope_id": event.scope_id,
        "drift_alert": str(event.alert_id),
    }
    version = alert.version if alert is not None else None
    features = ", ".join(event.features) or "-"
    where = f"{event.scope} {event.scope_id}" if event.scope != "fleet" else "the fleet"
    firing = event.kind in ("raised", "resumed")
    labels = {
        **identity,
        "severity": "warning",
        **({"version": str(version)} if version is not None else {}),
    }
    ending = {"raised": "", "resumed": " (its device reports again)", "stale": " stale"}
    summary = f"{event.model}: drift on {where}" + ending.get(event.kind, " cleared")
    devices = ", ".join(event.devices[:20]) + (" …" if len(event.devices) > 20 else "")
    starts = alert.opened_at if alert is not None else event.ts
    return AlertMessage(
        source_key=f"drift-event:{event.id}",
        kind="drift",
        model=event.model,
        status="firing" if firing else "resolved",
        fingerprint=fingerprint(identity),
        labels=labels,
        annotations={
            "summary": summary,
            "description": f"features: {features}; devices: {devices or '-'}",
            "state": {"raised": "open", "resumed": "open"}.get(event.kind, event.kind),
            **({"reason": event.detail} if event.detail else {}),
        },
        path=f"/drift/alerts?model={event.model}",
        starts_at=starts,
        ends_at=None if firing else event.ts,
    )


def rollout_message(rollout: Rollout) -> AlertMessage:
    """A rollout its failure gate halted."""
    identity = {"alertname": "EdgefleetRolloutHalted", "rollout": rollout.id}
    return AlertMessage(
        source_key=f"rollout:{rollout.id}:halted",
        kind="rollout",
        model=rollout.model,
        status="firing",
        fingerprint=fingerprint(identity),
        labels={
            **identity,
            "model": rollout.model,
            "version": str(rollout.version),
            "severity": "critical",
        },
        annotations={
            "summary": f"rollout {rollout.id} of {rollout.model} v{rollout.version} halted",
            "description": rollout.halted_reason or "halted",
        },
        path=f"/rollouts/{rollout.id}",
        starts_at=rollout.ended_at or rollout.created_at,
    )


def loop_message(run: LoopRun) -> AlertMessage:
    """A closed-loop run that ended: done (resolved) or failed (firing), with why."""
    identity = {"alertname": "EdgefleetLoopRun", "loop_run": run.id}
    failed = run.stage == "failed"
    outcome = "failed" if failed else "succeeded"
    version = run.version if run.version is not None else run.from_version
    if failed:
        summary = f"closed loop for {run.model}: run {run.id} failed"
    else:
        summary = f"closed loop for {run.model}: v{run.version} deployed by run {run.id}"
    return AlertMessage(
        source_key=f"loop:{run.id}:{run.stage}",
        kind="loop",
        model=run.model,
        status="firing" if failed else "resolved",
        fingerprint=fingerprint(identity),
        labels={
            **identity,
            "model": run.model,
            "outcome": outcome,
            "severity": "warning" if failed else "info",
            **({"version": str(version)} if version is not None else {}),
            **({"rollout": run.rollout_id} if run.rollout_id else {}),
        },
        annotations={"summary": summary, "description": run.detail or outcome},
        path=f"/loop/runs/{run.id}",
        starts_at=run.created_at,
        ends_at=None if failed else run.ended_at,
    )


def probe_message(receiver: str, by: str | None) -> AlertMessage:
    """A test alert for one receiver, sent at an operator's request."""
    identity = {"alertname": "EdgefleetTest", "receiver": receiver}
    now = time.time()
    return AlertMessage(
        source_key=f"test:{uuid.uuid4().hex}",
        kind="test",
        status="firing",
        fingerprint=fingerprint(identity),
        labels={**identity, "severity": "info"},
        annotations={
            "summary": f"a test alert for receiver {receiver}",
            "description": f"asked for by {by or 'an admin'}",
        },
        path="/alert-receivers",
        starts_at=now,
        ends_at=None,
    )
