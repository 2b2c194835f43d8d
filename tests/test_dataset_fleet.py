"""From the operator's file to the fleet: ``edgefleet demo --dataset`` end to end.

Each test runs the real path on a private Mosquitto: the hub (API, SQLite, registry,
TUF) takes the upload, trains, quantises, gates and signs the model in its job thread,
rolls it out to simulated devices running the real agent code, and the devices infer on
the file's hold-out rows and report true labels, 30% of them later by prediction id. The
tests assert what the operator reads: the upload's schema, the figures and gates, the
version the devices run, and live accuracy (or MAE) from ``GET /telemetry/performance``.

Why the live figure must be the hold-out figure: every device plays each hold-out row
exactly once (simulator/rows.py deals whole passes) on the same int8 file that judged it,
in the same onnxruntime, and the hub counts a label for the version that predicted, once
it arrived. So all ``devices x rows`` labels must reach the hub, and the figure must be
the hold-out's; the tolerance is what changes with the batch alone (the devices infer 5
rows at a time, the hub the whole hold-out at once, and onnxruntime's kernels may round
the last bit differently): one row's worth of accuracy, 1e-4 of a MAE (float32 outputs).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer, load_diabetes

from edgefleet.demo import DemoOptions
from edgefleet.demo_data import DataOptions, run_dataset_demo
from hub.ml.data.samples import digits_images, write_npz
from hub.transport.broker import Mosquitto

pytestmark = [pytest.mark.broker, pytest.mark.slow]

DEVICES = 3
LATE_SHARE = 0.3


def write_csv(path: Path, x: np.ndarray, y: Any, names: list[str], label: str) -> Path:
    header = ",".join([*names, label])
    rows = [",".join([*(f"{v:.6g}" for v in r), str(t)]) for r, t in zip(x, y, strict=True)]
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def run(broker: Mosquitto, tmp_path: Path, data: DataOptions) -> tuple[dict[str, Any], str]:
    """The demo on ``data`` with a few devices and short windows; its summary and output."""
    lines: list[str] = []
    opts = DemoOptions(
        devices=DEVICES,
        broker_url=broker.address.url,
        work_dir=tmp_path / "demo",
        infer_s=3.0,  # one pass over the hold-out in about 3 s
        probation_s=1.0,
        probation_min_inferences=3,
    )
    data = DataOptions(
        data.file,
        data.label,
        data.task,
        data.kind,
        late_share=LATE_SHARE,
        late_after_s=1.0,
        window_s=1.0,
    )
    summary = run_dataset_demo(opts, data, say=lines.append)
    return summary, "\n".join(lines)


def check_fleet(summary: dict[str, Any], name: str) -> dict[str, Any]:
    """The devices run the version trained here, all their labels reached the hub, part
    of them late; the performance entry of that version."""
    model, fleet, perf = summary["model"], summary["fleet"], summary["performance"]
    assert model["name"] == name and model["version"] == 1
    assert fleet["versions"] == {f"{name}:1": DEVICES} and summary["running"] == DEVICES
    holdout = model["metrics"]["int8"]["rows"]
    assert summary["rows_played"] == holdout
    # Each device labelled every hold-out row once: at once or later, none lost.
    assert fleet["labelled"] == DEVICES * holdout == fleet["labelled_at_hub"]
    assert fleet["unmatched_labels"] == 0 and fleet["late_refused"] == 0
    assert fleet["late_joined"] == fleet["late_labels"]
    # The late share is a seeded draw per row: within 4 binomial sd of 30%.
    n = fleet["labelled"]
    assert abs(fleet["late_joined"] / n - LATE_SHARE) < 4 * (LATE_SHARE * 0.7 / n) ** 0.5
    [version] = perf["versions"]
    assert version["version"] == 1 and version["devices"] == DEVICES
    assert version["labelled"] == n  # the late labels are in the hub's count
    return dict(version)


def test_a_classifier_from_a_csv_of_named_classes(
    private_mosquitto: Mosquitto, tmp_path: Path
) -> None:
    data = load_breast_cancer()
    names = [f.replace(" ", "_") for f in data.feature_names]
    # malignant is 0 in scikit-learn's order; the hub sorts the names: benign is 0.
    diagnosis = [str(data.target_names[t]) for t in data.target]
    path = write_csv(tmp_path / "cancer.csv", data.data, diagnosis, names, "diagnosis")
    summary, out = run(private_mosquitto, tmp_path, DataOptions(path, label="diagnosis"))

    assert "569 rows, tabular [30], task classification (inferred), label 'diagnosis'" in out
    assert "2 classes: benign, malignant" in out
    assert "gate int8_loss  pass" in out
    live = check_fleet(summary, "cancer")
    int8 = summary["model"]["metrics"]["int8"]
    assert 0.9 < int8["accuracy"] < 1.0  # a figure with errors in it, not a trivial 1.0
    assert abs(live["accuracy"] - int8["accuracy"]) <= 1 / int8["rows"]
    assert f"accuracy {live['accuracy']:.4f} ({live['correct']:,}/{live['labelled']:,})" in out
    assert f"hold-out int8: accuracy {int8['accuracy']:.4f}" in out
    assert f"rollout   {summary['rollout']['id']}  completed  {{'healthy': {DEVICES}}}" in out
    assert f"running on {DEVICES} device(s)" in out


def test_a_regressor_from_a_csv_with_live_mae(private_mosquitto: Mosquitto, tmp_path: Path) -> None:
    data = load_diabetes()
    path = write_csv(
        tmp_path / "diabetes.csv", data.data, data.target, list(data.feature_names), "progression"
    )
    summary, out = run(private_mosquitto, tmp_path, DataOptions(path, label="progression"))

    assert "442 rows, tabular [10], task regression (inferred), label 'progression'" in out
    live = check_fleet(summary, "diabetes")
    int8 = summary["model"]["metrics"]["int8"]
    assert live["task"] == "regression" and "accuracy" not in live
    assert live["mae"] == pytest.approx(int8["mae"], rel=1e-4)
    assert live["rmse"] == pytest.approx(int8["rmse"], rel=1e-4)
    assert f"MAE {live['mae']:.4f}  RMSE {live['rmse']:.4f}" in out
    assert "gate int8_loss  pass  MAE" in out


def test_a_conv_net_on_an_image_npz(private_mosquitto: Mosquitto, tmp_path: Path) -> None:
    x, y = digits_images(1, size=16)
    path = write_npz(tmp_path / "digits.npz", x, y)
    summary, out = run(private_mosquitto, tmp_path, DataOptions(path, kind="cnn"))

    assert "1797 rows, image [16x16], task classification (inferred), label 'y'" in out
    assert "digits v1 (classification, cnn) signed" in out
    live = check_fleet(summary, "digits")
    int8 = summary["model"]["metrics"]["int8"]
    assert int8["accuracy"] > 0.95
    assert abs(live["accuracy"] - int8["accuracy"]) <= 1 / int8["rows"]
