"""Deployments: send a model version to devices at once, and follow each one's progress.

A plain deployment is a one-wave rollout (hub/fleet/rollouts.py, ``kind="deployment"``)
without a gate: nothing halts it and nothing is rolled back, but it has what a rollout
has for each device: a re-send to a device that comes back silent (reconciliation), a
per-device time-out with retries, and a final state for every device. Unlike a
rollout's, a device offline for ``device_timeout_s`` after its send ends ``timed_out``
("never came back"), so a deployment always finishes. Deployments made before this
(``Deployment``, ``DeploymentDevice`` rows) are still read.

Events are kept ``EVENTS_MAX_AGE_S`` (a year by default, ``HubConfig.events_max_age_s``)
and then deleted by :func:`run_event_retention` from the hub's maintenance thread; the
deployment rows and each device's outcome stay.
"""

from __future__ import annotations

import builtins
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Final

from sqlalchemy import Engine
from sqlmodel import col, func, select

from hub.fleet import probation
from hub.fleet.rollout_spec import RolloutError, RolloutSpec
from hub.fleet.rollouts import Rollouts
from hub.store.expiry import delete_older
from hub.store.tables import (
    Deployment,
    DeploymentDevice,
    EventRecord,
    Rollout,
    RolloutDevice,
    session,
)
from shared.protocol import TERMINAL_STAGES

log = logging.getLogger(__name__)

EVENTS_MAX_AGE_S: Final = 365 * 86400.0  # seconds a deployment event is kept
DEVICE_TIMEOUT_S: Final = 600.0  # seconds of silence (or absence) before a device times out
RETRIES: Final = 2  # re-sends to a silent online device before it times out


class DeploymentError(Exception):
    """A deployment request that cannot be carried out."""


@dataclass
class DeploymentStatus:
    id: str
    model: str
    version: int
    created_at: float
    devices: int
    stages: dict[str, int]
    reasons: dict[str, int]
    converged: int  # devices that report the version healthy
    finished: bool  # every device has an outcome (healthy, failed, timed_out, …)
    per_device: list[dict[str, object]] = field(default_factory=list)
    state: str = "completed"  # the rollout's: running, completed (aborted by an operator)
    offline: int = 0  # devices without an outcome that are offline now
    device_timeout_s: float | None = None
    in_probation: int = 0  # activated, on probation now
    probation: list[dict[str, Any]] = field(default_factory=list)  # as a rollout's status
    healthy_without_traffic: int = 0  # healthy, but their probation saw no inference


class Deployments:
    """Plain deployments, carried out by the rollout engine as one-wave rollouts."""

    def __init__(self, engine: Engine, rollouts: Rollouts) -> None:
        self.engine = engine
        self.rollouts = rollouts

    def create(
        self,
        model: str,
        version: int | None = None,
        device_ids: builtins.list[str] | None = None,
        *,
        device_timeout_s: float = DEVICE_TIMEOUT_S,
        retries: int = RETRIES,
        created_by: str | None = None,
        **spec: Any,
    ) -> Rollout:
        """Deploy ``model`` (latest version unless given) to devices (all known if None).

        Revoked devices are left out of "all" and refused by id. ``spec``: more
        :class:`RolloutSpec` fields (probation).

        Raises:
            RegistryError: unknown model or version.
            DeploymentError: no devices, or unknown or revoked device ids.
        """
        try:
            plain = RolloutSpec(
                model=model,
                version=version,
                devices=tuple(device_ids) if device_ids is not None else None,
                max_failure_ratio=1.0,  # ungated: never halts
                min_sample=1,
                device_timeout_s=device_timeout_s,
                retries=retries,
                rollback_on_halt=False,
                kind="deployment",
                offline_timeout=True,
                **spec,
            )
            return self.rollouts.create(plain, created_by=created_by)
        except RolloutError as e:
            raise DeploymentError(str(e)) from e

    def list(self) -> builtins.list[dict[str, Any]]:
        """Deployments, newest first: id, model, version, target, devices, created_at."""
        with session(self.engine) as s:
            old = [d.model_dump() for d in s.exec(select(Deployment))]
            plain = [r for r in s.exec(select(Rollout)) if r.spec.get("kind") == "deployment"]
            sizes = dict(
                s.exec(
                    select(RolloutDevice.rollout_id, func.count())
                    .where(col(RolloutDevice.rollout_id).in_([r.id for r in plain]))
                    .group_by(col(RolloutDevice.rollout_id))
                ).all()
            )
            new = [
                {
                    "id": r.id,
                    "model": r.model,
                    "version": r.version,
                    "target": r.target,
                    "created_at": r.created_at,
                    "devices": sizes.get(r.id, 0),
                }
                for r in plain
            ]
        return sorted(old + new, key=lambda d: d["created_at"], reverse=True)

    def status(self, deployment_id: str, *, per_device: bool = True) -> DeploymentStatus:
        """Counts per stage and reason, and each device's stage.

        Raises:
            DeploymentError: no such deployment.
        """
        try:
            st = self.rollouts.status(deployment_id)
        except RolloutError:
            return self._old_status(deployment_id, per_device=per_device)
        rows = self.rollouts.devices(deployment_id)
        return DeploymentStatus(
            id=st.id,
            model=st.model,
            version=st.version,
            created_at=st.created_at,
            devices=st.devices,
            stages=st.counts,
            reasons=dict(Counter(r.reason for r in rows if r.reason)),
            converged=st.converged,
            finished=st.finished,
            per_device=[
                {
                    "device": r.device_id,
                    "stage": r.state,
                    "reason": r.reason,
                    "detail": r.detail,
                    "outcome": probation.outcome(r),
                }
                for r in rows
            ]
            if per_device
            else [],
            state=st.state,
            offline=st.offline,
            device_timeout_s=float(st.spec.get("device_timeout_s", DEVICE_TIMEOUT_S)),
            in_probation=st.in_probation,
            probation=st.probation,
            healthy_without_traffic=st.healthy_without_traffic,
        )

    def _old_status(self, deployment_id: str, *, per_device: bool) -> DeploymentStatus:
        """A deployment made before deployments were rollouts."""
        with session(self.engine) as s:
            dep = s.get(Deployment, deployment_id)
            if dep is None:
                raise DeploymentError(f"no deployment {deployment_id!r}")
            rows = list(
                s.exec(
                    select(DeploymentDevice).where(DeploymentDevice.deployment_id == deployment_id)
                )
            )
        stages = Counter(r.stage for r in rows)
        reasons = Counter(r.reason for r in rows if r.reason)
        return DeploymentStatus(
            id=dep.id,
            model=dep.model,
            version=dep.version,
            created_at=dep.created_at,
            devices=len(rows),
            stages=dict(stages),
            reasons=dict(reasons),
            converged=stages.get("healthy", 0),
            finished=(done := all(r.stage in TERMINAL_STAGES for r in rows)),
            per_device=[
                {"device": r.device_id, "stage": r.stage, "reason": r.reason, "detail": r.detail}
                for r in rows
            ]
            if per_device
            else [],
            state="completed" if done else "running",
        )

    def events(
        self, deployment_id: str, device_id: str | None = None
    ) -> builtins.list[EventRecord]:
        with session(self.engine) as s:
            q = select(EventRecord).where(EventRecord.deployment_id == deployment_id)
            if device_id is not None:
                q = q.where(EventRecord.device_id == device_id)
            return list(s.exec(q.order_by(col(EventRecord.ts), col(EventRecord.id))))


def run_event_retention(engine: Engine, max_age_s: float, now: float | None = None) -> int:
    """Delete the deployment events older than ``max_age_s``; how many went."""
    if max_age_s <= 0:
        raise ValueError(f"max_age_s must be > 0, not {max_age_s}")
    cutoff = (time.time() if now is None else now) - max_age_s
    deleted = delete_older(engine, EventRecord, EventRecord.ts, cutoff)
    if deleted:
        log.info("event retention: deleted %d events older than %.0f s", deleted, max_age_s)
    return deleted
