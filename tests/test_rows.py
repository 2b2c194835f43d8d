"""Dataset rows for simulated devices (simulator/rows.py) and the application that plays
them (simulator/player.py): read as the hub reads the same file, refused with one line
naming the fault, dealt in seeded passes, and labelled at once or later on a real
Predictor with real onnxruntime sessions."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from models import make_mlp_onnx, make_regressor_onnx  # tests/models.py

from agent.predictor import Predictor
from agent.runtime import ModelSession, OnnxBackend
from hub.ml.data.files import guess_format, read_dataset
from shared.sensors import CLASSES, FEATURES, generate
from simulator.player import RowPlayer, Tally
from simulator.rows import RowDeck, RowsError, RowSource, load_rows


def write_csv(path: Path, x: np.ndarray, labels: list[str], label: str = "label") -> Path:
    header = ",".join([*(f"f{i}" for i in range(x.shape[1])), label])
    lines = [",".join([*(f"{v:.6g}" for v in r), t]) for r, t in zip(x, labels, strict=True)]
    path.write_text("\n".join([header, *lines]) + "\n")
    return path


# ------------------------------------------------------------------ reading, as the hub does

X12 = np.arange(24, dtype=np.float32).reshape(12, 2) / 7


@pytest.mark.parametrize(
    "labels",
    [
        ["wear", "normal", "imbalance"] * 4,  # text: the hub sorts class names
        ["10", "9", "2"] * 4,  # integers: sorted as numbers, named as written
        ["1.0", "2", "3.0"] * 4,  # integral floats name "1", "2", "3"
        ["0.5", "1.5", "2.5"] * 4,  # fractional classes
        ["true", "false", "True"] * 4,  # text that pyarrow could read as bools
    ],
)
def test_a_csv_is_read_as_the_hub_reads_it(tmp_path: Path, labels: list[str]) -> None:
    path = write_csv(tmp_path / "d.csv", X12, labels)
    ours = load_rows(path, "label")
    hub = read_dataset(path, "csv", label="label", task="classification")
    np.testing.assert_array_equal(ours.x, hub.x)
    theirs = np.asarray(hub.schema["classes"])[hub.y]
    assert ours.class_names().tolist() == theirs.tolist()


@pytest.mark.parametrize(
    "y",
    [
        np.array([3, 1, 2] * 4),
        np.array(["b", "a", "c"] * 4),
        np.array([True, False, True] * 4),
        np.array([1.0, 2.0, 4.0] * 4, dtype=np.float32),
    ],
    ids=["int", "str", "bool", "float"],
)
def test_an_npz_is_read_as_the_hub_reads_it(tmp_path: Path, y: np.ndarray) -> None:
    path = tmp_path / "d.npz"
    x = np.random.default_rng(0).normal(size=(12, 4, 4)).astype(np.float32)
    np.savez(path, x=x, y=y)
    ours = load_rows(path)
    hub = read_dataset(path, guess_format(path.name, path.read_bytes()[:8]), task="classification")
    assert ours.row_shape == (4, 4) and hub.schema["row_shape"] == [4, 4]
    np.testing.assert_array_equal(ours.x, hub.x)
    theirs = np.asarray(hub.schema["classes"])[hub.y]
    assert ours.class_names().tolist() == theirs.tolist()


def test_a_regression_target_stays_a_number(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "r.csv", X12, [f"{v / 3:.4f}" for v in range(12)], "target")
    rows = load_rows(path, "target")
    assert not rows.text_labels and rows.labels.dtype == np.float64
    assert rows.labels[4] == pytest.approx(1.3333)
    assert rows.describe().startswith("12 rows [2] of r.csv, label 'target': values 0..3.667")


BAD_CSV = [
    # (file text, label column, what the one line says)
    ("a,b,y\n1,2,x\n", "z", "there is no column 'z'; the columns are 'a', 'b', 'y'"),
    ("a,b,y\n1,2,x\n1,n/a,y\n", "y", "column 'b' row 2: 'n/a' is not a number"),
    ("a,b,y\n1,2,x\n1,,y\n", "y", "column 'b' row 2: '' is empty (a missing value)"),
    ("a,b,y\n1,2,x\n1,inf,y\n", "y", "column 'b' row 2: 'inf' is not finite"),
    ("a,b,y\n1,2,x\n1,2\n", "y", "row 2 has 2 values where the header has 3"),
    ("a,b,y\n1,2,x\n1,2,\n", "y", "column 'y' row 2: the label is missing"),
    ("a,b,y\n", "y", "the file has no rows"),
    ("", "y", "the file is empty"),
    ("y\nx\n", "y", "no feature columns besides the label 'y'"),
]


@pytest.mark.parametrize(("text", "label", "says"), BAD_CSV)
def test_a_bad_csv_is_refused_in_one_line(tmp_path: Path, text: str, label: str, says: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(RowsError) as caught:
        load_rows(path, label)
    assert str(caught.value) == f"bad.csv: {says}"


def test_bad_npz_files_and_paths_are_refused_in_one_line(tmp_path: Path) -> None:
    np.savez(tmp_path / "nox.npz", y=np.arange(3))
    np.savez(tmp_path / "short.npz", x=np.zeros((3, 2)), y=np.arange(2))
    np.savez(tmp_path / "nan.npz", x=np.array([[0.0, 1.0], [np.nan, 0.0]]), y=np.arange(2))
    np.savez(tmp_path / "obj.npz", x=np.zeros((2, 2)), y=np.array([{}, {}], dtype=object))
    (tmp_path / "broken.npz").write_bytes(b"PK\x03\x04 not a zip")
    cases = {
        "nox.npz": "nox.npz: no array 'x' (it holds 'y')",
        "short.npz": "short.npz: y has shape [2]; x has 3 rows",
        "nan.npz": "nan.npz: x[1] holds a value that is not finite",
        "obj.npz": "obj.npz: holds Python objects, which are never loaded",
        "broken.npz": "broken.npz: not a readable npz file",
        "missing.csv": "missing.csv: cannot read: No such file or directory",
    }
    for name, says in cases.items():
        with pytest.raises(RowsError) as caught:
            load_rows(tmp_path / name, "label" if name.endswith(".csv") else None)
        assert str(caught.value).removeprefix(f"{tmp_path}/").startswith(says), name
    with pytest.raises(RowsError, match="name the label column of a CSV"):
        load_rows(write_csv(tmp_path / "ok.csv", X12, ["a", "b"] * 6))


def test_a_deck_deals_every_row_once_a_pass_in_an_order_of_its_own() -> None:
    deck = RowDeck(10, seed=3, passes=2)
    dealt = []
    while not deck.finished:
        idx = deck.peek(4)  # 4, 4, 2: a batch never spans two passes
        dealt.append(idx.tolist())
        deck.advance(len(idx))
    assert [len(b) for b in dealt] == [4, 4, 2, 4, 4, 2]
    first = [i for b in dealt[:3] for i in b]
    second = [i for b in dealt[3:] for i in b]
    assert sorted(first) == sorted(second) == list(range(10)) and first != second
    assert deck.peek(4).size == 0
    again = RowDeck(10, seed=3, passes=2)
    assert again.peek(4).tolist() == dealt[0]  # the same seed, the same order
    assert RowDeck(10, seed=4).peek(10).tolist() != first


# ------------------------------------------------------------------ playing on a Predictor


class Later:
    """What the device's loop does with ``call_later``: keeps the calls, runs them when
    told (the time itself does not matter here)."""

    def __init__(self) -> None:
        self.calls: list[tuple[float, Callable[[], None]]] = []

    def __call__(self, delay_s: float, fn: Callable[[], None]) -> None:
        self.calls.append((delay_s, fn))

    def run(self) -> None:
        calls, self.calls = self.calls, []
        for _, fn in calls:
            fn()


@pytest.fixture(scope="module")
def mlp() -> ModelSession:
    return OnnxBackend().load_bytes(make_mlp_onnx(hidden=(16,), n=500))


def sensor_rows(n: int, seed: int) -> tuple[RowSource, np.ndarray]:
    x, y = generate(n, seed=seed)
    return RowSource(x, np.asarray(CLASSES)[y], "sensors", "condition"), y


def play_all(player: RowPlayer, predictor: Predictor, later: Later, batch: int = 5) -> None:
    while not player.finished:
        player.play(predictor, batch)
    later.run()


def test_labels_come_at_once_and_later_and_count_for_the_version(mlp: ModelSession) -> None:
    source, y = sensor_rows(200, seed=21)
    predictor = Predictor()
    predictor.swap(mlp, "vib", 3, tuple(sorted(CLASSES)))  # as the hub names them: sorted
    later, tally = Later(), Tally()
    player = RowPlayer(source, 7, tally, lambda: predictor, later, passes=2, late_share=0.3)
    play_all(player, predictor, later)

    assert all(delay == 2.0 for delay, _ in later.calls) and not later.calls
    assert tally.inferences == tally.labelled == 400 and tally.unmatched == 0
    assert tally.late == tally.late_joined and tally.late_refused == 0
    assert 0.3 * 400 - 40 < tally.late < 0.3 * 400 + 40  # a seeded draw per row, p = 0.3
    # The device's right answers are the model's on these rows, twice over.
    index = {c: i for i, c in enumerate(sorted(CLASSES))}
    truth = np.array([index[c] for c in np.asarray(CLASSES)[y]])
    right = int(np.count_nonzero(predictor.predict(source.x)["label"] == truth))
    assert tally.correct == 2 * right
    # The agent's window holds them all, for the version that predicted them.
    stats = predictor.recorder.drain().versions[("vib", 3)]
    assert (stats.labelled, stats.correct) == (400, 2 * right)


def test_a_regressor_gets_values_and_error_sums(tmp_path: Path) -> None:
    session = OnnxBackend().load_bytes(make_regressor_onnx())
    x, _ = generate(50, seed=5)
    target = np.linspace(-3, 3, 50)
    source = RowSource(x, target, "r.csv", "target")
    predictor = Predictor()
    predictor.swap(session, "reg", 1)
    later, tally = Later(), Tally()
    player = RowPlayer(source, 1, tally, lambda: predictor, later, passes=1, late_share=0.5)
    play_all(player, predictor, later)

    err = np.abs(predictor.predict(x)["value"][:, 0].astype(np.float64) - target)
    assert tally.labelled == tally.labelled_values == 50 and tally.correct == 0
    assert tally.abs_err_sum == pytest.approx(err.sum(), rel=1e-6)
    assert 0 < tally.late_joined == tally.late < 50
    stats = predictor.recorder.drain().versions[("reg", 1)]
    assert stats.regression and stats.labelled == 50
    assert stats.abs_err_sum == pytest.approx(err.sum(), rel=1e-6)


def test_late_labels_after_a_restart_are_refused_and_unknown_classes_unreported(
    mlp: ModelSession,
) -> None:
    source, _ = sensor_rows(40, seed=8)
    odd = RowSource(source.x, np.where(source.labels == "normal", "nope", source.labels), "s", "c")
    before, after = Predictor(), Predictor()
    for p in (before, after):
        p.swap(mlp, "vib", 1, tuple(sorted(CLASSES)))
    current = [before]
    later, tally = Later(), Tally()
    player = RowPlayer(odd, 2, tally, lambda: current[0], later, passes=1, late_share=1.0)
    while not player.finished:
        player.play(before, 8)
    current[0] = after  # the agent restarted: its table of predictions is new
    later.run()
    unknown = int(np.count_nonzero(odd.labels == "nope"))
    assert tally.unmatched == unknown > 0
    assert tally.late == tally.late_refused == 40 - unknown and tally.labelled == 0
    assert not after.recorder.drain().versions  # nothing counted for anyone


def test_rows_of_the_wrong_shape_are_counted_as_errors_and_not_dealt(mlp: ModelSession) -> None:
    source = RowSource(np.zeros((10, len(FEATURES) + 1), np.float32), np.zeros(10), "w", "y")
    predictor = Predictor()
    predictor.swap(mlp, "vib", 1)
    tally = Tally()
    player = RowPlayer(source, 1, tally, lambda: predictor, Later(), passes=1)
    for _ in range(3):
        player.play(predictor, 5)
    assert (tally.errors, tally.inferences, player.finished) == (3, 0, False)
