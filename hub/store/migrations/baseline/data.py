"""The baseline's tables of datasets, captures, training, artefacts, figures and declared groups.

Frozen: part of migration 0001, the schema when the hub adopted Alembic. A later change
is a new migration, never an edit here.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlmodel.sql.sqltypes import AutoString


def create() -> None:
    """The tables, those others point at first."""
    _capture()
    _data_version()
    _datasetversion()
    _declaredgroup()
    _modelartefact()
    _modelfigure()
    _rolloutpolicy()
    _spooldrop()
    _training_run()
    _trainingrecord()
    _capturedevice()


def _capture() -> None:
    op.create_table(
        "capture",
        sa.Column("id", AutoString(length=64), nullable=False),
        sa.Column("model", AutoString(length=64), nullable=False),
        sa.Column("max_rows", sa.Integer(), nullable=False),
        sa.Column("duration_s", sa.Float(), nullable=True),
        sa.Column("windows", sa.Integer(), nullable=True),
        sa.Column("seed", sa.Integer(), nullable=False),
        sa.Column("state", AutoString(), nullable=False),
        sa.Column("reason", AutoString(), nullable=True),
        sa.Column("dataset_id", AutoString(), nullable=True),
        sa.Column("created_by", AutoString(), nullable=True),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("deadline", sa.Float(), nullable=False),
        sa.Column("ended_at", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(op.f("ix_capture_model"), "capture", ["model"], unique=False)


def _data_version() -> None:
    op.create_table(
        "data_version",
        sa.Column("id", AutoString(length=80), nullable=False),
        sa.Column("name", AutoString(length=64), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("sha256", AutoString(length=64), nullable=False),
        sa.Column("format", AutoString(), nullable=False),
        sa.Column("task", AutoString(), nullable=False),
        sa.Column("kind", AutoString(), nullable=False),
        sa.Column("label", AutoString(), nullable=False),
        sa.Column("rows", sa.Integer(), nullable=False),
        sa.Column("size_bytes", sa.Integer(), nullable=False),
        sa.Column("source", AutoString(), nullable=False),
        sa.Column("capture_id", AutoString(), nullable=True),
        sa.Column("model", AutoString(), nullable=True),
        sa.Column("created_by", AutoString(), nullable=True),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("data_schema", sa.JSON(), nullable=True),
        sa.Column("arrays_sha256", AutoString(length=64), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name", "seq"),
        sa.UniqueConstraint("name", "sha256"),
    )
    op.create_index(op.f("ix_data_version_name"), "data_version", ["name"], unique=False)
    op.create_index(op.f("ix_data_version_sha256"), "data_version", ["sha256"], unique=False)


def _datasetversion() -> None:
    op.create_table(
        "datasetversion",
        sa.Column("id", AutoString(length=64), nullable=False),
        sa.Column("model", AutoString(length=64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("capture_id", AutoString(), nullable=True),
        sa.Column("devices", sa.JSON(), nullable=True),
        sa.Column("rows", sa.Integer(), nullable=False),
        sa.Column("labelled", sa.Integer(), nullable=False),
        sa.Column("features", sa.Integer(), nullable=False),
        sa.Column("sha256", AutoString(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        op.f("ix_datasetversion_capture_id"), "datasetversion", ["capture_id"], unique=False
    )
    op.create_index(op.f("ix_datasetversion_model"), "datasetversion", ["model"], unique=False)


def _declaredgroup() -> None:
    op.create_table(
        "declaredgroup",
        sa.Column("tag", AutoString(length=64), nullable=False),
        sa.Column("model", AutoString(length=64), nullable=True),
        sa.Column("version", sa.Integer(), nullable=True),
        sa.Column("policy", AutoString(length=64), nullable=True),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.Column("updated_by", AutoString(), nullable=True),
        sa.PrimaryKeyConstraint("tag"),
    )


def _modelartefact() -> None:
    op.create_table(
        "modelartefact",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", AutoString(length=64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("runtime", AutoString(), nullable=False),
        sa.Column("format", AutoString(), nullable=False),
        sa.Column("target", AutoString(), nullable=False),
        sa.Column("sha256", AutoString(), nullable=False),
        sa.Column("size_bytes", sa.Integer(), nullable=False),
        sa.Column("chunk_size", sa.Integer(), nullable=False),
        sa.Column("accuracy_int8", sa.Float(), nullable=True),
        sa.Column("mae_int8", sa.Float(), nullable=True),
        sa.Column("metrics", sa.JSON(), nullable=True),
        sa.Column("gates", sa.JSON(), nullable=True),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name", "version", "runtime"),
        sa.UniqueConstraint("target"),
    )
    op.create_index(op.f("ix_modelartefact_name"), "modelartefact", ["name"], unique=False)


def _modelfigure() -> None:
    op.create_table(
        "modelfigure",
        sa.Column("model", AutoString(length=64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("figure", AutoString(length=32), nullable=False),
        sa.Column("value", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("model", "version", "figure"),
    )
    op.create_index(op.f("ix_modelfigure_updated_at"), "modelfigure", ["updated_at"], unique=False)


def _rolloutpolicy() -> None:
    op.create_table(
        "rolloutpolicy",
        sa.Column("name", AutoString(length=64), nullable=False),
        sa.Column("spec", sa.JSON(), nullable=True),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.Column("updated_by", AutoString(), nullable=True),
        sa.PrimaryKeyConstraint("name"),
    )


def _spooldrop() -> None:
    op.create_table(
        "spooldrop",
        sa.Column("device_id", AutoString(length=64), nullable=False),
        sa.Column("dropped", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("device_id"),
    )


def _training_run() -> None:
    op.create_table(
        "training_run",
        sa.Column("id", AutoString(length=32), nullable=False),
        sa.Column("model", AutoString(length=64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=True),
        sa.Column("status", AutoString(), nullable=False),
        sa.Column("source", AutoString(), nullable=False),
        sa.Column("job_id", AutoString(), nullable=True),
        sa.Column("datasets", sa.JSON(), nullable=True),
        sa.Column("split", sa.JSON(), nullable=True),
        sa.Column("config", sa.JSON(), nullable=True),
        sa.Column("metrics", sa.JSON(), nullable=True),
        sa.Column("gates", sa.JSON(), nullable=True),
        sa.Column("trials", sa.JSON(), nullable=True),
        sa.Column("refusal", AutoString(), nullable=True),
        sa.Column("package_version", AutoString(), nullable=True),
        sa.Column("source_revision", AutoString(), nullable=True),
        sa.Column("created_by", AutoString(), nullable=True),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(op.f("ix_training_run_model"), "training_run", ["model"], unique=False)


def _trainingrecord() -> None:
    op.create_table(
        "trainingrecord",
        sa.Column("name", AutoString(length=64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("config", sa.JSON(), nullable=True),
        sa.Column("datasets", sa.JSON(), nullable=True),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("name", "version"),
    )


def _capturedevice() -> None:
    op.create_table(
        "capturedevice",
        sa.Column("capture_id", AutoString(), nullable=False),
        sa.Column("device_id", AutoString(length=64), nullable=False),
        sa.Column("status", AutoString(), nullable=False),
        sa.Column("reason", AutoString(), nullable=True),
        sa.Column("detail", AutoString(), nullable=True),
        sa.Column("version", sa.Integer(), nullable=True),
        sa.Column("rows", sa.Integer(), nullable=True),
        sa.Column("labelled", sa.Integer(), nullable=True),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(
            ["capture_id"],
            ["capture.id"],
        ),
        sa.PrimaryKeyConstraint("capture_id", "device_id"),
    )
