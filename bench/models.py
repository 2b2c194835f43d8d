"""The hub's builds on datasets a package ships: fp32 against int8, and the tuner's gain.

For each dataset the benchmark runs the hub's own pipeline (hub/ml/pipeline.py ``train``:
fit, export, int8, score, gates) on a seeded stratified (or random) 80/20 split, and
reports for the fp32 and the int8 file: size, hold-out accuracy (or MAE) and median
per-row latency in onnxruntime on one thread. The int8 figures are ratios against the
fp32 file measured in the same run. With ``--tune N`` it also runs the tuner (N trials)
and reports the int8 metric of the tuned build against the default build's.

Datasets: scikit-learn's bundled breast cancer and wine (classification), diabetes
(regression), and digits upscaled to 16x16 images for the conv net (hub/ml/data/samples.py).

Goals: int8 size <= 0.5x fp32 for MLPs and <= 0.3x for conv nets; accuracy loss <= 1
point; the conv net's int8 per-row latency below its fp32.

``--upload-mb M`` also measures a dataset upload: a hub process (``edgefleet hub serve``)
receives an M MB CSV through the API, and its resident memory is sampled every 20 ms;
the goal is a peak growth of at most 2x the file.

    python -m bench models [--json] [--only NAME ...] [--tune N] [--upload-mb M]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from sklearn.datasets import load_breast_cancer, load_diabetes, load_wine

from hub.ml.pipeline import PipelineConfig, split_arrays, train
from hub.ml.training_data import Dataset
from hub.ml.tuning import tune

Loader = Callable[[], tuple[Dataset, str]]  # the split rows and the model kind

GOALS = {"mlp_size_ratio": 0.5, "cnn_size_ratio": 0.3, "max_loss_points": 1.0}
SEED = 7


def _tabular(load: Callable[..., Any], task: str) -> Loader:
    def loader() -> tuple[Dataset, str]:
        d = load()
        x = np.asarray(d.data, dtype=np.float32)
        y = d.target.astype(np.int64 if task == "classification" else np.float32)
        classes = (
            [str(c) for c in getattr(d, "target_names", [])] if task == "classification" else []
        )
        return split_arrays(x, y, task=task, classes=classes, seed=SEED), "mlp"

    return loader


def _digits() -> tuple[Dataset, str]:
    from hub.ml.data.samples import digits_images

    x, y = digits_images(SEED, size=16)
    classes = [str(c) for c in range(10)]
    return split_arrays(
        x, y, task="classification", classes=classes, seed=SEED, kind="image"
    ), "cnn"


DATASETS: dict[str, Loader] = {
    "breast_cancer": _tabular(load_breast_cancer, "classification"),
    "wine": _tabular(load_wine, "classification"),
    "diabetes": _tabular(load_diabetes, "regression"),
    "digits16": _digits,
}


def measure(name: str, trials: int) -> dict[str, Any]:
    data, kind = DATASETS[name]()
    # Gates wide open: the benchmark reports the figures rather than refusing a build.
    config = PipelineConfig(
        name=name, kind=kind, seed=SEED, max_int8_loss_points=100, max_int8_mae_increase=100
    )
    t0 = time.perf_counter()
    built = train(config, dataset=data)
    seconds = time.perf_counter() - t0
    fp32, int8 = built.metrics["fp32"], built.metrics["int8"]
    metric = "accuracy" if data.is_classifier else "mae"
    out: dict[str, Any] = {
        "dataset": name,
        "kind": kind,
        "task": data.task,
        "rows": len(data.x_train) + len(data.x_holdout),
        "holdout_rows": len(data.x_holdout),
        "metric": metric,
        "fp32": {k: fp32[k] for k in (metric, "size_bytes", "latency_us_per_row")},
        "int8": {k: int8[k] for k in (metric, "size_bytes", "latency_us_per_row")},
        "size_ratio": int8["size_bytes"] / fp32["size_bytes"],
        "latency_ratio": int8["latency_us_per_row"] / fp32["latency_us_per_row"],
        "build_seconds": round(seconds, 2),
    }
    if data.is_classifier:
        out["loss_points"] = (fp32["accuracy"] - int8["accuracy"]) * 100
    else:
        out["mae_ratio"] = int8["mae"] / fp32["mae"]
    if trials:
        out["tuner"] = _tuner_gain(data, config, trials, int8[metric])
    return out


def _tuner_gain(
    data: Dataset, config: PipelineConfig, trials: int, default_metric: float
) -> dict[str, Any]:
    t0 = time.perf_counter()
    result = tune(data, config, trials, timeout_s=1800)
    tuned = train(config, dataset=data, params=result.best_params)
    metric = "accuracy" if data.is_classifier else "mae"
    value = tuned.metrics["int8"][metric]
    return {
        "trials": len(result.trials),
        "best_params": result.best_params,
        "default_int8": default_metric,
        "tuned_int8": value,
        "gain": value - default_metric if data.is_classifier else default_metric - value,
        "seconds": round(time.perf_counter() - t0, 1),
    }


def _goals(rows: list[dict[str, Any]]) -> dict[str, bool]:
    met: dict[str, bool] = {}
    for r in rows:
        cap = GOALS["cnn_size_ratio" if r["kind"] == "cnn" else "mlp_size_ratio"]
        met[f"{r['dataset']}: int8 size <= {cap}x fp32"] = r["size_ratio"] <= cap
        if "loss_points" in r:
            met[f"{r['dataset']}: accuracy loss <= 1 point"] = r["loss_points"] <= 1.0
        if r["kind"] == "cnn":
            met[f"{r['dataset']}: int8 latency below fp32"] = r["latency_ratio"] < 1.0
    return met


def _print(rows: list[dict[str, Any]], upload: dict[str, Any] | None) -> None:
    print(
        f"{'dataset':<14}{'kind':<5}{'metric':<9}{'fp32':>9}{'int8':>9}"
        f"{'size fp32':>11}{'int8/fp32':>10}{'µs fp32':>9}{'µs int8':>9}{'int8/fp32':>10}"
    )
    for r in rows:
        m = r["metric"]
        print(
            f"{r['dataset']:<14}{r['kind']:<5}{m:<9}{r['fp32'][m]:>9.4f}{r['int8'][m]:>9.4f}"
            f"{r['fp32']['size_bytes']:>11}{r['size_ratio']:>10.3f}"
            f"{r['fp32']['latency_us_per_row']:>9.1f}{r['int8']['latency_us_per_row']:>9.1f}"
            f"{r['latency_ratio']:>10.3f}"
        )
        if "tuner" in r:
            t = r["tuner"]
            print(
                f"{'':<14}tuner: {t['trials']} trials, int8 {m} {t['default_int8']:.4f} ->"
                f" {t['tuned_int8']:.4f} (gain {t['gain']:+.4f}) in {t['seconds']} s"
            )
    for goal, ok in _goals(rows).items():
        print(f"  {'met ' if ok else 'MISS'} {goal}")
    if upload is not None:
        print(
            f"upload: {upload['file_mb']:.0f} MB CSV in {upload['seconds']:.1f} s; hub RSS"
            f" +{upload['peak_growth_mb']:.0f} MB at peak = {upload['growth_ratio']:.2f}x the file"
        )


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m bench models", description=__doc__.split("\n")[0])
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--only", nargs="*", choices=sorted(DATASETS), help="these datasets only")
    p.add_argument("--tune", type=int, default=0, metavar="N", help="tuner trials per dataset")
    p.add_argument("--upload-mb", type=float, default=0, metavar="M", help="upload a CSV of M MB")
    args = p.parse_args(argv)
    rows = [measure(name, args.tune) for name in (args.only or DATASETS)]
    upload = None
    if args.upload_mb:
        from bench.upload import measure_upload

        upload = measure_upload(args.upload_mb)
    if args.json:
        print(json.dumps({"datasets": rows, "goals": _goals(rows), "upload": upload}, indent=2))
    else:
        _print(rows, upload)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
