"""The audit log: who did what to the hub, when, with the state before and after.

This module stores and queries records; hub/api/audit.py writes one for every mutating
API call. Secrets (API keys, enrolment tokens) never go in.
"""

from __future__ import annotations

from sqlalchemy import Engine, or_
from sqlmodel import col, select

from hub.store.tables import AuditRecord, session

AUDIT_LIMIT_DEFAULT = 100  # records per page
AUDIT_LIMIT_MAX = 1000


class AuditLog:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def write(self, record: AuditRecord) -> None:
        with session(self.engine) as s:
            s.add(record)
            s.commit()

    def query(
        self,
        *,
        actor: str | None = None,
        action: str | None = None,
        outcome: str | None = None,
        since: float | None = None,
        limit: int = AUDIT_LIMIT_DEFAULT,
    ) -> list[AuditRecord]:
        """Newest first. ``actor`` matches the keyid or the key's name."""
        q = select(AuditRecord)
        if actor is not None:
            q = q.where(
                or_(col(AuditRecord.actor_keyid) == actor, col(AuditRecord.actor_name) == actor)
            )
        if action is not None:
            q = q.where(AuditRecord.action == action)
        if outcome is not None:
            q = q.where(AuditRecord.outcome == outcome)
        if since is not None:
            q = q.where(AuditRecord.ts >= since)
        q = q.order_by(col(AuditRecord.ts).desc(), col(AuditRecord.id).desc())
        with session(self.engine) as s:
            return list(s.exec(q.limit(min(limit, AUDIT_LIMIT_MAX))))
