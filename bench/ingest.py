"""The hub's telemetry ingest against ``mosquitto_sub`` on the same stream of messages.

The parts are real and are the hub's own, built as the hub builds them: a private
Mosquitto from the hub's development config (hub/transport/broker.py, queues sized per
DESIGN §8), and the ways the hub takes telemetry (bench/ingest_consumers.py):

- ``single``: the default hub process, no workers: its telemetry intake
  (hub/transport/intake.py, ADR 0033) beside its paho link;
- ``workers`` (the headline ``hub_msgs_per_s``): ``--consumers`` ingest worker
  processes (``edgefleet hub serve --ingest-workers N``) on their ``$share`` group;
- ``paho`` (``--paths all``): telemetry through the hub's paho link, as before the intake;
- ``raw``: the ``mosquitto_sub`` binary, the reference.

Every hub path applies the same envelope and body validation, writes batched,
idempotent inserts into a fresh SQLite file (WAL), and refuses windows older than the hub
keeps raw (the stream is dated just before the run).

The stream: ``--devices`` device ids, ``--windows`` telemetry windows each (valid
``telemetry`` envelopes as agent/core.py sends them, with a sparse latency histogram),
plus ``--replay`` of them sent a second time, as a device replaying its spool after a
lost PUBACK would.

How the comparison is kept fair and repeatable: each side gets a broker of its own,
registers its persistent sessions (clean session off, QoS 1 on ``ef/v1/dev/+/telemetry``)
and goes away; then rounds follow: the stream is published while the side is away (the
broker queues it), and the side reconnects and drains its queue, timed, so no consumer
shares the two cores with the publisher or with another consumer. The sides take turns
round by round, so that a load that comes and goes on the machine falls on all of them,
until each has drained for ``--seconds`` (10 s by default) in all; its rate is messages /
drained seconds. (A single drain of ``mosquitto_sub`` lasts about half a second, and
such short runs swung from 155k to 264k msg/s.) That is one repeat; there are
``--repeats``, and each side's spread over them is reported (min / median / max, and
(max - min) / median), and so is each hub path's ratio per repeat. ``ratio`` = the
median hub rate / the median raw rate. Each hub round's outcome is checked: rows in
SQLite = unique windows, duplicates counted = replays sent (``exact``).
``cpu_us_per_msg``: the consumer processes' CPU (user + system) per message.

Run from the checkout::

    python -m bench ingest [--devices 1000] [--windows 100] [--replay 0.05]
                           [--consumers 2] [--paths both|all|single|workers|paho]
                           [--seconds 10] [--repeats 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.ingest_consumers import measure_hub, measure_raw, raw_command, register_hub_sessions
from bench.ingest_stream import make_stream, publish, publish_packets

log = logging.getLogger("bench.ingest")

# project goals: issue 5 (workers, ratio), issue 14 (the default single hub process)
GOALS = {"hub_msgs_per_s": 20_000.0, "ratio": 0.5, "single_msgs_per_s": 30_000.0}
PATHS = {"both": ["workers", "single"], "all": ["workers", "single", "paho"]}
RAW_QUEUES = 4  # raw sessions one publish fills: its drains are short, publishing is not
HOST = "127.0.0.1"


def consumers(args: argparse.Namespace, path: str) -> int:
    """Processes on a path: ``--consumers`` ingest workers, or the one hub process."""
    return args.consumers if path == "workers" else 1


def count_rows(db: Path) -> int:
    import sqlite3

    with sqlite3.connect(db) as conn:
        return int(conn.execute("SELECT count(*) FROM telemetry").fetchone()[0])


def _drain_hub(
    args: argparse.Namespace, side: str, host: str, port: int, db: Path, count: int
) -> dict[str, Any]:
    from hub.store.tables import make_engine, sqlite_url

    make_engine(sqlite_url(db)).dispose()  # the tables, before processes share the file
    got = measure_hub(host, port, db, count, consumers(args, side), side)
    got["rows_stored"] = count_rows(db)
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    return got


class Side:
    """One side of the comparison on a broker of its own: its sessions registered, then
    rounds of publish-then-drain, added up."""

    def __init__(
        self, args: argparse.Namespace, name: str, packets: list[bytes], unique: int, work: Path
    ) -> None:
        from hub.transport.broker import Mosquitto

        self.args, self.name, self.work = args, name, work
        self.packets, self.unique = packets, unique
        self.totals: dict[str, Any] = {"messages": 0, "seconds": 0.0, "cpu_s": 0.0, "rounds": 0}
        self.totals.update(publish_s=0.0, exact=True, dropped={})
        self.broker = Mosquitto(work / f"broker-{name}").start()
        self.port = self.broker.port
        self.queues = RAW_QUEUES if name == "raw" else 1
        try:
            self._register()
        except BaseException:
            self.broker.stop()
            raise

    def _register(self) -> None:
        """Each consumer connects once: the broker then queues the stream for it."""
        if self.name == "raw":
            for i in range(self.queues):
                subprocess.run(raw_command(HOST, self.port, None, i), check=True, timeout=30)
        else:
            n = consumers(self.args, self.name)
            register_hub_sessions(HOST, self.port, self.work / "register.db", n, self.name)

    @property
    def done(self) -> bool:
        return self.totals["rounds"] > 0 and self.totals["seconds"] >= self.args.seconds

    def round(self) -> None:
        """Publish the stream while the side is away, then drain each of its queues."""
        t, n = self.totals, len(self.packets)
        t["publish_s"] += publish(HOST, self.port, self.packets)
        for i in range(self.queues):
            if self.name == "raw":
                got = measure_raw(HOST, self.port, n, i)
            else:
                got = _drain_hub(self.args, self.name, HOST, self.port, self.work / "hub.db", n)
                exact = got["rows_stored"] == self.unique and got["duplicates"] == n - self.unique
                t["exact"] = t["exact"] and exact and got["messages"] == n
                for k, v in got["dropped"].items():
                    t["dropped"][k] = t["dropped"].get(k, 0) + v
            for k in ("messages", "seconds", "cpu_s"):
                t[k] += got[k]
            t["rounds"] += 1

    def close(self) -> dict[str, Any]:
        """Stop the broker; the side's totals."""
        self.broker.stop()
        t = self.totals
        n, s = t["messages"], t["seconds"]
        t["msgs_per_s"] = round(n / s, 1) if s > 0 else 0.0
        t["cpu_us_per_msg"] = round(t["cpu_s"] / n * 1e6, 1) if n else None
        for k in ("seconds", "cpu_s", "publish_s"):
            t[k] = round(t[k], 3)
        return t


def measure_repeat(
    args: argparse.Namespace, names: list[str], packets: list[bytes], unique: int
) -> dict[str, dict[str, Any]]:
    """One repeat: the sides take turns round by round until each has drained for
    ``--seconds``, so that a load that comes and goes falls on all of them."""
    work = Path(tempfile.mkdtemp(prefix="ef-bench-ingest-"))
    sides: list[Side] = []
    try:
        sides = [Side(args, name, packets, unique, work) for name in names]
        while not all(side.done for side in sides):
            for side in sides:
                if not side.done:
                    side.round()
        return {side.name: side.close() for side in sides}
    finally:
        for side in sides:
            side.broker.stop()
        shutil.rmtree(work, ignore_errors=True)


def spread(values: list[float]) -> dict[str, float]:
    """min / median / max and (max - min) / median in percent."""
    med = statistics.median(values)
    lo, hi = min(values), max(values)
    return {
        "min": round(lo, 3),
        "median": round(med, 3),
        "max": round(hi, 3),
        "spread_pct": round((hi - lo) / med * 100, 1) if med else 0.0,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    if shutil.which("mosquitto_sub") is None:
        raise SystemExit("mosquitto_sub is not on PATH (apt-get install mosquitto-clients)")
    t_make = time.monotonic()
    stream = make_stream(args.devices, args.windows, args.replay)
    packets = publish_packets(stream)
    make_s = time.monotonic() - t_make
    unique = args.devices * args.windows
    paths = PATHS.get(args.paths, [args.paths])
    runs: dict[str, list[dict[str, Any]]] = {side: [] for side in ["raw", *paths]}
    for _ in range(args.repeats):
        for side, totals in measure_repeat(args, list(runs), packets, unique).items():
            runs[side].append(totals)
    return report(args, stream, unique, runs, make_s)


def report(
    args: argparse.Namespace,
    stream: list[tuple[str, bytes]],
    unique: int,
    runs: dict[str, list[dict[str, Any]]],
    make_s: float,
) -> dict[str, Any]:
    raw_rates = [r["msgs_per_s"] for r in runs["raw"]]
    sides: dict[str, Any] = {}
    medians: dict[str, float] = {}
    ratios: dict[str, float | None] = {}
    for side, repeats in runs.items():
        rates = [r["msgs_per_s"] for r in repeats]
        medians[side] = statistics.median(rates)
        sides[side] = {"msgs_per_s": spread(rates), "repeats": repeats}
        if side != "raw":
            per_repeat = [h / r for h, r in zip(rates, raw_rates, strict=True) if r]
            sides[side]["ratio"] = spread(per_repeat) if per_repeat else None
            raw = medians["raw"]
            ratios[side] = round(medians[side] / raw, 3) if raw else None
    head = "workers" if "workers" in ratios else next(iter(ratios))
    exact = all(r["exact"] for side in runs if side != "raw" for r in runs[side])
    out: dict[str, Any] = {
        "benchmark": "ingest",
        "hub_msgs_per_s": medians[head],
        "raw_msgs_per_s": medians["raw"],
        "ratio": ratios[head],
        "headline": head,
        **{f"{side}_msgs_per_s": medians[side] for side in ratios},
        **{f"{side}_ratio": ratios[side] for side in ratios},
        "exact": exact,
        "messages": len(stream),
        "devices": args.devices,
        "hub_consumers": args.consumers,
        "windows_per_device": args.windows,
        "unique_windows": unique,
        "duplicates_sent": len(stream) - unique,
        "payload_bytes_avg": round(sum(len(p) for _, p in stream) / len(stream), 1),
        "seconds_per_side": args.seconds,
        "repeats": args.repeats,
        "sides": sides,
        "cpu_us_per_msg": {side: runs[side][-1]["cpu_us_per_msg"] for side in runs},
        "stream_build_s": round(make_s, 3),
        "goals": GOALS,
        "cpus": len(os.sched_getaffinity(0)),
        "python": sys.version.split()[0],
    }
    single = out.get("single_msgs_per_s")
    out["met"] = bool(
        exact
        and out["hub_msgs_per_s"] >= GOALS["hub_msgs_per_s"]
        and (out["ratio"] or 0.0) >= GOALS["ratio"]
        and (single is None or single >= GOALS["single_msgs_per_s"])
    )
    return out


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench ingest",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--windows", type=int, default=100, help="telemetry windows per device")
    parser.add_argument("--replay", type=float, default=0.05, help="fraction sent twice")
    parser.add_argument(
        "--consumers", type=int, default=2, help="hub ingest workers sharing the topic"
    )
    parser.add_argument(
        "--paths",
        choices=("both", "all", "single", "workers", "paho"),
        default="both",
        help="hub paths: both = single and workers; all = those and paho",
    )
    parser.add_argument(
        "--seconds", type=float, default=10.0, help="drained seconds per side and repeat, at least"
    )
    parser.add_argument("--repeats", type=int, default=3, help="turns of every side")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    if args.devices < 1 or args.windows < 1 or not 0 <= args.replay <= 1:
        parser.error("--devices and --windows must be >= 1, --replay within 0..1")
    if args.repeats < 1 or args.seconds < 0 or args.consumers < 1:
        parser.error("--repeats and --consumers must be >= 1, --seconds >= 0")
    logging.basicConfig(level=logging.WARNING)
    report = run(args)
    if args.json:
        print(json.dumps(report))
    else:
        _print_table(report)
    return 0 if report["exact"] else 1


def _print_table(r: dict[str, Any]) -> None:
    print(
        f"{r['messages']:,} messages a round ({r['duplicates_sent']:,} replays, "
        f"{r['devices']} devices), >= {r['seconds_per_side']} s per side, "
        f"{r['repeats']} repeats; exact={r['exact']} met={r['met']}"
    )
    print(f"{'side':<10} {'msg/s median':>13} {'min':>10} {'max':>10} {'spread':>7} "
          f"{'ratio':>6} {'ratio min-max':>14} {'µs/msg':>7}")  # fmt: skip
    for side, got in r["sides"].items():
        rate, ratio = got["msgs_per_s"], got.get("ratio")
        span = f"{ratio['min']:.3f}-{ratio['max']:.3f}" if ratio else ""
        ratio_median = f"{r[side + '_ratio']:.3f}" if ratio else ""
        print(
            f"{side:<10} {rate['median']:>13,.0f} {rate['min']:>10,.0f} {rate['max']:>10,.0f} "
            f"{rate['spread_pct']:>6.1f}% {ratio_median:>6} {span:>14} "
            f"{r['cpu_us_per_msg'][side] or 0:>7.1f}"
        )
    g = r["goals"]
    print(
        f"goals: workers >= {g['hub_msgs_per_s']:,.0f} msg/s and ratio >= {g['ratio']}; "
        f"single >= {g['single_msgs_per_s']:,.0f} msg/s"
    )
