"""Memory and time of ``read_dataset`` on a big numeric CSV (hub/ml/data/files.py).

Writes a CSV of about ``--mb`` MB (``--features`` float columns printed with 8 significant
digits, and an integer label of 5 classes) to a temporary directory, then reads it in a
fresh process. Reports the file size, the reader's peak RSS growth and that growth as a
multiple of the file size, the size of the float32 ``x`` it returns, and the seconds the
read took. The goal is a growth well under 2x the file.

The peak is Linux's high-water mark of the process (``VmHWM``), reset just before the read
(``/proc/self/clear_refs``), minus the RSS then. Not ``ru_maxrss``: a child inherits its
parent's across fork and exec, so the writer's peak would hide the reader's.

    python -m bench dataset_files [--json] [--mb 200] [--features 16]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

ROWS_PER_WRITE = 200_000  # rows generated and written at a time (bounds the writer's memory)


def _write_csv(path: Path, target_bytes: int, features: int) -> int:
    """A numeric CSV of at least ``target_bytes``; returns its number of data rows."""
    rng = np.random.default_rng(0)
    names = [f"f{j}" for j in range(features)]
    rows = 0
    with path.open("wb") as out:
        out.write((",".join([*names, "label"]) + "\n").encode())
        while out.tell() < target_bytes:
            x = rng.normal(size=(ROWS_PER_WRITE, features))
            columns = [pa.array([f"{v:.8g}" for v in x[:, j]]) for j in range(features)]
            labels = pa.array(rng.integers(0, 5, ROWS_PER_WRITE))
            table = pa.table([*columns, labels], names=[*names, "label"])
            options = pacsv.WriteOptions(include_header=False, quoting_style="none")
            pacsv.write_csv(table, out, write_options=options)
            rows += ROWS_PER_WRITE
    return rows


def _status_kib(field: str) -> int:
    """A field of /proc/self/status, in KiB (``VmRSS``, ``VmHWM``)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status (this benchmark needs Linux)")


def _child(path: Path) -> int:
    """Read ``path`` and print the figures as JSON (run in a fresh process)."""
    from hub.ml.data.files import read_dataset

    Path("/proc/self/clear_refs").write_text("5")  # the high-water mark is the RSS now
    base_kib = _status_kib("VmRSS")
    t0 = time.perf_counter()
    parsed = read_dataset(path, "csv", label="label")
    seconds = time.perf_counter() - t0
    peak_kib = _status_kib("VmHWM")
    figures = {
        "rows": parsed.schema["rows"],
        "seconds": round(seconds, 2),
        "rss_growth_mib": round((peak_kib - base_kib) / 1024, 1),
        "x_mib": round(parsed.x.nbytes / 2**20, 1),
    }
    print(json.dumps(figures))
    return 0


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m bench dataset_files")
    p.add_argument("--json", action="store_true")
    p.add_argument("--mb", type=float, default=200.0, help="size of the CSV, in MB (10**6)")
    p.add_argument("--features", type=int, default=16)
    p.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child is not None:
        return _child(args.child)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "big.csv"
        _write_csv(path, int(args.mb * 10**6), args.features)
        size = path.stat().st_size
        run = subprocess.run(
            [sys.executable, "-m", "bench", "dataset_files", "--child", str(path)],
            capture_output=True,
            text=True,
            check=True,
        )
    figures = json.loads(run.stdout)
    figures["file_mib"] = round(size / 2**20, 1)
    figures["rss_growth_per_file_byte"] = round(figures["rss_growth_mib"] / figures["file_mib"], 2)
    if args.json:
        print(json.dumps(figures))
    else:
        for k, v in figures.items():
            print(f"{k:>26}: {v}")
    return 0
