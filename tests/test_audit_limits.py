"""The audit log cannot be grown by callers without a key, and a refused key is never
pinned on the key it claimed (issue 11, item 5). Against a real hub behind a real uvicorn
on loopback (the stage of tests/test_api_auth.py) and a real Mosquitto; retention also on
a SQLite database of its own."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pg_schemas import hub_engine
from sqlalchemy import text
from sqlmodel import select
from test_api_auth import Stage, start_stage, stop_stage

from hub import HubConfig
from hub.access.audit import (
    FAILED_AUTH_GROUPS,
    FAILED_AUTH_INTERVAL_S,
    OVERFLOW_DETAIL,
    UNAUTHENTICATED,
    AuditLog,
    FailedAuthLimit,
    run_audit_retention,
)
from hub.access.keys import DEV_KEY, DEV_KEYID, Role
from hub.store.tables import AuditRecord, make_engine, session, sqlite_url
from hub.transport.broker import Mosquitto

pytestmark = [pytest.mark.broker]

# The probe's figure was 3,000 keyless POSTs writing 3,000 rows. A fixed count, not as many
# as fit in a few seconds: under CI's parallel load 5 s held only 389-462 of them.
FLOOD_REQUESTS = 600
FLOOD_SECONDS = 120.0  # a bound on a very slow machine, never reached here


@pytest.fixture
def stage(mosquitto: Mosquitto, tmp_path: Path) -> Iterator[Stage]:
    s = start_stage(mosquitto, tmp_path)
    yield s
    stop_stage(s)


def windows_between(start: float, end: float) -> int:
    """How many summary intervals [start, end] touches."""
    return int(end // FAILED_AUTH_INTERVAL_S) - int(start // FAILED_AUTH_INTERVAL_S) + 1


def refused_rows(stage: Stage) -> list[dict[str, Any]]:
    return stage.audit(actor=UNAUTHENTICATED, limit=1000)


# ---------------------------------------------------------------- the flood


def test_a_flood_of_keyless_posts_writes_a_handful_of_rows_that_count_it(stage: Stage) -> None:
    http = stage.http()
    start = time.time()
    sent = 0
    while sent < FLOOD_REQUESTS and time.time() - start < FLOOD_SECONDS:
        r = http.post("/deployments", json={"model": "m"})
        assert r.status_code == 401
        sent += 1
    end = time.time()
    rows = refused_rows(stage)
    windows = windows_between(start, end)
    print(f"\n{sent} keyless POSTs in {end - start:.1f} s wrote {len(rows)} audit rows")
    assert sent >= 500  # a flood, not a trickle
    assert 1 <= len(rows) <= windows  # one per interval for this one caller
    assert sum(r["count"] for r in rows) == sent  # every call is counted
    first = rows[-1]
    assert (first["action"], first["status"], first["outcome"]) == (
        "deployment.create",
        401,
        "denied",
    )
    assert first["client"] == "127.0.0.1" and first["claimed_keyid"] is None
    # every row there is, is one of these summaries
    assert len(stage.audit(limit=1000)) == len(rows)


def test_claimed_keyids_cannot_multiply_the_rows(stage: Stage) -> None:
    """A caller varying the keyid it claims gets one row per keyid up to the cap, then
    everything lands on one overflow row."""
    callers = FAILED_AUTH_GROUPS * 3
    start = time.time()
    for i in range(callers):
        for _ in range(2):
            r = stage.http(f"ef_{i:016x}_nope").post("/enrol-tokens", json={})
            assert r.status_code == 401
    end = time.time()
    rows = refused_rows(stage)
    print(f"\n{2 * callers} POSTs claiming {callers} keyids wrote {len(rows)} audit rows")
    assert len(rows) <= (FAILED_AUTH_GROUPS + 1) * windows_between(start, end)
    assert sum(r["count"] for r in rows) == 2 * callers
    overflow = [r for r in rows if r["detail"] == OVERFLOW_DETAIL]
    assert overflow and all(r["claimed_keyid"] is None for r in overflow)
    assert all(r["client"] is None for r in overflow)


def test_unrouted_posts_are_summarised_too(stage: Stage) -> None:
    http = stage.http()
    for i in range(200):
        assert http.post(f"/no-such-route/{i}").status_code == 404
    rows = [r for r in stage.audit(limit=1000) if r["action"] == "unrouted"]
    assert len(rows) <= 2 and sum(r["count"] for r in rows) == 200


def test_successful_calls_and_role_denials_stay_one_row_each(stage: Stage) -> None:
    admin, viewer = stage.as_role(Role.admin), stage.as_role(Role.viewer)
    for i in range(3):
        assert admin.post("/api-keys", json={"name": f"k{i}", "role": "viewer"}).status_code == 201
        assert viewer.post("/api-keys", json={"name": "no", "role": "admin"}).status_code == 403
    made = stage.audit(action="api_key.create", outcome="ok")
    denied = stage.audit(action="api_key.create", outcome="denied")
    assert len(made) == 3 and len(denied) == 3
    assert all(r["count"] == 1 for r in made + denied)
    assert {r["actor_name"] for r in denied} == {"viewer-key"}
    assert all(r["claimed_keyid"] is None for r in made + denied)


# ---------------------------------------------------------------- who is recorded


def admin_keyid(stage: Stage) -> str:
    return stage.keys[Role.admin].split("_")[1]


def wrong_secret_of_the_admins_key(stage: Stage) -> tuple[str | None, str | None]:
    return f"ef_{admin_keyid(stage)}_{'A' * 43}", admin_keyid(stage)


def revoked_key(stage: Stage) -> tuple[str | None, str | None]:
    admin = stage.as_role(Role.admin)
    new = admin.post("/api-keys", json={"name": "gone", "role": "admin"}).json()
    assert admin.delete(f"/api-keys/{new['keyid']}").status_code == 200
    return new["key"], new["keyid"]


# each way a key fails: (the key presented, the keyid it claims)
FAILED_KEYS: dict[str, Callable[[Stage], tuple[str | None, str | None]]] = {
    "wrong secret of the admin's key": wrong_secret_of_the_admins_key,
    "unknown keyid": lambda s: ("ef_0123456789abcdef_nope", "0123456789abcdef"),
    "revoked key": revoked_key,
    "malformed key": lambda s: ("ef_NOTHEX_secret", None),
    "no key": lambda s: (None, None),
    "development key outside dev mode": lambda s: (DEV_KEY, DEV_KEYID),
}


@pytest.mark.parametrize("case", FAILED_KEYS)
def test_a_refused_key_is_recorded_as_unauthenticated_with_its_claim_unverified(
    stage: Stage, case: str
) -> None:
    key, claimed = FAILED_KEYS[case](stage)
    r = stage.http(key).post("/api-keys", json={"name": "x", "role": "admin"})
    assert r.status_code == 401
    [record] = stage.audit(action="api_key.create", outcome="denied")  # GET /audit
    assert record["actor_keyid"] == UNAUTHENTICATED
    assert record["actor_name"] is None and record["role"] is None
    assert record["claimed_keyid"] == claimed
    if claimed is not None:  # nothing is pinned on the key that was claimed
        assert stage.audit(actor=claimed, outcome="denied") == []


# ---------------------------------------------------------------- retention


def old_and_new_records(engine: Any, now: float, old: int, new: int) -> None:
    log = AuditLog(engine)
    for i in range(old):
        log.write(
            AuditRecord(
                ts=now - 1000 - i, action="old", method="POST", path="/", outcome="ok", status=200
            )
        )
    for i in range(new):
        log.write(
            AuditRecord(ts=now - i, action="new", method="POST", path="/", outcome="ok", status=200)
        )


def test_audit_retention_deletes_old_records_in_batches(tmp_path: Path) -> None:
    engine = hub_engine(tmp_path)
    now = time.time()
    old_and_new_records(engine, now, old=12, new=3)
    assert run_audit_retention(engine, max_age_s=500, now=now, batch=5) == 12
    assert run_audit_retention(engine, max_age_s=500, now=now, batch=5) == 0
    with session(engine) as s:
        left = s.exec(select(AuditRecord.action)).all()
    assert sorted(left) == ["new"] * 3
    with pytest.raises(ValueError):
        run_audit_retention(engine, max_age_s=0)
    engine.dispose()


def test_the_hubs_maintenance_deletes_audit_records_past_their_age(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    stage = start_stage(mosquitto, tmp_path, maintenance_s=0.2, audit_max_age_s=30.0)
    try:
        old_and_new_records(stage.hub.engine, time.time(), old=5, new=0)
        admin = stage.as_role(Role.admin)
        assert admin.post("/api-keys", json={"name": "kept", "role": "viewer"}).status_code == 201
        deadline = time.monotonic() + 10
        while stage.audit(action="old") and time.monotonic() < deadline:
            time.sleep(0.1)
        assert stage.audit(action="old") == []
        assert len(stage.audit(action="api_key.create")) == 1  # recent: kept
    finally:
        stop_stage(stage)


def test_the_hub_refuses_an_audit_age_of_zero(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="audit_max_age_s"):
        HubConfig(data_dir=tmp_path / "hub", audit_max_age_s=0)


def test_the_flood_is_summarised_against_a_client_that_races(stage: Stage) -> None:
    """Concurrent callers from one address still make one row per interval."""
    n, each = 8, 50
    start = time.time()
    codes: list[int] = []

    def flood() -> None:
        with httpx.Client(base_url=stage.url, timeout=10) as c:
            codes.extend(c.post("/deployments", json={}).status_code for _ in range(each))

    threads = [threading.Thread(target=flood) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert codes == [401] * (n * each)
    rows = refused_rows(stage)
    assert len(rows) <= windows_between(start, time.time())
    assert sum(r["count"] for r in rows) == n * each


def test_an_older_database_gains_the_new_audit_columns_in_place(tmp_path: Path) -> None:
    """claimed_keyid and count are additive (hub/store/migrate.py): an older hub.db keeps
    its records, which count as one call each."""
    url = sqlite_url(tmp_path / "hub.db")
    engine = make_engine(url)
    with engine.begin() as conn:  # as a hub.db written before the columns (and migrations)
        conn.execute(text("DROP TABLE alembic_version"))
        conn.execute(text("ALTER TABLE auditrecord DROP COLUMN claimed_keyid"))
        conn.execute(text("ALTER TABLE auditrecord DROP COLUMN count"))
        conn.execute(
            text(
                "INSERT INTO auditrecord (ts, action, method, path, outcome, status)"
                " VALUES (1.0, 'old', 'POST', '/', 'ok', 200)"
            )
        )
    engine.dispose()
    engine = make_engine(url)
    [record] = AuditLog(engine).query()
    assert (record.action, record.count, record.claimed_keyid) == ("old", 1, None)
    engine.dispose()


def refused(ts: float, client: str, claimed: str | None = None) -> AuditRecord:
    return AuditRecord(
        ts=ts,
        actor_keyid=UNAUTHENTICATED,
        claimed_keyid=claimed,
        action="deployment.create",
        method="POST",
        path="/deployments",
        outcome="denied",
        status=401,
        client=client,
    )


def test_refused_calls_make_one_row_per_caller_and_interval(tmp_path: Path) -> None:
    """On a SQLite database of its own with set times: each interval starts new rows; a
    row deleted under the log (retention) is written again, not lost."""
    engine = hub_engine(tmp_path)
    log = AuditLog(engine, FailedAuthLimit(interval_s=60, groups=2))
    t0 = 6000.0  # the start of an interval
    for i in range(10):
        log.write_refused(refused(t0 + i, "10.0.0.1"))
        log.write_refused(refused(t0 + i, "10.0.0.2", "0123456789abcdef"))
        log.write_refused(refused(t0 + i, f"10.0.1.{i}"))  # beyond the 2 groups
    log.write_refused(refused(t0 + 60, "10.0.0.1"))  # the next interval
    rows = sorted(log.query(), key=lambda r: (r.ts, r.id or 0))
    assert [(r.client, r.claimed_keyid, r.count) for r in rows] == [
        ("10.0.0.1", None, 10),
        ("10.0.0.2", "0123456789abcdef", 10),
        (None, None, 10),  # the overflow row
        ("10.0.0.1", None, 1),
    ]
    assert rows[2].detail == OVERFLOW_DETAIL
    assert run_audit_retention(engine, max_age_s=1, now=t0 + 62) == 4
    log.write_refused(refused(t0 + 61, "10.0.0.1"))
    [again] = log.query()
    assert (again.client, again.count) == ("10.0.0.1", 1)
    engine.dispose()
