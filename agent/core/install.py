"""A job's install: health check, atomic activation, probation, and rollback.

``verify -> health -> activating -> probation -> healthy | rolled back``. The adapter
verifies and stages the file, runs the manifest's health check on it and switches to it;
the core then watches live traffic for ``probation_s`` and either calls the version
healthy (pruning all but the kept versions) or rolls back to the one it replaced. A
signed rollback command goes back to a version still on disk.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from agent.core.config import KEEP_VERSIONS
from agent.core.context import CoreContext
from agent.core.job import DeploymentRef, Job
from agent.core.phases import Phase, Trigger
from agent.core.state import InstalledModel, ModelFile
from agent.events import Activate, Done, Outbox, Prune, RollBack, RunHealthCheck
from agent.telemetry import InferenceStats
from shared.reasons import Reason


class Installer:
    """The install steps of the job in ``ctx.state.job``, and rollbacks by command."""

    def __init__(self, ctx: CoreContext) -> None:
        self.ctx = ctx

    def resume(self, out: Outbox, job: Job) -> None:
        """After a restart: the checked session did not survive it, so check again."""
        if job.phase.staged:
            job.advance(Trigger.RESTARTED)
            out.add(RunHealthCheck(job.model, job.version, job.verified_target))

    def on_done(self, ev: Done, out: Outbox) -> None:
        """The adapter finished a step: the file staged, the check passed, the switch made."""
        job = self.ctx.state.job
        if ev.step == "rollback" or job is None:
            return
        if ev.step == "file" and job.phase is Phase.VERIFY:
            self.ctx.event(out, job.ref, "verified", ev.now)
            self.ctx.event(out, job.ref, "staged", ev.now)
            job.advance(Trigger.FILE_STAGED)
            self.ctx.persist(out)
            out.add(RunHealthCheck(job.model, job.version, job.verified_target))
        elif ev.step == "health" and job.phase is Phase.HEALTH:
            job.advance(Trigger.HEALTH_PASSED)
            out.add(Activate(job.model, job.version, job.verified_target))
        elif ev.step == "activate" and job.phase is Phase.ACTIVATING:
            self._activated(out, job, ev.now)

    def _activated(self, out: Outbox, job: Job, now: float) -> None:
        models = self.ctx.state.models
        previous = models.get(job.model)
        versions = [*(previous["versions"] if previous else []), job.version][-KEEP_VERSIONS:]
        files: dict[str, ModelFile] = dict(previous["files"]) if previous else {}
        target = job.verified_target
        files[str(job.version)] = {
            "target": target.name,
            "sha256": target.sha256,
            "length": target.length,
        }
        models[job.model] = InstalledModel(
            version=job.version,
            versions=versions,
            files={v: f for v, f in files.items() if int(v) in versions},
        )
        from_version = previous["version"] if previous else None
        job.activated(from_version, now)
        self.ctx.persist(out, durable=True)
        seconds, min_inferences = job.probation_terms()
        terms = {
            "probation_s": seconds,
            "probation_min_inferences": min_inferences,
            "probation_max_s": seconds * self.ctx.config.max_probation_wait,
        }
        self.ctx.event(out, job.ref, "activated", now, from_version=from_version, extra=terms)
        self.ctx.publish_state(out, now)
        self.judge(out, job, now)

    # ------------------------------------------------------------- probation

    def count(self, job: Job, stats: InferenceStats) -> None:
        """Live traffic while on probation."""
        if job.probation is not None:
            job.probation.count += stats.count
            job.probation.errors += stats.errors + stats.nonfinite

    def judge(self, out: Outbox, job: Job, now: float) -> None:
        """Settle the probation once it has lasted long enough, with enough traffic
        (or waited too long for it)."""
        assert job.probation is not None
        probation_s, min_inferences = job.probation_terms()
        elapsed = now - job.probation.activated_at
        if elapsed < probation_s:
            return
        max_wait = probation_s * self.ctx.config.max_probation_wait
        if job.probation.count < min_inferences and elapsed < max_wait:
            return  # wait for enough live traffic to judge
        self.settle(out, job, now)

    def settle(self, out: Outbox, job: Job, now: float, superseded: bool = False) -> None:
        """Call the version healthy, or roll back (keep it if there is nothing before it)."""
        assert job.probation is not None
        health = job.manifest.health
        count, errors = job.probation.count, job.probation.errors
        seen = {"inferences": count, "errors": errors}  # the evidence, for the hub
        ratio = errors / count if count else 0.0
        if ratio > health.max_error_ratio:
            detail = (
                f"{errors} errors in {count} inferences"
                f" ({ratio:.1%} > {health.max_error_ratio:.1%})"
            )
            from_version = job.probation.from_version
            if from_version is None:
                # Nothing to go back to: say so, and keep the only model there is.
                self.ctx.event(
                    out, job.ref, "failed", now, Reason.PROBATION_FAILED, detail, extra=seen
                )
                self.ctx.finish_job(out, Trigger.SETTLED, now)
                return
            self._roll_back(
                out, job.ref, job.version, from_version, Reason.PROBATION_FAILED, detail, now
            )
            self.ctx.state.end_job(Trigger.SETTLED)
            self.ctx.persist(out, durable=True)
            return
        detail = f"{count} inferences, {errors} errors in probation"
        if superseded:
            detail += " (cut short by a newer deployment)"
        self.ctx.event(out, job.ref, "healthy", now, detail=detail, extra=seen)
        out.add(Prune(job.model, tuple(self.ctx.state.models[job.model]["versions"])))
        self.ctx.finish_job(out, Trigger.SETTLED, now)

    # ------------------------------------------------------------- rollback

    def _roll_back(
        self,
        out: Outbox,
        ref: DeploymentRef,
        from_version: int,
        to_version: int,
        reason: Reason,
        detail: str,
        now: float,
    ) -> None:
        self.ctx.state.models[ref.model]["version"] = to_version
        out.add(RollBack(ref.model, to_version))
        self.ctx.persist(out, durable=True)
        # A rolled_back event names the version now active and the one it replaced.
        restored = replace(ref, version=to_version)
        self.ctx.event(out, restored, "rolled_back", now, reason, detail, from_version=from_version)
        self.ctx.publish_state(out, now)

    def on_rollback_cmd(self, body: dict[str, Any], now: float, out: Outbox) -> None:
        """A signed rollback command: go back to a version still on this device."""
        ref = DeploymentRef(body["deployment"], body["model"], body["version"])
        installed = self.ctx.state.models.get(ref.model)
        if installed is None or ref.version not in installed["versions"]:
            why = f"version {ref.version} is not in this device's local history"
            self.ctx.event(out, ref, "failed", now, Reason.VERSION_ROLLBACK, why)
            return
        if installed["version"] == ref.version:
            why = "already active"
            self.ctx.event(out, ref, "rolled_back", now, Reason.ROLLBACK_REQUESTED, why)
            return
        job = self.ctx.state.job
        if job is not None and job.model == ref.model:
            if job.phase is Phase.PROBATION:
                self.ctx.state.end_job(Trigger.ROLLED_BACK)  # the rollback is its outcome
            else:
                self.ctx.fail_job(out, Reason.BUSY, "a rollback was requested", now)
        self._roll_back(
            out, ref, installed["version"], ref.version, Reason.ROLLBACK_REQUESTED, "", now
        )
