"""``GET /metrics``, the fleet's part (hub/api/metrics_fleet.py): what devices measured,
per model version, from telemetry windows sent over a real Mosquitto to a real hub and
scraped over HTTP; rollouts in progress, open drift alerts, spool drops and the ingest
writer's backlog. The output passes ``promtool check metrics``."""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest
from metrics_rig import (
    open_alert,
    paused_rollout,
    publish,
    report,
    samples,
    served_hub,
    value,
    window,
)
from pg_schemas import hub_engine
from sqlmodel import Session, select
from waiting import wait_for

from hub.api.metrics_fleet import FIGURES_IDLE_S
from hub.ingest.report import Report
from hub.ingest.writer import Ingest
from hub.store.tables import ModelFigure, session
from hub.transport.broker import Mosquitto

US = 1000  # nanoseconds


@pytest.mark.broker
def test_model_figures_count_each_stored_window_once_in_bounded_series(
    private_mosquitto: Mosquitto, tmp_path: Path
) -> None:
    fast, slow = [30 * US] * 10, [2000 * US] * 2  # 30 µs and 2 ms inferences
    messages = [
        ("gw-1", "telemetry", window(1, "kws", 1, fast + slow, errors=1, labels=(8, 6))),
        ("gw-1", "telemetry", window(2, "kws", 1, fast, spool_dropped=3)),
        ("gw-1", "telemetry", window(2, "kws", 1, fast, spool_dropped=3)),  # a replay
        ("gw-2", "telemetry", window(7, "kws", 2, fast, labels=(4, 4), spool_dropped=2)),
        # an older window of gw-2 arriving late: its spool count never lowers gw-2's
        ("gw-2", "telemetry", window(5, "kws", 2, [], spool_dropped=1)),
        (
            "pi-1",
            "telemetry",
            window(
                1,
                "vib",
                1,
                [900 * US],
                labels=(2, 0),
                abs_err_sum=3.0,
                sq_err_sum=5.0,
                other_versions=[{"model": "kws", "version": 1, "labelled": 2, "correct": 1}],
            ),
        ),
        ("pi-2", "telemetry", window(1, None, None, [])),  # a device with no model yet
        # a regressor without error: a regressor still, not a classifier never right
        (
            "pi-3",
            "telemetry",
            window(1, "level", 1, [900 * US], labels=(3, 0), abs_err_sum=0.0, sq_err_sum=0.0),
        ),
    ]
    with served_hub(private_mosquitto, tmp_path / "hub") as served:
        hub = served.hub
        publish(private_mosquitto, messages)
        wait_for(lambda: hub.ingest.counts["telemetry"] >= 8, 10, "the windows stored")
        paused_rollout(hub, "r-1", "kws", {"gw-1": "activated", "gw-2": "pending"})
        open_alert(hub, "kws", "device", "gw-1")
        open_alert(hub, "kws", "fleet", "*")
        text = served.scrape()
    got = samples(text)

    kws1, kws2 = {"model": "kws", "version": "1"}, {"model": "kws", "version": "2"}
    assert hub.ingest.counts["telemetry_duplicates"] == 1
    # the replay is not counted: 12 + 10 inferences of kws v1, not 32
    assert value(got, "edgefleet_model_inferences_total", **kws1) == 22
    assert value(got, "edgefleet_model_inferences_total", **kws2) == 10
    assert value(got, "edgefleet_model_errors_total", **kws1) == 1
    # labels: the window's own, and the late ones pi-1 sent for kws v1
    assert value(got, "edgefleet_model_labelled_total", **kws1) == 10
    assert value(got, "edgefleet_model_correct_total", **kws1) == 7
    assert value(got, "edgefleet_model_correct_total", **kws2) == 4
    vib = {"model": "vib", "version": "1"}
    assert value(got, "edgefleet_model_abs_error_total", **vib) == 3.0  # a regressor
    assert ("edgefleet_model_correct_total", frozenset(vib.items())) not in got
    level = {"model": "level", "version": "1"}
    assert value(got, "edgefleet_model_abs_error_total", **level) == 0.0
    assert ("edgefleet_model_correct_total", frozenset(level.items())) not in got

    # the latency histogram: 30 µs under 50 µs, 2 ms under 2.5 ms, cumulative
    def bucket(le: str) -> float:
        return value(got, "edgefleet_model_latency_seconds_bucket", **kws1, le=le)

    assert bucket("2.5e-05") == 0 and bucket("5e-05") == 20
    assert bucket("0.001") == 20 and bucket("0.0025") == 22 and bucket("+Inf") == 22
    assert value(got, "edgefleet_model_latency_seconds_count", **kws1) == 22
    total_s = value(got, "edgefleet_model_latency_seconds_sum", **kws1)
    assert total_s == pytest.approx(20 * 30e-6 + 2 * 2e-3, rel=0.0625)

    # spool drops: each device's highest count (gw-1: 3, gw-2: 2), the replay once
    assert value(got, "edgefleet_spool_dropped_total") == 5
    assert value(got, "edgefleet_rollout_devices", model="kws", state="activated") == 1
    assert value(got, "edgefleet_rollout_devices", model="kws", state="pending") == 1
    assert value(got, "edgefleet_drift_alerts_open", model="kws", scope="fleet") == 1
    assert value(got, "edgefleet_drift_alerts_open", model="kws", scope="device") == 1
    assert value(got, "edgefleet_ingest_queue_depth") == 0  # all written
    assert value(got, "edgefleet_ingest_oldest_waiting_seconds") == 0
    assert value(got, "edgefleet_ingest_dropped_total", reason="too_old") == 0
    # no label names a device
    assert not any(d in v for _, labels in got for _, v in labels for d in ("gw-", "pi-"))

    promtool = shutil.which("promtool")
    assert promtool is not None, "promtool missing: ./scripts/setup installs Debian's prometheus"
    checked = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


class HeldApplier:
    """An applier that holds the writer until released: a database slower than devices."""

    def __init__(self) -> None:
        self.release = threading.Event()

    def apply(self, s: Session, reports: Sequence[Report]) -> Mapping[str, int]:
        self.release.wait(30)
        return {}

    def committed(self, reports: Sequence[Report]) -> Mapping[str, int]:
        return {}


def test_ingest_lag_is_the_backlog_and_the_age_of_its_oldest_report(tmp_path: Path) -> None:
    held = HeldApplier()
    ingest = Ingest(hub_engine(tmp_path), [held])
    ingest.start()
    try:
        assert ingest.lag() == (0, 0.0)
        for seq in range(5):
            ingest.put(report("gw-1", "telemetry", window(seq, "kws", 1, [30_000])))
        time.sleep(0.3)
        depth, oldest_s = ingest.lag()
        assert depth == 5 and 0.3 <= oldest_s < 5
        held.release.set()
        assert ingest.flush(10)
        assert ingest.lag() == (0, 0.0)
    finally:
        held.release.set()
        ingest.stop()


@pytest.mark.broker
def test_the_totals_survive_a_restart_and_a_version_idle_for_a_day_leaves(
    private_mosquitto: Mosquitto, tmp_path: Path
) -> None:
    kws1, kws2 = {"model": "kws", "version": "1"}, {"model": "kws", "version": "2"}
    with served_hub(private_mosquitto, tmp_path / "hub") as served:
        served.hub.ingest.write_batch(
            [
                report("gw-1", "telemetry", window(1, "kws", 1, [30_000] * 4, labels=(4, 3))),
                report("gw-2", "telemetry", window(1, "kws", 2, [30_000] * 6)),
            ]
        )
        before = samples(served.scrape())
    assert value(before, "edgefleet_model_inferences_total", **kws1) == 4
    with served_hub(private_mosquitto, tmp_path / "hub") as served:  # the same database
        served.hub.ingest.write_batch(
            [report("gw-1", "telemetry", window(2, "kws", 1, [30_000] * 5))]
        )
        after = samples(served.scrape())
        with session(served.hub.engine) as s:  # kws v2's last window, a day and more ago
            for row in s.exec(select(ModelFigure).where(ModelFigure.version == 2)):
                row.updated_at -= FIGURES_IDLE_S + 60
                s.add(row)
            s.commit()
        later = samples(served.scrape())
    assert value(after, "edgefleet_model_inferences_total", **kws1) == 9  # 4 before, 5 since
    assert value(after, "edgefleet_model_correct_total", **kws1) == 3
    assert value(after, "edgefleet_model_inferences_total", **kws2) == 6
    assert value(later, "edgefleet_model_inferences_total", **kws1) == 9
    assert not any(dict(labels).get("version") == "2" for _, labels in later)
