"""Late labels (agent/labels.py): prediction ids, the bounded table of recent predictions,
joining labels to the version that predicted, and ``POST /v1/labels`` over real HTTP on
real onnxruntime sessions."""

from __future__ import annotations

import http.client
import json
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from models import make_conv_onnx, make_mlp_onnx, make_regressor_onnx  # tests/models.py
from update_rig import UpdateRig

from agent.endpoint import LocalEndpoint
from agent.labels import ItemError, LateLabel, RecentPredictions, Task, parse_labels, task_of
from agent.predictor import Predictor
from agent.runtime import ModelSession, OnnxBackend
from hub.ml.pipeline import BuiltModel
from shared import protocol
from shared.sensors import CLASSES, generate


class Clock:
    """A frozen monotonic clock, moved by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def mlp() -> ModelSession:
    return OnnxBackend().load_bytes(make_mlp_onnx(hidden=(16,), n=500))


@pytest.fixture(scope="module")
def mlp_v2() -> ModelSession:
    return OnnxBackend().load_bytes(make_mlp_onnx(hidden=(8,), seed=5, n=300))


@pytest.fixture(scope="module")
def regressor() -> ModelSession:
    return OnnxBackend().load_bytes(make_regressor_onnx())


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def predictor(mlp: ModelSession, clock: Clock) -> Predictor:
    p = Predictor(predictions=RecentPredictions(max_entries=64, max_age_s=60.0, clock=clock))
    p.swap(mlp, "vibration", 1, CLASSES)
    return p


LABELS = np.array([0, 1, 2, 3, 0, 1, 2, 3])
LABEL_TASK = Task("m", 1, "label", classes=("a", "b", "c", "d"), n_classes=4)


# --------------------------------------------------------------------------- the table


def test_every_call_gets_its_own_id_and_raw_predict_none(predictor: Predictor) -> None:
    x, _ = generate(3, seed=40)
    ids = {predictor.predict_versioned(x).id for _ in range(50)}
    assert len(ids) == 50 and len(predictor.predictions) == 50
    predictor.predict(x)  # the bare hot path keeps nothing
    assert len(predictor.predictions) == 50
    other = RecentPredictions()  # another process: another prefix, never the same ids
    theirs = [other.add(LABEL_TASK, {"label": LABELS}) for _ in range(50)]
    assert not ids & set(theirs)
    assert predictor.predictions.join([LateLabel(theirs[0], 0)])[0].unknown == 1
    mine = sorted(ids)[0]
    prefix, digits = mine.split("-")
    for spelling in (f"{prefix}-0{digits}", f"{prefix}-+{digits}", f"{prefix}- {digits}"):
        assert predictor.predictions.join([LateLabel(spelling, 0)])[0].unknown == 1


def test_the_table_is_bounded_by_entries_rows_and_age(clock: Clock) -> None:
    table = RecentPredictions(max_entries=100, max_rows=1000, max_age_s=30.0, clock=clock)
    one = {"label": np.zeros(1, dtype=np.int64)}
    ids = [table.add(LABEL_TASK, one) for _ in range(1000)]
    assert len(table) == 100
    report, _ = table.join([LateLabel(ids[899], 0), LateLabel(ids[900], 0)])
    assert (report.unknown, report.joined) == (1, 1)  # only the last 100 ids resolve
    big = {"label": np.zeros(600, dtype=np.int64)}
    first, second = table.add(LABEL_TASK, big), table.add(LABEL_TASK, big)
    report, _ = table.join([LateLabel(first, 0, 599), LateLabel(second, 0, 599)])
    assert (report.unknown, report.joined) == (1, 1)  # the first one's rows were overwritten
    assert table.join([LateLabel(ids[950], 0)])[0].unknown == 1  # and the small ones before
    too_big = table.add(LABEL_TASK, {"label": np.zeros(1001, dtype=np.int64)})
    assert table.join([LateLabel(too_big, 0)])[0].unknown == 1  # more rows than the ring
    fresh = table.add(LABEL_TASK, one)
    clock.now += 30.5  # older than max_age_s: unknown, though still in the ring
    assert table.join([LateLabel(fresh, 0)])[0].unknown == 1


def test_an_expired_prediction_is_unknown(clock: Clock) -> None:
    table = RecentPredictions(max_age_s=10.0, clock=clock)
    pid = table.add(LABEL_TASK, {"label": LABELS})
    clock.now += 9.5
    assert table.join([LateLabel(pid, 0, 0)])[0].joined == 1
    clock.now += 1.0
    report, versions = table.join([LateLabel(pid, 1, 1)])
    assert (report.unknown, report.joined, versions) == (1, 0, [])
    assert report.errors[0].error == "unknown_id"


def test_memory_is_fixed_whatever_the_application_sends() -> None:
    table = RecentPredictions(max_entries=1000, max_rows=10_000)
    rng = np.random.default_rng(11)
    batches = [{"label": np.zeros(int(n), dtype=np.int64)} for n in rng.integers(1, 300, 50)]
    tracemalloc.start()
    try:
        for i in range(2000):  # every slot used (twice: the first ids are cached small
            table.add(LABEL_TASK, batches[i % 50])  # ints), traced: as big as it gets
        full = tracemalloc.get_traced_memory()[0]
        for i in range(20_000):
            table.add(LABEL_TASK, batches[i % 50])
        grown = tracemalloc.get_traced_memory()[0] - full
    finally:
        tracemalloc.stop()
    assert full > 10_000 * 9  # the rings themselves were traced
    assert grown < 4096, grown  # bytes: nothing more, however many predictions


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(1, 400), min_size=1, max_size=200))
def test_the_latest_prediction_always_resolves_and_old_ones_never(sizes: list[int]) -> None:
    table = RecentPredictions(max_entries=50, max_rows=2000)
    ids = [table.add(LABEL_TASK, {"label": np.zeros(n, dtype=np.int64)}) for n in sizes]
    report, _ = table.join([LateLabel(ids[-1], 0, sizes[-1] - 1)])
    assert report.joined == 1
    if len(ids) > 50:
        assert table.join([LateLabel(ids[-51], 0)])[0].unknown == 1
    assert len(table) <= 50


# --------------------------------------------------------------------------- joining


def table_with_one() -> tuple[RecentPredictions, str, str]:
    table = RecentPredictions()
    cls = table.add(LABEL_TASK, {"label": LABELS, "probabilities": np.eye(4)[LABELS]})
    reg = table.add(Task("r", 3, "value", regression=True), {"value": np.ones((2, 1)) * 5})
    return table, cls, reg


REFUSALS: list[tuple[str, Any, Any, Any, str]] = [
    # (id, prediction, row, label, code)   prediction "cls" / "reg" / anything else as is
    ("unknown id", "nope", 0, 1, "unknown_id"),
    ("id not a string", 17, 0, 1, "bad_id"),
    ("empty id", "", 0, 1, "bad_id"),
    ("negative row", "cls", -1, 1, "bad_row"),
    ("row out of range", "cls", 8, 1, "bad_row"),
    ("row a float", "cls", 1.0, 1, "bad_row"),
    ("row a bool", "cls", True, 1, "bad_row"),
    ("label missing", "cls", 0, None, "bad_label"),
    ("label a bool", "cls", 0, True, "bad_label"),
    ("label a list", "cls", 0, [1], "bad_label"),
    ("class index too big", "cls", 0, 4, "bad_label"),
    ("class index negative", "cls", 0, -1, "bad_label"),
    ("class index a float", "cls", 0, 1.0, "bad_label"),
    ("unknown class name", "cls", 0, "zebra", "bad_label"),
    ("regressor given a name", "reg", 0, "a", "bad_label"),
    ("beyond float32", "reg", 0, 1e39, "bad_label"),
    ("a huge integer", "reg", 0, 10**400, "bad_label"),
]


@pytest.mark.parametrize(
    ("pid", "row", "label", "code"), [r[1:] for r in REFUSALS], ids=[r[0] for r in REFUSALS]
)
def test_each_refusal_has_its_code_and_marks_nothing(
    pid: Any, row: Any, label: Any, code: str
) -> None:
    table, cls, reg = table_with_one()
    pid = {"cls": cls, "reg": reg}.get(pid, pid) if isinstance(pid, str) else pid
    raw = [{"id": pid, "row": row, "label": label}]
    report, versions = table.join(parse_labels(raw))
    assert report.joined == 0 and versions == []
    assert [(e.index, e.error) for e in report.errors] == [(0, code)]
    assert report.errors[0].detail
    assert (report.unknown, report.invalid) == ((1, 0) if code == "unknown_id" else (0, 1))
    if type(row) is int and 0 <= row < 2 and pid in (cls, reg):  # the row is still free
        label_ok = 1 if pid == cls else 5.0
        assert table.join([LateLabel(pid, label_ok, row)])[0].joined == 1


def test_labels_join_counts_duplicates_once_and_scores_per_version() -> None:
    table, cls, reg = table_with_one()
    report, versions = table.join(
        [
            LateLabel(cls, 0, 0),  # right
            LateLabel(cls, "b", 1),  # right, by name
            LateLabel(cls, 0, 2),  # wrong (predicted 2)
            LateLabel(cls, 3, 2),  # the same row again: a duplicate, the first one stands
            LateLabel(reg, 3.5, 0),  # predicted 5: error 1.5
            LateLabel(reg, 9, 1),  # error 4
            ItemError(6, "bad_item", "not an object"),
        ]
    )
    assert (report.joined, report.duplicate, report.invalid, report.unknown) == (5, 1, 1, 0)
    by_task = {v.task.model: v for v in versions}
    assert (by_task["m"].labelled, by_task["m"].correct) == (3, 2)
    r = by_task["r"]
    assert (r.labelled, r.abs_err_sum, r.sq_err_sum) == (2, 5.5, 1.5**2 + 4**2)
    again, _ = table.join([LateLabel(cls, 0, 0), LateLabel(reg, 1.0, 1)])
    assert (again.duplicate, again.joined) == (2, 0)
    assert [e.error for e in again.errors] == ["duplicate", "duplicate"]


def test_a_model_without_label_or_value_gets_a_clear_error() -> None:
    table = RecentPredictions()
    task = task_of("x", 1, {"scores": (None, 2)})
    pid = table.add(task, {"scores": np.zeros((1, 2))})
    report, _ = table.join([LateLabel(pid, 0)])
    assert [e.error for e in report.errors] == ["no_label_output"]


def test_a_value_that_is_not_finite_cannot_be_judged() -> None:
    table = RecentPredictions()
    task = Task("r", 1, "value", regression=True)
    pid = table.add(task, {"value": np.array([[np.nan], [1e300], [np.inf], [2.0]])})
    report, versions = table.join([LateLabel(pid, 1.0, row) for row in range(4)])
    assert [e.error for e in report.errors] == ["nonfinite_prediction"] * 3
    assert report.joined == 1 and versions[0].abs_err_sum == 1.0
    assert table.join([LateLabel(pid, 1.0, 0)])[0].invalid == 1  # still not labelled


def test_probabilities_alone_are_compared_by_their_argmax() -> None:
    table = RecentPredictions()
    task = task_of("p", 1, {"probabilities": (None, 3)})
    assert task.n_classes == 3
    pid = table.add(task, {"probabilities": np.array([[0.1, 0.7, 0.2], [0.8, 0.1, 0.1]])})
    _, (v,) = table.join([LateLabel(pid, 1, 0), LateLabel(pid, 2, 1)])
    assert (v.labelled, v.correct) == (2, 1)


def test_the_error_list_is_capped_but_every_item_counted() -> None:
    table = RecentPredictions()
    report, _ = table.join([LateLabel(f"gone-{i}", 0) for i in range(500)])
    assert report.unknown == 500 and len(report.errors) == 100


# --------------------------------------------------------------------------- the predictor


def test_late_labels_count_for_the_version_that_predicted(
    predictor: Predictor, mlp_v2: ModelSession
) -> None:
    x, y = generate(40, seed=41)
    before = predictor.predict_versioned(x)
    predictor.swap(mlp_v2, "vibration", 2, CLASSES)  # a deployment in between
    after = predictor.predict_versioned(x)
    names = [CLASSES[i] for i in y]
    report = predictor.join_labels(
        [LateLabel(before.id, names[i], i) for i in range(40)]  # class names
        + [LateLabel(after.id, int(y[i]), i) for i in range(20)]  # class indices
    )
    assert report.joined == 60
    stats = predictor.recorder.drain()
    v1, v2 = stats.versions[("vibration", 1)], stats.versions[("vibration", 2)]
    assert (v1.labelled, v1.correct) == (40, int((before.outputs["label"] == y).sum()))
    assert (v2.labelled, v2.correct) == (20, int((after.outputs["label"][:20] == y[:20]).sum()))
    body = stats.summary("vibration", 2)  # the window of the now active version
    assert (body["labelled"], body["correct"]) == (20, v2.correct)
    assert body["other_versions"] == [
        {"model": "vibration", "version": 1, "labelled": 40, "correct": v1.correct}
    ]
    window = {"seq": 0, "start": 0.0, "end": 1.0, "model": "vibration", "version": 2, **body}
    assert protocol.decode(protocol.encode("telemetry", window, ts=1.0)).body == window


def test_a_regressors_late_labels_add_up_its_errors(regressor: ModelSession) -> None:
    p = Predictor()
    p.swap(regressor, "load", 4)
    x, _ = generate(6, seed=42)
    got = p.predict_versioned(x)
    truth = np.linspace(-2.0, 3.0, 6)
    assert p.join_labels([LateLabel(got.id, float(v), i) for i, v in enumerate(truth)]).joined == 6
    one = p.predict_versioned(x[0])  # one row: row 0
    assert p.record_label(one.id, 1).joined == 1
    assert p.record_label(one.id, 1).duplicate == 1
    stats = p.recorder.drain()
    v = stats.versions[("load", 4)]
    err = np.abs(
        np.concatenate([got.outputs["value"][:, 0], one.outputs["value"][:, 0]])
        - np.append(truth, 1.0)
    )
    assert v.regression and v.labelled == 7
    assert v.abs_err_sum == pytest.approx(err.sum(), rel=1e-6)
    assert v.sq_err_sum == pytest.approx((err**2).sum(), rel=1e-6)
    body = stats.summary("load", 4)
    assert (body["labelled"], body["correct"]) == (7, 0)
    assert body["abs_err_sum"] == v.abs_err_sum and "other_versions" not in body


def test_an_image_classifier_is_labelled_like_any_other() -> None:
    session = OnnxBackend().load_bytes(make_conv_onnx((8, 8)))
    p = Predictor()
    p.swap(session, "digits", 1, ("zero", "one", "two"))
    x = np.random.default_rng(10).normal(size=(2, 8, 8)).astype(np.float32)
    got = p.predict_versioned(x[0])  # one image
    predicted = int(got.outputs["label"][0])
    assert p.record_label(got.id, ("zero", "one", "two")[predicted]).joined == 1
    stats = p.recorder.drain().versions[("digits", 1)]
    assert (stats.labelled, stats.correct) == (1, 1)


# --------------------------------------------------------------------------- the endpoint


@pytest.fixture
def conn(predictor: Predictor) -> Iterator[http.client.HTTPConnection]:
    with LocalEndpoint(predictor, max_rows=64, max_labels=10) as ep:
        c = http.client.HTTPConnection(*ep.address, timeout=10)
        yield c
        c.close()


def call(c: http.client.HTTPConnection, path: str, body: Any) -> tuple[int, dict[str, Any]]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    c.request("POST", path, body=data, headers={"Content-Type": "application/json"})
    response = c.getresponse()
    return response.status, json.loads(response.read())


def test_labels_later_over_http(conn: http.client.HTTPConnection, predictor: Predictor) -> None:
    x, y = generate(5, seed=43)
    status, reply = call(conn, "/v1/predict", {"inputs": x.tolist()})
    assert status == 200 and isinstance(reply["id"], str)
    pid, predicted = reply["id"], reply["outputs"]["label"]
    items = [{"id": pid, "row": i, "label": int(y[i])} for i in range(4)]
    items += [
        {"id": pid, "label": CLASSES[int(y[0])]},  # row 0 again, by name: a duplicate
        {"id": "f00-1", "row": 0, "label": 1},  # never issued
        {"id": pid, "row": 4, "label": "no-such-class"},
        "junk",
    ]
    status, answer = call(conn, "/v1/labels", {"labels": items})
    assert status == 200
    assert {k: answer[k] for k in ("joined", "unknown", "duplicate", "invalid")} == {
        "joined": 4,
        "unknown": 1,
        "duplicate": 1,
        "invalid": 2,
    }
    assert [(e["index"], e["error"]) for e in answer["errors"]] == [
        (4, "duplicate"),
        (5, "unknown_id"),
        (6, "bad_label"),
        (7, "bad_item"),
    ]
    stats = predictor.recorder.drain().versions[("vibration", 1)]
    correct = sum(int(predicted[i] == y[i]) for i in range(4))
    assert (stats.labelled, stats.correct) == (4, correct)


def test_inline_labels_keep_working_and_make_later_ones_duplicates(
    conn: http.client.HTTPConnection, predictor: Predictor
) -> None:
    x, y = generate(3, seed=44)
    status, reply = call(conn, "/v1/predict", {"inputs": x.tolist(), "labels": y.tolist()})
    assert status == 200
    status, answer = call(conn, "/v1/labels", {"labels": [{"id": reply["id"], "label": 0}]})
    assert (status, answer["duplicate"], answer["joined"]) == (200, 1, 0)
    body = predictor.recorder.drain().summary("vibration", 1)
    assert body["labelled"] == 3


BAD_LABEL_REQUESTS: list[tuple[str, Any, int, str]] = [
    ("not json", b"{labels", 400, "bad_json"),
    ("not an object", b"[1]", 400, "bad_json"),
    ("no labels", {"items": []}, 400, "bad_labels"),
    ("empty labels", {"labels": []}, 400, "bad_labels"),
    ("labels not a list", {"labels": {"id": "x"}}, 400, "bad_labels"),
    ("too many", {"labels": [{"id": "x", "label": 0}] * 11}, 413, "too_many_labels"),
]


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [r[1:] for r in BAD_LABEL_REQUESTS],
    ids=[r[0] for r in BAD_LABEL_REQUESTS],
)
def test_bad_label_requests_get_their_4xx(
    conn: http.client.HTTPConnection, body: Any, status: int, code: str
) -> None:
    got, reply = call(conn, "/v1/labels", body)
    assert (got, reply["error"]) == (status, code) and reply["detail"]
    ok, _ = call(conn, "/v1/predict", {"inputs": [[1.0] * 16]})  # still serving
    assert ok == 200


junk = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        junk | st.fixed_dictionaries({"id": junk, "row": junk, "label": junk}),
        min_size=1,
        max_size=10,
    )
)
def test_no_junk_item_crashes_the_join(mlp: ModelSession, items: list[Any]) -> None:
    p = Predictor()
    p.swap(mlp, "m", 1)
    with LocalEndpoint(p, max_labels=10) as ep:
        c = http.client.HTTPConnection(*ep.address, timeout=10)
        status, answer = call(c, "/v1/labels", {"labels": items})
        c.close()
    assert status == 200 and ep.errors["internal"] == 0
    assert answer["joined"] == 0  # nothing was predicted: no item can join
    assert answer["unknown"] + answer["invalid"] == len(items)


# --------------------------------------------------------------------------- the wire


def window_body(**labels: Any) -> dict[str, Any]:
    body = {"seq": 1, "start": 0.0, "end": 10.0, "model": "m", "version": 2, "count": 1}
    return {**body, "errors": 0, "latency_us": {"p50": 1.0, "p95": 1.0, "p99": 1.0}, **labels}


OK_VERSION = {"model": "m", "version": 1, "labelled": 3, "correct": 2}
BAD_WINDOWS: list[tuple[str, dict[str, Any]]] = [
    ("abs_err_sum negative", {"abs_err_sum": -1.0}),
    ("sq_err_sum beyond the bound", {"sq_err_sum": 1e201}),
    ("abs_err_sum a string", {"abs_err_sum": "1"}),
    ("other_versions empty", {"other_versions": []}),
    (
        "other_versions too many",
        {"other_versions": [{**OK_VERSION, "version": v} for v in range(9)]},
    ),
    ("a version twice", {"other_versions": [OK_VERSION, OK_VERSION]}),
    ("correct > labelled", {"other_versions": [{**OK_VERSION, "correct": 4}]}),
    ("no model", {"other_versions": [{**OK_VERSION, "model": ""}]}),
    ("an unknown key", {"other_versions": [{**OK_VERSION, "accuracy": 0.5}]}),
    ("a negative error sum", {"other_versions": [{**OK_VERSION, "sq_err_sum": -0.1}]}),
    ("not a list", {"other_versions": OK_VERSION}),
]


@pytest.mark.parametrize("change", [r[1] for r in BAD_WINDOWS], ids=[r[0] for r in BAD_WINDOWS])
def test_the_hub_refuses_bad_label_fields(change: dict[str, Any]) -> None:
    with pytest.raises(protocol.ProtocolError) as info:
        protocol.encode("telemetry", window_body(**change), ts=1.0)
    assert info.value.reason == "bad_body"


def test_label_fields_at_their_bounds_are_accepted() -> None:
    others = [{**OK_VERSION, "version": v, "abs_err_sum": 1e200, "sq_err_sum": 0} for v in range(8)]
    body = window_body(
        labelled=5, correct=0, abs_err_sum=0.0, sq_err_sum=1e200, other_versions=others
    )
    assert protocol.decode(protocol.encode("telemetry", body, ts=1.0)).body == body


# --------------------------------------------------------------------------- on a device


def test_a_device_joins_late_labels_across_a_deployment_and_a_rollback(
    built: BuiltModel, tmp_path: Path
) -> None:
    """The real Device, updated by the hub's signed metadata: class names come from the
    manifest at activation, and from the saved baseline after a rollback; labels of v1's
    predictions that come while v2 serves travel in ``other_versions``."""
    rig = UpdateRig(tmp_path, built)
    rig.publish()
    rig.install(1)
    predictor = rig.device.predictor
    x, y = generate(6, seed=45)
    names = [built.classes[i] for i in y]
    before = predictor.predict_versioned(x)  # v1
    rig.publish()
    rig.install(2)
    now = predictor.predict_versioned(x[0])  # v2
    assert predictor.record_label(now.id, names[0]).joined == 1
    late = [LateLabel(before.id, n, i) for i, n in enumerate(names)]
    assert predictor.join_labels(late).joined == 6

    def windows() -> list[dict[str, Any]]:
        rig.wire.clear()
        for _ in range(3):  # the open telemetry window closes (it may open just now)
            rig.device.tick()
            rig.clock.now += 11
        return [json.loads(p)["body"] for t, p in rig.wire if t.endswith("/telemetry")]

    v1_correct = int((before.outputs["label"] == y).sum())
    bodies = windows()
    assert {(b["model"], b["version"]) for b in bodies} == {(built.name, 2)}
    assert sum(b["labelled"] for b in bodies) == 1
    assert [o for b in bodies for o in b.get("other_versions", [])] == [
        {"model": built.name, "version": 1, "labelled": 6, "correct": v1_correct}
    ]
    assert rig.send(rig.command("rollback", 1, deployment="back"))[-1]["stage"] == "rolled_back"
    after = predictor.predict_versioned(x[0])
    assert predictor.record_label(after.id, names[0]).joined == 1  # names after a rollback too
    bodies = windows()
    # v2's idle span, held back before the rollback (idle windows coalesce, ADR 0034), goes
    # first as one zero window under v2; v1's windows follow it, tiling time
    quiet = [b for b in bodies if b["version"] == 2]
    assert [(b["count"], b["labelled"], b.get("other_versions")) for b in quiet] == [(0, 0, None)]
    bodies = [b for b in bodies if b["version"] != 2]
    assert quiet[0]["end"] == min(b["start"] for b in bodies)
    assert {(b["model"], b["version"]) for b in bodies} == {(built.name, 1)}
    assert sum(b["labelled"] for b in bodies) == 1
