"""Telemetry queries (per device and group, merged to a resolution) and retention.

The API test runs the real hub (its MQTT consumer, ingest and SQLite) behind a real
uvicorn: telemetry is published on the broker as devices do and read back with the
Python client. The retention tests drive the ingest and retention on a SQLite file.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from sqlalchemy import Engine
from sqlmodel import select
from waiting import wait_for

from agent.telemetry import InferenceStats, LatencyHistogram
from edgefleet.client import HubClient, HubClientError
from edgefleet.demo import ApiServer
from hub import Hub, HubConfig, make_ingest
from hub.access.keys import ApiKeys, Role
from hub.ingest.report import Report
from hub.ingest.writer import Ingest
from hub.store.tables import DriftWindow, Telemetry, make_engine, session, sqlite_url
from hub.telemetry.queries import series
from hub.telemetry.retention import RetentionPolicy, run_retention
from hub.transport.broker import Mosquitto
from shared import protocol

T0 = 1_700_000_000.0  # a fixed epoch for the synthetic windows
WINDOW_S = 10.0


def window(
    device: str, seq: int, rng: random.Random, *, errors: int = 0, t0: float = T0
) -> tuple[str, bytes]:
    """A telemetry message as agent/core.py sends it, with random latencies."""
    stats = InferenceStats(count=20 + seq % 7, errors=errors, labelled=10, correct=seq % 10)
    for _ in range(stats.count - errors):
        stats.latency.record(int(rng.lognormvariate(11.0 + (seq % 3) * 0.5, 0.4)))
    body = {
        "seq": seq,
        "start": t0 + seq * WINDOW_S,
        "end": t0 + (seq + 1) * WINDOW_S,
        "model": "m",
        "version": 1,
        **stats.summary(),
        "cpu_pct": 10.0 + seq % 5,
        "rss_bytes": 50_000_000 + seq,
    }
    return protocol.topic(device, "telemetry"), protocol.encode("telemetry", body, ts=body["end"])


def expected(messages: list[tuple[str, bytes]]) -> dict[str, Any]:
    """Totals and percentiles computed straight from the messages."""
    hist = LatencyHistogram()
    count = errors = 0
    for _, payload in messages:
        body = protocol.decode(payload).body
        hist.merge(LatencyHistogram.from_dict(body["latency_hist"]))
        count += body["count"]
        errors += body["errors"]
    return {
        "count": count,
        "errors": errors,
        "p95": round(hist.percentile(95), 3),
        "p50": round(hist.percentile(50), 3),
    }


# ------------------------------------------------------------------ API, end to end


@pytest.fixture(scope="module")
def stage(mosquitto: Mosquitto, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    tmp = tmp_path_factory.mktemp("telemetry-api")
    hub = Hub(
        HubConfig(data_dir=tmp / "hub", broker_url=mosquitto.address.url, client_id="hub-telemetry")
    ).start()
    api = ApiServer(hub).start()
    keys = ApiKeys(hub.engine)
    viewer = HubClient(api.url, api_key=keys.create("v", Role.viewer, "test").key)
    operator = HubClient(api.url, api_key=keys.create("o", Role.operator, "test").key)
    yield hub, viewer, operator
    viewer.close()
    operator.close()
    api.stop()
    hub.stop()


def publish_all(broker: Mosquitto, messages: list[tuple[str, bytes]]) -> None:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="telemetry-api-pub")
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    infos = [client.publish(t, p, qos=1) for t, p in messages]
    for info in infos:
        info.wait_for_publish(10)
    client.disconnect()
    client.loop_stop()


def test_device_and_group_series_merge_windows_exactly(mosquitto: Mosquitto, stage: Any) -> None:
    hub, viewer, operator = stage
    rng = random.Random(5)
    devices = ["tq-a", "tq-b", "tq-c"]
    # yesterday, hour-aligned: the hub refuses windows older than its raw age (7 days)
    t0 = (time.time() // 3600 - 24) * 3600
    messages = {
        d: [window(d, seq, rng, errors=seq % 2, t0=t0) for seq in range(36)] for d in devices
    }
    everything = [m for d in devices for m in messages[d]]
    online = [
        (protocol.topic(d, "state"), protocol.encode("state", {"status": "online"}, ts=T0))
        for d in devices
    ]
    publish_all(mosquitto, online + everything + messages["tq-a"][:5])  # 5 replays
    wait_for(
        lambda: hub.ingest.counts["telemetry"] >= len(everything) + 5, 20, "the windows stored"
    )
    for d in ("tq-a", "tq-b"):
        operator.set_tags(d, ["line-1"])

    one = viewer.telemetry(device="tq-a", start=t0, end=t0 + 360, resolution_s=120)
    assert [p["windows"] for p in one["points"]] == [12, 12, 12]
    first = one["points"][0]
    want = expected(messages["tq-a"][:12])
    assert (first["count"], first["errors"]) == (want["count"], want["errors"])
    assert first["latency_us"]["p95"] == want["p95"]  # from the merged histogram
    assert first["latency_exact"] is True

    group = viewer.telemetry(group="line-1", start=t0, end=t0 + 360, resolution_s=360)
    (point,) = group["points"]
    want = expected(messages["tq-a"] + messages["tq-b"])
    assert group["devices"] == 2 and point["devices"] == 2
    assert point["count"] == want["count"] and point["latency_us"]["p50"] == want["p50"]
    assert hub.ingest.counts["telemetry_duplicates"] >= 5


def test_bad_queries_get_a_clear_422(stage: Any) -> None:
    _, viewer, _ = stage
    with pytest.raises(HubClientError, match="empty range"):
        viewer.telemetry(device="tq-a", start=T0 + 10, end=T0)
    with pytest.raises(HubClientError, match="coarser resolution"):
        viewer.telemetry(device="tq-a", start=T0, end=T0 + 10**6, resolution_s=1)
    unknown = viewer.telemetry(group="no-such-group", start=T0, end=T0 + 60)
    assert unknown["devices"] == 0 and unknown["points"] == []


# ------------------------------------------------------------------ retention


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    return make_engine(sqlite_url(tmp_path / "hub.db"))


def ingest_all(engine: Engine, messages: list[tuple[str, bytes]], **kw: Any) -> Ingest:
    ingest = make_ingest(engine, **kw)
    ingest.start()
    for topic, payload in messages:
        device, kind = protocol.parse_topic(topic)
        ingest.put(Report(device, kind, protocol.decode(payload)))
    assert ingest.flush(10)
    ingest.stop()
    return ingest


def totals(engine: Engine, resolution_s: float) -> list[dict[str, Any]]:
    with session(engine) as s:
        return series(s, None, T0 - 86400, T0 + 10 * 86400, resolution_s)


def test_downsampling_preserves_totals_and_is_idempotent(engine: Engine) -> None:
    rng = random.Random(9)
    messages = [
        window(d, seq, rng, errors=int(seq % 3 == 0)) for d in ("r1", "r2") for seq in range(800)
    ]
    ingest_all(engine, messages)
    before = totals(engine, 86400)
    policy = RetentionPolicy(raw_age_s=3600, max_age_s=30 * 86400, resolution_s=3600)
    now = T0 + 800 * WINDOW_S + 3600 + 1  # every window is older than an hour
    first = run_retention(engine, policy, now=now)
    assert first.folded == 1600 and first.rows_written == 2 * 3  # 8000 s: 3 hours each
    after = totals(engine, 86400)
    for b, a in zip(before, after, strict=True):
        for key in ("windows", "count", "errors", "labelled", "correct", "latency_us"):
            assert b[key] == a[key], key
    with session(engine) as s:
        rows = s.exec(select(Telemetry)).all()
    assert {r.resolution_s for r in rows} == {3600.0} and sum(r.windows for r in rows) == 1600
    second = run_retention(engine, policy, now=now)
    assert (second.folded, second.rows_written, second.deleted) == (0, 0, 0)
    assert totals(engine, 86400) == after


def test_a_replay_of_folded_windows_is_refused_not_double_counted(engine: Engine) -> None:
    rng = random.Random(3)
    messages = [window("late", seq, rng) for seq in range(100)]
    ingest_all(engine, messages)
    run_retention(engine, RetentionPolicy(3600, 30 * 86400, 3600), now=T0 + 10**6)
    before = totals(engine, 86400)
    # the ingest's raw age matches the policy's: windows older than it are refused
    replayed = ingest_all(engine, messages, raw_max_age_s=3600)
    assert replayed.counts["telemetry_too_old"] == 100
    assert totals(engine, 86400) == before


def test_rows_past_max_age_are_deleted(engine: Engine) -> None:
    rng = random.Random(4)
    ingest_all(engine, [window("old", seq, rng) for seq in range(50)])
    with session(engine) as s:  # drift windows of the same age, and one recent
        for seq, ts in ((0, T0), (1, T0 + 10), (2, T0 + 10 * 86400)):
            s.add(DriftWindow(device_id="old", seq=seq, model="m", version=1, ts=ts, rows=5))
        s.commit()
    result = run_retention(engine, RetentionPolicy(3600, 7200, 3600), now=T0 + 10 * 86400)
    assert result.deleted >= 1 and result.drift_deleted == 2
    assert totals(engine, 86400) == []
    with session(engine) as s:
        assert [w.seq for w in s.exec(select(DriftWindow))] == [2]


def test_windows_without_a_histogram_are_marked_inexact(engine: Engine) -> None:
    """An older agent sends percentiles only: merged ones are then an estimate, flagged."""
    body = json.loads(window("legacy", 0, random.Random(1))[1])["body"]
    del body["latency_hist"]
    payload = protocol.encode("telemetry", body, ts=body["end"])
    ingest_all(engine, [(protocol.topic("legacy", "telemetry"), payload)])
    (point,) = totals(engine, 86400)
    assert point["latency_exact"] is False
    assert point["latency_us"]["p95"] == body["latency_us"]["p95"]


def test_a_database_from_before_the_new_columns_is_upgraded_in_place(tmp_path: Path) -> None:
    import sqlite3

    db = tmp_path / "old.db"
    with sqlite3.connect(db) as conn:  # the telemetry table as the first release made it
        conn.execute(
            "CREATE TABLE telemetry (device_id VARCHAR NOT NULL, seq INTEGER NOT NULL,"
            ' start FLOAT NOT NULL, "end" FLOAT NOT NULL, model VARCHAR, version INTEGER,'
            " count INTEGER NOT NULL, errors INTEGER NOT NULL, p50_us FLOAT NOT NULL,"
            " p95_us FLOAT NOT NULL, p99_us FLOAT NOT NULL, labelled INTEGER NOT NULL,"
            " correct INTEGER NOT NULL, cpu_pct FLOAT, rss_bytes INTEGER,"
            " PRIMARY KEY (device_id, seq))"
        )
        conn.execute(
            f"INSERT INTO telemetry VALUES ('old', 0, {T0}, {T0 + 10}, NULL, NULL,"
            " 5, 0, 1, 2, 3, 0, 0, NULL, NULL)"
        )
    engine = make_engine(sqlite_url(db))
    ingest_all(engine, [window("new", 0, random.Random(2))])
    points = totals(engine, 86400)
    assert sum(p["windows"] for p in points) == 2
    assert (
        sum(p["count"] for p in points)
        == 5 + protocol.decode(window("new", 0, random.Random(2))[1]).body["count"]
    )
