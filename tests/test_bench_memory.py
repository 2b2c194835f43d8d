"""A smoke run of ``python -m bench memory``: a real hub, Mosquitto and agent daemon process,
its RSS against a bare onnxruntime process with the same model, its CPU at idle."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from hub.transport.broker import Mosquitto

ROOT = Path(__file__).resolve().parents[1]

pytestmark = [pytest.mark.broker, pytest.mark.slow]


def test_memory_smoke_run_prints_the_agent_against_the_bare_runtime() -> None:
    if not Mosquitto.available():
        pytest.fail("the mosquitto binary is missing")
    args = ["--runtimes", "onnxruntime", "--serve-s", "1", "--idle-s", "2", "--settle-s", "0.5"]
    run = subprocess.run(
        [sys.executable, "-m", "bench", "memory", *args, "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout)
    assert report["goals"] == {"rss_over_reference_mb": 20.0, "idle_cpu_pct": 1.0}
    onnx = report["onnxruntime"]
    assert onnx["calls"] >= 5 and onnx["model_bytes"] > 0
    for phase in ("reference", "serving", "idle", "restarted"):
        m = onnx[phase]
        assert 0 < m["uss"] <= m["rss"], (phase, m)
    # the daemon holds the runtime and the model, and more: never less than the bare process
    assert onnx["serving"]["rss"] > onnx["reference"]["rss"]
    over = round(onnx["serving"]["rss"] - onnx["reference"]["rss"], 1)
    assert onnx["serving_rss_over_reference_mb"] == over
    assert onnx["rss_goal_met"] is (over <= 20.0)
    assert 0 <= onnx["idle_cpu_pct"] < 100
    assert "tflite" not in report
