"""Schemas of their own on the test PostgreSQL, for hubs and for the migration tests.

The server is ``EF_TEST_PG`` (default 127.0.0.1:5432, user postgres, database ``test``:
CI's and this machine's). Each schema is named for this process and a counter, and its
URL tags the connections with the schema's name (``application_name``), so a drop can end
the sessions a still-running hub left open on that schema, and only those.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path
from urllib.parse import quote

import psycopg
from sqlalchemy import Engine

__all__ = ["SERVER", "close_engines", "create", "drop", "hub_db_url", "hub_engine", "url"]

SERVER = os.environ.get("EF_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
_names = itertools.count()


def url(schema: str) -> str:
    """The hub's database URL for ``schema`` (its tables go there, and only there)."""
    options = quote(f"-csearch_path={schema}")
    return f"{SERVER}?options={options}&application_name={schema}"


def create(tag: str) -> str:
    """A new empty schema; returns its name."""
    schema = f"ef_{tag}_{os.getpid()}_{next(_names)}"
    with psycopg.connect(SERVER, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    return schema


def drop(schema: str) -> None:
    """End the sessions left on ``schema``, then drop it with all it holds."""
    with psycopg.connect(SERVER, autocommit=True) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE application_name = %s AND pid <> pg_backend_pid()",
            (schema,),
        )
        conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def hub_db_url(data_dir: Path) -> str:
    """The database a hub or the CLI on ``data_dir`` opens when given no ``--db``:
    ``EDGEFLEET_DB_URL`` (set under EF_TEST_DB=postgresql), else its SQLite file."""
    return os.environ.get("EDGEFLEET_DB_URL") or f"sqlite:///{data_dir / 'hub.db'}"


_opened: list[Engine] = []


def hub_engine(data_dir: Path) -> Engine:
    """``make_engine(hub_db_url(data_dir))``: its connections are closed after the test
    (tests/conftest.py), as a hub closes its own when it stops."""
    from hub.store.tables import make_engine

    engine = make_engine(hub_db_url(data_dir))
    _opened.append(engine)
    return engine


def close_engines() -> None:
    """Close the pooled connections of every engine :func:`hub_engine` made (kept: one a
    module's fixture made opens new ones as the module's next test needs them)."""
    for engine in _opened:
        engine.dispose()
