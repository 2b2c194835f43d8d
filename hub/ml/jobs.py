"""Background jobs (training, imports) with progress an operator can poll."""

from __future__ import annotations

import json
import logging
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from sqlalchemy import Engine
from sqlmodel import col, select

from hub.ml.errors import PipelineError
from hub.store.tables import Job, now, session

log = logging.getLogger(__name__)

Progress = Callable[[str, float], None]
INTERRUPTED = "interrupted: the hub stopped while the job ran; submit it again"


class Jobs:
    """One worker thread: model builds are CPU-heavy and the machine is small."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hub-job")
        self._lock = threading.Lock()
        self._fail_orphans()

    def _fail_orphans(self) -> None:
        """Jobs a previous hub process left queued or running will never finish: say so."""
        with session(self.engine) as s:
            orphans = s.exec(select(Job).where(col(Job.status).in_(("queued", "running")))).all()
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
        self._pool.submit(self._run, job.id, fn)
        return job

    def get(self, job_id: str) -> Job | None:
        with session(self.engine) as s:
            return s.get(Job, job_id)

    def shutdown(self) -> None:
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
        self._update(job_id, status="done", progress=1.0, result=json.dumps(result))
