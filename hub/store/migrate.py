"""Bringing a database to the hub's schema: Alembic migrations, and adopting older ones.

Every schema change is a migration in hub/store/migrations/versions/ (ADR 0031,
docs/database.md); :func:`upgrade` runs those a database lacks, at each start of the hub
and with ``edgefleet hub migrate``. The first migration is the schema as it stood when
the hub adopted Alembic. A database made before that (``create_all`` plus the columns
below, no ``alembic_version`` table) is adopted: the columns and tables an older hub
lacked are added in place, the result is checked against that first migration's schema,
and it is stamped with it; later migrations then run as for any other database.

Errors::

    MigrationError   the database cannot be brought to the hub's schema (``problems``)
"""

from __future__ import annotations

import logging
from importlib.resources import files
from typing import Any, Final

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, MetaData, create_engine, inspect, text

__all__ = ["ADDED", "BASELINE", "MigrationError", "alembic_config", "current", "head", "upgrade"]

log = logging.getLogger("edgefleet.hub.store")

BASELINE: Final = "0001"  # the schema as it stood when the hub adopted Alembic
VERSION_TABLE: Final = "alembic_version"
# pg_advisory_xact_lock's first key (the second: the schema's hash): replicas starting at
# once on one schema migrate one after another; hubs on other schemas do not wait
MIGRATION_LOCK: Final = 0x6566_6D69  # "efmi", an int4


class MigrationError(Exception):
    """The database cannot be brought to the hub's schema."""

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(f"{message}: {'; '.join(problems)}" if problems else message)
        self.problems = problems or []


def alembic_config() -> Config:
    """Alembic's configuration for the migrations shipped in the hub package."""
    cfg = Config()
    cfg.set_main_option("script_location", str(files("hub.store") / "migrations"))
    return cfg


def head() -> str:
    """The newest migration's revision."""
    found = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert found is not None
    return found


def current(engine: Engine) -> str | None:
    """The revision ``engine``'s database is at (None: not under Alembic, or empty)."""
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(engine: Engine, metadata: MetaData) -> str:
    """Run the migrations ``engine``'s database lacks; adopt a pre-Alembic one first.

    Returns the revision it was at before (``"empty"``, ``"unversioned"`` or a revision).
    Raises MigrationError when an unversioned database does not match the baseline.
    """
    cfg = alembic_config()
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            lock = "SELECT pg_advisory_xact_lock(:k, hashtext(current_schema()))"
            conn.execute(text(lock), {"k": MIGRATION_LOCK})
        before = _adopt(conn, metadata, cfg)
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")
    return before


def _adopt(conn: Connection, metadata: MetaData, cfg: Config) -> str:
    """Stamp a database made before Alembic with the baseline, once it matches."""
    tables = set(inspect(conn).get_table_names())
    if VERSION_TABLE in tables:
        return MigrationContext.configure(conn).get_current_revision() or "empty"
    if not tables & set(metadata.tables):
        return "empty"
    log.warning("database made before migrations: adding what it lacks, then stamping it")
    metadata.create_all(conn)  # the tables an older hub did not have yet
    add_columns(conn)
    diffs = compare_metadata(MigrationContext.configure(conn), metadata)
    for diff in diffs:  # an index a hand-made or first-release table lacks: made now
        if isinstance(diff, tuple) and diff[0] == "add_index":
            diff[1].create(conn)
    baseline = _baseline_columns()
    problems = [p for p in (_describe(d, baseline) for d in diffs) if p]
    if problems:
        raise MigrationError("the database does not match the hub's schema", problems)
    cfg.attributes["connection"] = conn
    command.stamp(cfg, BASELINE)
    return "unversioned"


def _describe(diff: Any, baseline: set[tuple[str, str]]) -> str | None:
    """A difference from the baseline schema (a missing table or column), in words; a
    column a later migration adds is not one: that migration adds it after the stamp."""
    if isinstance(diff, list):  # column modifications come grouped
        return None
    kind = diff[0]
    if kind == "add_table":
        return f"missing table {diff[1].name}"
    if kind == "add_column" and (diff[2], diff[3].name) in baseline:
        return f"missing column {diff[2]}.{diff[3].name}"
    return None


def _baseline_columns() -> set[tuple[str, str]]:
    """(table, column) of the baseline migration's schema, made in an in-memory SQLite."""
    cfg = alembic_config()
    with create_engine("sqlite://").begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, BASELINE)
        found = inspect(conn)
        return {(t, c["name"]) for t in found.get_table_names() for c in found.get_columns(t)}


# Columns tables gained after their first release, before migrations: an older database
# gets them in place when it is adopted (:func:`_adopt`). Additive, as they always were;
# of the types the tables declare (one that gained them as TEXT or BIGINT reads the same).
TELEMETRY_ADDED: Final = {
    "latency_hist": "VARCHAR",
    "spool_dropped": "INTEGER",
    "windows": "INTEGER NOT NULL DEFAULT 1",
    "resolution_s": "FLOAT NOT NULL DEFAULT 0",
    "abs_err_sum": "FLOAT",
    "sq_err_sum": "FLOAT",
    "other_versions": "VARCHAR",
}
# with datasets and regressors (ADR 0014)
MODEL_VERSION_ADDED: Final = {
    "task": "VARCHAR NOT NULL DEFAULT 'classification'",
    "mae_fp32": "FLOAT",
    "mae_int8": "FLOAT",
    "dataset": "VARCHAR",
}
# with rate-limited failed authentication (ADR 0006)
AUDIT_ADDED: Final = {"claimed_keyid": "VARCHAR", "count": "INTEGER NOT NULL DEFAULT 1"}
ADDED: Final = {
    "telemetry": TELEMETRY_ADDED,
    "modelversion": MODEL_VERSION_ADDED,
    "auditrecord": AUDIT_ADDED,
    "rolloutdevice": {"probation": "JSON"},  # with visible probation
    "device": {"models": "JSON"},  # with several models per device
}


def add_columns(conn: Connection) -> None:
    """Add what an older database lacks of :data:`ADDED`."""
    for table, added in ADDED.items():
        have = {c["name"] for c in inspect(conn).get_columns(table)}
        for name, sql_type in added.items():
            if name not in have:
                conn.execute(text(f"ALTER TABLE {table} ADD COLUMN {name} {sql_type}"))
