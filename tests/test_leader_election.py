"""Leader election over PostgreSQL (hub/store/leader.py): one winner per hub schema, a
follower takes over when the leader's session ends, and a leader that loses its
connection stops leading at once. Against the real PostgreSQL on 127.0.0.1:5432."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from waiting import wait_for

from hub.store.leader import LeaderError, Leadership, election_key

pytestmark = [pytest.mark.postgres]

PG = "host=127.0.0.1 port=5432 user=postgres dbname=test"


@pytest.fixture
def schema() -> Iterator[str]:
    name = f"leader_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG, autocommit=True) as c:
        c.execute(f'CREATE SCHEMA "{name}"')
    yield name
    with psycopg.connect(PG, autocommit=True) as c:
        c.execute(f'DROP SCHEMA "{name}" CASCADE')


def url(schema: str) -> str:
    return f"postgresql+psycopg://postgres@127.0.0.1:5432/test?options=-csearch_path%3D{schema}"


def test_one_leader_then_the_follower_takes_over(schema: str) -> None:
    elected: list[str] = []
    a = Leadership(url(schema), on_elected=lambda: elected.append("a"), poll_s=0.2).start()
    wait_for(a.leading, 10, "a leads")
    b = Leadership(url(schema), on_elected=lambda: elected.append("b"), poll_s=0.2).start()
    time.sleep(1.0)
    assert not b.leading() and elected == ["a"]
    a.stop()  # its session ends: the lock goes with it
    t0 = time.monotonic()
    wait_for(b.leading, 10, "b takes over")
    print(f"take-over in {time.monotonic() - t0:.2f} s")
    assert elected == ["a", "b"]
    b.stop()


def test_another_schema_elects_its_own_leader(schema: str) -> None:
    other = f"leader_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG, autocommit=True) as c:
        c.execute(f'CREATE SCHEMA "{other}"')
    try:
        a = Leadership(url(schema), poll_s=0.2).start()
        b = Leadership(url(other), poll_s=0.2).start()
        wait_for(lambda: a.leading() and b.leading(), 10, "both lead their own hub")
        a.stop()
        b.stop()
    finally:
        with psycopg.connect(PG, autocommit=True) as c:
            c.execute(f'DROP SCHEMA "{other}" CASCADE')
    assert election_key("test", schema) != election_key("test", other)


def test_a_leader_whose_session_is_killed_stops_leading(schema: str) -> None:
    lost = threading.Event()
    a = Leadership(url(schema), on_lost=lost.set, poll_s=0.2).start()
    wait_for(a.leading, 10, "a leads")
    with psycopg.connect(PG, autocommit=True) as c:  # an operator, or a network cut
        c.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_locks"
            " WHERE locktype = 'advisory' AND granted AND pid <> pg_backend_pid()"
            " AND objid = (%s::bigint & x'ffffffff'::bigint)",
            (election_key("test", schema),),
        )
    assert lost.wait(10), "the leader did not notice"
    assert not a.leading() and a.lost
    time.sleep(0.5)
    assert not a.leading()  # it never campaigns again
    a.stop()


def test_sqlite_cannot_hold_an_election(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(LeaderError, match="needs PostgreSQL"):
        Leadership(f"sqlite:///{tmp_path / 'x.db'}")
