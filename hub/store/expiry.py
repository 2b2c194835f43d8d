"""Deleting rows past their age, a short transaction at a time.

The hub's maintenance thread (hub/app.py) expires audit records (hub/access/audit.py) and
deployment events (hub/fleet/deployments.py) this way: ``batch`` rows per transaction, so
the writers of the same table wait for one short transaction at a time.
"""

from __future__ import annotations

from typing import Any, Final

from sqlalchemy import Engine, delete
from sqlmodel import col, select

from hub.store.tables import session

RETENTION_BATCH: Final = 5000  # rows deleted per transaction


def delete_older(
    engine: Engine, table: type[Any], ts: Any, cutoff: float, batch: int = RETENTION_BATCH
) -> int:
    """Delete the rows of ``table`` (an integer ``id`` key) whose ``ts`` column is below
    ``cutoff``; how many went."""
    if batch <= 0:
        raise ValueError(f"batch must be > 0, not {batch}")
    deleted = 0
    while True:
        with session(engine) as s:
            ids = select(table.id).where(col(ts) < cutoff).limit(batch)
            gone = int(
                s.execute(  # type: ignore[attr-defined]
                    delete(table).where(col(table.id).in_(ids.scalar_subquery()))
                ).rowcount
            )
            s.commit()
        deleted += gone
        if gone < batch:
            return deleted
