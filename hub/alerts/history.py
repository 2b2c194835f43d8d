"""What the API shows of deliveries: each with its alert and every attempt made."""

from __future__ import annotations

from typing import Any, Final

from sqlalchemy import Engine
from sqlmodel import col, select

from hub.store.alert_tables import AlertAttempt, AlertDelivery, AlertMessage
from hub.store.tables import session

__all__ = ["DELIVERIES_LIMIT", "STATUSES", "deliveries", "delivery_view"]

DELIVERIES_LIMIT: Final = 500  # deliveries listed per call, at most
STATUSES: Final = ("pending", "sent", "failed", "dropped")


def deliveries(
    engine: Engine, receiver: str | None, status: str | None, limit: int = 100
) -> list[dict[str, Any]]:
    """Deliveries newest first, filtered by receiver and status."""
    q = select(AlertDelivery, AlertMessage).join(
        AlertMessage, col(AlertMessage.id) == col(AlertDelivery.message_id)
    )
    if receiver is not None:
        q = q.where(col(AlertDelivery.receiver) == receiver)
    if status is not None:
        q = q.where(col(AlertDelivery.status) == status)
    q = q.order_by(col(AlertDelivery.id).desc()).limit(min(limit, DELIVERIES_LIMIT))
    with session(engine) as s:
        rows = list(s.exec(q))
        ids = [d.id for d, _ in rows]
        tries = s.exec(
            select(AlertAttempt)
            .where(col(AlertAttempt.delivery_id).in_(ids))
            .order_by(col(AlertAttempt.id))
        ).all()
    by_delivery: dict[int, list[dict[str, Any]]] = {}
    for a in tries:
        by_delivery.setdefault(a.delivery_id, []).append(_attempt(a))
    return [_view(d, m, by_delivery.get(d.id or 0, [])) for d, m in rows]


def delivery_view(engine: Engine, delivery_id: int) -> dict[str, Any] | None:
    """One delivery as :func:`deliveries` shows it (None: no such delivery)."""
    with session(engine) as s:
        d = s.get(AlertDelivery, delivery_id)
        m = s.get(AlertMessage, d.message_id) if d is not None else None
        if d is None or m is None:
            return None
        tries = s.exec(
            select(AlertAttempt)
            .where(col(AlertAttempt.delivery_id) == delivery_id)
            .order_by(col(AlertAttempt.id))
        ).all()
    return _view(d, m, [_attempt(a) for a in tries])


def _view(d: AlertDelivery, m: AlertMessage, history: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "id": d.id,
        "receiver": d.receiver,
        "status": d.status,
        "reason": d.reason,
        "kind": m.kind,
        "model": m.model,
        "alertname": m.labels.get("alertname"),
        "alert_status": m.status,
        "fingerprint": d.fingerprint,
        "summary": m.annotations.get("summary"),
        "attempts": d.attempts,
        "next_at": d.next_at if d.status == "pending" else None,
        "last_status": d.last_status,
        "last_error": d.last_error,
        "created_at": d.created_at,
        "updated_at": d.updated_at,
        "history": history,
    }


def _attempt(a: AlertAttempt) -> dict[str, Any]:
    return {
        "attempt": a.attempt,
        "http_status": a.http_status,
        "error": a.error,
        "duration_ms": a.duration_ms,
        "ts": a.ts,
    }
