"""Connecting to the hub's database: the engine, SQLite's settings, sessions.

SQLite (WAL, a busy timeout) by default, PostgreSQL by URL through psycopg 3
(docs/database.md). The schema and ``make_engine``, which also brings the database to it
(hub/store/migrate.py), are in hub/store/tables.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, event, make_url
from sqlmodel import Session, create_engine

__all__ = ["connect", "driver_url", "session", "sqlite_url"]

SQLITE_BUSY_TIMEOUT_S = 30  # seconds a writer waits for SQLite's lock before it fails


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"


def connect(url: str) -> Engine:
    """An engine for ``url``; SQLite gets WAL and a busy timeout. Creates no table.

    A plain ``postgresql://`` URL goes through psycopg 3 (the ``hub`` extra's driver), not
    SQLAlchemy's default psycopg2; libpq's parameters ride in the query string
    (``?options=-csearch_path%3Dedgefleet`` puts the hub's tables in a schema).
    """
    url = driver_url(url)
    connect_args: dict[str, Any] = {}
    if url.startswith("sqlite"):
        connect_args = {"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_S}
    engine = create_engine(url, connect_args=connect_args, pool_pre_ping=True)
    if url.startswith("sqlite"):

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

    return engine


def driver_url(url: str) -> str:
    """``url`` with psycopg 3 named as the driver of a PostgreSQL URL that names none."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        return parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
    return url


@contextmanager
def session(engine: Engine) -> Iterator[Session]:
    """A session whose objects stay readable after commit (``expire_on_commit=False``)."""
    with Session(engine, expire_on_commit=False) as s:
        yield s
