"""The fault drill's command line (``python -m bench drill --help``): bench/drill.py."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from agent.spool import DEFAULT_MAX_BYTES

DEVICE_DIR = "/dev/shm"  # device state on tmpfs, as bench/rollout.py explains


def parse(argv: list[str], drill_doc: str | None = None) -> argparse.Namespace:
    """The drill's settings; ``drill_doc`` (bench/drill.py's docstring) is the help text."""
    p = argparse.ArgumentParser(
        prog="python -m bench drill",
        description=drill_doc,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--devices", type=int, default=1000)
    p.add_argument("--processes", type=int, default=2, help="fleet worker processes")
    p.add_argument("--hidden", type=int, default=512, help="MLP width: 512 gives ~270 KB int8")
    p.add_argument("--corrupt-p", type=float, default=0.01, help="chance a chunk is corrupted")
    p.add_argument("--crash-share", type=float, default=0.10, help="devices that crash")
    p.add_argument("--link-share", type=float, default=0.05, help="devices that lose the link")
    p.add_argument("--link-loss-s", type=float, default=30.0, help="seconds without a link")
    p.add_argument("--broker-restarts", type=int, default=2)
    p.add_argument("--broker-down-s", type=float, default=1.0, help="seconds a restart takes")
    p.add_argument("--leader-kills", type=int, default=1, help="SIGKILLs of the leader hub")
    p.add_argument(
        "--replicas",
        type=int,
        default=2,
        help="hub replicas over PostgreSQL (fail-over); 1: one hub over SQLite (restart)",
    )
    p.add_argument(
        "--pg",
        default="postgresql+psycopg://postgres@127.0.0.1:5432/test",
        help="PostgreSQL for the replicas: the drill creates a schema there and drops it",
    )
    p.add_argument("--rows-per-s", type=float, default=5.0, help="inference rows/s per device")
    p.add_argument("--infer-share", type=float, default=0.1, help="devices that infer")
    p.add_argument("--window-s", type=float, default=10.0, help="telemetry window, seconds")
    p.add_argument(
        "--heartbeat-s",
        type=float,
        default=None,
        help="idle windows coalesce into one per this many seconds (default: the window, "
        "so every device sends every window and all of them are counted)",
    )
    p.add_argument(
        "--spool-bytes",
        type=int,
        default=DEFAULT_MAX_BYTES,
        help="each device's telemetry spool bound (agent/spool.py)",
    )
    p.add_argument("--fetch-timeout-s", type=float, default=30.0, help="agent re-asks after")
    p.add_argument("--settle-s", type=float, default=5.0, help="run on after the drill")
    p.add_argument("--seed", type=int, default=14)
    p.add_argument(
        "--device-dir",
        type=Path,
        default=Path(DEVICE_DIR) if os.path.isdir(DEVICE_DIR) else None,
        help=f"where the simulated devices keep their files (default {DEVICE_DIR})",
    )
    p.add_argument("--timeout", type=float, default=600.0, help="seconds per rollout")
    p.add_argument("--keep", action="store_true", help="keep the work directory and the schema")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args(argv)
    for name in ("corrupt_p", "crash_share", "link_share", "infer_share"):
        if not 0 <= getattr(args, name) <= 1:
            p.error(f"--{name.replace('_', '-')} must be within 0..1")
    if args.devices < 1 or args.processes < 1 or args.replicas < 1:
        p.error("--devices, --processes and --replicas must be >= 1")
    if args.heartbeat_s is None:
        args.heartbeat_s = args.window_s
    return args
