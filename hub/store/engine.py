"""Connecting to the hub's database: the engine, SQLite's settings, sessions.

SQLite (WAL, a busy timeout) by default, PostgreSQL by URL. The schema and
``make_engine``, which also creates the tables, are in hub/store/tables.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, event
from sqlmodel import Session, create_engine

__all__ = ["connect", "session", "sqlite_url"]

SQLITE_BUSY_TIMEOUT_S = 30  # seconds a writer waits for SQLite's lock before it fails


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"


def connect(url: str) -> Engine:
    """An engine for ``url``; SQLite gets WAL and a busy timeout. Creates no table."""
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


@contextmanager
def session(engine: Engine) -> Iterator[Session]:
    """A session whose objects stay readable after commit (``expire_on_commit=False``)."""
    with Session(engine, expire_on_commit=False) as s:
        yield s
