"""The baseline's tables of alert delivery (hub/store/alert_tables.py).

Frozen: part of migration 0001, the schema when the hub adopted Alembic. A later change
is a new migration, never an edit here.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlmodel.sql.sqltypes import AutoString


def create() -> None:
    """The tables, those others point at first."""
    _alertattempt()
    _alertcursor()
    _alertmessage()
    _alertreceiver()
    _alertdelivery()


def _alertattempt() -> None:
    op.create_table(
        "alertattempt",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("delivery_id", sa.Integer(), nullable=False),
        sa.Column("receiver", AutoString(length=64), nullable=False),
        sa.Column("fingerprint", AutoString(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("http_status", sa.Integer(), nullable=True),
        sa.Column("error", AutoString(), nullable=True),
        sa.Column("duration_ms", sa.Float(), nullable=False),
        sa.Column("ts", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        op.f("ix_alertattempt_delivery_id"), "alertattempt", ["delivery_id"], unique=False
    )
    op.create_index(op.f("ix_alertattempt_ts"), "alertattempt", ["ts"], unique=False)


def _alertcursor() -> None:
    op.create_table(
        "alertcursor",
        sa.Column("source", AutoString(length=32), nullable=False),
        sa.Column("position", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("source"),
    )


def _alertmessage() -> None:
    op.create_table(
        "alertmessage",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("source_key", AutoString(length=200), nullable=False),
        sa.Column("kind", AutoString(), nullable=False),
        sa.Column("model", AutoString(length=64), nullable=True),
        sa.Column("status", AutoString(), nullable=False),
        sa.Column("fingerprint", AutoString(), nullable=False),
        sa.Column("labels", sa.JSON(), nullable=True),
        sa.Column("annotations", sa.JSON(), nullable=True),
        sa.Column("path", AutoString(), nullable=False),
        sa.Column("starts_at", sa.Float(), nullable=False),
        sa.Column("ends_at", sa.Float(), nullable=True),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("source_key"),
    )
    op.create_index(
        op.f("ix_alertmessage_created_at"), "alertmessage", ["created_at"], unique=False
    )
    op.create_index(
        op.f("ix_alertmessage_fingerprint"), "alertmessage", ["fingerprint"], unique=False
    )
    op.create_index(op.f("ix_alertmessage_kind"), "alertmessage", ["kind"], unique=False)


def _alertreceiver() -> None:
    op.create_table(
        "alertreceiver",
        sa.Column("name", AutoString(length=64), nullable=False),
        sa.Column("url", AutoString(length=2048), nullable=False),
        sa.Column("secret", AutoString(length=256), nullable=False),
        sa.Column("kinds", sa.JSON(), nullable=True),
        sa.Column("models", sa.JSON(), nullable=True),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("created_by", AutoString(), nullable=True),
        sa.PrimaryKeyConstraint("name"),
    )


def _alertdelivery() -> None:
    op.create_table(
        "alertdelivery",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("message_id", sa.Integer(), nullable=False),
        sa.Column("receiver", AutoString(length=64), nullable=False),
        sa.Column("fingerprint", AutoString(), nullable=False),
        sa.Column("status", AutoString(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_at", sa.Float(), nullable=False),
        sa.Column("last_status", sa.Integer(), nullable=True),
        sa.Column("last_error", AutoString(), nullable=True),
        sa.Column("reason", AutoString(), nullable=True),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(
            ["message_id"],
            ["alertmessage.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("message_id", "receiver"),
    )
    op.create_index(
        op.f("ix_alertdelivery_created_at"), "alertdelivery", ["created_at"], unique=False
    )
    op.create_index(
        op.f("ix_alertdelivery_message_id"), "alertdelivery", ["message_id"], unique=False
    )
    op.create_index(op.f("ix_alertdelivery_next_at"), "alertdelivery", ["next_at"], unique=False)
    op.create_index(op.f("ix_alertdelivery_receiver"), "alertdelivery", ["receiver"], unique=False)
    op.create_index(op.f("ix_alertdelivery_status"), "alertdelivery", ["status"], unique=False)
