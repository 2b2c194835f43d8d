"""A smoke run of ``python -m bench rollout``: 20 devices, a small model, real Mosquitto."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from hub.transport.broker import Mosquitto

ROOT = Path(__file__).resolve().parents[1]
FIELDS = (
    "devices",
    "converged",
    "seconds",
    "raw_seconds",
    "ratio",
    "model_bytes",
    "chunk_bytes",
    "chunks_per_device",
    "cpu",
    "devices_side",
    "timed_out",
)


@pytest.mark.slow
@pytest.mark.broker
def test_rollout_smoke_run_converges_every_device() -> None:
    if not Mosquitto.available():
        pytest.fail("the mosquitto binary is missing")
    args = ["--devices", "20", "--model-bytes", "100000", "--chunk-kib", "8", "--json"]
    run = subprocess.run(
        [sys.executable, "-m", "bench", "rollout", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    report = json.loads(run.stdout)
    assert [f for f in FIELDS if f not in report] == []
    assert report["devices"] == 20
    assert report["converged"] == 20
    assert report["devices_side"]["outcomes"]["healthy"] == 20
    assert report["chunks_per_device"] == -(-report["model_bytes"] // (8 * 1024))
    assert report["seconds"] > 0 and report["raw_seconds"] > 0
    assert report["ratio"] == pytest.approx(report["seconds"] / report["raw_seconds"], abs=0.01)


@pytest.mark.slow
@pytest.mark.broker
def test_a_rollout_that_times_out_still_reports_what_it_saw() -> None:
    """No device installs a model within 10 ms of its deploy: the run says it timed out
    (exit 1, ``timed_out``, no rollout time or ratio) and keeps its figures."""
    args = ["--devices", "20", "--model-bytes", "100000", "--deploy-timeout", "0.01", "--json"]
    run = subprocess.run(
        [sys.executable, "-m", "bench", "rollout", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert run.returncode == 1, run.stderr[-2000:]
    assert "deploy: timed out after 0 s" in run.stderr
    report = json.loads(run.stdout)
    assert report["timed_out"] is True and report["converged"] < 20
    assert report["seconds"] is None and report["ratio"] is None and report["met"] is False
    assert report["chunks"]["needed"] == 20 * report["chunks_per_device"]
    assert report["raw_seconds"] > 0 and report["cpu"]["wall_s"] > 0
