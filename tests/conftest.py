"""Fixtures shared by every test: a real Mosquitto on a free port, temp dirs, databases.

``EF_TEST_DB=postgresql`` runs every hub the tests make on PostgreSQL: each test module
and each test gets a fresh schema (tests/pg_schemas.py), and ``EDGEFLEET_DB_URL`` (the
operator's setting: the hub's database when no ``--db`` is given, docs/database.md) points
there while it runs. Hubs built in-process (``HubConfig``), through the CLI in-process,
and in child processes (``edgefleet hub serve``) all read it, so they follow without a
test hook in the hub. A module's own hubs (module-scoped fixtures) get the module's
schema; a test's, the test's. Tests marked ``sqlite`` are about the SQLite file itself.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pg_schemas
import pytest

from hub.settings import DB_URL_ENV
from hub.transport.broker import Mosquitto

if TYPE_CHECKING:
    from hub.ml.pipeline import BuiltModel

# The test files that take longest, longest first (seconds measured with --durations=0 on
# the 2-core CI machine). scripts/test runs files in parallel (pytest-xdist, one file per
# worker at a time): started first, the long ones run beside the many short ones instead
# of after them. Every other file keeps its place after these.
LONGEST_FIRST = (
    "test_telemetry_outage.py",  # the broker is down for EF_OUTAGE_S (180 s)
    "test_bench_drift.py",
)


ON_POSTGRES = os.environ.get("EF_TEST_DB", "sqlite") == "postgresql"


def pytest_configure(config: pytest.Config) -> None:
    """Ctrl-C reaches the tests, and the processes they start, as it reaches a command run
    at a terminal. A shell starts a background job (``scripts/test > log &`` in a script)
    with SIGINT ignored, and an ignored signal stays ignored in every child: Python then
    installs no KeyboardInterrupt handler, and the tests that press Ctrl-C (on the demo,
    on ``deploy --wait`` in a child process) would wait for an exit that never comes.
    Python's own handler, set here, is reset to the default in each child at exec."""
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: keeps the rest
    if ON_POSTGRES:  # about SQLite's own file: not a thing on PostgreSQL, so not collected
        sqlite_only = [item for item in items if item.get_closest_marker("sqlite")]
        if sqlite_only:
            config.hook.pytest_deselected(items=sqlite_only)
            items[:] = [item for item in items if item not in sqlite_only]


def _on_own_schema(tag: str) -> Iterator[str | None]:
    if not ON_POSTGRES:
        try:
            yield None
        finally:
            pg_schemas.close_engines()
        return
    schema = pg_schemas.create(tag)
    before = os.environ.get(DB_URL_ENV)
    os.environ[DB_URL_ENV] = pg_schemas.url(schema)
    try:
        yield schema
    finally:
        if before is None:
            os.environ.pop(DB_URL_ENV, None)
        else:
            os.environ[DB_URL_ENV] = before
        pg_schemas.close_engines()
        pg_schemas.drop(schema)


@pytest.fixture(scope="module", autouse=True)
def module_database() -> Iterator[str | None]:
    """With EF_TEST_DB=postgresql: this module's schema, for its module-scoped hubs."""
    yield from _on_own_schema("m")


@pytest.fixture(autouse=True)
def test_database(module_database: str | None) -> Iterator[str | None]:
    """With EF_TEST_DB=postgresql: this test's schema, for the hubs it makes. After the
    test, the engines it opened with ``pg_schemas.hub_engine`` are closed."""
    yield from _on_own_schema("t")


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL schema's URL, whatever EF_TEST_DB says (dropped afterwards)."""
    schema = pg_schemas.create("x")
    try:
        yield pg_schemas.url(schema)
    finally:
        pg_schemas.drop(schema)


@pytest.fixture(scope="session")
def mosquitto() -> Iterator[Mosquitto]:
    """A real Mosquitto process for the whole session, on a free loopback port.

    Tests isolate themselves by device ids / topic prefixes of their own; a test that
    restarts or stops the broker uses ``private_mosquitto`` instead.
    """
    if not Mosquitto.available():
        pytest.fail(
            "the mosquitto binary is missing: .ci/run installs it (apt-get install mosquitto)"
        )
    with Mosquitto() as broker:
        yield broker


@pytest.fixture
def private_mosquitto() -> Iterator[Mosquitto]:
    """A Mosquitto of this test's own (for tests that restart or stop it)."""
    if not Mosquitto.available():
        pytest.fail("the mosquitto binary is missing")
    with Mosquitto() as broker:
        yield broker


@pytest.fixture(scope="session")
def built() -> BuiltModel:
    """A small model trained and quantised by the hub's pipeline, once per session.

    Frozen: the update rigs sign and serve it, none changes it.
    """
    from hub import pipeline_config
    from hub.ml.pipeline import train

    return train(pipeline_config(n_train=2000, n_holdout=500, hidden=(16,)))
