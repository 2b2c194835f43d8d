"""Drift sketches (shared/drift.py) and the agent's recorder (agent/drift.py): the merge
algebra, PSI/JS against raw rows binned with numpy, the wire form and its validation,
and the drift message the agent core publishes at window close."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from models import make_conv_onnx  # tests/models.py

from agent.core import AgentCore, CoreConfig
from agent.drift import DriftRecorder
from agent.events import Publish, Tick
from agent.predictor import Predictor
from agent.runtime import OnnxBackend
from agent.telemetry import InferenceStats
from hub.ml.pipeline import baseline_stats
from shared import protocol
from shared.drift import (
    OUTPUTS,
    PSI_EPSILON,
    Baseline,
    DriftError,
    DriftSketch,
    js,
    merge_all,
    psi,
    score_sketch,
)
from shared.sensors import CLASSES, FEATURES, Shift, generate

BINS = 10


def make_baseline(seed: int = 0) -> dict[str, Any]:
    x, y = generate(4000, seed=seed)
    probs = np.eye(len(CLASSES))[y] * 0.9 + 0.025  # a model that predicts the label
    return baseline_stats(x, probs, BINS)


BASELINE = make_baseline()
LAYOUT = Baseline.from_manifest(BASELINE)


def sketch_of(x: np.ndarray, labels: np.ndarray, *, batch: int = 7) -> DriftSketch:
    """The agent's recorder fed ``x`` in batches (as the Predictor calls it)."""
    rec = DriftRecorder()
    rec.activate("m", 1, BASELINE)
    for i in range(0, len(x), batch):
        rec.observe("m", 1, x[i : i + batch], {"label": labels[i : i + batch]})
    drained = rec.drain()
    return drained.sketch if drained is not None else LAYOUT.empty_sketch()


def raw_counts(col: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """numpy.histogram's bins plus underflow and overflow: the reference binning."""
    inside, _ = np.histogram(col, bins=edges)
    return np.concatenate(([np.sum(col < edges[0])], inside, [np.sum(col > edges[-1])]))


def ref_psi(e: np.ndarray, counts: np.ndarray) -> float:
    o = counts / counts.sum()
    e, o = np.clip(e, PSI_EPSILON, None), np.clip(o, PSI_EPSILON, None)
    return float(((o - e) * np.log(o / e)).sum())


def ref_js(p: np.ndarray, counts: np.ndarray) -> float:
    """Jensen-Shannon distance, base 2 (as scipy.spatial.distance.jensenshannon)."""
    q = counts / counts.sum()
    m = (p + q) / 2

    def kl(a: np.ndarray) -> float:
        nz = a > 0
        return float((a[nz] * np.log2(a[nz] / m[nz])).sum())

    return math.sqrt((kl(p) + kl(q)) / 2)


rows_strategy = st.builds(
    lambda n, seed, scale: generate(n, seed=seed, shift=Shift(scale=(scale,) * len(FEATURES))),
    st.integers(0, 40),
    st.integers(0, 2**16),
    st.sampled_from([1.0, 1.3, 0.5]),
)


def close(a: DriftSketch, b: DriftSketch) -> None:
    assert a.rows == b.rows
    for ca, cb in zip(a.counts, b.counts, strict=True):
        assert np.array_equal(ca, cb)
    assert np.array_equal(a.n, b.n)
    assert np.array_equal(a.output_counts, b.output_counts)
    np.testing.assert_allclose(a.mean, b.mean, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(a.m2, b.m2, rtol=1e-7, atol=1e-6)


@settings(max_examples=40, deadline=None)
@given(rows_strategy, rows_strategy, rows_strategy)
def test_merge_is_associative_and_commutative(
    a: tuple[np.ndarray, np.ndarray],
    b: tuple[np.ndarray, np.ndarray],
    c: tuple[np.ndarray, np.ndarray],
) -> None:
    sa, sb, sc = (sketch_of(*r) for r in (a, b, c))
    close(sa.merge(sb), sb.merge(sa))
    close(sa.merge(sb).merge(sc), sa.merge(sb.merge(sc)))
    close(sa.merge(LAYOUT.empty_sketch()), sa)


@settings(max_examples=25, deadline=None)
@given(st.lists(rows_strategy, min_size=1, max_size=5))
def test_psi_and_js_of_merged_sketches_equal_those_of_the_raw_rows(
    parts: list[tuple[np.ndarray, np.ndarray]],
) -> None:
    x = np.concatenate([p[0] for p in parts])
    y = np.concatenate([p[1] for p in parts])
    if len(x) == 0:
        return
    merged = merge_all([sketch_of(*p) for p in parts])
    scores = score_sketch(LAYOUT, merged)
    for j, name in enumerate(FEATURES):
        f = BASELINE["features"][j]
        edges = np.asarray(f["edges"])
        counts = raw_counts(x[:, j], edges)
        assert np.array_equal(merged.counts[j], counts), name
        e = np.concatenate(([0.0], f["hist"], [0.0]))
        assert scores[name].psi == pytest.approx(ref_psi(e, counts), rel=1e-9, abs=1e-12)
        assert scores[name].js == pytest.approx(ref_js(e, counts), rel=1e-9, abs=1e-12)
    np.testing.assert_allclose(merged.mean, x.astype(np.float64).mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(merged.std(), x.astype(np.float64).std(axis=0), rtol=1e-5)
    out = np.bincount(y, minlength=len(CLASSES))
    ref = np.asarray(BASELINE["outputs"]["hist"])
    assert scores[OUTPUTS].psi == pytest.approx(ref_psi(ref, out), rel=1e-9)
    assert scores[OUTPUTS].js == pytest.approx(ref_js(ref, out), rel=1e-9)


def test_stationary_rows_score_low_and_shifted_rows_high() -> None:
    x, y = generate(3000, seed=99)
    same = score_sketch(LAYOUT, sketch_of(x, y))
    assert max(s.psi for s in same.values()) < 0.1
    assert max(s.js for s in same.values()) < 0.1
    xs, ys = generate(3000, seed=99, shift=Shift(offset=(0.0,) * 11 + (15.0,) + (0.0,) * 4))
    shifted = score_sketch(LAYOUT, sketch_of(xs, ys))
    assert shifted["temp_c"].psi > 1.0 and shifted["temp_c"].js > 0.5
    assert shifted["rms_g"].psi < 0.1  # only the shifted feature moved


def test_psi_and_js_bounds() -> None:
    e = np.array([0.0, 0.5, 0.5, 0.0])
    assert psi(e, [0, 50, 50, 0]) == pytest.approx(0.0)
    assert js(e, [0, 50, 50, 0]) == pytest.approx(0.0)
    assert js(e, [100, 0, 0, 0]) == pytest.approx(1.0)  # disjoint support: the maximum
    assert psi(e, [100, 0, 0, 0]) == pytest.approx(
        (1 - PSI_EPSILON) * math.log(1 / PSI_EPSILON)
        + 2 * (PSI_EPSILON - 0.5) * math.log(PSI_EPSILON / 0.5)
    )
    with pytest.raises(DriftError):
        psi(e, [0, 0, 0, 0])
    with pytest.raises(DriftError):
        js(e, [1, 2, 3])


def test_wire_round_trip_through_a_drift_message() -> None:
    x, y = generate(500, seed=3)
    x[0, 2] = np.nan  # a NaN lands in underflow and stays out of the moments
    x[1, 3] = np.inf
    s = sketch_of(x, y)
    assert s.counts[2][0] >= 1 and s.n[2] == len(x) - 1 and s.n[3] == len(x) - 1
    assert np.isfinite(s.mean).all()
    body = {"seq": 4, "model": "m", "version": 1, "sketch": s.to_dict()}
    msg = protocol.decode(protocol.encode("drift", body, ts=1.0), expect=frozenset({"drift"}))
    back = DriftSketch.from_dict(msg.body["sketch"])
    close(back, s)
    assert back.to_dict() == s.to_dict()


def _bad(**change: Any) -> dict[str, Any]:
    d = sketch_of(*generate(30, seed=1)).to_dict()
    d = json.loads(json.dumps(d))
    for path, value in change.items():
        node: Any = d
        keys = path.split("__")
        for k in keys[:-1]:
            node = node[int(k)] if k.isdigit() else node[k]
        last = keys[-1]
        node[int(last) if last.isdigit() else last] = value
    return d


@pytest.mark.parametrize(
    ("sketch", "why"),
    [
        ([], "not an object"),
        (_bad(rows=-1), "negative rows"),
        (_bad(rows=True), "bool rows"),
        (_bad(rows=31), "counts do not add up to rows"),
        (_bad(features=[]), "no features"),
        (_bad(features__0__counts__1=-1), "negative count"),
        (_bad(features__0__counts__1=1.5), "float count"),
        (_bad(features__0__counts=[30]), "too few bins"),
        (_bad(features__0__counts=[0] * 300), "too many bins"),
        (_bad(features__0__mean=float("nan")), "NaN mean"),
        (_bad(features__0__m2=-1.0), "negative M2"),
        (_bad(features__0__n=31), "n beyond rows"),
        (_bad(outputs__kind="labels"), "unknown output kind"),
        (_bad(outputs__counts=[30, 30, 0, 0]), "more outputs than rows"),
        (_bad(features=[{"counts": [30, 0, 0]}] * 2000), "too many features"),
    ],
)
def test_validation_refuses_bad_sketches(sketch: Any, why: str) -> None:
    with pytest.raises(DriftError):
        DriftSketch.from_dict(sketch)
    body = {"seq": 1, "model": "m", "version": 1, "sketch": sketch}
    raw = json.dumps({"v": 1, "type": "drift", "id": "x", "ts": 1.0, "body": body})
    with pytest.raises(protocol.ProtocolError) as e:
        protocol.decode(raw.encode(), expect=frozenset({"drift"}))
    assert e.value.reason == "bad_body", why


def test_sketches_of_other_layouts_do_not_merge() -> None:
    other = Baseline.from_manifest(baseline_stats(*_x_probs(), 5))
    with pytest.raises(DriftError):
        LAYOUT.empty_sketch().merge(other.empty_sketch())
    with pytest.raises(DriftError):
        score_sketch(LAYOUT, other.empty_sketch())


def _x_probs() -> tuple[np.ndarray, np.ndarray]:
    x, y = generate(200, seed=5)
    return x, np.eye(len(CLASSES))[y]


def test_recorder_ignores_other_versions_and_drains_once() -> None:
    rec = DriftRecorder()
    x, y = generate(20, seed=2)
    rec.observe("m", 1, x, {"label": y})  # nothing active yet
    assert rec.drain() is None
    rec.activate("m", 1, BASELINE)
    rec.observe("m", 2, x, {"label": y})  # a call that raced a swap
    rec.observe("m", 1, x, {"probabilities": np.eye(len(CLASSES))[y].astype(np.float32)})
    got = rec.drain()
    assert got is not None and got.sketch.rows == 20
    assert np.array_equal(got.sketch.output_counts, np.bincount(y, minlength=len(CLASSES)))
    assert rec.drain() is None
    rec.activate("m", 3, {"features": "junk"})  # an unusable baseline: sketching off
    rec.observe("m", 3, x, {"label": y})
    assert rec.drain() is None


def test_core_publishes_one_drift_message_per_window_with_the_telemetry_seq() -> None:
    # "m" installed, as a saved state has it: a window (and a drift message) per model
    fresh = AgentCore(CoreConfig("dev-1", "rpi4")).state
    installed = {**fresh, "models": {"m": {"version": 1, "versions": [1], "files": {}}}}
    # heartbeat_s=0: every window sent, the empty one at the end too (idle ones coalesce
    # by default, ADR 0034)
    core = AgentCore(CoreConfig("dev-1", "rpi4", window_s=10.0, heartbeat_s=0), installed)
    rec = DriftRecorder()
    rec.activate("m", 1, BASELINE)
    x, y = generate(30, seed=8)
    published: list[Publish] = []
    for t, part in ((0.0, slice(0, 10)), (5.0, slice(10, 30))):
        rec.observe("m", 1, x[part], {"label": y[part]})
        published += [
            a
            for a in core.handle(Tick(t, InferenceStats(), drift=rec.drain()))
            if isinstance(a, Publish)
        ]
    assert published == []
    acts = core.handle(Tick(10.0, InferenceStats(), drift=rec.drain()))
    pubs = {
        a.topic.rsplit("/", 1)[-1]: json.loads(a.payload) for a in acts if isinstance(a, Publish)
    }
    assert set(pubs) == {"telemetry", "drift"}
    drift = pubs["drift"]["body"]
    assert drift["seq"] == pubs["telemetry"]["body"]["seq"]
    assert (drift["model"], drift["version"], drift["sketch"]["rows"]) == ("m", 1, 30)
    close(DriftSketch.from_dict(drift["sketch"]), sketch_of(x, y))
    # a window without rows publishes telemetry only
    acts = core.handle(Tick(20.0, InferenceStats(), drift=rec.drain()))
    assert [a.topic.rsplit("/", 1)[-1] for a in acts if isinstance(a, Publish)] == ["telemetry"]


# ------------------------------------------------------------ images, windows, regressors


def flat_baseline(
    x: np.ndarray, *, bins: int = 6, value: np.ndarray | None = None
) -> dict[str, Any]:
    """A baseline as the hub makes one for an image or window model: per flattened value
    (n_feat = H*W*C), and for a regressor a ``scores`` histogram of ``value``."""
    flat = x.reshape(len(x), -1)
    features = []
    for j in range(flat.shape[1]):
        edges = np.unique(np.quantile(flat[:, j], np.linspace(0, 1, bins + 1)))
        hist, _ = np.histogram(flat[:, j], bins=edges)
        features.append(
            {"name": f"v{j}", "edges": edges.tolist(), "hist": (hist / len(flat)).tolist()}
        )
    if value is None:
        return {
            "features": features,
            "outputs": {"classes": ["a", "b", "c"], "hist": [0.4, 0.3, 0.3]},
        }
    edges = np.quantile(value, np.linspace(0, 1, bins + 1))
    hist, _ = np.histogram(value, bins=edges)
    outputs = {"edges": edges.tolist(), "hist": (hist / len(value)).tolist()}
    return {"features": features, "outputs": outputs}


def test_image_rows_are_flattened_to_the_baselines_features() -> None:
    session = OnnxBackend().load_bytes(make_conv_onnx((4, 4, 2)))
    rng = np.random.default_rng(6)
    reference = rng.normal(size=(500, 4, 4, 2)).astype(np.float32)
    p = Predictor()
    p.swap(session, "img", 1)
    rec = DriftRecorder()
    rec.activate("img", 1, flat_baseline(reference))
    p.add_observer(rec)
    live = rng.normal(size=(300, 4, 4, 2)).astype(np.float32)
    for i in range(0, 300, 25):
        p.predict(live[i : i + 25])
    p.predict(live[0])  # one row: the batch axis is added, then flattened
    got = rec.drain()
    assert got is not None and got.sketch.rows == 301 and rec.mismatched_rows == 0
    layout = Baseline.from_manifest(flat_baseline(reference))
    flat = np.concatenate([live, live[:1]]).reshape(301, -1)
    for j in (0, 13, 31):  # every flattened value is its own feature
        assert np.array_equal(got.sketch.counts[j], raw_counts(flat[:, j], layout.edges[j]))
    labels = session.run(np.concatenate([live, live[:1]]))[0]
    assert np.array_equal(got.sketch.output_counts, np.bincount(labels, minlength=3))


def test_rows_of_another_width_are_counted_not_dropped_silently(
    caplog: pytest.LogCaptureFixture,
) -> None:
    rng = np.random.default_rng(7)
    rec = DriftRecorder()
    rec.activate("img", 1, flat_baseline(rng.normal(size=(200, 4, 4)).astype(np.float32)))
    wrong = rng.normal(size=(10, 5, 5)).astype(np.float32)  # 25 values, the baseline has 16
    with caplog.at_level("WARNING", logger="agent.drift"):
        rec.observe("img", 1, wrong, {"label": np.zeros(10, dtype=np.int64)})
        rec.observe("img", 1, wrong[:3], {"label": np.zeros(3, dtype=np.int64)})
    assert rec.mismatched_rows == 13
    assert rec.drain() is None  # nothing sketched
    assert len([r for r in caplog.records if "mismatched_rows" in r.getMessage()]) == 1


def test_a_regressors_value_is_sketched_on_the_baselines_score_edges() -> None:
    session = OnnxBackend().load_bytes(make_conv_onnx((12, 3), task="regression", window=True))
    rng = np.random.default_rng(8)
    reference = rng.normal(size=(400, 12, 3)).astype(np.float32)
    baseline = flat_baseline(reference, value=session.run(reference)[0][:, 0])
    layout = Baseline.from_manifest(baseline)
    assert layout.output_kind == "scores"
    p = Predictor()
    p.swap(session, "load", 1)
    rec = DriftRecorder()
    rec.activate("load", 1, baseline)
    p.add_observer(rec)
    live = rng.normal(0.3, 1.2, size=(260, 12, 3)).astype(np.float32)  # some fall outside
    for i in range(0, 260, 20):
        p.predict(live[i : i + 20])
    got = rec.drain()
    assert got is not None and got.sketch.output_kind == "scores"
    value = session.run(live)[0][:, 0].astype(np.float64)
    assert np.array_equal(got.sketch.output_counts, raw_counts(value, layout.output_edges))
    assert got.sketch.output_counts[0] + got.sketch.output_counts[-1] > 0  # under/overflow seen
    assert rec.skipped_outputs == 0
    # and the sketch travels: a drift message the hub accepts, scored against the baseline
    body = {"seq": 1, "model": "load", "version": 1, "sketch": got.sketch.to_dict()}
    decoded = protocol.decode(protocol.encode("drift", body, ts=1.0))
    scores = score_sketch(layout, DriftSketch.from_dict(decoded.body["sketch"]))
    assert scores[OUTPUTS].psi > 0
