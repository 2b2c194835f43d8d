"""Conv nets in fp32 and int8: file size, hold-out accuracy and per-row latency.

For each shipped sample dataset (hub/ml/data/samples.py: digits upscaled to 16x16, and
3-axis vibration windows [128, 3]) the benchmark trains the default ``ConvConfig`` with
``fit_convnet``, quantises the export with the pipeline's ``quantize_int8`` (512
calibration rows, per-tensor scales), and measures both files. The goals, which the
defaults were chosen to meet:

- size: int8 file <= 0.3x the fp32 file;
- accuracy: int8 within 1 point of fp32 on the held-out quarter of the rows;
- latency: int8 per row below fp32, at batch 1 on the device's runtime
  (agent/runtime.py ``OnnxBackend``, one intra-op thread).

Latency alternates fp32 and int8 in short blocks (the order reversing from block to
block) so that a 2-core machine shared with other work slows both alike; figures are
medians over blocks, and the ratio is the median of per-block ratios.

Run from the checkout::

    python -m bench convnet [--json] [--data digits windows] [--seed 7] [--blocks 31]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from time import perf_counter_ns
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime

from agent.runtime import ModelSession, OnnxBackend
from hub.ml.convnet import ConvConfig, fit_convnet
from hub.ml.data.samples import digits_images, windows_dataset
from hub.ml.evaluation import evaluate
from hub.ml.quantize import quantize_int8
from hub.ml.training_data import calibration_rows

DATASETS: dict[str, tuple[str, Callable[[int], tuple[Any, Any]]]] = {
    "digits": ("image", lambda seed: digits_images(seed, size=16)),
    "windows": ("window", lambda seed: windows_dataset(3000, seed)),
}
DATA_SEED = 1
HOLDOUT_FRACTION = 0.25
N_CALIBRATION = 512  # the pipeline's default (PipelineConfig.n_calibration)
CALLS_PER_BLOCK = 300
GOALS = {"size_ratio": 0.3, "max_loss_points": 1.0, "latency_ratio": 1.0}


def measure(name: str, config: ConvConfig, blocks: int) -> dict[str, Any]:
    """Train, quantise and measure one dataset's conv net."""
    kind, load = DATASETS[name]
    x, y = load(DATA_SEED)
    n_holdout = round(len(x) * HOLDOUT_FRACTION)
    x_train, y_train, x_holdout, y_holdout = (
        x[n_holdout:],
        y[n_holdout:],
        x[:n_holdout],
        y[:n_holdout],
    )
    started = time.perf_counter()
    fp32 = fit_convnet(
        x_train,
        y_train,
        task="classification",
        n_outputs=int(y.max()) + 1,
        config=config,
        kind=kind,
    )
    train_s = time.perf_counter() - started
    started = time.perf_counter()
    int8 = quantize_int8(fp32, calibration_rows(x_train, N_CALIBRATION, config.seed))
    quantize_s = time.perf_counter() - started
    accuracy = {
        m: 100 * evaluate(b, x_holdout, y_holdout) for m, b in (("fp32", fp32), ("int8", int8))
    }
    latency = _latency({"fp32": fp32, "int8": int8}, x_holdout, blocks)
    size_ratio = len(int8) / len(fp32)
    loss = accuracy["fp32"] - accuracy["int8"]
    return {
        "dataset": name,
        "row_shape": list(x.shape[1:]),
        "rows": {"train": len(x_train), "holdout": n_holdout},
        "train_s": round(train_s, 2),
        "quantize_s": round(quantize_s, 2),
        "size_bytes": {"fp32": len(fp32), "int8": len(int8)},
        "size_ratio": round(size_ratio, 3),
        "accuracy": {m: round(a, 2) for m, a in accuracy.items()},
        "loss_points": round(loss, 2),
        "latency_us_per_row": {m: round(v, 1) for m, v in latency["us"].items()},
        "latency_ratio": round(latency["ratio"], 3),
        "goals_met": {
            "size": size_ratio <= GOALS["size_ratio"],
            "accuracy": loss <= GOALS["max_loss_points"],
            "latency": latency["ratio"] < GOALS["latency_ratio"],
        },
    }


def _warm_up() -> None:
    """One tiny fit, so the first dataset's training time leaves out importing torch
    (and the optimiser's first-use imports): ~3 s here, once per process."""
    x, y = digits_images(DATA_SEED, size=8)
    tiny = ConvConfig(channels=(2,), dense=2, epochs=1)
    fit_convnet(x[:20], y[:20], task="classification", n_outputs=10, config=tiny)


def _latency(
    models: dict[str, bytes], rows: npt.NDArray[np.float32], blocks: int
) -> dict[str, Any]:
    backend = OnnxBackend(intra_op_num_threads=1)
    sessions = {m: backend.load_bytes(b) for m, b in models.items()}
    inputs = [np.ascontiguousarray(rows[i : i + 1]) for i in range(min(len(rows), 200))]
    for session in sessions.values():  # warm-up
        _block(session, inputs)
    times: dict[str, list[float]] = {m: [] for m in sessions}
    order = list(sessions)
    for k in range(blocks):
        for m in order if k % 2 == 0 else reversed(order):
            times[m].append(_block(sessions[m], inputs))
    ratios = [a / b for a, b in zip(times["int8"], times["fp32"], strict=True)]
    return {
        "us": {m: statistics.median(t) for m, t in times.items()},
        "ratio": statistics.median(ratios),
    }


def _block(session: ModelSession, inputs: list[npt.NDArray[np.float32]]) -> float:
    """Microseconds per call of ``CALLS_PER_BLOCK`` single-row runs."""
    run, names, feed = session.run_fn, list(session.output_names), session.input_name
    started = perf_counter_ns()
    for i in range(CALLS_PER_BLOCK):
        run(names, {feed: inputs[i % len(inputs)]}, None)
    return (perf_counter_ns() - started) / CALLS_PER_BLOCK / 1000


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench convnet", description=__doc__)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--data", nargs="+", choices=sorted(DATASETS), default=sorted(DATASETS))
    parser.add_argument("--seed", type=int, default=ConvConfig().seed, help="training seed")
    parser.add_argument("--blocks", type=int, default=31, help="latency blocks per model")
    args = parser.parse_args(argv)
    config = ConvConfig(seed=args.seed)
    _warm_up()
    results = [measure(name, config, args.blocks) for name in args.data]
    report = {
        "config": {k: v for k, v in vars(config).items()},
        "goals": GOALS,
        "results": results,
        "onnxruntime": onnxruntime.__version__,
        "repeats": {"blocks": args.blocks, "calls_per_block": CALLS_PER_BLOCK},
    }
    if args.json:
        print(json.dumps(report))
        return 0
    print(f"conv nets, {config}")
    for r in results:
        size, acc, lat = r["size_bytes"], r["accuracy"], r["latency_us_per_row"]
        print(
            f"{r['dataset']:<8} rows {r['row_shape']}  train {r['train_s']:.1f} s"
            f"  size {size['fp32']:,} → {size['int8']:,} B ({r['size_ratio']:.3f}x)"
            f"  accuracy {acc['fp32']:.2f} → {acc['int8']:.2f} %"
            f"  latency {lat['fp32']:.1f} → {lat['int8']:.1f} µs/row ({r['latency_ratio']:.3f}x)"
            f"  goals {'met' if all(r['goals_met'].values()) else r['goals_met']}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
