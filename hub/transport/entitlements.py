"""Which targets each device may fetch: those it was told to install (issue 11, item 8).

A device learns of a target from a signed ``deploy`` command; the hub answers chunk
fetches for that (device, target) pair only. The pairs live in memory (fetches are
answered on the MQTT thread, with no SQL on that path): granted as each deploy command
is sent (hub/transport/commands.py), and loaded at start from every deployment and
rollout the database remembers: their version's target and its artefacts for other
runtimes (ADR 0020; the device was sent the one of its runtime, and may fetch no other
version).

Hub replicas (ADR 0032): the leader sends the deploy commands, and any replica may get
the device's fetch. A replica given an ``engine`` looks a pair it does not hold up in SQL
(the rollout or deployment rows the leader wrote before it sent the command), keeps what
it finds, and remembers a pair it did not find for ``MISS_TTL_S``, so a device asking for
what it was never sent costs one query per that time, not one per fetch.
"""

from __future__ import annotations

import threading
import time
from typing import Final

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


MISS_TTL_S: Final = 2.0  # seconds a pair not found in SQL is refused without a query


class Entitlements:
    """A thread-safe set of (device, target) pairs; with ``engine``, backed by SQL."""

    def __init__(
        self, pairs: set[tuple[str, str]] | None = None, *, engine: Engine | None = None
    ) -> None:
        self._pairs: set[tuple[str, str]] = set(pairs or ())
        self._lock = threading.Lock()
        self._engine = engine
        self._misses: dict[tuple[str, str], float] = {}  # pair -> when it was not found

    def grant(self, device_id: str, target: str) -> None:
        with self._lock:
            self._pairs.add((device_id, target))

    def allowed(self, device_id: str, target: str) -> bool:
        pair = (device_id, target)
        if pair in self._pairs:  # a set lookup: atomic under the GIL
            return True
        if self._engine is None:
            return False
        now = time.monotonic()
        if now - self._misses.get(pair, -MISS_TTL_S) < MISS_TTL_S:
            return False
        found = pair in _pairs(self._engine, device_id)
        with self._lock:
            if found:
                self._pairs.add(pair)
                self._misses.pop(pair, None)
            else:
                if len(self._misses) > 10_000:  # bounded: forget the old misses
                    self._misses.clear()
                self._misses[pair] = now
        return found

    def __len__(self) -> int:
        return len(self._pairs)


def load_entitlements(engine: Engine, *, shared: bool = False) -> Entitlements:
    """Every (device, target) a deployment or a rollout ever addressed; ``shared``: also
    those the database gains later (hub replicas)."""
    return Entitlements(_pairs(engine), engine=engine if shared else None)


def _pairs(engine: Engine, device_id: str | None = None) -> set[tuple[str, str]]:
    """The (device, target) pairs the database names, of one device or of all."""
    deployed = select(DeploymentDevice.device_id, Deployment.target).join(
        Deployment, col(Deployment.id) == col(DeploymentDevice.deployment_id)
    )
    rolled = select(RolloutDevice.device_id, Rollout.target).join(
        Rollout, col(Rollout.id) == col(RolloutDevice.rollout_id)
    )
    artefacts = (
        select(RolloutDevice.device_id, ModelArtefact.target)
        .join(Rollout, col(Rollout.id) == col(RolloutDevice.rollout_id))
        .join(
            ModelArtefact,
            (col(ModelArtefact.name) == col(Rollout.model))
            & (col(ModelArtefact.version) == col(Rollout.version)),
        )
    )
    if device_id is not None:
        deployed = deployed.where(DeploymentDevice.device_id == device_id)
        rolled = rolled.where(RolloutDevice.device_id == device_id)
        artefacts = artefacts.where(RolloutDevice.device_id == device_id)
    with session(engine) as s:
        pairs = set(s.exec(deployed)) | set(s.exec(rolled)) | set(s.exec(artefacts))
    return {(str(d), str(t)) for d, t in pairs}
