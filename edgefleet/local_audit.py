"""Audit records of changes made on the hub's machine with the CLI, not over the API.

``edgefleet hub apikey …`` and ``edgefleet keys …`` change what the API would audit (keys
that may call it, keys that sign for it); they write the same records to the hub's
database, with ``CLI_ACTOR`` as the actor and HTTP status 0.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def record(
    data_dir: Path, db: str | None, action: str, target: str, command: str, **change: Any
) -> None:
    """Append one audit record (``change``: ``before`` and/or ``after``)."""
    from hub.access.audit import AuditLog
    from hub.access.keys import CLI_ACTOR
    from hub.store.tables import AuditRecord, make_engine, sqlite_url

    if db is None:
        data_dir.mkdir(parents=True, exist_ok=True)
    engine = make_engine(db or sqlite_url(data_dir / "hub.db"))
    try:
        AuditLog(engine).write(
            AuditRecord(
                actor_keyid=CLI_ACTOR,
                actor_name=CLI_ACTOR,
                action=action,
                method="CLI",
                path=command,
                target=target,
                outcome="ok",
                status=0,
                **change,
            )
        )
    finally:
        engine.dispose()
