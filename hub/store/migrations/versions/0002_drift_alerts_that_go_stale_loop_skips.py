"""Drift alerts that go stale: an alert's reason (``stale_reason``), an event's
(``detail``), and the silence a model's policy allows (``silence_s``, 900 s on rows made
before it). Loop skips are ``looprun`` rows (stage ``skipped``): no change there.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-07
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlmodel.sql.sqltypes import AutoString

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def columns() -> dict[str, sa.Column[Any]]:
    """The columns this revision adds, by table (new objects: a Column joins one table)."""
    return {
        "driftalert": sa.Column("stale_reason", AutoString(), nullable=True),
        "driftevent": sa.Column("detail", AutoString(), nullable=True),
        "driftpolicy": sa.Column("silence_s", sa.Float(), server_default="900", nullable=False),
    }


def upgrade() -> None:
    # A database adopted from before migrations may have them already (made by today's
    # models, hub/store/migrate.py): add only what is missing.
    found = sa.inspect(op.get_bind())
    for table, column in columns().items():
        have = {c["name"] for c in found.get_columns(table)}
        if column.name not in have:
            with op.batch_alter_table(table, schema=None) as batch_op:
                batch_op.add_column(column)


def downgrade() -> None:
    with op.batch_alter_table("driftpolicy", schema=None) as batch_op:
        batch_op.drop_column("silence_s")
    with op.batch_alter_table("driftevent", schema=None) as batch_op:
        batch_op.drop_column("detail")
    with op.batch_alter_table("driftalert", schema=None) as batch_op:
        batch_op.drop_column("stale_reason")
