"""Deployments: send a model version to devices and follow each one's progress.

This is the all-at-once strategy: every targeted device gets a deploy command at
once, and its progress comes back on ``events`` (written by hub/ingest/writer.py). Canary,
waves, rate limits and fleet rollback build on the same rows.

Events are kept ``EVENTS_MAX_AGE_S`` (a year by default, ``HubConfig.events_max_age_s``)
and then deleted by :func:`run_event_retention` from the hub's maintenance thread; the
deployment rows and each device's outcome stay.
"""

from __future__ import annotations

import builtins
import logging
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Final

from sqlalchemy import Engine
from sqlmodel import col, select

from hub.fleet.commands import CommandSender, RevokedDevices, no_revocations
from hub.ml.registry import Registry
from hub.store.expiry import delete_older
from hub.store.tables import Deployment, DeploymentDevice, Device, EventRecord, now, session
from shared.protocol import TERMINAL_STAGES

log = logging.getLogger(__name__)

EVENTS_MAX_AGE_S: Final = 365 * 86400.0  # seconds a deployment event is kept


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
    finished: bool  # every device reached an outcome (healthy, rolled_back, failed)
    per_device: list[dict[str, object]] = field(default_factory=list)


class Deployments:
    def __init__(
        self,
        engine: Engine,
        registry: Registry,
        commands: CommandSender,
        *,
        revoked: RevokedDevices = no_revocations,
    ) -> None:
        self.engine = engine
        self.registry = registry
        self.commands = commands
        self.revoked = revoked  # read when devices are chosen

    def create(
        self, model: str, version: int | None = None, device_ids: builtins.list[str] | None = None
    ) -> Deployment:
        """Deploy ``model`` (latest version unless given) to devices (all known if None).

        Revoked devices are left out of "all" and refused by id.

        Raises:
            RegistryError: unknown model or version.
            DeploymentError: no devices, or unknown or revoked device ids.
        """
        mv = self.registry.get(model, version)
        with session(self.engine) as s:
            known = set(s.exec(select(Device.id)))
        revoked = self.revoked()
        if device_ids is None:
            targets = sorted(known - revoked)
        else:
            unknown = sorted(set(device_ids) - known)
            barred = sorted(set(device_ids) & revoked)
            for what, bad in (("unknown", unknown), ("revoked", barred)):
                if bad:
                    shown = ", ".join(bad[:5]) + (" …" if len(bad) > 5 else "")
                    raise DeploymentError(f"{len(bad)} {what} device id(s): {shown}")
            targets = sorted(set(device_ids))
        if not targets:
            raise DeploymentError("no devices to deploy to (none has reported to this hub yet)")
        dep = Deployment(
            id=uuid.uuid4().hex[:12],
            model=mv.name,
            version=mv.version,
            target=mv.target,
            devices=len(targets),
        )
        with session(self.engine) as s:
            s.add(dep)
            s.flush()
            s.add_all(DeploymentDevice(deployment_id=dep.id, device_id=d) for d in targets)
            s.commit()
        body = {"deployment": dep.id, "model": mv.name, "version": mv.version, "target": mv.target}
        for device_id in targets:
            self.commands.send_command(device_id, "deploy", body)
        with session(self.engine) as s:
            for row in s.exec(
                select(DeploymentDevice).where(DeploymentDevice.deployment_id == dep.id)
            ):
                if row.stage == "pending":
                    row.stage, row.updated_at = "sent", now()
                    s.add(row)
            s.commit()
        return dep

    def list(self) -> builtins.list[Deployment]:
        with session(self.engine) as s:
            return list(s.exec(select(Deployment).order_by(col(Deployment.created_at).desc())))

    def status(self, deployment_id: str, *, per_device: bool = True) -> DeploymentStatus:
        """Counts per stage and reason, and each device's stage.

        Raises:
            DeploymentError: no such deployment.
        """
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
            finished=all(r.stage in TERMINAL_STAGES for r in rows),
            per_device=[
                {"device": r.device_id, "stage": r.stage, "reason": r.reason, "detail": r.detail}
                for r in rows
            ]
            if per_device
            else [],
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
