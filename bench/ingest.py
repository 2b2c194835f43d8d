"""The hub's telemetry ingest against ``mosquitto_sub`` on the same stream of messages.

The parts are real and are the hub's own, built as the hub builds them: a private
Mosquitto from the hub's development config (hub/transport/broker.py, queues sized per DESIGN §8),
and the two ways the hub takes telemetry:

- ``fast`` (the headline): ``--consumers`` ingest workers, the processes ``edgefleet hub
  serve --ingest-workers N`` starts (hub/workers.py ``IngestWorker``: the
  subscribe-only client of hub/transport/fastsub.py on the workers' ``$share`` group, into an
  inline writer that commits each batch before acknowledging it);
- ``paho``: the hub process itself when it runs without workers (hub/transport/link.py ``MqttLink``
  with the hub's subscriptions and manual acknowledgements, into ``Ingest`` with its
  writer thread).

Both apply the same envelope and body validation, write batched, idempotent inserts into
a fresh SQLite file (WAL), and refuse windows older than the hub keeps raw (the stream is
dated just before the run). And the ``mosquitto_sub`` binary.

How the comparison is kept fair: every consumer first registers a persistent session
(clean session off, QoS 1 subscriptions to ``ef/v1/dev/+/telemetry``) and disconnects.
Then ONE stream is published at QoS 1 while all are away, so the broker queues the very
same messages for each: ``--devices`` device ids, ``--windows`` telemetry windows each
(valid ``telemetry`` envelopes as agent/core.py sends them, with a sparse latency
histogram), plus ``--replay`` of them sent a second time, as a device replaying its spool
after a lost PUBACK would. Each consumer then reconnects on its own, one after the other,
so none shares the two cores with the publisher or another consumer, and drains its
queue:

- ``raw``: ``mosquitto_sub -c -q 1 -C <all>`` printing one byte per message into a
  pipe this process counts; the clock runs from the first byte to the process's exit.
- ``hub``: the clock runs from the first message any of its processes counted to the
  moment every message is committed (stored, or counted a duplicate), as
  ``Ingest.counts`` reports after each commit.

``ratio`` = hub_msgs_per_s / raw_msgs_per_s (the workers', unless ``--paths paho``;
``paho_msgs_per_s`` and ``paho_ratio`` are the single hub process's). The run also
checks the outcome of every path: rows in SQLite = unique windows, and the duplicates
counted = the replays sent. ``cpu_us_per_msg``: the consumer processes' CPU (user +
system) per message. The stream is telemetry only: drift windows (scored as they come)
and states and events stay with the hub process.

Run from the checkout::

    python -m bench ingest [--devices 1000] [--windows 100] [--replay 0.05]
                           [--consumers 2] [--paths both|fast|paho] [--json]
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil

log = logging.getLogger("bench.ingest")

GOALS = {"hub_msgs_per_s": 20_000.0, "ratio": 0.5}  # project goals (issue 5)
TOPIC_FILTER = "ef/v1/dev/+/telemetry"
HUB_CLIENT_ID = "bench-ingest-hub"
RAW_CLIENT_ID = "bench-ingest-raw"
PUBLISH_WINDOW = 1000  # publisher: QoS 1 messages in flight at once
POLL_S = 0.002  # polling of the hub's counters
SUBSCRIBE_SETTLE_S = 0.5  # after CONNACK, for the SUBACK of a session being registered


def make_stream(
    devices: int, windows: int, replay: float, seed: int = 1
) -> list[tuple[str, bytes]]:
    """(topic, payload) of every message, in publish order; replays at random places."""
    from agent.telemetry import InferenceStats
    from shared import protocol

    rng = random.Random(seed)
    out: list[tuple[str, bytes]] = []
    # recent windows: the hub refuses ones older than its retention keeps raw (RAW_AGE_S)
    t0 = time.time() - windows * 10.0 - 60.0
    for w in range(windows):
        for d in range(devices):
            stats = InferenceStats(count=50, rows=250, labelled=250, correct=240)
            for _ in range(50):
                stats.latency.record(int(rng.lognormvariate(11.5, 0.3)))  # ~100 µs
            body = {
                "seq": w,
                "start": t0 + w * 10.0,
                "end": t0 + (w + 1) * 10.0,
                "model": "bench",
                "version": 1,
                **stats.summary(),
                "cpu_pct": 3.5,
                "rss_bytes": 60_000_000,
                "spool_dropped": 0,
            }
            device_id = f"bench-{d:05d}"
            payload = protocol.encode("telemetry", body, ts=body["end"])
            out.append((protocol.topic(device_id, "telemetry"), payload))
    n_replay = int(len(out) * replay)
    for topic, payload in rng.sample(out, n_replay):
        out.insert(rng.randrange(len(out)), (topic, payload))
    return out


def consumers(args: argparse.Namespace, path: str) -> int:
    """Processes on a path: ``--consumers`` ingest workers, or the one hub process."""
    return args.consumers if path == "fast" else 1


def publish_stream(host: str, port: int, stream: list[tuple[str, bytes]]) -> float:
    """Publish at QoS 1, at most PUBLISH_WINDOW unacknowledged; seconds taken."""
    import paho.mqtt.client as mqtt

    done = threading.Semaphore(PUBLISH_WINDOW)
    all_acked = threading.Event()
    acked = [0]

    def on_publish(*_a: Any) -> None:
        acked[0] += 1
        done.release()
        if acked[0] == len(stream):
            all_acked.set()

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-ingest-pub")
    client.max_inflight_messages_set(PUBLISH_WINDOW)
    client.max_queued_messages_set(0)
    client.on_publish = on_publish
    client.connect(host, port)
    client.loop_start()
    t0 = time.monotonic()
    for topic, payload in stream:
        done.acquire()
        client.publish(topic, payload, qos=1)
    if not all_acked.wait(600):
        raise RuntimeError(f"publisher: only {acked[0]}/{len(stream)} acknowledged")
    seconds = time.monotonic() - t0
    client.disconnect()
    client.loop_stop()
    return seconds


def raw_command(host: str, port: int, count: int | None) -> list[str]:
    cmd = ["mosquitto_sub", "-h", host, "-p", str(port), "-i", RAW_CLIENT_ID, "-c", "-q", "1"]
    cmd += ["-t", TOPIC_FILTER, "-F", "."]  # one byte (and a newline) per message
    return [*cmd, "-E"] if count is None else [*cmd, "-C", str(count)]


def measure_raw(host: str, port: int, count: int) -> dict[str, Any]:
    """Drain the raw consumer's queue; its rate and CPU time."""
    proc = subprocess.Popen(raw_command(host, port, count), stdout=subprocess.PIPE)
    assert proc.stdout is not None
    ps = psutil.Process(proc.pid)
    first = proc.stdout.read(1)
    t0 = time.monotonic()
    received = 1 if first == b"." else 0
    cpu = (0.0, 0.0)
    while chunk := proc.stdout.read1(65536):
        received += chunk.count(b".")
        try:
            t = ps.cpu_times()
            cpu = (t.user, t.system)
        except psutil.Error:
            pass
    proc.wait(60)
    seconds = time.monotonic() - t0
    return {
        "messages": received,
        "seconds": round(seconds, 3),
        "msgs_per_s": round(received / seconds, 1) if seconds > 0 else None,
        "cpu_s": round(sum(cpu), 3),
    }


def start_hub_consumer(
    host: str,
    port: int,
    db: Path,
    index: int,
    consumers: int,
    path: str = "fast",
    *,
    connect: bool = True,
) -> Any:
    """The hub's own consumer and writer on ``db``, built as the hub builds them.

    ``fast``: ingest worker ``index`` (hub/workers.py, what ``edgefleet hub serve
    --ingest-workers N`` starts: hub/transport/fastsub.py into an inline writer, on the workers'
    ``$share`` group). ``paho``: the hub process itself when it has no workers
    (hub/transport/link.py ``MqttLink`` with the hub's subscriptions, into ``Ingest``, its writer
    thread). Both refuse windows older than the hub's retention (``RAW_AGE_S``).
    """
    from hub import make_ingest, serve_devices
    from hub.store.tables import make_engine, sqlite_url
    from hub.telemetry.retention import RAW_AGE_S
    from hub.transport.broker import BrokerAddress
    from hub.transport.link import MqttLink, hub_subscriptions
    from hub.workers import IngestWorker, WorkerConfig

    consumer: Any
    if path == "fast":
        url = BrokerAddress(host, port).url
        consumer = IngestWorker(
            WorkerConfig(url, sqlite_url(db), index=index, raw_max_age_s=RAW_AGE_S)
        )
        ingest = consumer.ingest
        if connect:
            consumer.start()
        return consumer, ingest
    ingest = make_ingest(make_engine(sqlite_url(db)), raw_max_age_s=RAW_AGE_S)
    ingest.start()
    # registry and trust answer fetches only: telemetry never touches them
    consumer = MqttLink(
        BrokerAddress(host, port),
        client_id=f"{HUB_CLIENT_ID}-{path}-{index}",
        subscriptions=hub_subscriptions(),
    )
    serve_devices(consumer, ingest)
    if connect:
        consumer.start()
    return consumer, ingest


def register_hub_sessions(host: str, port: int, db: Path, consumers: int, path: str) -> None:
    for i in range(consumers):
        consumer, ingest = start_hub_consumer(host, port, db, i, consumers, path)
        time.sleep(SUBSCRIBE_SETTLE_S)
        consumer.stop()
        ingest.stop()


def hub_worker(
    host: str,
    port: int,
    db: Path,
    index: int,
    consumers: int,
    path: str,
    sync: dict[str, Any],
) -> None:
    """One hub ingest process: drain its share of the queue into SQLite, report."""
    logging.basicConfig(level=logging.WARNING)
    import resource

    # imports, engine and writer before the clock: they are the hub's start-up, not ingest
    consumer, ingest = start_hub_consumer(host, port, db, index, consumers, path, connect=False)
    sync["ready"].release()
    sync["go"].wait()
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    consumer.start()
    first = 0.0
    while not sync["stop"].is_set():
        if not first and consumer.counts["telemetry"]:
            first = time.time()
            sync["first"][index] = first
        sync["done"][index] = ingest.counts["telemetry"] + ingest.counts["write_errors"]
        time.sleep(POLL_S)
    consumer.stop()
    ingest.stop()
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    sync["results"].put(
        {
            "index": index,
            "cpu_s": round(cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime, 3),
            "stored": ingest.counts["telemetry"] - ingest.counts["telemetry_duplicates"],
            "duplicates": ingest.counts["telemetry_duplicates"],
            "write_errors": ingest.counts["write_errors"],
            "dropped": dict(consumer.dropped),
        }
    )


def measure_hub(
    host: str, port: int, db: Path, count: int, consumers: int, path: str
) -> dict[str, Any]:
    """Drain the hub consumers' queues into SQLite; rate, CPU time and outcome."""
    ctx = multiprocessing.get_context("spawn")
    sync = {
        "ready": ctx.Semaphore(0),
        "go": ctx.Event(),
        "stop": ctx.Event(),
        "first": ctx.Array("d", consumers),
        "done": ctx.Array("q", consumers),
        "results": ctx.Queue(),
    }
    procs = [
        ctx.Process(target=hub_worker, args=(host, port, db, i, consumers, path, sync))
        for i in range(consumers)
    ]
    for p in procs:
        p.start()
    for _ in procs:
        sync["ready"].acquire()  # imports done: they weigh on nobody's clock
    sync["go"].set()
    deadline = time.monotonic() + 600
    done = 0
    while time.monotonic() < deadline:
        done = sum(sync["done"])
        if done >= count:
            break
        time.sleep(POLL_S)
    end = time.time()
    sync["stop"].set()
    results = [sync["results"].get(timeout=60) for _ in procs]
    for p in procs:
        p.join(30)
    start = min(t for t in sync["first"] if t > 0)
    seconds = end - start
    cpu_s = sum(r["cpu_s"] for r in results)
    return {
        "path": path,
        "consumers": consumers,
        "messages": done,
        "seconds": round(seconds, 3),
        "msgs_per_s": round(done / seconds, 1) if seconds > 0 else None,
        "cpu_s": round(cpu_s, 3),
        "cpu_us_per_msg": round(cpu_s / done * 1e6, 1) if done else None,
        "stored": sum(r["stored"] for r in results),
        "duplicates": sum(r["duplicates"] for r in results),
        "write_errors": sum(r["write_errors"] for r in results),
        "dropped": {k: v for r in results for k, v in r["dropped"].items()},
    }


def count_rows(db: Path) -> int:
    import sqlite3

    with sqlite3.connect(db) as conn:
        return int(conn.execute("SELECT count(*) FROM telemetry").fetchone()[0])


def run(args: argparse.Namespace) -> dict[str, Any]:
    from hub.store.tables import make_engine, sqlite_url
    from hub.transport.broker import Mosquitto

    if shutil.which("mosquitto_sub") is None:
        raise SystemExit("mosquitto_sub is not on PATH (apt-get install mosquitto-clients)")
    work = Path(tempfile.mkdtemp(prefix="ef-bench-ingest-"))
    t_make = time.monotonic()
    stream = make_stream(args.devices, args.windows, args.replay)
    make_s = time.monotonic() - t_make
    unique = args.devices * args.windows
    paths = ["fast", "paho"] if args.paths == "both" else [args.paths]
    dbs = {path: work / f"hub-{path}.db" for path in paths}
    hubs: dict[str, dict[str, Any]] = {}
    try:
        with Mosquitto(work / "broker") as broker:
            host, port = "127.0.0.1", broker.port
            # register every persistent session, then let the broker queue the stream
            subprocess.run(raw_command(host, port, None), check=True, timeout=30)
            for path, db in dbs.items():
                make_engine(sqlite_url(db)).dispose()  # the tables, before processes share it
                register_hub_sessions(host, port, db, consumers(args, path), path)
            publish_s = publish_stream(host, port, stream)
            raw = measure_raw(host, port, len(stream))
            for path, db in dbs.items():
                n = consumers(args, path)
                hubs[path] = measure_hub(host, port, db, len(stream), n, path)
                hubs[path]["rows_stored"] = count_rows(db)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for h in hubs.values():
        h["exact"] = h["rows_stored"] == unique and h["duplicates"] == len(stream) - unique
    hub = hubs[paths[0]]
    rows = hub["rows_stored"]
    hub_rate, raw_rate = hub["msgs_per_s"] or 0.0, raw["msgs_per_s"] or 0.0
    ratio = round(hub_rate / raw_rate, 3) if raw_rate else None
    report: dict[str, Any] = {
        "benchmark": "ingest",
        "hub_msgs_per_s": hub_rate,
        "raw_msgs_per_s": raw_rate,
        "ratio": ratio,
        "messages": len(stream),
        "devices": args.devices,
        "hub_consumers": args.consumers,
        "windows_per_device": args.windows,
        "unique_windows": unique,
        "duplicates_sent": len(stream) - unique,
        "duplicates_counted": hub["duplicates"],
        "rows_stored": rows,
        "exact": all(h["exact"] for h in hubs.values()),
        "payload_bytes_avg": round(sum(len(p) for _, p in stream) / len(stream), 1),
        "hub": hub,
        "raw": raw,
        "cpu_us_per_msg": {
            "raw": round(raw["cpu_s"] / raw["messages"] * 1e6, 1) if raw["messages"] else None,
            **{path: h["cpu_us_per_msg"] for path, h in hubs.items()},
        },
        "publish_s": round(publish_s, 3),
        "stream_build_s": round(make_s, 3),
        "goal_hub_msgs_per_s": GOALS["hub_msgs_per_s"],
        "goal_ratio": GOALS["ratio"],
        "cpus": len(os.sched_getaffinity(0)),
        "python": sys.version.split()[0],
    }
    if "paho" in hubs and len(hubs) > 1:
        paho_rate = hubs["paho"]["msgs_per_s"] or 0.0
        report["paho_msgs_per_s"] = paho_rate
        report["paho_ratio"] = round(paho_rate / raw_rate, 3) if raw_rate else None
        report["hub_paho"] = hubs["paho"]
    report["met"] = bool(
        report["exact"]
        and hub_rate >= GOALS["hub_msgs_per_s"]
        and ratio is not None
        and ratio >= GOALS["ratio"]
    )
    return report


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
        choices=("both", "fast", "paho"),
        default="both",
        help=(
            "hub consumer: hub/transport/fastsub.py (fast), paho (hub/transport/link.py),"
            " or both in turn"
        ),
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    if args.devices < 1 or args.windows < 1 or not 0 <= args.replay <= 1:
        parser.error("--devices and --windows must be >= 1, --replay within 0..1")
    logging.basicConfig(level=logging.WARNING)
    report = run(args)
    if args.json:
        print(json.dumps(report))
    else:
        _print_table(report)
    return 0 if report["exact"] else 1


def _print_table(r: dict[str, Any]) -> None:
    rows = [
        ("hub ingest", f"{r['hub_msgs_per_s']:,.0f} msg/s (goal {r['goal_hub_msgs_per_s']:,.0f})"),
        ("mosquitto_sub", f"{r['raw_msgs_per_s']:,.0f} msg/s"),
        ("ratio", f"{r['ratio']} (goal {r['goal_ratio']})"),
        (
            "messages",
            f"{r['messages']:,} ({r['duplicates_sent']:,} replays), {r['devices']} devices",
        ),
        ("stored / dups", f"{r['rows_stored']:,} / {r['duplicates_counted']:,} exact={r['exact']}"),
        ("hub", json.dumps(r["hub"])),
        *([("hub (paho)", json.dumps(r["hub_paho"]))] if "hub_paho" in r else []),
        ("CPU µs/msg", json.dumps(r["cpu_us_per_msg"])),
        ("raw", json.dumps(r["raw"])),
        ("publish", f"{r['publish_s']} s"),
    ]
    for k, v in rows:
        print(f"{k:<16} {v}")
