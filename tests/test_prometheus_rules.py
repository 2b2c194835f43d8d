"""deploy/prometheus/: the scrape config passes `promtool check config`, the rules pass
`promtool check rules` and their unit tests (`promtool test rules`: each alert fires when
it should and not before; the recording rules give the figures their tests expect)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import yaml

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
    assert "SUCCESS: 13 rules found" in checked.stdout
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


def test_every_alert_has_a_unit_test_that_fires_it_and_one_that_does_not() -> None:
    rules = yaml.safe_load((RULES / "rules.yml").read_text())
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r}
    assert {
        "EdgefleetDevicesOffline",
        "EdgefleetRolloutHalted",
        "EdgefleetDriftAlertOpen",
        "EdgefleetIngestLagging",
        "EdgefleetSpoolDrops",
        "EdgefleetAlertDeliveriesFailing",
    } <= alerts
    cases = [
        case
        for test in yaml.safe_load((RULES / "rules.test.yml").read_text())["tests"]
        for case in test.get("alert_rule_test", [])
    ]
    fired = {c["alertname"] for c in cases if c["exp_alerts"]}
    quiet = {c["alertname"] for c in cases if not c["exp_alerts"]}
    assert alerts <= fired, "an alert no test fires"
    assert alerts <= quiet, "an alert no test sees quiet"


def test_the_scrape_config_is_valid_with_its_key_file_and_refused_without(
    tmp_path: Path,
) -> None:
    for name in ("prometheus.yml", "rules.yml"):
        (tmp_path / name).write_text((RULES / name).read_text())
    tool = shutil.which("promtool")
    assert tool is not None

    def check() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [tool, "check", "config", "prometheus.yml"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    missing = check()
    assert missing.returncode != 0 and "edgefleet.key" in missing.stdout + missing.stderr
    (tmp_path / "edgefleet.key").write_text("ef_keyid_secret\n")
    checked = check()
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "1 rule files found" in checked.stdout and "13 rules found" in checked.stdout
    config = yaml.safe_load((RULES / "prometheus.yml").read_text())
    (job,) = config["scrape_configs"]
    assert job["job_name"] == "edgefleet-hub" and job["metrics_path"] == "/metrics"
    assert job["authorization"] == {"type": "Bearer", "credentials_file": "edgefleet.key"}
