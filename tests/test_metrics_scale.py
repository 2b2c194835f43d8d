"""``GET /metrics`` on a fleet of 10,000 devices: the series do not grow with the fleet,
and a scrape stays fast.

A real hub, its real ingest writer and SQLite: 1,000 devices and then 9,000 more (three
device classes, three models in two versions each), each storing three telemetry windows
with latencies and labels, all in a rollout in progress, one in twenty with a drift
alert open. The series in the real ``/metrics`` output are counted at 1,000 and at
10,000 devices: the same number. docs/hub.md gives the figures this test prints.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import pytest
from metrics_rig import Served, open_alert, paused_rollout, report, samples, served_hub, window

from hub.ingest.report import Report
from hub.transport.broker import Mosquitto

pytestmark = [pytest.mark.broker]

CLASSES = ("generic-linux", "pi-litert", "jetson")
MODELS = ("kws", "vib", "cam")
WINDOWS_PER_DEVICE = 3
SCRAPE_BUDGET_S = 1.0  # a scrape of 10,000 devices, on a loaded two-core machine


def add_devices(served: Served, first: int, last: int) -> None:
    """Devices ``first``..``last - 1`` report their state and three windows each."""
    batch: list[Report] = []
    for i in range(first, last):
        device = f"dev-{i:05d}"
        model, version = MODELS[i % len(MODELS)], 1 + (i // 7) % 2
        batch.append(report(device, "state", {"status": "online", "device_class": CLASSES[i % 3]}))
        for seq in range(WINDOWS_PER_DEVICE):
            latencies = [(20 + (i * 7 + seq * 13 + k) % 3000) * 1000 for k in range(8)]
            body = window(seq, model, version, latencies, labels=(4, 3), spool_dropped=i % 2)
            batch.append(report(device, "telemetry", body))
        if len(batch) >= 2000:
            served.hub.ingest.write_batch(batch)
            batch = []
    served.hub.ingest.write_batch(batch)
    paused_rollout(
        served.hub,
        f"r-{first}",
        "kws",
        {f"dev-{i:05d}": ("activated", "pending", "sent")[i % 3] for i in range(first, last)},
    )
    for i in range(first, last, 20):
        open_alert(served.hub, MODELS[i % len(MODELS)], "device", f"dev-{i:05d}")


def scrape_series(served: Served) -> tuple[int, float, str]:
    """The number of series in ``/metrics``, the median scrape time (s), and the text."""
    served.scrape()  # the first scrape adds its own route's request series
    times = []
    for _ in range(5):
        started = time.perf_counter()
        text = served.scrape()
        times.append(time.perf_counter() - started)
    return len(samples(text)), statistics.median(times), text


def test_series_stay_the_same_from_1000_to_10000_devices_and_a_scrape_stays_fast(
    private_mosquitto: Mosquitto, tmp_path: Path
) -> None:
    with served_hub(private_mosquitto, tmp_path / "hub") as served:
        add_devices(served, 0, 1000)
        series_1k, scrape_1k, _ = scrape_series(served)
        started = time.perf_counter()
        add_devices(served, 1000, 10_000)
        built_s = time.perf_counter() - started
        series_10k, scrape_10k, text = scrape_series(served)
    got = samples(text)
    online = sum(v for (n, _), v in got.items() if n == "edgefleet_devices")
    assert online == 10_000
    assert sum(v for (n, _), v in got.items() if n == "edgefleet_model_inferences_total") == (
        10_000 * WINDOWS_PER_DEVICE * 8
    )
    assert sum(v for (n, _), v in got.items() if n == "edgefleet_rollout_devices") == 10_000
    assert series_10k == series_1k, "the series grew with the fleet"
    print(
        f"\nseries: {series_1k} at 1,000 devices, {series_10k} at 10,000;"
        f" scrape: {scrape_1k * 1000:.1f} ms at 1,000, {scrape_10k * 1000:.1f} ms at 10,000"
        f" ({len(text)} bytes); 9,000 devices stored in {built_s:.1f} s"
    )
    assert scrape_10k < SCRAPE_BUDGET_S
