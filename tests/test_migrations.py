"""Schema migrations (hub/store/migrate.py, ADR 0031) on SQLite and on PostgreSQL.

The migrations and the tables agree (a table changed without a migration fails here); a
database made by the hub before migrations, with rows in many tables, is adopted with
every row; an older one gains the columns it lacked; one that cannot match is refused
with what is missing; ``edgefleet hub migrate`` says where a database stands.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Engine, inspect, text
from sqlmodel import SQLModel, select

from edgefleet.cli import main as cli
from hub.store.engine import connect, session, sqlite_url
from hub.store.migrate import ADDED, BASELINE, MigrationError, alembic_config, current, head
from hub.store.tables import (
    ApiKey,
    AuditRecord,
    Device,
    DeviceTag,
    DriftPolicy,
    EventRecord,
    Job,
    LoopPolicy,
    Rollout,
    Telemetry,
    make_engine,
    upgrade_database,
)

pytestmark = pytest.mark.postgres


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database of each kind."""
    if request.param == "sqlite":
        yield sqlite_url(tmp_path / "hub.db")
    else:
        yield request.getfixturevalue("pg_url")


def differences(engine: Engine) -> list[object]:
    with engine.connect() as conn:
        return list(compare_metadata(MigrationContext.configure(conn), SQLModel.metadata))


def test_the_migrations_make_exactly_the_tables_the_hub_declares(url: str) -> None:
    engine = make_engine(url)
    try:
        assert differences(engine) == [], "a table changed without a migration (docs/database.md)"
        assert current(engine) == head()
        assert "alembic_version" in inspect(engine).get_table_names()
    finally:
        engine.dispose()


def as_before_migrations(url: str) -> Engine:
    """A database as the hub made it before migrations: create_all plus the added columns,
    which the baseline migration mirrors (later migrations' columns it did not have)."""
    engine = connect(url)
    cfg = alembic_config()
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, BASELINE)
        conn.execute(text("DROP TABLE alembic_version"))
    return engine


def rows() -> list[SQLModel]:
    """One row in each of several tables, JSON columns and floats among them."""
    return [
        Device(id="dev-1", device_class="pi4", status="online", models={"m": {"version": 3}}),
        DeviceTag(device_id="dev-1", tag="site-a"),
        ApiKey(keyid="k1", name="ops", role="admin", secret_sha256="ab" * 32, created_by="cli"),
        AuditRecord(
            action="apikey.create",
            method="CLI",
            path="-",
            outcome="ok",
            status=0,
            after={"keyid": "k1"},
            claimed_keyid=None,
            count=1,
        ),
        Rollout(id="r1", model="m", version=3, target="group:all", spec={"waves": [50, 100]}),
        EventRecord(
            device_id="dev-1", deployment_id="d1", model="m", version=3, stage="healthy", ts=12.5
        ),
        Telemetry(
            device_id="dev-1",
            seq=7,
            start=0.0,
            end=10.0,
            count=40,
            errors=1,
            p50_us=1.5,
            p95_us=2.5,
            p99_us=3.5,
            windows=1,
            resolution_s=0.0,
        ),
        Job(id="j1", kind="train", status="done", progress=1.0, result='{"version": 3}'),
        LoopPolicy(model="m", enabled=True, canary_percent=25.0),
    ]


def dumped(engine: Engine) -> dict[str, list[dict[str, object]]]:
    out: dict[str, list[dict[str, object]]] = {}
    with session(engine) as s:
        for row in rows():
            kind = type(row)
            out[kind.__name__] = [r.model_dump() for r in s.exec(select(kind)).all()]
    return out


def test_a_database_made_before_migrations_keeps_every_row(url: str) -> None:
    old = as_before_migrations(url)
    with session(old) as s:
        s.add_all(rows())
        s.commit()
    before = dumped(old)
    old.dispose()
    assert all(len(rows) == 1 for rows in before.values())

    engine = make_engine(url)  # what a hub of this release does at start
    try:
        assert current(engine) == head()
        assert dumped(engine) == before
        assert differences(engine) == []
    finally:
        engine.dispose()


def test_a_drift_policy_set_before_silence_existed_gets_the_default_silence(url: str) -> None:
    """0002 gives every drift policy already set ``silence_s`` 900 s (docs/drift.md)."""
    old = as_before_migrations(url)
    with old.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO driftpolicy (model, psi_threshold, js_threshold, k, n, min_rows,"
                " scope_window_s, updated_at) VALUES ('m', 0.3, 0.1, 2, 3, 400, 60, 1)"
            )
        )
    old.dispose()
    engine = make_engine(url)
    try:
        with session(engine) as s:
            policy = s.get(DriftPolicy, "m")
        assert policy is not None and (policy.min_rows, policy.silence_s) == (400, 900.0)
    finally:
        engine.dispose()


def test_an_older_database_gains_the_columns_and_tables_it_lacked(url: str) -> None:
    """Before migrations a hub added columns in place; adoption still does, then stamps."""
    old = as_before_migrations(url)
    with old.begin() as conn:
        for table, columns in ADDED.items():
            for column in columns:
                conn.execute(text(f'ALTER TABLE {table} DROP COLUMN "{column}"'))
        conn.execute(text("DROP TABLE alertattempt"))  # a table a later hub added
        conn.execute(
            text(
                'INSERT INTO telemetry (device_id, seq, start, "end", count, errors, p50_us,'
                " p95_us, p99_us, labelled, correct) VALUES ('old', 1, 0, 10, 5, 0, 1, 2, 3, 0, 0)"
            )
        )
    old.dispose()

    engine = make_engine(url)
    try:
        with session(engine) as s:
            (row,) = s.exec(select(Telemetry)).all()
        assert (row.device_id, row.count, row.windows, row.resolution_s) == ("old", 5, 1, 0.0)
        assert differences(engine) == []
        assert current(engine) == head()
    finally:
        engine.dispose()


def test_a_database_that_cannot_match_is_refused_with_what_it_lacks(
    url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    old = as_before_migrations(url)
    with old.begin() as conn:
        conn.execute(text("ALTER TABLE device DROP COLUMN device_class"))  # never additive
    old.dispose()
    with pytest.raises(MigrationError, match=r"missing column device\.device_class"):
        make_engine(url)
    assert cli(["hub", "migrate", "--db", url]) == 1
    said = capsys.readouterr().err
    assert "does not match the hub's schema: missing column device.device_class" in said
    engine = connect(url)
    try:
        assert current(engine) is None, "refused, and not stamped"
    finally:
        engine.dispose()


def test_hub_migrate_brings_a_database_to_the_newest_revision(
    url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    as_before_migrations(url).dispose()
    assert cli(["hub", "migrate", "--db", url, "--json"]) == 0
    said = json.loads(capsys.readouterr().out)
    assert (said["before"], said["now"], said["head"]) == ("unversioned", head(), head())
    assert head() >= BASELINE
    assert cli(["hub", "migrate", "--db", url]) == 0
    assert f"at {head()}, the newest; nothing to do" in capsys.readouterr().out


def test_replicas_starting_together_on_postgresql_migrate_one_after_another(
    pg_url: str,
) -> None:
    """Several hubs opening one empty database at once: one migrates, the others wait for
    its lock and find nothing to do; none fails on a table another just made."""
    barrier = threading.Barrier(REPLICAS)

    def start() -> str:
        engine = connect(pg_url)
        try:
            barrier.wait(timeout=30)
            return upgrade_database(engine)
        finally:
            engine.dispose()

    with ThreadPoolExecutor(REPLICAS) as pool:
        befores = sorted(pool.map(lambda _: start(), range(REPLICAS)))
    assert befores.count("empty") == 1, befores  # the one that made the tables
    assert set(befores) - {"empty"} <= {head()}, befores
    engine = connect(pg_url)
    try:
        assert current(engine) == head()
        assert differences(engine) == []
    finally:
        engine.dispose()


REPLICAS = 4
