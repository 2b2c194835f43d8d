"""Alert delivery to webhooks (hub/alerts/, ADR 0025): receivers, the outbox of alerts,
one delivery per (alert, receiver), every attempt, and the cursors of the sources read.

An :class:`AlertMessage` is written once per thing that happened (a drift alert raised or
cleared, a rollout halted, a loop run ended), keyed by ``source_key`` so reading a source
twice never makes two; its :class:`AlertDelivery` rows are what the dispatcher sends.
"""

from __future__ import annotations

from sqlalchemy import JSON, Column, UniqueConstraint
from sqlmodel import Field, SQLModel

from hub.store.data_tables import now

__all__ = ["AlertAttempt", "AlertCursor", "AlertDelivery", "AlertMessage", "AlertReceiver"]


class AlertReceiver(SQLModel, table=True):
    """A webhook an operator configured. ``secret`` signs what it is sent; never shown."""

    name: str = Field(primary_key=True, max_length=64)
    url: str = Field(max_length=2048)  # http:// or https://
    secret: str = Field(max_length=256)  # the HMAC-SHA256 key (kept: it must sign)
    kinds: list[str] = Field(default_factory=list, sa_column=Column(JSON))  # drift|rollout|loop
    models: list[str] = Field(default_factory=list, sa_column=Column(JSON))  # empty: every model
    created_at: float = Field(default_factory=now)
    created_by: str | None = None  # the API key id, or "config"


class AlertMessage(SQLModel, table=True):
    """One alert as it will be sent (Alertmanager's ``alerts[]`` item), written once."""

    id: int | None = Field(default=None, primary_key=True)
    source_key: str = Field(unique=True, max_length=200)  # "drift-event:12", "rollout:ab:halted"
    kind: str = Field(index=True)  # drift | rollout | loop | test
    model: str | None = Field(default=None, max_length=64)
    status: str  # firing | resolved
    fingerprint: str = Field(index=True)  # the same for an alert's firing and resolved
    labels: dict[str, str] = Field(default_factory=dict, sa_column=Column(JSON))
    annotations: dict[str, str] = Field(default_factory=dict, sa_column=Column(JSON))
    path: str = ""  # the API path that shows its source (the payload's generatorURL)
    starts_at: float
    ends_at: float | None = None
    created_at: float = Field(default_factory=now, index=True)


class AlertDelivery(SQLModel, table=True):
    """One alert to one receiver: pending until sent, failed, or dropped."""

    __table_args__ = (UniqueConstraint("message_id", "receiver"),)
    id: int | None = Field(default=None, primary_key=True)
    message_id: int = Field(index=True, foreign_key="alertmessage.id")
    receiver: str = Field(index=True, max_length=64)
    fingerprint: str
    status: str = Field(default="pending", index=True)  # pending | sent | failed | dropped
    attempts: int = 0
    next_at: float = Field(default_factory=now, index=True)  # when it may be tried next
    last_status: int | None = None  # the receiver's last HTTP status
    last_error: str | None = None  # or what went wrong before one came
    reason: str | None = None  # why it failed or was dropped
    created_at: float = Field(default_factory=now, index=True)
    updated_at: float = Field(default_factory=now)


class AlertAttempt(SQLModel, table=True):
    """One POST of a delivery: what came back, and how long it took."""

    id: int | None = Field(default=None, primary_key=True)
    delivery_id: int = Field(index=True)
    receiver: str = Field(max_length=64)
    fingerprint: str
    attempt: int  # 1 for the first
    http_status: int | None = None
    error: str | None = None  # a connection error or timeout, short
    duration_ms: float
    ts: float = Field(default_factory=now, index=True)


class AlertCursor(SQLModel, table=True):
    """How far a source has been read: the last id (drift events) or time (ended rows)."""

    source: str = Field(primary_key=True, max_length=32)
    position: float
    updated_at: float = Field(default_factory=now)
