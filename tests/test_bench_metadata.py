"""A small run of ``python -m bench metadata``: real repositories, real signing, a real
device verifying what it downloads; the JSON's shape and the flatness of the figures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_metadata_bench_prints_flat_figures_under_the_goal() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "bench", "metadata", "--scales", "1x1,12x6", "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout)
    assert (report["goal_bytes"], report["cap_bytes"]) == (64 * 2**10, 2**20)
    small, large = report["scales"]
    assert (small["targets"], large["targets"]) == (1, 72)
    for row in (small, large):
        assert 0 < row["first_update_bytes"] <= report["goal_bytes"], row
        assert 0 < row["second_update_bytes"] <= report["goal_bytes"], row
        assert row["under_goal"] is True
        # the device got its model's role and manifest, and nothing of another model
        mine = f"model-model{row['models'] - 1:04d}.json"
        assert [n for n in row["files"] if n.startswith("model-")] == [mine]
    # 72 targets inline (~10 KB of manifest each) would be far more than one model's role
    assert large["old_layout_bytes"] > 20 * large["first_update_bytes"]
    assert report["flatness"] < 1.5, report  # grows by the delegation list only
    # the second update leaves out the top-level targets the device already has
    assert "targets.json" not in large["second_files"]
    assert (
        large["second_update_bytes"]
        < large["first_update_bytes"] - large["files"]["targets.json"] + 1024
    )
