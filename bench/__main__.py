"""``python -m bench <name> [options]``: run one benchmark (``<name> --help`` for its options).

Each benchmark is a module with ``main(argv: list[str]) -> int``, imported only when chosen
so one benchmark's heavy imports do not weigh on another's figures.
"""

from __future__ import annotations

import importlib
import sys

# name -> (module, one-line description). Add a row per benchmark.
BENCHMARKS: dict[str, tuple[str, str]] = {
    "predict": ("bench.predict", "Predictor.predict vs raw onnxruntime session.run"),
    "rollout": ("bench.rollout", "a ~1 MiB model to N simulated devices vs raw Mosquitto"),
    "drill": ("bench.drill", "a rollout through broker restarts, a hub kill, crashes, bad chunks"),
    "ingest": ("bench.ingest", "hub telemetry ingest into SQLite vs mosquitto_sub, same stream"),
    "drift_observer": ("bench.drift_observer", "the drift recorder's cost per predict call"),
    "drift": ("bench.drift", "drift on a share of N devices: detection delay, accuracy, ADWIN"),
    "cbpe": ("bench.cbpe", "estimated (from confidence) vs measured accuracy per drift scenario"),
    "dataset_files": ("bench.dataset_files", "read_dataset on a ~200 MB CSV: RSS growth, time"),
    "models": ("bench.models", "fp32 vs int8 builds on bundled datasets, tuner gain, upload RSS"),
    "convnet": ("bench.convnet", "conv nets fp32 vs int8: size, accuracy, per-row latency"),
    "memory": ("bench.memory", "agent daemon RSS and idle CPU vs the bare runtime, same model"),
    "token_signing": ("bench.token_signing", "a signature by a key in SoftHSM2 vs a key file"),
    "metadata": ("bench.metadata", "TUF metadata bytes per device update, 1 to 200 models"),
}


def usage() -> str:
    rows = "\n".join(f"  {name:<10} {desc}" for name, (_, desc) in BENCHMARKS.items())
    return f"usage: python -m bench <name> [--json] [options]\n\nbenchmarks:\n{rows}\n"


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        sys.stdout.write(usage())
        return 0 if argv else 2
    entry = BENCHMARKS.get(argv[0])
    if entry is None:
        sys.stderr.write(f"unknown benchmark {argv[0]!r}\n\n{usage()}")
        return 2
    module = importlib.import_module(entry[0])
    return int(module.main(argv[1:]))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
