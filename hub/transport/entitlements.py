"""Which targets each device may fetch: those it was told to install (issue 11, item 8).

A device learns of a target from a signed ``deploy`` command; the hub answers chunk
fetches for that (device, target) pair only. The pairs live in memory (fetches are
answered on the MQTT thread, with no SQL on that path): granted as each deploy command
is sent (hub/transport/commands.py), and loaded at start from every deployment and
rollout the database remembers: their version's target and its artefacts for other
runtimes (ADR 0020; the device was sent the one of its runtime, and may fetch no other
version).
"""

from __future__ import annotations

import threading

from sqlalchemy import Engine
from sqlmodel import col, select

from hub.store.tables import (
    Deployment,
    DeploymentDevice,
    ModelArtefact,
    Rollout,
    RolloutDevice,
    session,
)

__all__ = ["Entitlements", "load_entitlements"]


class Entitlements:
    """A thread-safe set of (device, target) pairs."""

    def __init__(self, pairs: set[tuple[str, str]] | None = None) -> None:
        self._pairs: set[tuple[str, str]] = set(pairs or ())
        self._lock = threading.Lock()

    def grant(self, device_id: str, target: str) -> None:
        with self._lock:
            self._pairs.add((device_id, target))

    def allowed(self, device_id: str, target: str) -> bool:
        return (device_id, target) in self._pairs  # a set lookup: atomic under the GIL

    def __len__(self) -> int:
        return len(self._pairs)


def load_entitlements(engine: Engine) -> Entitlements:
    """Every (device, target) a deployment or a rollout ever addressed."""
    with session(engine) as s:
        pairs = set(
            s.exec(
                select(DeploymentDevice.device_id, Deployment.target).join(
                    Deployment, col(Deployment.id) == col(DeploymentDevice.deployment_id)
                )
            )
        )
        pairs |= set(
            s.exec(
                select(RolloutDevice.device_id, Rollout.target).join(
                    Rollout, col(Rollout.id) == col(RolloutDevice.rollout_id)
                )
            )
        )
        pairs |= set(
            s.exec(
                select(RolloutDevice.device_id, ModelArtefact.target)
                .join(Rollout, col(Rollout.id) == col(RolloutDevice.rollout_id))
                .join(
                    ModelArtefact,
                    (col(ModelArtefact.name) == col(Rollout.model))
                    & (col(ModelArtefact.version) == col(Rollout.version)),
                )
            )
        )
    return Entitlements({(str(d), str(t)) for d, t in pairs})
