"""A smoke run of ``python -m bench ingest``: a tiny stream, real Mosquitto and mosquitto_sub."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from hub.transport.broker import Mosquitto

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.broker
def test_ingest_smoke_run_prints_comparable_figures() -> None:
    if not Mosquitto.available():
        pytest.fail("the mosquitto binary is missing")
    args = ["--devices", "20", "--windows", "20", "--replay", "0.1", "--json"]
    run = subprocess.run(
        [sys.executable, "-m", "bench", "ingest", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    report = json.loads(run.stdout)
    assert report["messages"] == 440 and report["duplicates_sent"] == 40
    assert report["rows_stored"] == 400 and report["duplicates_counted"] == 40
    assert report["exact"] is True
    assert report["hub"]["messages"] == report["raw"]["messages"] == 440
    assert report["hub_msgs_per_s"] > 0 and report["raw_msgs_per_s"] > 0
    assert report["ratio"] == round(report["hub_msgs_per_s"] / report["raw_msgs_per_s"], 3)
