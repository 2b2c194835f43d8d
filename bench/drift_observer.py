"""The drift recorder's cost per predict call (agent/drift.py ``DriftRecorder.observe``).

Feeds the observer exactly what the Predictor hands it for one of the hub's classifiers
(a float32 batch and the model's ``label`` and ``probabilities`` outputs) on a
16-feature, 10-bin baseline with a 20-bin calibration table (so the top-class
probabilities are counted too; ``--no-calibration``: a baseline without one, as before
it existed), and reports the median cost per call for batch sizes 1, 8 and 256, with
and without the drain each tick does. Blocks are repeated and the median taken, because
the machine is shared.

    python -m bench drift_observer [--json] [--blocks 15] [--no-calibration]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np

from agent.drift import DriftRecorder
from shared.sensors import CLASSES, generate

CALLS_PER_BLOCK = 2000


def _probabilities(labels: np.ndarray) -> np.ndarray:
    """Class scores as a classifier gives them, mostly confident in ``labels``."""
    rng = np.random.default_rng(len(labels))
    logits = np.eye(len(CLASSES))[labels] * 4 + rng.normal(size=(len(labels), len(CLASSES)))
    e = np.exp(logits)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def _baseline(calibration: bool) -> dict[str, object]:
    from hub.ml.pipeline import baseline_stats  # bench only: the agent never imports the hub

    x, y = generate(4000, seed=0)
    holdout = (_probabilities(y), y) if calibration else None
    return baseline_stats(x, np.eye(len(CLASSES))[y], 10, holdout=holdout)


def _per_call_us(rec: DriftRecorder, x: np.ndarray, labels: np.ndarray) -> float:
    out = {"label": labels, "probabilities": _probabilities(labels)}
    t0 = time.perf_counter_ns()
    for _ in range(CALLS_PER_BLOCK):
        rec.observe("m", 1, x, out)
    return (time.perf_counter_ns() - t0) / CALLS_PER_BLOCK / 1000


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m bench drift_observer")
    p.add_argument("--json", action="store_true")
    p.add_argument("--blocks", type=int, default=15)
    p.add_argument("--no-calibration", action="store_true", help="a baseline without a table")
    args = p.parse_args(argv)
    rec = DriftRecorder()
    rec.activate("m", 1, _baseline(not args.no_calibration))
    figures: dict[str, float] = {}
    for batch in (1, 8, 256):
        x, y = generate(batch, seed=batch)
        blocks = []
        for _ in range(args.blocks):
            blocks.append(_per_call_us(rec, x, y))
            rec.drain()
        figures[f"observe_us_batch_{batch}"] = round(statistics.median(blocks), 2)
        figures[f"observe_ns_per_row_batch_{batch}"] = round(
            statistics.median(blocks) * 1000 / batch, 1
        )
    t0 = time.perf_counter_ns()
    n = 200
    out = {"label": y, "probabilities": _probabilities(y)}
    for _ in range(n):
        rec.observe("m", 1, x, out)
        rec.drain()
    figures["observe_batch_256_plus_drain_us"] = round((time.perf_counter_ns() - t0) / n / 1000, 2)
    if args.json:
        print(json.dumps(figures))
    else:
        for k, v in figures.items():
            print(f"{k:>32}: {v}")
    return 0
