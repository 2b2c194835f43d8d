"""Estimated accuracy from confidence (shared/calibration.py): the calibration table the
hub puts in a classifier's baseline (hub/ml/baseline.py), the confidence counts the
agent's recorder adds to its sketches (agent/drift.py), their wire form, validation and
merge (shared/drift.py), and the estimate they give."""

from __future__ import annotations

import copy
import itertools
import json
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from models import make_mlp_onnx  # tests/models.py

from agent.drift import DriftRecorder
from agent.predictor import Predictor
from agent.runtime import OnnxBackend
from hub.ml.baseline import CONFIDENCE_BINS, PRIOR_ROWS, baseline_stats, calibration_table
from shared import protocol
from shared.calibration import Calibration, CalibrationError, confidence_counts
from shared.drift import Baseline, DriftError, DriftSketch, merge_all
from shared.sensors import CLASSES, Shift, generate

# ------------------------------------------------------------------ the model and its table


@pytest.fixture(scope="module")
def session() -> Any:
    return OnnxBackend().load_bytes(make_mlp_onnx())


def probabilities(session: Any, x: np.ndarray) -> np.ndarray:
    _label, probs = session.run(x)
    return np.asarray(probs)


@pytest.fixture(scope="module")
def baseline(session: Any) -> dict[str, Any]:
    """As the pipeline builds it: bins from training rows, the table from hold-out rows."""
    x_train, _ = generate(3000, seed=10)
    x_hold, y_hold = generate(2000, seed=11)
    return baseline_stats(
        x_train,
        probabilities(session, x_train),
        10,
        holdout=(probabilities(session, x_hold), y_hold),
    )


def reference_counts(probs: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """numpy.histogram of the top-class probabilities: the bins the devices must use."""
    counts, _ = np.histogram(probs.max(axis=1), bins=edges)
    return counts


def test_the_table_is_the_hold_out_accuracy_per_confidence_bin(session: Any) -> None:
    x, y = generate(3000, seed=12)
    probs = probabilities(session, x)
    table = calibration_table(probs, y)
    assert table is not None
    edges = np.asarray(table["edges"])
    assert table["output"] == "probabilities"
    assert len(edges) == CONFIDENCE_BINS + 1 and edges[0] == 0.0 and edges[-1] == 1.0
    assert table["rows"] == reference_counts(probs, edges).tolist()
    top, right = probs.max(axis=1), probs.argmax(axis=1) == y
    members = []
    for b, (lo, hi) in enumerate(itertools.pairwise(edges)):
        inside = (top >= lo) & ((top < hi) if b < CONFIDENCE_BINS - 1 else (top <= hi))
        n = int(inside.sum())
        conf = float(top[inside].mean()) if n else (lo + hi) / 2
        want = (float(right[inside].sum()) + PRIOR_ROWS * conf) / (n + PRIOR_ROWS)
        assert table["accuracy"][b] == pytest.approx(want, abs=1e-6), b
        members.append(inside)
    # the busiest bin reads its own hold-out accuracy, within the prior's small pull
    busiest = int(np.argmax(table["rows"]))
    assert table["rows"][busiest] > 500
    own = right[members[busiest]].mean()
    assert table["accuracy"][busiest] == pytest.approx(own, abs=0.01)
    # the hold-out's own counts estimate the hold-out accuracy
    estimate = Calibration.from_manifest(table).estimate(table["rows"])
    assert estimate == pytest.approx(right.mean(), abs=0.01)


def test_scores_that_are_not_probabilities_get_no_table() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, size=(200, 4)).astype(np.float32)
    y = rng.integers(0, 4, 200)
    assert calibration_table(logits, y) is None
    assert calibration_table(np.full((200, 4), 0.3, dtype=np.float32), y) is None  # sums 1.2
    x, _ = generate(200, seed=1)
    stats = baseline_stats(x, np.eye(4)[y], 10, holdout=(logits, y))
    assert "calibration" not in stats["outputs"]


def test_the_pipelines_baseline_carries_the_table(baseline: dict[str, Any]) -> None:
    table = baseline["outputs"]["calibration"]
    assert sum(table["rows"]) == 2000  # the hold-out rows, not the training rows
    parsed = Baseline.from_manifest(baseline).calibration
    assert parsed is not None and parsed.bins == CONFIDENCE_BINS
    assert parsed.to_json() == table
    json.dumps(baseline)


# ------------------------------------------------------------------ the baseline's field


def test_a_baseline_without_a_table_still_parses(baseline: dict[str, Any]) -> None:
    old = copy.deepcopy(baseline)
    del old["outputs"]["calibration"]
    layout = Baseline.from_manifest(old)
    assert layout.calibration is None and layout.empty_sketch().confidence is None


def _table(**change: Any) -> dict[str, Any]:
    table: dict[str, Any] = {
        "output": "probabilities",
        "edges": [0.0, 0.5, 1.0],
        "accuracy": [0.4, 0.9],
        "rows": [10, 90],
    }
    table.update(change)
    return table


BAD_TABLES = [
    ("not an object", [0.0, 1.0]),
    ("edges not from 0", _table(edges=[0.1, 0.5, 1.0])),
    ("edges not to 1", _table(edges=[0.0, 0.5, 0.9])),
    ("edges not rising", _table(edges=[0.0, 0.5, 0.5, 1.0], accuracy=[0.1, 0.2, 0.3])),
    ("one edge", _table(edges=[0.0], accuracy=[])),
    ("too many bins", _table(edges=np.linspace(0, 1, 258).tolist(), accuracy=[0.5] * 257)),
    ("NaN edge", _table(edges=[0.0, float("nan"), 1.0])),
    ("huge int edge", _table(edges=[0, 10**400, 1])),
    ("accuracy above 1", _table(accuracy=[0.4, 1.2])),
    ("negative accuracy", _table(accuracy=[-0.1, 0.9])),
    ("accuracy per bin", _table(accuracy=[0.4])),
    ("accuracy as text", _table(accuracy=["0.4", 0.9])),
    ("bool accuracy", _table(accuracy=[True, 0.9])),
    ("rows per bin", _table(rows=[10])),
    ("negative rows", _table(rows=[-1, 90])),
    ("float rows", _table(rows=[1.5, 90])),
    ("empty output name", _table(output="")),
    ("long output name", _table(output="p" * 129)),
]


@pytest.mark.parametrize(("why", "table"), BAD_TABLES, ids=[w for w, _ in BAD_TABLES])
def test_a_malformed_table_is_refused(baseline: dict[str, Any], why: str, table: Any) -> None:
    with pytest.raises(CalibrationError):
        Calibration.from_manifest(table)
    bad = copy.deepcopy(baseline)
    bad["outputs"]["calibration"] = table
    with pytest.raises(DriftError, match="CalibrationError"):
        Baseline.from_manifest(bad)


def test_a_table_is_for_classifiers_only(baseline: dict[str, Any]) -> None:
    scores = copy.deepcopy(baseline)
    scores["outputs"] = {"edges": [0.0, 1.0, 2.0], "hist": [0.5, 0.5], "calibration": _table()}
    with pytest.raises(DriftError, match="classifiers only"):
        Baseline.from_manifest(scores)


def test_the_estimate_weighs_each_bins_accuracy_by_its_count() -> None:
    table = Calibration.from_manifest(_table())
    assert table.estimate([30, 70]) == pytest.approx((30 * 0.4 + 70 * 0.9) / 100)
    assert table.estimate([0, 0]) is None
    with pytest.raises(CalibrationError):
        table.estimate([1, 2, 3])


# ------------------------------------------------------------------ the agent's counts


def test_binning_follows_numpy_histogram_on_the_edges_and_clips_outside() -> None:
    edges = np.linspace(0.0, 1.0, 21).round(6)
    on_edges = np.asarray([0.0, 0.25, 0.5, 0.75, 1.0], dtype=np.float32)  # exact in float32
    inside = np.random.default_rng(3).random(500).astype(np.float32)
    tops = np.concatenate([on_edges, inside])
    scores = np.stack([tops, 1 - tops], axis=1)
    scores[:, 1] = np.minimum(scores[:, 1], tops)  # the first column is the top class
    want, _ = np.histogram(tops, bins=edges)  # [e_i, e_i+1), the last one closed
    assert confidence_counts(scores, edges).tolist() == want.tolist()
    odd = np.asarray([[-0.1, -0.2], [1.2, 0.0], [np.nan, 0.5]], dtype=np.float32)
    got = confidence_counts(odd, edges)
    assert got[0] == 1 and got[-1] == 1 and got.sum() == 2  # clipped; a NaN row not counted


def test_the_recorder_counts_each_rows_top_class_probability(
    session: Any, baseline: dict[str, Any]
) -> None:
    p = Predictor()
    p.swap(session, "m", 1)
    rec = DriftRecorder()
    rec.activate("m", 1, baseline)
    p.add_observer(rec)
    x, _ = generate(700, seed=13, shift=Shift(scale=(1.3,) * 16))
    for i in range(0, 690, 23):
        p.predict(x[i : i + 23])
    for row in x[690:]:
        p.predict(row)  # one row a call: the batch axis is added
    got = rec.drain()
    assert got is not None and got.sketch.rows == 700
    edges = np.asarray(baseline["outputs"]["calibration"]["edges"])
    want = reference_counts(probabilities(session, x), edges)
    assert got.sketch.confidence is not None
    assert got.sketch.confidence.tolist() == want.tolist()
    assert rec.skipped_confidence == 0
    # it travels: a drift message the hub accepts, counts intact
    body = {"seq": 1, "model": "m", "version": 1, "sketch": got.sketch.to_dict()}
    decoded = protocol.decode(protocol.encode("drift", body, ts=1.0))
    back = DriftSketch.from_dict(decoded.body["sketch"])
    assert back.confidence is not None and back.confidence.tolist() == want.tolist()
    assert back.fits(Baseline.from_manifest(baseline))


def test_rows_without_class_scores_or_with_nan_are_not_counted(baseline: dict[str, Any]) -> None:
    rec = DriftRecorder()
    rec.activate("m", 1, baseline)
    x, y = generate(40, seed=14)
    rec.observe("m", 1, x[:10], {"label": y[:10]})  # no probabilities output
    probs = np.eye(len(CLASSES), dtype=np.float32)[y[10:]]
    probs[0] = np.nan
    rec.observe("m", 1, x[10:], {"label": y[10:], "probabilities": probs})
    got = rec.drain()
    assert got is not None and got.sketch.rows == 40
    assert got.sketch.confidence is not None
    assert got.sketch.confidence.tolist() == [0] * (CONFIDENCE_BINS - 1) + [29]
    assert rec.skipped_confidence == 1


def test_without_a_table_the_recorder_counts_no_confidence(
    session: Any, baseline: dict[str, Any]
) -> None:
    old = copy.deepcopy(baseline)
    del old["outputs"]["calibration"]
    rec = DriftRecorder()
    rec.activate("m", 1, old)
    x, y = generate(30, seed=15)
    rec.observe("m", 1, x, {"label": y, "probabilities": probabilities(session, x)})
    got = rec.drain()
    assert got is not None and got.sketch.confidence is None
    assert "confidence" not in got.sketch.to_dict()["outputs"]


# ------------------------------------------------------------------ wire form and merge


def sketch(rows: int, confidence: list[int] | None) -> DriftSketch:
    return DriftSketch(
        rows=rows,
        counts=(np.asarray([0, rows, 0], dtype=np.int64),),
        n=np.asarray([rows], dtype=np.int64),
        mean=np.asarray([0.5]),
        m2=np.asarray([0.0]),
        output_kind="classes",
        output_counts=np.asarray([rows, 0], dtype=np.int64),
        confidence=None if confidence is None else np.asarray(confidence, dtype=np.int64),
    )


def _wire(**outputs: Any) -> dict[str, Any]:
    d = sketch(10, [3, 7]).to_dict()
    d["outputs"].update(outputs)
    return d


BAD_CONFIDENCE = [
    ("negative count", _wire(confidence=[-1, 7])),
    ("float count", _wire(confidence=[3.0, 7])),
    ("bool count", _wire(confidence=[True, 7])),
    ("more than rows", _wire(confidence=[4, 7])),
    ("not a list", _wire(confidence="3,7")),
    ("empty", _wire(confidence=[])),
    ("too many bins", _wire(confidence=[0] * 257)),
    ("on a score histogram", _wire(kind="scores")),
]


@pytest.mark.parametrize(("why", "wire"), BAD_CONFIDENCE, ids=[w for w, _ in BAD_CONFIDENCE])
def test_bad_confidence_counts_are_refused(why: str, wire: dict[str, Any]) -> None:
    with pytest.raises(DriftError):
        DriftSketch.from_dict(wire)
    body = {"seq": 1, "model": "m", "version": 1, "sketch": wire}
    raw = json.dumps({"v": 1, "type": "drift", "id": "x", "ts": 1.0, "body": body})
    with pytest.raises(protocol.ProtocolError) as e:
        protocol.decode(raw.encode(), expect=frozenset({"drift"}))
    assert e.value.reason == "bad_body", why


def test_the_field_is_optional_on_the_wire() -> None:
    with_counts = sketch(10, [3, 7])
    assert with_counts.to_dict()["outputs"]["confidence"] == [3, 7]
    assert DriftSketch.from_dict(with_counts.to_dict()).confidence.tolist() == [3, 7]  # type: ignore[union-attr]
    older = with_counts.to_dict()
    del older["outputs"]["confidence"]  # what an older agent sends
    assert DriftSketch.from_dict(older).confidence is None
    assert "confidence" not in sketch(10, None).to_dict()["outputs"]


confidences = st.one_of(st.none(), st.lists(st.integers(0, 50), min_size=2, max_size=2))


@settings(max_examples=60, deadline=None)
@given(st.lists(confidences, min_size=1, max_size=6), st.randoms(use_true_random=False))
def test_confidence_counts_merge_by_adding_in_any_order(
    parts: list[list[int] | None], rnd: Any
) -> None:
    sketches = [sketch(sum(c) if c else 5, c) for c in parts]
    merged = merge_all(sketches)
    shuffled = list(sketches)
    rnd.shuffle(shuffled)
    again = merge_all(shuffled)
    present = [c for c in parts if c is not None]
    if not present:
        assert merged.confidence is None and again.confidence is None
        return
    want = np.sum(present, axis=0).tolist()
    assert merged.confidence is not None and merged.confidence.tolist() == want
    assert again.confidence is not None and again.confidence.tolist() == want
    left = sketches[0].merge(merge_all(sketches[1:])) if len(sketches) > 1 else sketches[0]
    assert left.confidence is not None and left.confidence.tolist() == want


def test_counts_on_other_bins_neither_merge_nor_fit(baseline: dict[str, Any]) -> None:
    with pytest.raises(DriftError):
        sketch(10, [3, 7]).merge(sketch(10, [1, 2, 7]))
    layout = Baseline.from_manifest(baseline)
    good = layout.empty_sketch()
    assert good.fits(layout) and good.confidence is not None
    bad = DriftSketch(**{**good.__dict__, "confidence": np.zeros(3, dtype=np.int64)})
    assert not bad.fits(layout)
    old = copy.deepcopy(baseline)
    del old["outputs"]["calibration"]
    assert not good.fits(Baseline.from_manifest(old))  # counts the baseline has no bins for
    assert DriftSketch(**{**good.__dict__, "confidence": None}).fits(layout)  # an older agent
