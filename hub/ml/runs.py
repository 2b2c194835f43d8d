"""Writing a training run (ADR 0014): every build, published or refused, with provenance."""

from __future__ import annotations

import logging
import uuid
from typing import Any

from sqlalchemy import Engine

from hub.ml.provenance import package_version, source_revision
from hub.store.tables import TrainingRun, session

__all__ = ["new_run_id", "record_run"]

log = logging.getLogger(__name__)


def new_run_id() -> str:
    return uuid.uuid4().hex[:16]


def record_run(engine: Engine, **fields: Any) -> TrainingRun:
    """Store a ``TrainingRun`` with ``fields``; the package version and source revision
    that built it are added here, and an id when none is given."""
    row = TrainingRun(
        **{"id": new_run_id()}
        | fields
        | {"package_version": package_version(), "source_revision": source_revision()}
    )
    with session(engine) as s:
        s.add(row)
        s.commit()
        s.refresh(row)
    log.info("training run %s: %s %s %s", row.id, row.model, row.status, row.refusal or "")
    return row
