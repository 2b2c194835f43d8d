"""The baseline's tables of the fleet, rollouts, telemetry, drift, access and the loop.

Frozen: part of migration 0001, the schema when the hub adopted Alembic. A later change
is a new migration, never an edit here.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlmodel.sql.sqltypes import AutoString


def create() -> None:
    """The tables, those others point at first."""
    _apikey()
    _auditrecord()
    _deployment()
    _device()
    _devicetag()
    _driftalert()
    _driftevent()
    _driftpolicy()
    _driftwindow()
    _enroltoken()
    _eventrecord()
    _job()
    _looppolicy()
    _looprun()
    _modelversion()
    _revocation()
    _rollout()
    _telemetry()
    _deploymentdevice()
    _rolloutdevice()


def _apikey() -> None:
    op.create_table(
        "apikey",
        sa.Column("name", AutoString(length=64), nullable=False),
        sa.Column("role", AutoString(), nullable=False),
        sa.Column("keyid", AutoString(length=32), nullable=False),
        sa.Column("secret_sha256", AutoString(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("created_by", AutoString(), nullable=False),
        sa.Column("revoked_at", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("keyid"),
    )


def _auditrecord() -> None:
    op.create_table(
        "auditrecord",
        sa.Column("ts", sa.Float(), nullable=False),
        sa.Column("actor_keyid", AutoString(), nullable=True),
        sa.Column("actor_name", AutoString(), nullable=True),
        sa.Column("role", AutoString(), nullable=True),
        sa.Column("action", AutoString(), nullable=False),
        sa.Column("method", AutoString(), nullable=False),
        sa.Column("path", AutoString(), nullable=False),
        sa.Column("target", AutoString(), nullable=True),
        sa.Column("before", sa.JSON(none_as_null=True), nullable=True),
        sa.Column("after", sa.JSON(none_as_null=True), nullable=True),
        sa.Column("outcome", AutoString(), nullable=False),
        sa.Column("status", sa.Integer(), nullable=False),
        sa.Column("detail", AutoString(), nullable=True),
        sa.Column("client", AutoString(), nullable=True),
        sa.Column("claimed_keyid", AutoString(), nullable=True),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("id", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(op.f("ix_auditrecord_action"), "auditrecord", ["action"], unique=False)
    op.create_index(
        op.f("ix_auditrecord_actor_keyid"), "auditrecord", ["actor_keyid"], unique=False
    )
    op.create_index(op.f("ix_auditrecord_ts"), "auditrecord", ["ts"], unique=False)


def _deployment() -> None:
    op.create_table(
        "deployment",
        sa.Column("id", AutoString(), nullable=False),
        sa.Column("model", AutoString(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("target", AutoString(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("devices", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )


def _device() -> None:
    op.create_table(
        "device",
        sa.Column("id", AutoString(length=64), nullable=False),
        sa.Column("device_class", AutoString(), nullable=True),
        sa.Column("runtime", AutoString(), nullable=True),
        sa.Column("agent_version", AutoString(), nullable=True),
        sa.Column("status", AutoString(), nullable=False),
        sa.Column("root_version", sa.Integer(), nullable=True),
        sa.Column("model", AutoString(), nullable=True),
        sa.Column("version", sa.Integer(), nullable=True),
        sa.Column("sha256", AutoString(), nullable=True),
        sa.Column("models", sa.JSON(), nullable=True),
        sa.Column("first_seen", sa.Float(), nullable=False),
        sa.Column("last_seen", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )


def _devicetag() -> None:
    op.create_table(
        "devicetag",
        sa.Column("device_id", AutoString(), nullable=False),
        sa.Column("tag", AutoString(length=64), nullable=False),
        sa.PrimaryKeyConstraint("device_id", "tag"),
    )
    op.create_index(op.f("ix_devicetag_tag"), "devicetag", ["tag"], unique=False)


def _driftalert() -> None:
    op.create_table(
        "driftalert",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("model", AutoString(length=64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=True),
        sa.Column("scope", AutoString(), nullable=False),
        sa.Column("scope_id", AutoString(), nullable=False),
        sa.Column("state", AutoString(), nullable=False),
        sa.Column("opened_at", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.Column("cleared_at", sa.Float(), nullable=True),
        sa.Column("devices", sa.JSON(), nullable=True),
        sa.Column("features", sa.JSON(), nullable=True),
        sa.Column("scores", sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(op.f("ix_driftalert_model"), "driftalert", ["model"], unique=False)
    op.create_index(op.f("ix_driftalert_state"), "driftalert", ["state"], unique=False)


def _driftevent() -> None:
    op.create_table(
        "driftevent",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("ts", sa.Float(), nullable=False),
        sa.Column("alert_id", sa.Integer(), nullable=False),
        sa.Column("kind", AutoString(), nullable=False),
        sa.Column("model", AutoString(length=64), nullable=False),
        sa.Column("scope", AutoString(), nullable=False),
        sa.Column("scope_id", AutoString(), nullable=False),
        sa.Column("features", sa.JSON(), nullable=True),
        sa.Column("devices", sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(op.f("ix_driftevent_alert_id"), "driftevent", ["alert_id"], unique=False)
    op.create_index(op.f("ix_driftevent_model"), "driftevent", ["model"], unique=False)
    op.create_index(op.f("ix_driftevent_ts"), "driftevent", ["ts"], unique=False)


def _driftpolicy() -> None:
    op.create_table(
        "driftpolicy",
        sa.Column("model", AutoString(length=64), nullable=False),
        sa.Column("psi_threshold", sa.Float(), nullable=False),
        sa.Column("js_threshold", sa.Float(), nullable=False),
        sa.Column("k", sa.Integer(), nullable=False),
        sa.Column("n", sa.Integer(), nullable=False),
        sa.Column("min_rows", sa.Integer(), nullable=False),
        sa.Column("scope_window_s", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.Column("updated_by", AutoString(), nullable=True),
        sa.PrimaryKeyConstraint("model"),
    )


def _driftwindow() -> None:
    op.create_table(
        "driftwindow",
        sa.Column("device_id", AutoString(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("model", AutoString(length=64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("ts", sa.Float(), nullable=False),
        sa.Column("rows", sa.Integer(), nullable=False),
        sa.Column("sketch", sa.JSON(), nullable=True),
        sa.Column("scores", sa.JSON(none_as_null=True), nullable=True),
        sa.PrimaryKeyConstraint("device_id", "seq"),
    )
    op.create_index(op.f("ix_driftwindow_model"), "driftwindow", ["model"], unique=False)
    op.create_index(op.f("ix_driftwindow_ts"), "driftwindow", ["ts"], unique=False)


def _enroltoken() -> None:
    op.create_table(
        "enroltoken",
        sa.Column("id", AutoString(length=32), nullable=False),
        sa.Column("device_id", AutoString(), nullable=True),
        sa.Column("reenrol", sa.Boolean(), nullable=False),
        sa.Column("expires_at", sa.Float(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("created_by", AutoString(), nullable=False),
        sa.Column("used_at", sa.Float(), nullable=True),
        sa.Column("used_by_device", AutoString(), nullable=True),
        sa.Column("revoked_at", sa.Float(), nullable=True),
        sa.Column("token_sha256", AutoString(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(op.f("ix_enroltoken_token_sha256"), "enroltoken", ["token_sha256"], unique=True)


def _eventrecord() -> None:
    op.create_table(
        "eventrecord",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("device_id", AutoString(), nullable=False),
        sa.Column("deployment_id", AutoString(), nullable=False),
        sa.Column("model", AutoString(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("stage", AutoString(), nullable=False),
        sa.Column("reason", AutoString(), nullable=True),
        sa.Column("detail", AutoString(), nullable=True),
        sa.Column("ts", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        op.f("ix_eventrecord_deployment_id"), "eventrecord", ["deployment_id"], unique=False
    )
    op.create_index(op.f("ix_eventrecord_device_id"), "eventrecord", ["device_id"], unique=False)


def _job() -> None:
    op.create_table(
        "job",
        sa.Column("id", AutoString(), nullable=False),
        sa.Column("kind", AutoString(), nullable=False),
        sa.Column("status", AutoString(), nullable=False),
        sa.Column("stage", AutoString(), nullable=False),
        sa.Column("progress", sa.Float(), nullable=False),
        sa.Column("error", AutoString(), nullable=True),
        sa.Column("result", AutoString(), nullable=True),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )


def _looppolicy() -> None:
    op.create_table(
        "looppolicy",
        sa.Column("model", AutoString(length=64), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("capture_rows", sa.Integer(), nullable=False),
        sa.Column("capture_s", sa.Float(), nullable=False),
        sa.Column("canary_percent", sa.Float(), nullable=False),
        sa.Column("waves", sa.Integer(), nullable=False),
        sa.Column("max_failure_ratio", sa.Float(), nullable=False),
        sa.Column("min_sample", sa.Integer(), nullable=False),
        sa.Column("cooldown_s", sa.Float(), nullable=False),
        sa.Column("gather_s", sa.Float(), nullable=False),
        sa.Column("updated_by", AutoString(), nullable=True),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("model"),
    )


def _looprun() -> None:
    op.create_table(
        "looprun",
        sa.Column("id", AutoString(length=64), nullable=False),
        sa.Column("model", AutoString(length=64), nullable=False),
        sa.Column("from_version", sa.Integer(), nullable=True),
        sa.Column("alerts", sa.JSON(), nullable=True),
        sa.Column("devices", sa.JSON(), nullable=True),
        sa.Column("features", sa.JSON(), nullable=True),
        sa.Column("stage", AutoString(), nullable=False),
        sa.Column("capture_id", AutoString(), nullable=True),
        sa.Column("dataset_id", AutoString(), nullable=True),
        sa.Column("job_id", AutoString(), nullable=True),
        sa.Column("version", sa.Integer(), nullable=True),
        sa.Column("rollout_id", AutoString(), nullable=True),
        sa.Column("detail", AutoString(), nullable=True),
        sa.Column("steps", sa.JSON(), nullable=True),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.Column("ended_at", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(op.f("ix_looprun_model"), "looprun", ["model"], unique=False)
    op.create_index(op.f("ix_looprun_stage"), "looprun", ["stage"], unique=False)


def _modelversion() -> None:
    op.create_table(
        "modelversion",
        sa.Column("name", AutoString(length=64), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("sha256", AutoString(), nullable=False),
        sa.Column("format", AutoString(), nullable=False),
        sa.Column("runtime", AutoString(), nullable=False),
        sa.Column("size_bytes", sa.Integer(), nullable=False),
        sa.Column("chunk_size", sa.Integer(), nullable=False),
        sa.Column("size_fp32", sa.Integer(), nullable=True),
        sa.Column("accuracy_fp32", sa.Float(), nullable=True),
        sa.Column("accuracy_int8", sa.Float(), nullable=True),
        sa.Column("target", AutoString(), nullable=False),
        sa.Column("source", AutoString(), nullable=False),
        sa.Column("device_classes", AutoString(), nullable=False),
        sa.Column("task", AutoString(), nullable=False),
        sa.Column("mae_fp32", sa.Float(), nullable=True),
        sa.Column("mae_int8", sa.Float(), nullable=True),
        sa.Column("dataset", AutoString(), nullable=True),
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("name", "version"),
    )
    op.create_index(op.f("ix_modelversion_name"), "modelversion", ["name"], unique=False)


def _revocation() -> None:
    op.create_table(
        "revocation",
        sa.Column("device_id", AutoString(length=64), nullable=False),
        sa.Column("revoked_at", sa.Float(), nullable=False),
        sa.Column("reason", AutoString(), nullable=False),
        sa.Column("by", AutoString(), nullable=True),
        sa.Column("serials", sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint("device_id"),
    )


def _rollout() -> None:
    op.create_table(
        "rollout",
        sa.Column("id", AutoString(), nullable=False),
        sa.Column("model", AutoString(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("target", AutoString(), nullable=False),
        sa.Column("state", AutoString(), nullable=False),
        sa.Column("spec", sa.JSON(), nullable=True),
        sa.Column("waves", sa.Integer(), nullable=False),
        sa.Column("wave", sa.Integer(), nullable=False),
        sa.Column("group", AutoString(), nullable=True),
        sa.Column("halted_reason", AutoString(), nullable=True),
        sa.Column("created_by", AutoString(), nullable=True),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("started_at", sa.Float(), nullable=False),
        sa.Column("paused_s", sa.Float(), nullable=False),
        sa.Column("paused_at", sa.Float(), nullable=True),
        sa.Column("ended_at", sa.Float(), nullable=True),
        sa.Column("settled_at", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(op.f("ix_rollout_group"), "rollout", ["group"], unique=False)


def _telemetry() -> None:
    op.create_table(
        "telemetry",
        sa.Column("device_id", AutoString(), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("start", sa.Float(), nullable=False),
        sa.Column("end", sa.Float(), nullable=False),
        sa.Column("model", AutoString(), nullable=True),
        sa.Column("version", sa.Integer(), nullable=True),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("errors", sa.Integer(), nullable=False),
        sa.Column("p50_us", sa.Float(), nullable=False),
        sa.Column("p95_us", sa.Float(), nullable=False),
        sa.Column("p99_us", sa.Float(), nullable=False),
        sa.Column("labelled", sa.Integer(), nullable=False),
        sa.Column("correct", sa.Integer(), nullable=False),
        sa.Column("abs_err_sum", sa.Float(), nullable=True),
        sa.Column("sq_err_sum", sa.Float(), nullable=True),
        sa.Column("other_versions", AutoString(), nullable=True),
        sa.Column("cpu_pct", sa.Float(), nullable=True),
        sa.Column("rss_bytes", sa.Integer(), nullable=True),
        sa.Column("latency_hist", AutoString(), nullable=True),
        sa.Column("spool_dropped", sa.Integer(), nullable=True),
        sa.Column("windows", sa.Integer(), nullable=False),
        sa.Column("resolution_s", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("device_id", "seq"),
    )
    op.create_index(op.f("ix_telemetry_end"), "telemetry", ["end"], unique=False)


def _deploymentdevice() -> None:
    op.create_table(
        "deploymentdevice",
        sa.Column("deployment_id", AutoString(), nullable=False),
        sa.Column("device_id", AutoString(), nullable=False),
        sa.Column("stage", AutoString(), nullable=False),
        sa.Column("reason", AutoString(), nullable=True),
        sa.Column("detail", AutoString(), nullable=True),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(
            ["deployment_id"],
            ["deployment.id"],
        ),
        sa.PrimaryKeyConstraint("deployment_id", "device_id"),
    )


def _rolloutdevice() -> None:
    op.create_table(
        "rolloutdevice",
        sa.Column("rollout_id", AutoString(), nullable=False),
        sa.Column("device_id", AutoString(), nullable=False),
        sa.Column("wave", sa.Integer(), nullable=False),
        sa.Column("state", AutoString(), nullable=False),
        sa.Column("reason", AutoString(), nullable=True),
        sa.Column("detail", AutoString(), nullable=True),
        sa.Column("previous_version", sa.Integer(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("timeouts", sa.Integer(), nullable=False),
        sa.Column("sent_at", sa.Float(), nullable=True),
        sa.Column("rollback_at", sa.Float(), nullable=True),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.Column("probation", sa.JSON(), nullable=True),
        sa.ForeignKeyConstraint(
            ["rollout_id"],
            ["rollout.id"],
        ),
        sa.PrimaryKeyConstraint("rollout_id", "device_id"),
    )
