"""What every part of the core shares: its config, state and trust, and how it speaks.

The parts (download, install, commands, capture, telemetry windows) each hold one
:class:`CoreContext`; none holds another part's state. Nothing here does I/O: every
message, save and runtime step is an action added to the :class:`~agent.events.Outbox`.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Mapping
from typing import Any

from agent.core.config import CoreConfig
from agent.core.job import DeploymentRef
from agent.core.phases import Trigger
from agent.core.state import DeviceState, encode_state
from agent.events import Discard, Outbox, PersistState, Publish, Unsubscribe
from shared import protocol
from shared.director import DirectorKeys
from shared.reasons import Reason

log = logging.getLogger("agent.core")

MAX_DETAIL = 1000  # characters of an event's detail sent


class CoreContext:
    """One device's shared core state. Not thread-safe: one caller."""

    def __init__(
        self,
        config: CoreConfig,
        state: DeviceState,
        root_version: int,
        director_keys: DirectorKeys,
    ) -> None:
        self.config = config
        self.state = state
        self.root_version = root_version
        self.director_keys = director_keys
        # version and expiry of the top-level targets this device trusts, once it verified
        # metadata since it started: fetch_meta names the version while it is unexpired,
        # and the hub leaves the file out if it is current (ADR 0037)
        self.trusted_targets: tuple[int, float] | None = None
        self.dropped: Counter[str] = Counter()  # bad input, by reason
        # how chunks came: fan_chunks, fetched_chunks, chunks_asked, fan_ignored
        self.counts: Counter[str] = Counter()
        self._base = f"{protocol.ROOT}/{config.device_id}/"

    def topic(self, kind: str) -> str:
        return self._base + kind

    def drop(self, reason: str, detail: str) -> None:
        """Count a bad message; log the first of each reason."""
        if self.dropped[reason] == 0:
            log.warning("%s: dropped a message (%s): %s", self.config.device_id, reason, detail)
        self.dropped[reason] += 1

    def next_req(self) -> str:
        return self.state.next_req(self.config.device_id)

    def persist(self, out: Outbox, durable: bool = False) -> None:
        out.add(PersistState(encode_state(self.state.to_json()), durable))

    def event(
        self,
        out: Outbox,
        ref: DeploymentRef,
        stage: str,
        now: float,
        reason: Reason | None = None,
        detail: str | None = None,
        from_version: int | None = None,
        remember: bool = True,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        """Publish a deployment event; ``remember`` it as the retained state's ``last``
        (not a refused command: that changed nothing, and is not persisted)."""
        body: dict[str, Any] = {
            "deployment": ref.deployment,
            "model": ref.model,
            "version": ref.version,
            "stage": stage,
        }
        if reason is not None:
            body["reason"] = reason.value
        if detail:
            body["detail"] = detail[:MAX_DETAIL]
        if from_version is not None:
            body["from_version"] = from_version
        if extra:
            body |= extra  # optional fields of the event body (probation's terms and figures)
        out.add(Publish(self.topic("events"), protocol.encode("event", body, ts=now)))
        if remember:
            self.state.last = {
                "deployment": ref.deployment,
                "model": ref.model,
                "version": ref.version,
                "stage": stage,
                "reason": body.get("reason"),
                "ts": now,
            }

    def state_message(self, now: float, status: str = "online") -> bytes:
        """The retained ``state`` message."""
        body: dict[str, Any] = {
            "status": status,
            "device_class": self.config.device_class,
            "runtime": self.config.runtime,
            "agent_version": self.config.agent_version,
            "root_version": self.root_version,
        }
        if status == "online":
            # The offline message is the Last Will, fixed at connect time: it must not
            # name models, or a crash after an update would report the old version.
            body["models"] = {
                name: {"version": m["version"], "sha256": m["files"][str(m["version"])]["sha256"]}
                for name, m in self.state.models.items()
            }
            if self.state.last is not None:
                # the latest deployment event: the hub reads an outcome it missed (its
                # subscription was gone while the broker restarted) back from here
                body["last"] = self.state.last
        return protocol.encode("state", body, ts=now)

    def publish_state(self, out: Outbox, now: float) -> None:
        out.add(Publish(self.topic("state"), self.state_message(now), retain=True))

    # ------------------------------------------------------------- a job's end

    def finish_job(self, out: Outbox, trigger: Trigger, now: float, durable: bool = True) -> None:
        """The job has its outcome: forget it, and say so in the retained state too."""
        self.state.end_job(trigger)
        self.persist(out, durable)
        self.publish_state(out, now)

    def fail_job(self, out: Outbox, reason: Reason, detail: str, now: float) -> None:
        """Abandon the job; the active model (if any) never stopped serving."""
        job = self.state.job
        if job is None:
            return
        self.event(out, job.ref, "failed", now, reason, detail)
        if job.fan_live and job.fanout is not None:
            out.add(Unsubscribe(job.fanout))
            job.fan_live = False
        staged_version = job.version if job.phase.staged else None
        out.add(Discard(job.model, staged_version, job.target_info))
        self.finish_job(out, Trigger.FAILED, now)
