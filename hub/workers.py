"""Ingest workers: hub processes that only store telemetry, sharing it through ``$share``.

One hub process takes telemetry through the same subscribe-only client as a worker
(hub/transport/intake.py, ADR 0033) but shares its cores with the API, the rollout engine
and the rest. ``edgefleet hub serve --ingest-workers N`` starts N more processes; each runs
an :class:`IngestWorker`: the subscribe-only client of hub/transport/fastsub.py on
``$share/edgefleet-ingest/ef/v1/dev/+/telemetry`` (the broker hands each message to one
member of the group) into the hub's database, acknowledging a batch only once it is
committed. The hub process then leaves telemetry to them and keeps states, events, drift
windows, fetches and captures: those must stay in order per device, or need the
registry and the rollout engine.

A worker refuses a revoked device's windows like the hub does: it reads the revocations
from the database every ``REVOCATION_POLL_S``. With a TLS broker each worker connects with
its own identity (``ingest-{i}.crt``, written by ``edgefleet broker config``; the ACL lets
it read telemetry and nothing else), since the broker takes a client's certificate name
as its client id.

Errors::

    IngestWorkerError   a worker that could not be configured or did not start
"""

from __future__ import annotations

import logging
import multiprocessing
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from sqlmodel import select

from hub.ingest.writer import Ingest
from hub.store.tables import Revocation, make_engine, session
from hub.telemetry.windows import TelemetryWindows
from hub.transport.broker import BrokerAddress, TlsIdentity
from hub.transport.budget import INGEST, Budget
from hub.transport.inbound import IngestSubscriber
from hub.transport.intake import ingest_tls
from hub.transport.link import INGEST_GROUP
from hub.transport.service_names import ingest_identity
from shared.protocol import ROOT

log = logging.getLogger(__name__)

SHARE_GROUP: Final = INGEST_GROUP
TELEMETRY_SHARE: Final = f"$share/{SHARE_GROUP}/{ROOT}/+/telemetry"
REVOCATION_POLL_S: Final = 5.0  # seconds between reads of the revocation list
START_TIMEOUT_S: Final = 60.0  # seconds for a worker process to connect and subscribe
STOP_TIMEOUT_S: Final = 15.0  # seconds for a worker to commit what it holds and leave


class IngestWorkerError(Exception):
    """A worker that could not be configured or did not start."""


def worker_tls(tls_dir: Path, index: int) -> TlsIdentity:
    """Worker ``index``'s TLS files in the directory `edgefleet broker config` wrote."""
    return ingest_tls(tls_dir, index)


@dataclass(frozen=True)
class WorkerConfig:
    broker_url: str
    db_url: str
    index: int = 0
    tls_dir: Path | None = None  # for an mqtts:// broker
    raw_max_age_s: float | None = None  # older windows are refused (hub/telemetry/windows.py)
    budget: Budget = INGEST  # what one device may send to be stored, per worker

    def check(self) -> None:
        """Raises IngestWorkerError: a TLS broker without this worker's identity."""
        if BrokerAddress.parse(self.broker_url).tls:
            if self.tls_dir is None:
                raise IngestWorkerError(f"{self.broker_url} needs the broker's TLS directory")
            tls = worker_tls(self.tls_dir, self.index)
            if not tls.cert.exists():
                raise IngestWorkerError(
                    f"no identity for ingest worker {self.index} in {self.tls_dir}: write the "
                    "broker config with --ingest-workers at least as many as the hub runs"
                )


class IngestWorker:
    """The telemetry consumer and writer of one ingest process (inline writes)."""

    def __init__(self, config: WorkerConfig) -> None:
        config.check()
        self.config = config
        address = BrokerAddress.parse(config.broker_url)
        tls = worker_tls(config.tls_dir, config.index) if address.tls and config.tls_dir else None
        self.engine = make_engine(config.db_url)
        # inline: the batch is committed on the consumer's thread, then acknowledged
        self.ingest = Ingest(self.engine, [TelemetryWindows(config.raw_max_age_s)], inline=True)
        self._revoked: frozenset[str] = frozenset()
        self.consumer = IngestSubscriber(
            address,
            self.ingest,
            client_id=ingest_identity(config.index),
            subscriptions=[(TELEMETRY_SHARE, 1)],
            tls=tls,
            revoked=lambda: self._revoked,
            budget=config.budget,
        )
        self._revocations_read = 0.0

    @property
    def counts(self) -> Counter[str]:
        """Messages taken, by topic kind (as the hub link's ``counts``)."""
        return self.consumer.counts

    @property
    def dropped(self) -> Counter[str]:
        return self.consumer.dropped

    def start(self) -> None:
        self.refresh_revoked()
        self.ingest.start()
        self.consumer.start()

    def stop(self) -> None:
        self.consumer.stop()
        self.ingest.stop()
        self.engine.dispose()

    def refresh_revoked(self, every_s: float = 0.0) -> None:
        """Read the revocation list again if it is older than ``every_s``."""
        if time.monotonic() - self._revocations_read < every_s:
            return
        with session(self.engine) as s:
            self._revoked = frozenset(s.exec(select(Revocation.device_id)))
        self._revocations_read = time.monotonic()


def run_worker(config: WorkerConfig, started: Any, stop: Any) -> None:
    """A worker process's main: run until ``stop`` is set (multiprocessing events)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s ingest-%(process)d %(message)s")
    worker = IngestWorker(config)
    worker.start()
    started.set()
    try:
        while not stop.wait(1.0):
            try:
                worker.refresh_revoked(REVOCATION_POLL_S)
            except Exception:  # the database may be busy: next time
                log.exception("ingest worker %d: could not read revocations", config.index)
    finally:
        worker.stop()


class IngestWorkers:
    """N worker processes started and stopped with the hub."""

    def __init__(self, configs: list[WorkerConfig]) -> None:
        for c in configs:
            c.check()
        self.configs = configs
        ctx = multiprocessing.get_context("spawn")  # no forked threads or sockets
        self._stop = ctx.Event()
        self._started = [ctx.Event() for _ in configs]
        self._procs = [
            ctx.Process(
                target=run_worker,
                args=(c, started, self._stop),
                name=ingest_identity(c.index),
                daemon=True,
            )
            for c, started in zip(configs, self._started, strict=True)
        ]

    def start(self) -> None:
        for p in self._procs:
            p.start()
        deadline = time.monotonic() + START_TIMEOUT_S
        for p, started in zip(self._procs, self._started, strict=True):
            if not started.wait(max(0.0, deadline - time.monotonic())):
                self.stop()
                raise IngestWorkerError(f"{p.name} did not start (exit code {p.exitcode})")
        log.info("%d ingest worker(s) share the telemetry (%s)", len(self._procs), TELEMETRY_SHARE)

    def stop(self) -> None:
        self._stop.set()
        for p in self._procs:
            if p.pid is None:
                continue
            p.join(STOP_TIMEOUT_S)
            if p.is_alive():  # what it held is unacknowledged: the broker redelivers it
                p.kill()
                p.join()

    @property
    def alive(self) -> int:
        return sum(1 for p in self._procs if p.is_alive())


def start_workers(
    count: int,
    broker_url: str,
    db_url: str,
    *,
    tls_dir: Path | None,
    raw_max_age_s: float | None,
    budget: Budget,
    embedded: bool,
) -> IngestWorkers | None:
    """The hub's ingest worker processes, started; None when it runs none.

    Raises:
        ValueError: workers asked for on the embedded broker (no ``$share`` there).
    """
    if count <= 0:
        return None
    if embedded:
        raise ValueError("ingest workers share telemetry with $share: they need Mosquitto")
    configs = [
        WorkerConfig(
            broker_url,
            db_url,
            index=i,
            tls_dir=tls_dir,
            raw_max_age_s=raw_max_age_s,
            budget=budget,
        )
        for i in range(count)
    ]
    workers = IngestWorkers(configs)
    workers.start()
    return workers
