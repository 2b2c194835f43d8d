"""Telemetry queries (per device and group, merged to a resolution) and retention.

The API test runs the real hub (its MQTT consumer, ingest and SQLite) behind a real
uvicorn: telemetry is published on the broker as devices do and read back with the
Python client; so are drift windows whose confidence counts give the estimated accuracy
beside the measured one. The retention tests drive the ingest and retention on a SQLite
file.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from pg_schemas import hub_engine
from sqlalchemy import Engine
from sqlmodel import select
from waiting import wait_for

from agent.drift import DriftRecorder
from agent.telemetry import InferenceStats, LatencyHistogram, StatsRecorder
from edgefleet.client import HubClient, HubClientError
from edgefleet.demo import ApiServer
from hub import Hub, HubConfig, make_ingest, pipeline_config
from hub.access.keys import ApiKeys, Role
from hub.ingest.report import Report
from hub.ingest.writer import Ingest
from hub.store.tables import DriftWindow, Telemetry, make_engine, session, sqlite_url
from hub.telemetry.drift import trust_baselines
from hub.telemetry.queries import performance, series
from hub.telemetry.retention import RetentionPolicy, run_retention
from hub.transport.broker import Mosquitto
from shared import protocol
from shared.sensors import CLASSES, generate

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


def wait_known(hub: Hub, states_before: int, devices: int) -> None:
    """Wait until the hub applied ``devices`` more states: telemetry and states travel on
    two connections (the intake's and the link's, ADR 0033), so windows stored say nothing
    of the devices' rows, which tags need."""
    wait_for(lambda: hub.ingest.counts["state"] >= states_before + devices, 20, "the devices known")


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
    states = hub.ingest.counts["state"]
    publish_all(mosquitto, online + everything + messages["tq-a"][:5])  # 5 replays
    wait_for(
        lambda: hub.ingest.counts["telemetry"] >= len(everything) + 5, 20, "the windows stored"
    )
    wait_known(hub, states, len(online))
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


# ------------------------------------------------------------------ live performance


def labelled_window(
    device: str, seq: int, active: tuple[str, int], labels: list[tuple[Any, ...]], t0: float
) -> tuple[str, bytes]:
    """A telemetry window as the agent sends it after joining ``labels``:
    ``(model, version, labelled, correct)`` of a classifier or ``(model, version,
    labelled, abs_err_sum, sq_err_sum)`` of a regressor, made by whatever version."""
    recorder = StatsRecorder()
    recorder.record(20_000, 1, False)
    for model, version, n, *figures in labels:
        if len(figures) == 1:
            recorder.record_labels(n, figures[0], model=model, version=version)
        else:
            recorder.record_errors(model, version, n, figures[0], figures[1])
    body = {
        "seq": seq,
        "start": t0 + seq * WINDOW_S,
        "end": t0 + (seq + 1) * WINDOW_S,
        "model": active[0],
        "version": active[1],
        **recorder.drain().summary(*active),
    }
    return protocol.topic(device, "telemetry"), protocol.encode("telemetry", body, ts=body["end"])


def expected_performance(messages: list[tuple[str, bytes]], model: str) -> dict[int, Any]:
    """Per version of ``model``: figures summed straight from the wire bodies."""
    sums: dict[int, dict[str, Any]] = {}
    for topic, payload in messages:
        body = protocol.decode(payload).body
        parts = [{"model": body["model"], "version": body["version"], **body}]
        parts += body.get("other_versions", [])
        for part in parts:
            if part["model"] != model or not part.get("labelled"):
                continue
            acc = sums.setdefault(
                part["version"], {"n": 0, "correct": 0, "abs": 0.0, "sq": 0.0, "devices": set()}
            )
            acc["n"] += part["labelled"]
            acc["correct"] += part.get("correct", 0)
            acc["abs"] += part.get("abs_err_sum", 0.0)
            acc["sq"] += part.get("sq_err_sum", 0.0)
            acc["devices"].add(protocol.parse_topic(topic)[0])
    return sums


def classifier_figures(sums: dict[int, Any]) -> list[dict[str, Any]]:
    return [
        {
            "version": v,
            "task": "classification",
            "labelled": a["n"],
            "correct": a["correct"],
            "accuracy": round(a["correct"] / a["n"], 6),
            "devices": len(a["devices"]),
        }
        for v, a in sorted(sums.items())
    ]


def test_live_accuracy_and_error_per_version_for_a_device_a_group_and_the_fleet(
    mosquitto: Mosquitto, stage: Any
) -> None:
    hub, viewer, operator = stage
    t0 = (time.time() // 3600 - 20) * 3600
    # pf-a runs cls v2 and still gets labels for what v1 predicted before the rollout;
    # pf-b still runs v1; pf-c runs v2 outside the group; pf-r runs a regressor, v3,
    # and gets late labels for v2's values
    a = [
        labelled_window("pf-a", i, ("cls", 2), [("cls", 2, 10, i), ("cls", 1, 4, 2)], t0)
        for i in range(10)
    ]
    b = [labelled_window("pf-b", i, ("cls", 1), [("cls", 1, 6, 5)], t0) for i in range(10)]
    c = [labelled_window("pf-c", i, ("cls", 2), [("cls", 2, 8, 8)], t0) for i in range(10)]
    r = [
        labelled_window(
            "pf-r",
            i,
            ("reg", 3),
            [("reg", 3, 5, i + 0.5, (i + 1) ** 2), ("reg", 2, 2, 3.0, 5.0)],
            t0,
        )
        for i in range(10)
    ]
    everything = a + b + c + r
    online = [
        (protocol.topic(d, "state"), protocol.encode("state", {"status": "online"}, ts=T0))
        for d in ("pf-a", "pf-b", "pf-c", "pf-r")
    ]
    before, states = hub.ingest.counts["telemetry"], hub.ingest.counts["state"]
    publish_all(mosquitto, online + everything)
    wait_for(
        lambda: hub.ingest.counts["telemetry"] >= before + len(everything), 20, "windows stored"
    )
    wait_known(hub, states, len(online))
    for d in ("pf-a", "pf-b"):
        operator.set_tags(d, ["line-9"])
    span = {"start": t0, "end": t0 + 3600}

    one = viewer.performance("cls", device="pf-a", **span)
    assert (one["scope"], one["device"], one["devices"]) == ("device", "pf-a", 1)
    assert one["versions"] == classifier_figures(expected_performance(a, "cls"))
    assert one["versions"][0]["labelled"] == 40  # v1's late labels, counted for v1

    group = viewer.performance("cls", group="line-9", **span)
    assert (group["scope"], group["devices"]) == ("group", 2)
    assert group["versions"] == classifier_figures(expected_performance(a + b, "cls"))

    fleet = viewer.performance("cls", **span)
    assert fleet["scope"] == "fleet"
    assert fleet["versions"] == classifier_figures(expected_performance(a + b + c, "cls"))
    only_v2 = viewer.performance("cls", version=2, **span)["versions"]
    assert only_v2 == [v for v in fleet["versions"] if v["version"] == 2]

    want = expected_performance(r, "reg")
    got = viewer.performance("reg", **span)["versions"]
    assert [v["version"] for v in got] == [2, 3]
    for v in got:
        w = want[v["version"]]
        assert v["task"] == "regression" and v["labelled"] == w["n"] and v["devices"] == 1
        assert v["mae"] == round(w["abs"] / w["n"], 6)
        assert v["rmse"] == round(math.sqrt(w["sq"] / w["n"]), 6)
        assert "accuracy" not in v

    # the series sees the same labels: accuracy of the classifiers', MAE of the regressors'
    (point,) = viewer.telemetry(device="pf-r", start=t0, end=t0 + 3600, resolution_s=3600)["points"]
    assert point["accuracy"] is None and point["labelled"] == want[2]["n"] + want[3]["n"]
    assert point["mae"] == round((want[2]["abs"] + want[3]["abs"]) / point["labelled"], 6)


def test_bad_performance_queries_get_a_clear_422(stage: Any) -> None:
    _, viewer, _ = stage
    with pytest.raises(HubClientError, match="at most one of device and group"):
        viewer.performance("cls", device="pf-a", group="line-9")
    with pytest.raises(HubClientError, match="empty range"):
        viewer.performance("cls", start=T0 + 10, end=T0)
    with pytest.raises(HubClientError) as info:
        viewer.performance("no such model!")
    assert info.value.status == 422
    nobody = viewer.performance("cls", group="no-such-group", start=T0, end=T0 + 60)
    assert (nobody["devices"], nobody["versions"]) == (0, [])


# ------------------------------------------------------------------ estimated accuracy


def confident_window(
    device: str,
    seq: int,
    version: tuple[str, int],
    baseline: dict[str, Any],
    tops: list[float],
    ts: float,
) -> tuple[str, bytes]:
    """A drift message as the agent's recorder makes it, from rows whose top-class
    probabilities are ``tops``."""
    k = len(CLASSES)
    probs = np.asarray([[t, *[(1 - t) / (k - 1)] * (k - 1)] for t in tops], dtype=np.float32)
    rec = DriftRecorder()
    rec.activate(*version, baseline)
    x, _ = generate(len(tops), seed=seq)
    rec.observe(*version, x, {"label": probs.argmax(axis=1), "probabilities": probs})
    drained = rec.drain()
    assert drained is not None
    body = {"seq": seq, "model": version[0], "version": version[1]}
    body["sketch"] = drained.sketch.to_dict()
    return protocol.topic(device, "drift"), protocol.encode("drift", body, ts=ts)


def test_estimated_accuracy_beside_the_measured_one(mosquitto: Mosquitto, stage: Any) -> None:
    """Sketches with known confidence counts give the exact estimate, per device, group
    and fleet, beside the labels' accuracy where both exist and alone where not."""
    hub, viewer, operator = stage
    built = hub.build_and_publish(pipeline_config(name="est", n_train=2000, n_holdout=1000))
    v = built["version"]
    baseline = dict(trust_baselines(hub.registry, hub.trust)("est", v) or {})
    table = baseline["outputs"]["calibration"]  # as the signed manifest gives it to devices
    t0 = (time.time() // 3600 - 18) * 3600
    # per device: each window's top-class probabilities; bin b holds [b/20, (b+1)/20)
    tops = {
        "es-a": [[0.97] * 30 + [0.62] * 10 + [0.33] * 5, [0.88] * 12 + [0.97] * 8],
        "es-b": [[0.41] * 20 + [0.97] * 20, [0.52] * 7],
        "es-c": [[0.97] * 50],
    }
    drift = [
        confident_window(d, i, ("est", v), baseline, window, t0 + (i + 1) * WINDOW_S)
        for d, windows in tops.items()
        for i, window in enumerate(windows)
    ]
    # outside the range, and an older agent's sketch without counts: neither is estimated
    drift.append(confident_window("es-a", 7, ("est", v), baseline, [0.3] * 9, t0 - 5))
    older = json.loads(confident_window("es-c", 8, ("est", v), baseline, [0.4] * 9, t0 + 50)[1])
    del older["body"]["sketch"]["outputs"]["confidence"]
    drift.append((protocol.topic("es-c", "drift"), json.dumps(older).encode()))
    labels = [  # es-a and es-c label their predictions, also of a version with no sketches
        labelled_window("es-a", 0, ("est", v), [("est", v, 40, 37), ("est", v + 1, 5, 4)], t0),
        labelled_window("es-c", 0, ("est", v), [("est", v, 10, 6)], t0),
    ]
    online = [
        (protocol.topic(d, "state"), protocol.encode("state", {"status": "online"}, ts=T0))
        for d in tops
    ]
    before, states = hub.ingest.counts["telemetry"], hub.ingest.counts["state"]
    publish_all(mosquitto, online + labels + drift)
    wait_for(lambda: hub.ingest.counts["telemetry"] >= before + 2, 20, "labels stored")
    wait_known(hub, states, len(online))
    wait_for(lambda: estimated_windows(hub, "est") >= len(drift), 20, "drift windows stored")
    for d in ("es-a", "es-b"):
        operator.set_tags(d, ["line-e"])
    span = {"start": t0, "end": t0 + 3600}

    def estimate(devices: list[str]) -> dict[str, Any]:
        counts = np.zeros(len(table["accuracy"]), dtype=np.int64)
        for d in devices:
            for window in tops[d]:
                for t in window:
                    counts[int(t * 20)] += 1  # 20 equal bins, no value on an edge
        return {
            "estimated_accuracy": round(float(counts @ table["accuracy"]) / counts.sum(), 6),
            "estimated_rows": int(counts.sum()),
            "estimated_devices": len(devices),
        }

    def measured(labelled: int, correct: int, devices: int) -> dict[str, Any]:
        accuracy = round(correct / labelled, 6)
        return {"labelled": labelled, "correct": correct, "accuracy": accuracy, "devices": devices}

    cls = {"task": "classification"}
    a = viewer.performance("est", device="es-a", **span)["versions"]
    assert a == [
        {"version": v, **cls, **measured(40, 37, 1), **estimate(["es-a"])},
        {"version": v + 1, **cls, **measured(5, 4, 1)},  # labels only: no estimate
    ]
    b = viewer.performance("est", device="es-b", **span)["versions"]
    assert b == [{"version": v, **cls, **estimate(["es-b"])}]  # no labels: the estimate only
    group = viewer.performance("est", group="line-e", version=v, **span)["versions"]
    assert group == [{"version": v, **cls, **measured(40, 37, 1), **estimate(["es-a", "es-b"])}]
    fleet = viewer.performance("est", version=v, **span)["versions"]
    want = estimate(["es-a", "es-b", "es-c"])
    assert fleet == [{"version": v, **cls, **measured(50, 43, 2), **want}]
    assert want["estimated_rows"] == 45 + 20 + 40 + 7 + 50
    # a range that holds none of the windows gives neither figure
    assert viewer.performance("est", start=t0 - 3600, end=t0 - 100)["versions"] == []


def estimated_windows(hub: Any, model: str) -> int:
    with session(hub.engine) as s:
        return len(s.exec(select(DriftWindow).where(DriftWindow.model == model)).all())


# ------------------------------------------------------------------ retention


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    return hub_engine(tmp_path)


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


def test_downsampling_keeps_labels_per_version(engine: Engine) -> None:
    """Folding windows of two versions into hourly rows keeps each version's figures."""
    messages = [
        labelled_window(
            "fold",
            i,
            ("cls", 2) if i >= 300 else ("cls", 1),  # a rollout at window 300
            [("cls", 2, 3, i % 4)] if i >= 300 else [("cls", 1, 5, 3)],
            T0,
        )
        for i in range(600)
    ]
    messages += [  # late labels of v1 after the rollout, and a regressor's
        labelled_window("fold", 600 + i, ("cls", 2), [("cls", 1, 2, 1)], T0) for i in range(50)
    ]
    messages += [
        labelled_window("fold-r", i, ("reg", 1), [("reg", 1, 4, 0.25 * i, 0.5 * i)], T0)
        for i in range(400)
    ]
    ingest_all(engine, messages)

    def figures() -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
        with session(engine) as s:
            return (
                performance(s, "cls", None, None, T0 - 86400, T0 + 86400),
                performance(s, "reg", None, None, T0 - 86400, T0 + 86400),
                series(s, None, T0 - 86400, T0 + 86400, 86400),
            )

    before = figures()
    assert [v["labelled"] for v in before[0]] == [300 * 5 + 50 * 2, 300 * 3]
    result = run_retention(
        engine, RetentionPolicy(3600, 30 * 86400, 3600), now=T0 + 650 * WINDOW_S + 3601
    )
    assert result.folded == 1050
    after = figures()
    assert after[:2] == before[:2]
    for b, a in zip(before[2], after[2], strict=True):
        for key in ("labelled", "correct", "accuracy", "mae", "rmse"):
            assert b[key] == a[key], key
    with session(engine) as s:
        hour = s.get(Telemetry, ("fold", -1 - int((T0 + 3000 * 1.0) // 3600)))
    assert hour is not None and hour.version == 2 and hour.other_versions is not None
    assert json.loads(hour.other_versions)[0]["version"] == 1


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
    ingest_all(engine, [labelled_window("new-r", 1, ("r", 2), [("r", 1, 4, 2.0, 1.0)], T0)])
    with session(engine) as s:  # the columns added in place hold a regressor's late labels
        (got,) = performance(s, "r", None, None, T0, T0 + 60)
    assert (got["version"], got["labelled"], got["mae"], got["rmse"]) == (1, 4, 0.5, 0.5)
    points = totals(engine, 86400)
    assert sum(p["windows"] for p in points) == 3
    assert (
        sum(p["count"] for p in points)
        == 5 + protocol.decode(window("new", 0, random.Random(2))[1]).body["count"] + 1
    )
