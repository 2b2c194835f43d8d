"""deploy/prometheus/: the alert rules pass `promtool check rules` and their unit tests
(`promtool test rules`: each alert fires when it should and not before)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

RULES = Path(__file__).resolve().parents[1] / "deploy" / "prometheus"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    tool = shutil.which("promtool")
    assert tool is not None, "promtool missing: ./scripts/setup installs Debian's prometheus"
    return subprocess.run(
        [tool, *args], cwd=RULES, capture_output=True, text=True, timeout=60, check=False
    )


def test_the_alert_rules_are_valid_and_fire_as_their_tests_say() -> None:
    checked = promtool("check", "rules", "rules.yml")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 5 rules found" in checked.stdout
    tested = promtool("test", "rules", "rules.test.yml")
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_a_rule_that_would_never_fire_fails_its_unit_test(tmp_path: Path) -> None:
    """The unit tests can fail: a rule whose threshold no series reaches does not fire."""
    broken = (
        (RULES / "rules.yml")
        .read_text()
        .replace(
            'sum(edgefleet_rollouts{state="halted"}) > 0',
            'sum(edgefleet_rollouts{state="halted"}) > 5',
        )
    )
    (tmp_path / "rules.yml").write_text(broken)
    (tmp_path / "rules.test.yml").write_text((RULES / "rules.test.yml").read_text())
    tool = shutil.which("promtool")
    assert tool is not None
    done = subprocess.run(
        [tool, "test", "rules", "rules.test.yml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0 and "EdgefleetRolloutHalted" in done.stdout + done.stderr
