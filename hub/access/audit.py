"""The audit log: who did what to the hub, when, with the state before and after.

This module stores and queries records; hub/api/audit.py writes one for every mutating
API call. Secrets (API keys, enrolment tokens) never go in.

Calls nobody could be held to (a missing, malformed, unknown, wrong or revoked key, a
path that is no route, a refused enrolment token) cost the caller nothing, so they are
not one row each: per interval (:data:`FAILED_AUTH_INTERVAL_S`) the first refused call of
each (client address, claimed keyid, actor) is written and the following ones only add
to its ``count``. At most :data:`FAILED_AUTH_GROUPS` such groups per interval get a row
of their own; the calls beyond fall into one overflow row (``client`` and
``claimed_keyid`` empty). Whatever the request rate, unauthenticated callers write at
most ``FAILED_AUTH_GROUPS + 1`` rows per interval. Successful calls and calls by a
verified key (a role denial included) stay one row each.

Records older than ``max_age_s`` are deleted in batches (:func:`run_audit_retention`,
from the hub's maintenance thread).
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Final

from sqlalchemy import Engine, or_, update
from sqlmodel import col, select

from hub.store.expiry import RETENTION_BATCH, delete_older
from hub.store.tables import AuditRecord, session

log = logging.getLogger(__name__)

AUDIT_LIMIT_DEFAULT = 100  # records per page
AUDIT_LIMIT_MAX = 1000
UNAUTHENTICATED: Final = "unauthenticated"  # actor_keyid of a call whose key was refused
FAILED_AUTH_INTERVAL_S: Final = 60.0  # seconds per summary interval
FAILED_AUTH_GROUPS: Final = 20  # (client, claimed keyid) rows per interval, then overflow
AUDIT_MAX_AGE_S: Final = 365 * 86400.0  # seconds an audit record is kept
OVERFLOW_DETAIL: Final = f"summary: refused calls beyond {FAILED_AUTH_GROUPS} callers"

_Group = tuple[str | None, str | None, str | None]  # client, claimed keyid, actor


@dataclass(frozen=True)
class FailedAuthLimit:
    interval_s: float = FAILED_AUTH_INTERVAL_S
    groups: int = FAILED_AUTH_GROUPS

    def __post_init__(self) -> None:
        if self.interval_s <= 0 or self.groups < 0:
            raise ValueError(f"need interval_s > 0 and groups >= 0: {self}")


class AuditLog:
    def __init__(self, engine: Engine, limit: FailedAuthLimit | None = None) -> None:
        self.engine = engine
        self.limit = limit or FailedAuthLimit()
        self._lock = threading.Lock()
        self._window = -1  # the interval the rows below belong to
        self._rows: dict[_Group | None, int] = {}  # group (None: overflow) -> row id

    def write(self, record: AuditRecord) -> None:
        with session(self.engine) as s:
            s.add(record)
            s.commit()

    def write_refused(self, record: AuditRecord) -> None:
        """Record a call by nobody verified: a new row for the first call of its group in
        this interval, otherwise one more on that row's ``count``."""
        window = int(record.ts // self.limit.interval_s)
        group: _Group | None = (record.client, record.claimed_keyid, record.actor_keyid)
        with self._lock:
            if window != self._window:
                self._window, self._rows = window, {}
            if group not in self._rows and len(self._rows) >= self.limit.groups:
                group = None  # the record is this call's own: blank who it was
                record.client, record.claimed_keyid = None, None
                record.detail = OVERFLOW_DETAIL
            row = self._rows.get(group)
            with session(self.engine) as s:
                if row is not None:
                    counted = s.execute(
                        update(AuditRecord)
                        .where(col(AuditRecord.id) == row)
                        .values(count=col(AuditRecord.count) + 1)
                    )
                    s.commit()
                    if counted.rowcount == 1:  # type: ignore[attr-defined]
                        return
                # the first of its group (or its row is gone, deleted by retention)
                s.add(record)
                s.commit()
                assert record.id is not None
                self._rows[group] = record.id

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


def run_audit_retention(
    engine: Engine,
    max_age_s: float = AUDIT_MAX_AGE_S,
    now: float | None = None,
    batch: int = RETENTION_BATCH,
) -> int:
    """Delete the records older than ``max_age_s``, ``batch`` per transaction; how many
    went."""
    if max_age_s <= 0:
        raise ValueError(f"max_age_s must be > 0, not {max_age_s}")
    cutoff = (time.time() if now is None else now) - max_age_s
    deleted = delete_older(engine, AuditRecord, AuditRecord.ts, cutoff, batch)
    if deleted:
        log.info("audit retention: deleted %d records older than %.0f s", deleted, max_age_s)
    return deleted
