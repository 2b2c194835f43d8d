"""How close the estimated accuracy comes to the measured one, per drift scenario.

Confidence-based performance estimation (shared/calibration.py, hub/telemetry/estimates.py)
against the truth, on real parts: a model trained, int8-quantised and calibrated by the
hub's pipeline (hub/ml/pipeline.py ``train``, the default config: 12,000 training and
4,000 hold-out rows of the built-in generator); the agent's ``Predictor`` running it in
onnxruntime with the agent's ``DriftRecorder`` watching, as on a device; rows from one
simulated device's sensor stream (shared/sensors.py ``SensorStream``) drifted from the
first row on as a ``[[drift]]`` table says (simulator/drift.py ``DriftSpec``), labelled
by the generator. Every ``--window`` rows the recorder is drained, as the device does at
each telemetry window, and the sketch goes through its wire form.

Per scenario:

- ``measured``: the rows' accuracy from the device's own label join
  (``Predictor.record_labels``, what its telemetry reports as ``labelled`` / ``correct``).
- ``estimated``: the merged sketches' confidence counts read against the model's
  calibration table (``Calibration.estimate``, the sum the hub's
  ``GET /telemetry/performance`` does).
- ``difference``: estimated - measured.
- ``psi_max``: the largest PSI of a feature (and which) of the merged sketch against the
  baseline: what the hub's drift detector sees of the same rows.

Scenarios: none; the simulator's ``covariate`` kind (a sensor reading scaled or offset:
for the model both P(x) and P(y | x) move, since a reading means something else); an
operating point moved inside and below the training speeds with the same fault
signatures (the ``concept`` kind with ``signatures = {}``: only P(x) moves, the textbook
covariate shift); and the ``concept`` kind of simulator/scenarios/drift.toml (imbalance
and misalignment show each other's signatures: P(y | x) changes).

``--bins N`` recomputes the calibration table on N bins from the same hold-out rows (the
pipeline uses 20), to see how much the choice matters.

Run from the checkout::

    python -m bench cbpe [--rows 20000] [--window 600] [--batch 25] [--seed 1] [--bins 20]
                         [--json]
"""

from __future__ import annotations

import argparse
import json
import platform
from dataclasses import asdict, dataclass
from typing import Any

from agent.drift import DriftRecorder
from agent.predictor import Predictor
from agent.runtime import OnnxBackend
from shared.drift import Baseline, DriftSketch, merge_all, score_sketch
from shared.sensors import SensorStream
from simulator.drift import DriftSpec

MODEL = ("bench-cbpe", 1)

# (name, what it is, the [[drift]] table; None: no drift)
SCENARIOS: list[tuple[str, str, dict[str, Any] | None]] = [
    ("none", "no drift", None),
    (
        "covariate temp_c +12",
        "a temperature sensor reading 12 degrees high",
        {"kind": "covariate", "offset": {"temp_c": 12.0}},
    ),
    (
        "covariate band_1x x1.8",
        "the 1x band reading 1.8 times too high",
        {"kind": "covariate", "scale": {"band_1x": 1.8}},
    ),
    (
        "covariate band_bpfo +0.08",
        "the outer-race bearing band reading high (about one sd)",
        {"kind": "covariate", "offset": {"band_bpfo": 0.08}},
    ),
    (
        "covariate kurtosis +1",
        "kurtosis reading one unit high (about two sd)",
        {"kind": "covariate", "offset": {"kurtosis": 1.0}},
    ),
    (
        "covariate phase_deg +90",
        "the phase reference a quarter turn off",
        {"kind": "covariate", "offset": {"phase_deg": 90.0}},
    ),
    (
        "speed 0.6-1.0 krpm",
        "slower than any training row, same fault signatures: only P(x) moves",
        {"kind": "concept", "speed_krpm": [0.6, 1.0], "signatures": {}},
    ),
    (
        "concept (drift.toml)",
        "4-5 krpm, imbalance and misalignment show each other's signatures",
        {
            "kind": "concept",
            "speed_krpm": [4.0, 5.0],
            "signatures": {"imbalance": "misalignment", "misalignment": "imbalance"},
        },
    ),
]


@dataclass(frozen=True)
class Outcome:
    """One scenario's figures."""

    scenario: str
    kind: str
    rows: int
    measured: float
    estimated: float
    difference: float
    psi_max: float
    psi_feature: str


def build_model() -> Any:
    """The hub's pipeline, default config: the model, its baseline and calibration table."""
    from hub.ml.pipeline import PipelineConfig, train  # bench only: the agent never imports it

    return train(PipelineConfig(name=MODEL[0]))


def rebinned(built: Any, bins: int) -> dict[str, Any]:
    """``built``'s baseline with its calibration table recomputed on ``bins`` bins."""
    from hub.ml.baseline import calibration_table
    from hub.ml.inference import open_session
    from hub.ml.metrics import model_outputs
    from hub.ml.pipeline import PipelineConfig, builtin_dataset

    data = builtin_dataset(PipelineConfig(name=MODEL[0]))
    scores = model_outputs(open_session(built.model_bytes), data.x_holdout, data.task)
    table = calibration_table(scores, data.y_holdout, bins=bins)
    return {**built.baseline, "outputs": {**built.baseline["outputs"], "calibration": table}}


def run_scenario(
    model_bytes: bytes,
    baseline: dict[str, Any],
    table: dict[str, Any] | None,
    *,
    rows: int = 20_000,
    window: int = 600,
    batch: int = 25,
    seed: int = 1,
) -> tuple[float, float, DriftSketch]:
    """One device's stream, drifted as ``table`` says, through the agent's code.

    Returns:
        (measured accuracy, estimated accuracy, the merged sketch)
    """
    layout = Baseline.from_manifest(baseline)
    assert layout.calibration is not None, "the model has no calibration table"
    predictor = Predictor()
    predictor.swap(OnnxBackend().load_bytes(model_bytes), *MODEL)
    recorder = DriftRecorder()
    recorder.activate(*MODEL, baseline)
    predictor.add_observer(recorder)
    stream = SensorStream(seed)
    if table is not None:
        DriftSpec.from_table(table).apply(stream)
    sketches, labelled, correct = [], 0, 0
    done = 0
    while done < rows:
        for _ in range(max(1, min(window, rows - done) // batch)):
            x, y = stream.next(batch)
            predictor.record_labels(predictor.predict(x)["label"], y)
            done += batch
        stats = predictor.recorder.drain()  # the telemetry window's labels
        labelled, correct = labelled + stats.labelled, correct + stats.correct
        drained = recorder.drain()
        if drained is not None:  # the drift window, as it travels
            sketches.append(DriftSketch.from_dict(json.loads(json.dumps(drained.sketch.to_dict()))))
    merged = merge_all(sketches)
    assert merged.confidence is not None
    estimated = layout.calibration.estimate(merged.confidence)
    assert estimated is not None
    return correct / labelled, estimated, merged


def run(args: argparse.Namespace) -> dict[str, Any]:
    built = build_model()
    baseline = built.baseline if args.bins is None else rebinned(built, args.bins)
    layout = Baseline.from_manifest(baseline)
    outcomes = []
    for name, _what, table in SCENARIOS:
        measured, estimated, sketch = run_scenario(
            built.model_bytes,
            baseline,
            table,
            rows=args.rows,
            window=args.window,
            batch=args.batch,
            seed=args.seed,
        )
        scores = score_sketch(layout, sketch)
        feature = max(layout.names, key=lambda f: scores[f].psi)
        outcomes.append(
            Outcome(
                scenario=name,
                kind="none" if table is None else str(table["kind"]),
                rows=sketch.rows,
                measured=round(measured, 4),
                estimated=round(estimated, 4),
                difference=round(estimated - measured, 4),
                psi_max=round(scores[feature].psi, 2),
                psi_feature=feature,
            )
        )
    return {
        "model": {
            "holdout_accuracy_int8": built.accuracy_int8,
            "calibration_rows": sum(baseline["outputs"]["calibration"]["rows"]),
            "calibration_bins": len(baseline["outputs"]["calibration"]["rows"]),
        },
        "rows": args.rows,
        "window": args.window,
        "seed": args.seed,
        "scenarios": [asdict(o) for o in outcomes],
        "python": platform.python_version(),
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench cbpe",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--rows", type=int, default=20_000, help="rows per scenario")
    parser.add_argument("--window", type=int, default=600, help="rows per drift window")
    parser.add_argument("--batch", type=int, default=25, help="rows per predict call")
    parser.add_argument("--seed", type=int, default=1, help="the sensor stream's seed")
    parser.add_argument("--bins", type=int, default=None, help="calibration bins (default 20)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    if args.rows < args.batch or args.window < args.batch or args.batch < 1:
        parser.error("need --rows >= --batch, --window >= --batch, --batch >= 1")
    if args.bins is not None and not 1 <= args.bins <= 256:
        parser.error("need 1 <= --bins <= 256")
    report = run(args)
    if args.json:
        print(json.dumps(report))
        return 0
    model = report["model"]
    print(
        f"model: int8 hold-out accuracy {model['holdout_accuracy_int8']:.4f},"
        f" calibration table of {model['calibration_bins']} bins"
    )
    print(f"{'scenario':<28} {'measured':>9} {'estimated':>9} {'diff':>8} {'psi_max':>8}  feature")
    for o in report["scenarios"]:
        print(
            f"{o['scenario']:<28} {o['measured']:>9.4f} {o['estimated']:>9.4f}"
            f" {o['difference']:>+8.4f} {o['psi_max']:>8.2f}  {o['psi_feature']}"
        )
    return 0
