"""deploy/grafana/: the dashboards (fleet, rollouts, models, drift) are Grafana dashboard
JSON whose every query parses as PromQL (real ``promtool check rules``) and reads only
metrics a real hub serves (a hub on a real Mosquitto, fed telemetry, scraped over HTTP).

Grafana is not installed here, so no Grafana loads the files: the structure Grafana
needs to import them (uid, title, schemaVersion, panels with gridPos and targets, a
Prometheus datasource variable) is checked field by field instead.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from metrics_rig import open_alert, paused_rollout, publish, samples, served_hub, window
from prometheus_client.parser import text_string_to_metric_families
from waiting import wait_for

from hub.transport.broker import Mosquitto

ROOT = Path(__file__).resolve().parents[1]
GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARDS = {"fleet", "rollouts", "models", "drift"}
# Grafana's variables, as Grafana would put them in before sending a query
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "30s", "$__range": "6h"}


def boards() -> dict[str, dict[str, Any]]:
    return {p.stem: json.loads(p.read_text()) for p in sorted(GRAFANA.glob("dashboards/*.json"))}


def queries(board: dict[str, Any]) -> list[str]:
    """Every PromQL expression of a dashboard: its panels' and its variables'."""
    out = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    for var in board["templating"]["list"]:
        if var["type"] == "query":
            out.append(re.sub(r"^label_values\((.*), \w+\)$", r"\1", var["definition"]))
    return out


def as_promql(expr: str) -> str:
    """``expr`` with Grafana's variables filled in (``$model`` as the regex ``.*``)."""
    for name, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(name, value)
    return re.sub(r"\$\w+", ".*", expr)


def overlaps(a: dict[str, int], b: dict[str, int]) -> bool:
    return (
        a["x"] < b["x"] + b["w"]
        and b["x"] < a["x"] + a["w"]
        and a["y"] < b["y"] + b["h"]
        and b["y"] < a["y"] + a["h"]
    )


def test_each_dashboard_is_grafana_dashboard_json_with_titled_panels_and_units() -> None:
    found = boards()
    assert set(found) == DASHBOARDS
    assert len({b["uid"] for b in found.values()}) == len(found)
    for name, board in found.items():
        assert board["uid"] == f"edgefleet-{name}" and board["title"].startswith("edgefleet / ")
        assert isinstance(board["schemaVersion"], int) and board["schemaVersion"] >= 36
        (source,) = [v for v in board["templating"]["list"] if v["type"] == "datasource"]
        assert source["name"] == "datasource" and source["query"] == "prometheus"
        assert board["panels"], name
        for panel in board["panels"]:
            where = f"{name}: {panel.get('title')!r}"
            assert panel["title"].strip(), where
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, where
            assert panel["fieldConfig"]["defaults"]["unit"], f"{where} has no unit"
            grid = panel["gridPos"]
            assert set(grid) == {"h", "w", "x", "y"} and all(
                isinstance(v, int) and v >= 0 for v in grid.values()
            ), where
            assert grid["w"] > 0 and grid["x"] + grid["w"] <= 24, where
            assert panel["targets"], f"{where} has no query"
            for target in panel["targets"]:
                assert target["refId"] and "edgefleet" in target["expr"], where
        for i, a in enumerate(board["panels"]):
            for b in board["panels"][i + 1 :]:
                assert not overlaps(a["gridPos"], b["gridPos"]), (name, a["title"], b["title"])


def test_every_dashboard_query_parses_as_promql(tmp_path: Path) -> None:
    """Each query, as a recording rule, through ``promtool check rules``."""
    exprs = [as_promql(e) for board in boards().values() for e in queries(board)]
    rules = {
        "groups": [
            {
                "name": "dashboards",
                "rules": [
                    {"record": f"dashboard:query_{i}", "expr": e} for i, e in enumerate(exprs)
                ],
            }
        ]
    }
    (tmp_path / "dashboards.yml").write_text(yaml.safe_dump(rules))
    tool = shutil.which("promtool")
    assert tool is not None, "promtool missing: ./scripts/setup installs Debian's prometheus"
    checked = subprocess.run(
        [tool, "check", "rules", "dashboards.yml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(exprs)} rules found" in checked.stdout


def test_a_query_that_is_not_promql_is_caught(tmp_path: Path) -> None:
    """The parse check can fail: a query with an unclosed bracket is refused."""
    rules = {"groups": [{"name": "d", "rules": [{"record": "d:q", "expr": "sum(rate(x[5m])"}]}]}
    (tmp_path / "bad.yml").write_text(yaml.safe_dump(rules))
    tool = shutil.which("promtool")
    assert tool is not None
    done = subprocess.run(
        [tool, "check", "rules", "bad.yml"], cwd=tmp_path, capture_output=True, text=True
    )
    assert done.returncode != 0


@pytest.mark.broker
def test_every_metric_the_dashboards_read_is_one_a_real_hub_serves(
    private_mosquitto: Mosquitto, tmp_path: Path
) -> None:
    us = 1000  # nanoseconds
    messages = [
        ("gw-1", "state", {"status": "online", "device_class": "generic-linux"}),
        ("gw-1", "telemetry", window(1, "kws", 1, [30 * us] * 5, errors=1, labels=(4, 3))),
        (
            "gw-2",
            "telemetry",
            window(1, "vib", 1, [50 * us], labels=(2, 0), abs_err_sum=1.0, sq_err_sum=1.0),
        ),
        ("gw-2", "telemetry", window(2, "vib", 1, [50 * us], spool_dropped=1)),
    ]
    with served_hub(private_mosquitto, tmp_path / "hub") as served:
        publish(private_mosquitto, messages)
        wait_for(lambda: served.hub.ingest.counts["telemetry"] >= 3, 10, "the windows stored")
        paused_rollout(served.hub, "r-1", "kws", {"gw-1": "activated"})
        open_alert(served.hub, "kws", "fleet", "*")
        served.scrape()  # the API's own request series appear from the second scrape
        text = served.scrape()
    served_names = {name for name, _ in samples(text)}
    families = {f.name for f in text_string_to_metric_families(text)}  # with or without samples
    recorded = {
        r["record"]
        for g in yaml.safe_load((ROOT / "deploy/prometheus/rules.yml").read_text())["groups"]
        for r in g["rules"]
        if "record" in r
    }
    for name, board in boards().items():
        for expr in queries(board):
            used = set(re.findall(r"\bedgefleet_[a-z0-9_]+\b", expr))
            assert used, f"{name}: {expr} reads no edgefleet metric"
            for metric in used:
                family = re.sub(r"_(total|count|sum|bucket)$", "", metric)
                assert metric in served_names or family in families, (
                    f"{name}: {metric} is not in a hub's /metrics"
                )
            for rule in re.findall(r"\bedgefleet:[a-z0-9_:]+", expr):
                assert rule in recorded, f"{name}: {rule} is no recording rule of rules.yml"


def test_the_provisioning_files_point_grafana_at_the_dashboards() -> None:
    sources = yaml.safe_load((GRAFANA / "provisioning/datasources/edgefleet.yml").read_text())
    assert [s["type"] for s in sources["datasources"]] == ["prometheus"]
    providers = yaml.safe_load((GRAFANA / "provisioning/dashboards/edgefleet.yml").read_text())
    (provider,) = providers["providers"]
    assert provider["type"] == "file" and provider["options"]["path"]
