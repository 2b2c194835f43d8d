"""The deployment job from end to end: a deploy command starts it, each result moves it.

:class:`Updater` owns the job in ``ctx.state.job``: it starts one for a deploy command
(or says where the running one stands), hands each event to the step it belongs to
(:mod:`agent.core.download`, :mod:`agent.core.install`) and ends the job when a step is
refused. Every phase change goes through the table in :mod:`agent.core.phases`.
"""

from __future__ import annotations

from typing import Any

from agent.core.context import CoreContext, log
from agent.core.download import Download
from agent.core.install import Installer
from agent.core.job import PROBATION_FIELDS, DeploymentRef, Job
from agent.core.phases import Phase
from agent.events import (
    Done,
    MetadataVerified,
    Outbox,
    Refused,
    StagedChunks,
    Tick,
)
from shared import protocol
from shared.reasons import Reason


class Updater:
    """The update path of one device (DESIGN §5)."""

    def __init__(self, ctx: CoreContext) -> None:
        self.ctx = ctx
        self.download = Download(ctx)
        self.installer = Installer(ctx)
        # model -> the deploy command body waiting for the running job (another model's)
        self._waiting: dict[str, dict[str, Any]] = {}

    def on_deploy(self, body: dict[str, Any], now: float, out: Outbox) -> None:
        """A verified deploy command (``keyids``: the director keys that signed it)."""
        ctx = self.ctx
        job = ctx.state.job
        if job is not None and job.deployment == body["deployment"]:
            # A re-sent command for the job in progress (the hub lost track, e.g. across
            # a broker restart): report where it stands instead of starting again.
            detail = f"in progress ({job.phase.value})"
            ctx.event(out, job.ref, job.phase.stage, now, detail=detail)
            return
        ref = DeploymentRef(body["deployment"], body["model"], body["version"])
        installed = ctx.state.models.get(ref.model)
        if installed is not None and installed["version"] == ref.version:
            # Already running it (a re-sent command, or reconciliation): say so.
            ctx.event(out, ref, "healthy", now, detail="already active")
            return
        if installed is not None and ref.version < installed["version"]:
            why = f"installed version {installed['version']} is newer than {ref.version}"
            ctx.event(out, ref, "failed", now, Reason.VERSION_ROLLBACK, why)
            return
        if job is not None and job.model != ref.model:
            # One job at a time, and a job never displaces another model's: this one
            # waits until the running job has its outcome (DeviceState.end_job).
            self._queue(body, ref, job, now, out)
            return
        if job is not None:
            if job.phase is Phase.PROBATION:
                self.installer.settle(out, job, now, superseded=True)
            else:
                ctx.fail_job(out, Reason.BUSY, f"superseded by {ref.deployment}", now)
        job = Job(
            ref.deployment,
            ref.model,
            ref.version,
            body["target"],
            keyids=body.get("keyids", []),
            last_progress=now,
            probation_asked={k: body[k] for k in PROBATION_FIELDS if k in body} or None,
            fanout=body.get("fanout") if ctx.config.fanout else None,
        )
        ctx.state.job = job
        ctx.event(out, job.ref, "received", now)
        job.fan_live = job.fanout is not None  # subscribes once it can check chunks
        self.download.request_meta(out, job, now)
        ctx.persist(out)

    def _queue(
        self, body: dict[str, Any], ref: DeploymentRef, job: Job, now: float, out: Outbox
    ) -> None:
        """Keep a deploy of another model until the running job ends (the latest per
        model; in memory: a restart forgets it, and the hub sends it again)."""
        older = self._waiting.get(ref.model)
        if older is not None and older["deployment"] != ref.deployment:
            self._drop_waiting(ref.model, f"superseded by {ref.deployment}", now, out)
        self._waiting[ref.model] = body
        why = f"waiting for deployment {job.deployment} of {job.model} to finish"
        self.ctx.event(out, ref, "received", now, detail=why)

    def _drop_waiting(self, model: str, why: str, now: float, out: Outbox) -> None:
        """Forget the deploy of ``model`` that waits, and say so (it never started)."""
        body = self._waiting.pop(model, None)
        if body is not None:
            ref = DeploymentRef(body["deployment"], body["model"], body["version"])
            self.ctx.event(out, ref, "failed", now, Reason.BUSY, why)

    @property
    def waiting(self) -> list[DeploymentRef]:
        """The deploys of other models waiting for the running job, oldest first."""
        return [
            DeploymentRef(b["deployment"], b["model"], b["version"]) for b in self._waiting.values()
        ]

    def start_waiting(self, now: float, out: Outbox) -> None:
        """No job running: start the deploy that waited longest, if any."""
        if self.ctx.state.job is not None or not self._waiting:
            return
        model = next(iter(self._waiting))
        self.on_deploy(self._waiting.pop(model), now, out)

    def on_connected(self, now: float, out: Outbox) -> None:
        """Resume whatever was in flight before the restart or the disconnect."""
        job = self.ctx.state.job
        if job is None:
            return
        job.last_progress = now
        job.retries = 0
        self.download.resume(out, job, now)
        self.installer.resume(out, job)

    def on_tick(self, ev: Tick, out: Outbox) -> None:
        """Count probation traffic and judge it; ask again for a stalled download."""
        job = self.ctx.state.job
        if job is None:
            return
        if job.phase is Phase.PROBATION:
            # only the job's own model's traffic judges it, not the other models'
            first = next(iter(self.ctx.state.models), None)
            if (stats := ev.stats_of(job.model, first)) is not None:
                self.installer.count(job, stats)
            self.installer.judge(out, job, ev.now)
        elif job.phase.fetching:
            self.download.check_timeout(out, job, ev.now)

    def on_blob(self, blob: protocol.Blob, now: float, out: Outbox) -> None:
        """A blob for the job: metadata, a chunk, or the hub's error."""
        job = self.ctx.state.job
        if job is None:
            if blob.header["req"] == protocol.FANOUT_REQ:  # the rest of a round, after
                self.ctx.counts["fan_ignored"] += 1  # the download completed
                return
            self.ctx.drop("stale_blob", "no deployment in progress")
            return
        if blob.kind == "error":
            self.download.on_error_blob(out, job, blob, now)
        elif blob.kind == "meta":
            self.download.on_meta_blob(out, job, blob, now)
        else:
            self.download.on_chunk(out, job, blob, now)

    def on_metadata(self, ev: MetadataVerified, out: Outbox) -> None:
        self.download.on_metadata(ev, out)

    def on_staged_chunks(self, ev: StagedChunks, out: Outbox) -> None:
        self.download.on_staged_chunks(ev, out)

    def on_done(self, ev: Done, out: Outbox) -> None:
        self.installer.on_done(ev, out)

    def on_refused(self, ev: Refused, out: Outbox) -> None:
        """A step of the job failed (the trust refresh's refusal goes to the commands)."""
        if ev.step == "rollback":
            log.error("%s: rollback failed: %s", self.ctx.config.device_id, ev.detail)
            return
        self.ctx.fail_job(out, ev.reason, ev.detail, ev.now)

    def on_rollback_cmd(self, body: dict[str, Any], now: float, out: Outbox) -> None:
        # a deploy of that model still waiting would undo the rollback when it starts
        self._drop_waiting(body["model"], "a rollback was requested", now, out)
        self.installer.on_rollback_cmd(body, now, out)
