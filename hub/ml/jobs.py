"""Background jobs (training, imports) with progress an operator can poll.

A job runs in the hub process that took its request. A single hub marks the jobs a
previous process left queued or running as failed when it starts. Hub replicas cannot
(another replica's job is running): each replica instead touches its own jobs' rows every
``HEARTBEAT_S``, and the leader fails those whose replica stopped touching them for
``STALE_S`` (a replica killed mid-build), so no job is left ``running`` for ever.
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Final

from sqlalchemy import Engine
from sqlmodel import col, select

from hub.ml.errors import PipelineError
from hub.store.tables import Job, now, session

log = logging.getLogger(__name__)

Progress = Callable[[str, float], None]
INTERRUPTED = "interrupted: the hub stopped while the job ran; submit it again"
HEARTBEAT_S: Final = 10.0  # seconds between a replica's touches of its jobs' rows
STALE_S: Final = 60.0  # seconds without a touch after which a replica's job is failed


class Jobs:
    """One worker thread: model builds are CPU-heavy and the machine is small."""

    def __init__(self, engine: Engine, *, replica: bool = False) -> None:
        self.engine = engine
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hub-job")
        self._lock = threading.Lock()
        self._mine: set[str] = set()  # this process's queued and running jobs
        self._stop = threading.Event()
        if replica:
            threading.Thread(target=self._beat, name="hub-job-beat", daemon=True).start()
        else:
            self.fail_orphans()

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                with self._lock, session(self.engine) as s:
                    for job_id in list(self._mine):
                        job = s.get(Job, job_id)
                        if job is not None and job.status in ("queued", "running"):
                            job.updated_at = now()
                            s.add(job)
                    s.commit()
            except Exception:  # the database may be away: the next beat
                log.exception("jobs: heartbeat failed")

    def fail_orphans(self, stale_s: float | None = None) -> None:
        """Jobs left queued or running by a process that is gone will never finish: say
        so. ``stale_s``: only those untouched that long (replicas; the leader calls it)."""
        active = col(Job.status).in_(("queued", "running"))
        with session(self.engine) as s:
            q = select(Job).where(active)
            if stale_s is not None:
                q = q.where(col(Job.updated_at) < now() - stale_s)
            orphans = s.exec(q).all()
            for job in orphans:
                job.status, job.error, job.updated_at = "failed", INTERRUPTED, now()
                s.add(job)
            s.commit()
        if orphans:
            log.warning("%d job(s) interrupted by a hub restart marked failed", len(orphans))

    def submit(self, kind: str, fn: Callable[[Progress], dict[str, Any]]) -> Job:
        job = Job(id=uuid.uuid4().hex[:12], kind=kind)
        with session(self.engine) as s:
            s.add(job)
            s.commit()
        self._mine.add(job.id)
        self._pool.submit(self._run, job.id, fn)
        return job

    def get(self, job_id: str) -> Job | None:
        with session(self.engine) as s:
            return s.get(Job, job_id)

    def shutdown(self) -> None:
        self._stop.set()
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _update(self, job_id: str, **fields: Any) -> None:
        with self._lock, session(self.engine) as s:
            job = s.get(Job, job_id)
            if job is None:
                return
            for k, v in fields.items():
                setattr(job, k, v)
            job.updated_at = now()
            s.add(job)
            s.commit()

    def _run(self, job_id: str, fn: Callable[[Progress], dict[str, Any]]) -> None:
        self._update(job_id, status="running")

        def progress(stage: str, fraction: float) -> None:
            self._update(job_id, stage=stage, progress=round(max(0.0, min(1.0, fraction)), 3))

        try:
            result = fn(progress)
        except Exception as e:
            log.warning("job %s failed: %s", job_id, e)
            # A pipeline refusal is a sentence for the operator; anything else says its type.
            error = str(e) if isinstance(e, PipelineError) else f"{type(e).__name__}: {e}"
            self._update(job_id, status="failed", error=error)
            return
        finally:
            self._mine.discard(job_id)
        self._update(job_id, status="done", progress=1.0, result=json.dumps(result))
