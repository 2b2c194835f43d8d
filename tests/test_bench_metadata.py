"""A small run of ``python -m bench metadata``: real repositories, real signing, a real
device verifying what it downloads; the JSON's shape, the goal and the flatness of the
figures between one model and more models than there are shards (ADR 0041)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from shared.delegation import SHARD_COUNT, SHARD_PREFIX

ROOT = Path(__file__).resolve().parents[1]


def test_metadata_bench_prints_flat_figures_under_the_goal() -> None:
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "metadata",
            "--scales",
            f"1x1,{2 * SHARD_COUNT}x4",
            "--json",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout)
    assert (report["goal_bytes"], report["cap_bytes"]) == (64 * 2**10, 2**20)
    small, large = report["scales"]
    assert (small["targets"], large["targets"]) == (1, 2 * SHARD_COUNT * 4)
    for row in (small, large):
        assert 0 < row["first_update_bytes"] <= report["goal_bytes"], row
        assert 0 < row["second_update_bytes"] <= report["goal_bytes"], row
        assert row["under_goal"] is True
        # the device got its model's role and manifest, and nothing of another model
        mine = f"model-model{row['models'] - 1:04d}.json"
        assert [n for n in row["files"] if n.startswith("model-")] == [mine]
        assert len([n for n in row["files"] if n.startswith(SHARD_PREFIX)]) == 1  # its shard
    # 128 targets inline (~10 KB of manifest each) would be far more than one model's role
    assert large["old_layout_bytes"] > 20 * large["first_update_bytes"]
    # 32 models: top-level targets grows by a pattern per model, the snapshot by a version
    # per role, the model's role by its own 4 versions
    assert report["flatness"] < 1.5, report
    # the second update leaves out the top-level targets the device already has
    assert "targets.json" not in large["second_files"]
    assert (
        large["second_update_bytes"]
        < large["first_update_bytes"] - large["files"]["targets.json"] + 1024
    )
