"""Leader election among hub replicas: a PostgreSQL session-level advisory lock.

Several hub processes over one PostgreSQL database share the API, the ingest and the
fetch answers; the work that must happen once (the rollout engine, the closed loop, the
alert dispatcher, re-signing TUF roles, retention) runs on one of them, the leader
(ADR 0032). :class:`Leadership` campaigns on a connection of its own: every ``poll_s`` it
tries ``pg_try_advisory_lock`` until it wins, then checks the connection is still there.
The lock belongs to that connection's session, so a leader that dies (SIGKILL, a lost
network) loses it the moment PostgreSQL closes the session, and a follower's next try
wins. A leader whose connection fails stops being the leader at once: ``on_lost`` runs,
and :meth:`Leadership.leading` is False from then on (it never campaigns again; the hub
exits, its supervisor starts it afresh as a follower).

The lock's key is derived from the database and schema the hub uses, so hubs in other
schemas of the same database (tests, staging) elect their own leaders.

With SQLite there is one hub process, always the leader: :class:`AlwaysLeader`.

Errors::

    LeaderError     the database cannot hold an election (not PostgreSQL)
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Final, Protocol

from sqlalchemy import Connection, Engine, create_engine, text
from sqlalchemy.pool import NullPool

from hub.store.engine import driver_url

log = logging.getLogger(__name__)

LOST_LEADERSHIP_EXIT: Final = 75  # a replica's exit status when it lost the leader's lock

__all__ = [
    "LOST_LEADERSHIP_EXIT",
    "AlwaysLeader",
    "Leader",
    "LeaderError",
    "Leadership",
    "abdicate",
    "election_key",
    "one_at_a_time",
]

POLL_S: Final = 1.0  # seconds between tries (a follower) or liveness checks (the leader)
# TCP keepalive on the election connection: a leader cut off from the database notices
# within about idle + interval * count seconds even when no packet comes back.
KEEPALIVE: Final = {
    "keepalives": 1,
    "keepalives_idle": 5,  # seconds
    "keepalives_interval": 2,  # seconds
    "keepalives_count": 2,
    "connect_timeout": 5,  # seconds
}


class LeaderError(Exception):
    """The database cannot hold an election."""


class Leader(Protocol):
    def leading(self) -> bool:
        """Whether this process is the leader now."""
        ...


class AlwaysLeader:
    """The single hub on SQLite: always the leader."""

    def leading(self) -> bool:
        return True


def election_key(database: str, schema: str, what: str = "leader") -> int:
    """The advisory lock's key (a signed 64-bit integer) for one hub's database+schema."""
    digest = hashlib.sha256(f"edgefleet-{what}:{database}:{schema}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


@contextmanager
def one_at_a_time(db_url: str, what: str) -> Iterator[None]:
    """Hold an advisory lock named ``what`` for this hub's schema while the block runs
    (replicas starting together create or upgrade the schema one after the other)."""
    engine = create_engine(driver_url(db_url), poolclass=NullPool, connect_args=KEEPALIVE)
    try:
        with engine.connect() as conn:
            conn = conn.execution_options(isolation_level="AUTOCOMMIT")
            row = conn.execute(text("SELECT current_database(), current_schema()")).one()
            key = election_key(str(row[0]), str(row[1]), what)
            conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": key})
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
    finally:
        engine.dispose()


class Leadership:
    """Campaigns for the leader's lock on a dedicated connection, in a thread.

    Args:
        db_url: the hub's SQLAlchemy URL (PostgreSQL).
        on_elected: called once, on the campaign thread, when this process wins.
        on_lost: called once, on the campaign thread, when a leader loses its connection.
        poll_s: seconds between tries, and between a leader's liveness checks.
    """

    def __init__(
        self,
        db_url: str,
        *,
        on_elected: Callable[[], None] = lambda: None,
        on_lost: Callable[[], None] = lambda: None,
        poll_s: float = POLL_S,
    ) -> None:
        self._engine: Engine = create_engine(
            driver_url(db_url), poolclass=NullPool, connect_args=KEEPALIVE
        )
        if self._engine.dialect.name != "postgresql":
            raise LeaderError(f"leader election needs PostgreSQL, not {self._engine.dialect.name}")
        self.on_elected = on_elected
        self.on_lost = on_lost
        self.poll_s = poll_s
        self.elected_at: float | None = None  # time.time() when this process won
        self._leading = threading.Event()
        self._lost = threading.Event()
        self._stop = threading.Event()
        self._conn: Connection | None = None
        self._key: int | None = None
        self._thread: threading.Thread | None = None

    def leading(self) -> bool:
        return self._leading.is_set()

    @property
    def lost(self) -> bool:
        """Whether this process led and lost its lock (it will not lead again)."""
        return self._lost.is_set()

    def start(self) -> Leadership:
        self._thread = threading.Thread(target=self._run, name="hub-leader", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop campaigning; a leader lets its lock go (closing its session)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        self._leading.clear()
        self._close()
        self._engine.dispose()

    def _run(self) -> None:
        while not self._stop.is_set() and not self._lost.is_set():
            if self._leading.is_set():
                self._check()
            else:
                self._campaign()
            self._stop.wait(self.poll_s)

    def _campaign(self) -> None:
        try:
            conn = self._connection()
            won = conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": self._key}).scalar()
        except Exception as e:  # the database is away: try again next time
            log.warning("leader election: cannot reach the database (%s)", e)
            self._close()
            return
        if won:
            self.elected_at = time.time()
            self._leading.set()
            log.info("leader election: this hub process is the leader")
            self.on_elected()

    def _check(self) -> None:
        try:
            assert self._conn is not None
            self._conn.execute(text("SELECT 1")).scalar()
        except Exception as e:
            self._leading.clear()  # first: no leader work from here on
            self._lost.set()
            log.error("leader election: lost the database session, and leadership (%s)", e)
            self._close()
            self.on_lost()

    def _connection(self) -> Connection:
        if self._conn is None:
            conn = self._engine.connect().execution_options(isolation_level="AUTOCOMMIT")
            row = conn.execute(text("SELECT current_database(), current_schema()")).one()
            self._key = election_key(str(row[0]), str(row[1]))
            self._conn = conn
        return self._conn

    def _close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):  # already broken: nothing to give back
                self._conn.close()
            self._conn = None


def abdicate() -> None:
    """A replica that lost the leader's lock stops at once: no rollout pass or re-signing
    may run beside the new leader's. Its supervisor starts it again, as a follower."""
    log.critical("lost the leader's lock: exiting (%d) to be restarted", LOST_LEADERSHIP_EXIT)
    logging.shutdown()
    os._exit(LOST_LEADERSHIP_EXIT)
