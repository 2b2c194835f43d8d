"""The baseline: the hub's schema when it adopted Alembic (ADR 0031).

Every table as ``SQLModel.metadata.create_all`` made it, with the columns
hub/store/migrate.py's ``ADDED`` lists. A database made before Alembic is stamped with
this revision once it matches (hub/store/migrate.py), never run through it.

Revision ID: 0001
Revises:
Create Date: 2026-12-07
"""

from __future__ import annotations

from alembic import op

from hub.store.migrations.baseline import alerts, data, fleet

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# every table, in the order they are dropped (those that point at others first)
TABLES = (
    "rolloutdevice", "deploymentdevice", "capturedevice", "alertdelivery", "trainingrecord",
    "training_run", "telemetry", "spooldrop", "rolloutpolicy", "rollout", "revocation",
    "modelversion", "modelfigure", "modelartefact", "looprun", "looppolicy", "job",
    "eventrecord", "enroltoken", "driftwindow", "driftpolicy", "driftevent", "driftalert",
    "devicetag", "device", "deployment", "declaredgroup", "datasetversion", "data_version",
    "capture", "auditrecord", "apikey", "alertreceiver", "alertmessage", "alertcursor",
    "alertattempt",
)  # fmt: skip


def upgrade() -> None:
    fleet.create()
    data.create()
    alerts.create()


def downgrade() -> None:
    for table in TABLES:
        op.drop_table(table)
