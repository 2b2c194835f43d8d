"""A smoke run of ``python -m bench ingest``: a tiny stream, real Mosquitto and mosquitto_sub."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.ingest import RAW_QUEUES
from hub.transport.broker import Mosquitto

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.broker
def test_ingest_smoke_run_prints_comparable_figures() -> None:
    if not Mosquitto.available():
        pytest.fail("the mosquitto binary is missing")
    args = ["--devices", "20", "--windows", "20", "--replay", "0.1", "--json"]
    args += ["--seconds", "0", "--repeats", "1"]  # one round per side
    run = subprocess.run(
        [sys.executable, "-m", "bench", "ingest", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    report = json.loads(run.stdout)
    assert report["messages"] == 440 and report["duplicates_sent"] == 40
    assert report["exact"] is True
    assert set(report["sides"]) == {"raw", "workers", "single"}
    for name, side in report["sides"].items():
        queues = RAW_QUEUES if name == "raw" else 1  # one publish fills RAW_QUEUES raw queues
        assert [r["messages"] for r in side["repeats"]] == [440 * queues]  # one round
        rates = side["msgs_per_s"]
        assert 0 < rates["min"] <= rates["median"] <= rates["max"]
    # the headline is the workers'; the default hub process's figure stands beside it
    assert report["hub_msgs_per_s"] == report["workers_msgs_per_s"]
    raw = report["raw_msgs_per_s"]
    assert report["ratio"] == round(report["hub_msgs_per_s"] / raw, 3)
    assert report["single_ratio"] == round(report["single_msgs_per_s"] / raw, 3)
    assert report["sides"]["single"]["ratio"]["min"] > 0
