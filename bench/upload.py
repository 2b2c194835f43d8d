"""A dataset upload's cost to the hub: a CSV of N MB through the real API and hub process.

A private Mosquitto and ``edgefleet hub serve --dev`` (a child process, as in a
rehearsal) are started; a CSV of about N MB (16 float columns and an integer label) is
written to disk and uploaded with the Python client, streamed. A thread samples the
hub's resident memory every 20 ms from before the upload until the answer; the figure
is the peak growth against the file's size (goal: at most 2x).
"""

from __future__ import annotations

import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from edgefleet.client import HubClient
from edgefleet.stage import HubProcess
from hub.access.keys import DEV_KEY
from hub.transport.broker import Mosquitto

SAMPLE_S = 0.02  # seconds between memory samples
COLUMNS = 16


def write_csv(path: Path, mb: float, seed: int = 0) -> Path:
    """About ``mb`` MB of numeric rows with a header and an integer label, in blocks."""
    rng = np.random.default_rng(seed)
    header = ",".join([*(f"f{i}" for i in range(COLUMNS)), "label"]) + "\n"
    with path.open("w") as f:
        f.write(header)
        while f.tell() < mb * 1e6:
            x = rng.normal(size=(20_000, COLUMNS))
            y = (x[:, 0] > 0).astype(int) + (x[:, 1] > 1).astype(int)
            block = np.column_stack([x, y])
            np.savetxt(f, block, fmt=["%.6f"] * COLUMNS + ["%d"], delimiter=",")
    return path


def measure_upload(mb: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="edgefleet-upload-") as tmp:
        work = Path(tmp)
        csv = write_csv(work / "big.csv", mb)
        size = csv.stat().st_size
        broker = Mosquitto(work / "broker")
        broker.start()
        hub = HubProcess(work / "hub", broker.address.url).start()
        try:
            return _upload(hub, csv, size)
        finally:
            hub.stop()
            broker.stop()


def _upload(hub: HubProcess, csv: Path, size: int) -> dict[str, Any]:
    assert hub.pid is not None
    proc = psutil.Process(hub.pid)
    time.sleep(1.0)  # let the hub settle after start
    base = proc.memory_info().rss
    peak = [base]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(SAMPLE_S)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t0 = time.perf_counter()
    with HubClient(hub.url, api_key=DEV_KEY, timeout=600) as client:
        version = client.upload_dataset("big", csv, label="label")
    seconds = time.perf_counter() - t0
    done.set()
    sampler.join()
    growth = peak[0] - base
    return {
        "file_mb": size / 1e6,
        "rows": version["rows"],
        "seconds": seconds,
        "rss_before_mb": base / 1e6,
        "peak_growth_mb": growth / 1e6,
        "growth_ratio": growth / size,
        "goal_ratio": 2.0,
    }
