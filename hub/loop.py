"""The closed loop: on a drift alert, capture, retrain, and canary-deploy to the drifted devices.

Per model and off by default (:class:`~hub.db.LoopPolicy`). When it is on, each tick:

1. **start**: open drift alerts of the model (hub/telemetry/drift.py) name devices; those not in a
   run and not in their cool-down start a run (one run per model at a time), ``gather_s``
   after the first of them, so devices that drift together are treated together. An
   alert the loop leaves alone (stale, naming no device, its devices resting) gets a
   ``skipped`` run with the reason, once per alert and reason (:func:`skip_reason`);
2. **capturing**: a capture (hub/ml/data/captures.py) of up to ``capture_rows`` rows from each of
   them, for ``capture_s`` seconds; its verified uploads become one dataset version;
3. **retraining**: a retrain job (hub/ml/retrain.py) on the version's training rows plus the
   captured labelled rows: quantised, gated, signed and published like any version;
4. **deploying**: a rollout (hub/fleet/rollouts.py) of the new version to the drifted devices
   only, with a canary and the policy's failure gate (a halt rolls them back);
5. **done** when the rollout completes; **failed**, with the reason, at any step that
   does not succeed.

Every step is a row in ``LoopRun.steps`` (the API shows it) and an audit record whose
actor is ``loop-policy:<model>``. Like rollouts (ADR 0007), a run's state is in SQL and
each tick derives what to do from it, so a restarted hub carries on where it stopped.

Exceptions::

    LoopError       a policy that is not valid, or an unknown run
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine
from sqlmodel import col, select

from hub.fleet.rollout_spec import RolloutError, RolloutSpec
from hub.fleet.rollouts import Rollouts
from hub.ml.data.captures import DatasetError, Datasets
from hub.ml.registry import Registry, RegistryError
from hub.ml.retrain import Retrainer
from hub.store.tables import AuditRecord, LoopPolicy, LoopRun, session
from hub.telemetry.drift_policy import AlertInfo, live_alerts

log = logging.getLogger(__name__)

TICK_S = 1.0  # seconds between ticks
ACTIVE = ("capturing", "retraining", "deploying")
SKIPPED = "skipped"  # a run's stage: an alert the loop did not act on, and why
MAX_CAPTURE_ROWS = 100_000  # per device
MAX_CAPTURE_S = 86_400.0  # seconds
RUNS_LIMIT = 100  # runs listed per call
MAX_GATHER_S = 3600.0  # seconds


class LoopError(Exception):
    """A policy that is not valid, or an unknown run."""


@dataclass(frozen=True)
class PolicySettings:
    """What an operator sets; validated on creation."""

    enabled: bool = False
    capture_rows: int = 2000
    capture_s: float = 60.0
    canary_percent: float = 50.0
    waves: int = 1
    max_failure_ratio: float = 0.2
    min_sample: int = 1
    cooldown_s: float = 600.0
    gather_s: float = 10.0

    def __post_init__(self) -> None:
        problems = [
            msg
            for bad, msg in (
                (not 1 <= self.capture_rows <= MAX_CAPTURE_ROWS, "capture_rows out of range"),
                (not 0 < self.capture_s <= MAX_CAPTURE_S, "capture_s out of range"),
                (not 0 <= self.canary_percent <= 100, "canary_percent must be 0..100"),
                (self.waves < 1, "waves must be >= 1"),
                (not 0 <= self.max_failure_ratio <= 1, "max_failure_ratio must be 0..1"),
                (self.min_sample < 1, "min_sample must be >= 1"),
                (self.cooldown_s < 0, "cooldown_s must be >= 0"),
                (not 0 <= self.gather_s <= MAX_GATHER_S, "gather_s out of range"),
            )
            if bad
        ]
        if problems:
            raise LoopError("bad loop policy: " + "; ".join(problems))


class Loop:
    """Runs the closed loop for every model whose policy is on. Thread-safe."""

    def __init__(
        self,
        engine: Engine,
        registry: Registry,
        datasets: Datasets,
        retrainer: Retrainer,
        rollouts: Rollouts,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.engine = engine
        self.registry = registry
        self.datasets = datasets
        self.retrainer = retrainer
        self.jobs = retrainer.jobs
        self.rollouts = rollouts
        self.clock = clock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # one tick at a time (the thread, or a test calling tick)
        self._skips: set[str] = set()  # skip records written (or found) by this process

    # ------------------------------------------------------------- lifecycle

    def start(self) -> Loop:
        self._thread = threading.Thread(target=self._run, name="hub-loop", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.wait(TICK_S):
            try:
                self.tick()
            except Exception:  # keep looping; the next tick may succeed
                log.exception("closed loop: tick failed")

    # ------------------------------------------------------------- policy and runs

    def policy(self, model: str) -> LoopPolicy:
        with session(self.engine) as s:
            return s.get(LoopPolicy, model) or LoopPolicy(model=model)

    def set_policy(self, model: str, settings: PolicySettings, by: str | None) -> LoopPolicy:
        """Set (create or replace) a model's policy.

        Raises:
            RegistryError: no such model.
        """
        self.registry.get(model)
        with session(self.engine) as s:
            row = s.get(LoopPolicy, model) or LoopPolicy(model=model)
            for name, value in settings.__dict__.items():
                setattr(row, name, value)
            row.updated_by, row.updated_at = by, self.clock()
            s.add(row)
            s.commit()
            return row

    def runs(self, model: str | None = None, limit: int = RUNS_LIMIT) -> list[LoopRun]:
        """Newest first."""
        q = select(LoopRun).order_by(col(LoopRun.created_at).desc())
        if model is not None:
            q = q.where(LoopRun.model == model)
        with session(self.engine) as s:
            return list(s.exec(q.limit(min(limit, RUNS_LIMIT))))

    def run(self, run_id: str) -> LoopRun:
        """Raises: LoopError for an unknown id."""
        with session(self.engine) as s:
            row = s.get(LoopRun, run_id)
        if row is None:
            raise LoopError(f"no loop run {run_id!r}")
        return row

    # ------------------------------------------------------------- the tick

    def tick(self) -> None:
        """Start runs for new alerts and move every active run one step if it can."""
        with self._lock:
            with session(self.engine) as s:
                policies = list(s.exec(select(LoopPolicy).where(col(LoopPolicy.enabled))))
                active = list(s.exec(select(LoopRun).where(col(LoopRun.stage).in_(ACTIVE))))
            busy = {r.model for r in active}
            for policy in policies:
                if policy.model not in busy:
                    self._maybe_start(policy)
            for run in active:
                try:
                    self._advance(run)
                except Exception as e:  # one broken run must not stop the others
                    log.exception("closed loop: run %s failed", run.id)
                    self._fail(run, f"internal error: {type(e).__name__}: {e}")

    def _maybe_start(self, policy: LoopPolicy) -> None:
        resting = self._cooling_down(policy)
        fresh = []
        for alert in live_alerts(self.engine, policy.model):
            skip = skip_reason(alert, resting)
            if skip is None:
                fresh.append(alert)
            else:
                self._skipped(alert, *skip)
        if not fresh:
            return
        now = self.clock()
        if now - min(a.opened_at for a in fresh) < policy.gather_s:
            return  # drift on several devices rarely alerts in the same second
        alerts = fresh
        devices = sorted({d for a in alerts for d in a.devices} - resting)
        run = LoopRun(
            id=uuid.uuid4().hex[:12],
            model=policy.model,
            from_version=_newest_version(alerts),
            alerts=[a.id for a in alerts],
            devices=devices,
            features=sorted({f for a in alerts for f in a.features}),
            created_at=now,
            updated_at=now,
        )
        try:
            run.capture_id = self.datasets.start_capture(
                policy.model,
                devices,
                policy.capture_rows,
                policy.capture_s,
                created_by=f"loop:{run.id}",
            )
        except DatasetError as e:
            run.stage, run.detail, run.ended_at = "failed", f"capture: {e}", now
        self._step(run, "capture" if run.stage == "capturing" else "failed", run.detail, new=True)

    def _cooling_down(self, policy: LoopPolicy) -> set[str]:
        since = self.clock() - policy.cooldown_s
        with session(self.engine) as s:
            ended = s.exec(
                select(LoopRun).where(
                    LoopRun.model == policy.model,
                    col(LoopRun.ended_at) >= since,
                    LoopRun.stage != SKIPPED,
                )
            ).all()
        return {d for r in ended for d in r.devices}

    def _skipped(self, alert: AlertInfo, reason: str, detail: str) -> None:
        """Record, once per alert and reason, that the loop left an alert alone: a run
        ``skipped`` (the run list shows it), an audit record and a log line."""
        run_id = f"skip-{alert.id}-{reason}"
        if run_id in self._skips:
            return
        self._skips.add(run_id)
        with session(self.engine) as s:
            if s.get(LoopRun, run_id) is not None:  # recorded before a restart
                return
        now = self.clock()
        run = LoopRun(
            id=run_id,
            model=alert.model,
            from_version=alert.version,
            alerts=[alert.id],
            devices=list(alert.devices),
            features=list(alert.features),
            stage=SKIPPED,
            detail=f"{reason}: {detail}",
            created_at=now,
            updated_at=now,
            ended_at=now,
        )
        self._step(run, SKIPPED, run.detail, new=True)

    def _advance(self, run: LoopRun) -> None:
        if run.stage == "capturing":
            self._after_capture(run)
        elif run.stage == "retraining":
            self._after_retrain(run)
        elif run.stage == "deploying":
            self._after_rollout(run)

    def _after_capture(self, run: LoopRun) -> None:
        assert run.capture_id is not None
        datasets = self.datasets
        capture = datasets.capture(run.capture_id)
        if capture["state"] == "running":
            return
        if capture["state"] != "done" or not capture.get("dataset_id"):
            self._fail(run, f"capture {run.capture_id}: {capture.get('reason') or 'failed'}")
            return
        run.dataset_id = capture["dataset_id"]
        dataset = datasets.dataset_row(capture["dataset_id"])
        if dataset.labelled == 0:
            self._fail(run, f"dataset {dataset.id}: no labelled rows to learn from")
            return
        job = self.retrainer.submit(run.model, [dataset.id])
        run.job_id, run.stage = job.id, "retraining"
        self._step(run, "retrain", f"dataset {dataset.id}: {dataset.labelled} labelled rows")

    def _after_retrain(self, run: LoopRun) -> None:
        assert run.job_id is not None
        job = self.jobs.get(run.job_id)
        if job is None or job.status == "failed":
            self._fail(run, f"retrain job {run.job_id}: {job.error if job else 'lost'}")
            return
        if job.status != "done":
            return
        result: dict[str, Any] = json.loads(job.result or "{}")
        run.version = int(result["version"])
        policy = self.policy(run.model)
        spec = RolloutSpec(
            model=run.model,
            version=run.version,
            devices=tuple(run.devices),
            canary_percent=policy.canary_percent,
            waves=policy.waves,
            max_failure_ratio=policy.max_failure_ratio,
            min_sample=min(policy.min_sample, len(run.devices)),
        )
        try:
            rollout = self.rollouts.create(spec, created_by=f"loop:{run.id}")
        except (RolloutError, RegistryError) as e:
            self._fail(run, f"rollout of v{run.version}: {e}")
            return
        run.rollout_id, run.stage = rollout.id, "deploying"
        scores = {k: v for k, v in result.items() if k.startswith("accuracy")}
        self._step(run, "deploy", f"v{run.version} to {len(run.devices)} device(s); {scores}")

    def _after_rollout(self, run: LoopRun) -> None:
        assert run.rollout_id is not None
        status = self.rollouts.status(run.rollout_id)
        if status.state == "running" or status.state == "paused":
            return
        run.ended_at = self.clock()
        if status.state == "completed":
            run.stage = "done"
            self._step(
                run, "done", f"{status.converged}/{status.devices} devices on v{run.version}"
            )
        else:
            self._fail(run, f"rollout {run.rollout_id} {status.state}")

    # ------------------------------------------------------------- bookkeeping

    def _fail(self, run: LoopRun, why: str) -> None:
        run.stage, run.detail, run.ended_at = "failed", why, run.ended_at or self.clock()
        self._step(run, "failed", why)

    def _step(self, run: LoopRun, step: str, detail: str | None, *, new: bool = False) -> None:
        """Record a step on the run and in the audit log, in one transaction."""
        now = self.clock()
        run.updated_at = now
        entry = {
            "ts": now,
            "step": step,
            "stage": run.stage,
            "detail": detail,
            "capture_id": run.capture_id,
            "dataset_id": run.dataset_id,
            "job_id": run.job_id,
            "version": run.version,
            "rollout_id": run.rollout_id,
        }
        run.steps = [*run.steps, entry]  # a new list: SQLAlchemy sees the change
        with session(self.engine) as s:
            s.merge(run)
            s.add(
                AuditRecord(
                    ts=now,
                    actor_name=f"loop-policy:{run.model}",
                    action=f"loop.{step}",
                    method="LOOP",
                    path=f"/loop/runs/{run.id}",
                    target=run.id,
                    after={k: v for k, v in entry.items() if k != "ts" and v is not None}
                    | ({"devices": run.devices, "alerts": run.alerts} if new else {}),
                    outcome="error" if step == "failed" else "ok",
                    status=0,
                    detail=detail,
                )
            )
            s.commit()
        log.info("loop run %s (%s): %s %s", run.id, run.model, step, detail or "")


def skip_reason(alert: AlertInfo, resting: set[str]) -> tuple[str, str] | None:
    """Why the loop leaves ``alert`` alone, as (reason code, detail); None: it may act.

    ``stale``: its device is silent (hub/telemetry/drift_silence.py); ``no_device``: a
    group or fleet alert that names no device (docs/drift.md), which the loop will not
    answer by capturing from and deploying to a whole group or fleet; ``resting``: every
    device it names is in its cool-down after a run.
    """
    where = f"{alert.scope} alert {alert.id} ({alert.scope_id})"
    if alert.state == "stale":  # stale_reason: "stale: device d silent since ..."
        return "stale", (alert.stale_reason or f"stale: {where}").removeprefix("stale: ")
    if not alert.devices:
        return "no_device", f"{where} names no device to capture from or deploy to"
    if not set(alert.devices) - resting:
        return "resting", f"{where}: its devices rest after a run: {', '.join(alert.devices)}"
    return None


def _newest_version(alerts: list[AlertInfo]) -> int | None:
    versions = [a.version for a in alerts if a.version is not None]
    return max(versions) if versions else None
