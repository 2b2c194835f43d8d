"""The consumers the ingest benchmark times (bench/ingest.py): ``mosquitto_sub``, and the
hub's own, built as the hub builds them.

- ``raw``: ``mosquitto_sub -c -q 1 -C <all>`` printing one byte per message into a pipe
  this process counts; the clock runs from the first byte to the process's exit.
- ``single``: the default hub process (no workers): its paho link for everything but
  telemetry, and its telemetry intake (hub/transport/intake.py: the subscribe-only client
  of hub/transport/fastsub.py) into the hub's ``Ingest``, as ``Hub._start`` wires them.
- ``workers``: ``--consumers`` ingest worker processes (hub/workers.py ``IngestWorker``, what
  ``edgefleet hub serve --ingest-workers N`` starts) on their ``$share`` group.
- ``paho``: the hub process as it was before its intake: telemetry through the paho link.

A hub consumer runs in processes of its own; its clock runs from the first message any of
them counted to the moment every message is committed (stored, or counted a duplicate), as
``Ingest.counts`` reports after each commit.
"""

from __future__ import annotations

import logging
import multiprocessing
import subprocess
import time
from pathlib import Path
from typing import Any

import psutil

TOPIC_FILTER = "ef/v1/dev/+/telemetry"
HUB_CLIENT_ID = "bench-ingest-hub"
RAW_CLIENT_ID = "bench-ingest-raw"
POLL_S = 0.002  # polling of the hub's counters
SUBSCRIBE_SETTLE_S = 0.5  # after CONNACK, for the SUBACK of a session being registered
DRAIN_TIMEOUT_S = 600.0  # seconds for one drain


def raw_command(host: str, port: int, count: int | None, index: int = 0) -> list[str]:
    cmd = ["mosquitto_sub", "-h", host, "-p", str(port), "-i", f"{RAW_CLIENT_ID}-{index}"]
    cmd += ["-c", "-q", "1", "-t", TOPIC_FILTER, "-F", "."]  # one byte (+ newline) a message
    return [*cmd, "-E"] if count is None else [*cmd, "-C", str(count)]


def measure_raw(host: str, port: int, count: int, index: int = 0) -> dict[str, Any]:
    """Drain raw session ``index``'s queue; its rate and CPU time."""
    proc = subprocess.Popen(raw_command(host, port, count, index), stdout=subprocess.PIPE)
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
    return {"messages": received, "seconds": seconds, "cpu_s": sum(cpu)}


class SingleHub:
    """The telemetry path of a hub process without workers, wired as ``Hub._start`` does."""

    def __init__(self, host: str, port: int, db: Path) -> None:
        from hub import make_ingest, serve_devices
        from hub.store.tables import make_engine, sqlite_url
        from hub.telemetry.retention import RAW_AGE_S
        from hub.transport.broker import BrokerAddress
        from hub.transport.budget import INGEST, Budgets
        from hub.transport.intake import intake_spec
        from hub.transport.link import MqttLink, hub_subscriptions

        self.address = BrokerAddress(host, port)
        self.ingest = make_ingest(make_engine(sqlite_url(db)), raw_max_age_s=RAW_AGE_S)
        self.spec = intake_spec(self.address, HUB_CLIENT_ID, None)
        assert self.spec is not None
        self.link = MqttLink(
            self.address, client_id=HUB_CLIENT_ID, subscriptions=hub_subscriptions(telemetry=False)
        )
        self.budgets = Budgets(INGEST)
        serve_devices(self.link, self.ingest, budget=self.budgets)
        self.counts, self.dropped = self.link.counts, self.link.dropped
        self.intake: Any = None

    def start(self) -> None:
        from hub.transport.intake import start_intake

        assert self.spec is not None
        self.ingest.start()
        self.link.start()
        self.intake = start_intake(
            self.spec,
            self.address,
            self.ingest,
            budget=self.budgets,
            counts=self.counts,
            dropped=self.dropped,
        )

    def stop(self) -> None:
        if self.intake is not None:
            self.intake.stop()
        self.link.stop()
        self.ingest.stop()


def hub_consumer(host: str, port: int, db: Path, index: int, path: str) -> tuple[Any, Any]:
    """Consumer ``index`` of ``path`` on ``db`` (not started), and its ``Ingest``."""
    from hub import make_ingest, serve_devices
    from hub.store.tables import make_engine, sqlite_url
    from hub.telemetry.retention import RAW_AGE_S
    from hub.transport.broker import BrokerAddress
    from hub.transport.link import MqttLink
    from hub.workers import IngestWorker, WorkerConfig

    if path == "workers":
        url = BrokerAddress(host, port).url
        worker = IngestWorker(
            WorkerConfig(url, sqlite_url(db), index=index, raw_max_age_s=RAW_AGE_S)
        )
        return worker, worker.ingest
    if path == "single":
        single = SingleHub(host, port, db)
        return single, single.ingest
    ingest = make_ingest(make_engine(sqlite_url(db)), raw_max_age_s=RAW_AGE_S)
    link = MqttLink(BrokerAddress(host, port), client_id=f"{HUB_CLIENT_ID}-paho")
    serve_devices(link, ingest)
    return _PahoHub(link, ingest), ingest


class _PahoHub:
    def __init__(self, link: Any, ingest: Any) -> None:
        self.link, self.ingest = link, ingest
        self.counts, self.dropped = link.counts, link.dropped

    def start(self) -> None:
        self.ingest.start()
        self.link.start()

    def stop(self) -> None:
        self.link.stop()
        self.ingest.stop()


def register_hub_sessions(host: str, port: int, db: Path, consumers: int, path: str) -> None:
    """Connect each consumer once, so the broker queues the stream for it while it is away."""
    for i in range(consumers):
        consumer, _ingest = hub_consumer(host, port, db, i, path)
        consumer.start()
        time.sleep(SUBSCRIBE_SETTLE_S)
        consumer.stop()


def hub_worker(host: str, port: int, db: Path, index: int, path: str, sync: dict[str, Any]) -> None:
    """One hub process: drain its share of the queue into SQLite, report."""
    logging.basicConfig(level=logging.WARNING)
    import resource

    # imports, engine and writer before the clock: they are the hub's start-up, not ingest
    consumer, ingest = hub_consumer(host, port, db, index, path)
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
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    sync["results"].put(
        {
            "cpu_s": cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime,
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
        ctx.Process(target=hub_worker, args=(host, port, db, i, path, sync))
        for i in range(consumers)
    ]
    for p in procs:
        p.start()
    for _ in procs:
        sync["ready"].acquire()  # imports done: they weigh on nobody's clock
    sync["go"].set()
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    done = 0
    while time.monotonic() < deadline:
        done = sum(sync["done"])
        if done >= count:
            break
        if not all(p.is_alive() for p in procs):
            raise RuntimeError(f"a {path} consumer died: exit codes {[p.exitcode for p in procs]}")
        time.sleep(POLL_S)
    end = time.time()
    sync["stop"].set()
    results = [sync["results"].get(timeout=60) for _ in procs]
    for p in procs:
        p.join(30)
    firsts = [t for t in sync["first"] if t > 0]
    dropped: dict[str, int] = {}
    for r in results:
        for k, v in r["dropped"].items():
            dropped[k] = dropped.get(k, 0) + v
    return {
        "messages": done,
        "seconds": end - min(firsts) if firsts else 0.0,
        "cpu_s": sum(r["cpu_s"] for r in results),
        "stored": sum(r["stored"] for r in results),
        "duplicates": sum(r["duplicates"] for r in results),
        "write_errors": sum(r["write_errors"] for r in results),
        "dropped": dropped,
    }
