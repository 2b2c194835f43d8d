"""Additive schema changes: columns tables gained after their first release.

``create_all`` makes missing tables only; :func:`add_columns` adds the columns an older
database lacks, in place. Additive only, so an older hub can still read the database.
"""

from __future__ import annotations

from typing import Final

from sqlalchemy import Engine, inspect, text

__all__ = ["ADDED", "add_columns"]

# Columns Telemetry gained after its first release: added to an older database in place
# (create_all makes missing tables only). Additive, so an older hub can still read it.
TELEMETRY_ADDED: Final = {
    "latency_hist": "TEXT",
    "spool_dropped": "BIGINT",
    "windows": "INTEGER NOT NULL DEFAULT 1",
    "resolution_s": "FLOAT NOT NULL DEFAULT 0",
    "abs_err_sum": "FLOAT",
    "sq_err_sum": "FLOAT",
    "other_versions": "TEXT",
}


# Columns ModelVersion gained with datasets and regressors (ADR 0014), as above.
MODEL_VERSION_ADDED: Final = {
    "task": "VARCHAR NOT NULL DEFAULT 'classification'",
    "mae_fp32": "FLOAT",
    "mae_int8": "FLOAT",
    "dataset": "VARCHAR",
}


# Columns AuditRecord gained with rate-limited failed authentication (ADR 0006), as above.
AUDIT_ADDED: Final = {
    "claimed_keyid": "VARCHAR",
    "count": "INTEGER NOT NULL DEFAULT 1",
}


def add_columns(engine: Engine) -> None:
    """Add what an older database lacks of :data:`ADDED`."""
    for table, added in ADDED.items():
        _add(engine, table, added)


def _add(engine: Engine, table: str, added: dict[str, str]) -> None:
    have = {c["name"] for c in inspect(engine).get_columns(table)}
    missing = [(n, t) for n, t in added.items() if n not in have]
    if missing:
        with engine.begin() as conn:
            for name, sql_type in missing:
                conn.execute(text(f"ALTER TABLE {table} ADD COLUMN {name} {sql_type}"))


# Columns RolloutDevice gained with visible probation (hub/fleet/probation.py), as above.
ROLLOUT_DEVICE_ADDED: Final = {"probation": "JSON"}


# Columns Device gained with several models per device, as above.
DEVICE_ADDED: Final = {"models": "JSON"}


ADDED: Final = {
    "telemetry": TELEMETRY_ADDED,
    "modelversion": MODEL_VERSION_ADDED,
    "auditrecord": AUDIT_ADDED,
    "rolloutdevice": ROLLOUT_DEVICE_ADDED,
    "device": DEVICE_ADDED,
}
