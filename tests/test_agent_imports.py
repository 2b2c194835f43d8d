"""What ``edgefleet agent run`` imports at start (docs/agent.md, "Memory"): the daemon, not
the operator's CLI (Typer, Rich, pydantic) nor TUF's updater, which only a deployment's
metadata needs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def imported_by_agent_run(config: Path) -> tuple[int, str, set[str]]:
    argv = ["-X", "importtime", "-m", "edgefleet.cli", "agent", "run", "--config", str(config)]
    run = subprocess.run(
        [sys.executable, *argv],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    modules = {
        line.rsplit("|", 1)[1].strip()
        for line in run.stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    }
    errors = [line for line in run.stderr.splitlines() if not line.startswith("import time:")]
    return run.returncode, "\n".join(errors), modules


def test_agent_run_loads_the_daemon_without_the_cli_or_the_tuf_updater(tmp_path: Path) -> None:
    code, errors, modules = imported_by_agent_run(tmp_path / "missing.toml")
    # it got as far as reading its config: the daemon's modules were all imported
    assert code == 1 and "edgefleet: error:" in errors and "missing.toml" in errors, errors
    assert {"agent.daemon", "agent.device", "paho.mqtt.client"} <= modules
    unneeded = {"typer", "rich", "pydantic", "edgefleet.cli_app", "tuf.ngclient", "urllib3"}
    assert not unneeded & modules, unneeded & modules


def test_other_command_lines_still_reach_the_cli(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "edgefleet.cli", "agent", "run", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0 and "--config" in run.stdout, run.stderr
