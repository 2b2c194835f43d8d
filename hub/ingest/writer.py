"""Ingest: what devices report, written to SQL in batches by one writer thread.

The MQTT thread only validates and enqueues; this thread drains the queue in batches
(one transaction each), so a burst of telemetry never stalls the broker connection.
Each batch is staged by every report applier (hub/ingest/report.py: device progress,
telemetry windows, drift summaries) and committed once, so a batch lands whole or not
at all. A row that fails to write is logged and counted; the batch's other rows are
retried one by one, so one bad row never loses the rest. A database that cannot be
reached (``OperationalError``) is not a bad row: the batch is retried with backoff
until it commits or the writer stops.

``on_stored`` is called with each batch once it is handled (committed, or its bad rows
counted): the hub's MQTT link acknowledges the messages only then
(hub/transport/link.py), so a crash loses nothing the broker saw acknowledged. A batch
the writer gave up on at stop is not passed on: unacknowledged, the broker delivers it
again. Only then do the appliers' follow-ups run (``committed``: group and fleet drift).
"""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence

from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError
from sqlmodel import Session

from hub.ingest.report import Report, ReportApplier
from hub.store.tables import session

log = logging.getLogger(__name__)

BATCH_MAX = 2000  # messages per transaction
DB_RETRY_MIN_S, DB_RETRY_MAX_S = 0.5, 10.0  # backoff while the database is unreachable
BATCH_WAIT_S = 0.05  # how long to gather a batch
PG_ROWS_PER_STATEMENT = 1000  # telemetry rows per multi-row INSERT (bind-parameter limits)


class DatabaseUnavailable(Exception):
    """The database could not take a write (down, locked past the busy timeout)."""


def _unavailable(e: BaseException) -> bool:
    """Whether a failed write is the database's state, not a bad row: retry, not drop."""
    if isinstance(e, OperationalError):  # SQLAlchemy's: the driver's, wrapped
        e = e.orig if e.orig is not None else e
        if not isinstance(e, sqlite3.Error):
            return True  # e.g. PostgreSQL's connection errors
    if isinstance(e, sqlite3.OperationalError):  # raw executemany (_insert_sqlite) too
        text = str(e).lower()
        return any(w in text for w in ("locked", "busy", "unable to open", "disk i/o"))
    return False


class Ingest:
    def __init__(
        self,
        engine: Engine,
        appliers: Sequence[ReportApplier],
        *,
        inline: bool = False,
        on_stored: Callable[[list[Report]], None] | None = None,
    ) -> None:
        self.engine = engine
        self.on_stored = on_stored  # called with each batch once handled (docstring)
        # inline: batches are written on the thread that puts (the MQTT thread) and by a
        # timer when a batch waited BATCH_WAIT_S. For an ingest-only process: a second
        # busy thread would fight the MQTT thread for the GIL at every system call.
        self.inline = inline
        self._pending: list[Report] = []
        self._pending_since = 0.0
        self._pending_lock = threading.Lock()
        self._stopping = threading.Event()
        self.appliers = list(appliers)  # each stages its kinds of report (report.py)
        self.counts: Counter[str] = Counter()
        self._q: queue.Queue[Report | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._idle = threading.Event()
        self._idle.set()
        self._writing: list[Report] = []  # the batch being written (GET /metrics: lag)

    def start(self) -> None:
        target = self._run_timer if self.inline else self._run
        self._thread = threading.Thread(target=target, name="hub-ingest", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._q.put(None)
            self._stopping.set()
            self._thread.join(30)
            self._thread = None
        if self.inline:
            with self._pending_lock:
                self._write_pending()

    def put(self, report: Report) -> None:
        if self._idle.is_set():
            self._idle.clear()
        if not self.inline:
            self._q.put(report)
            return
        now = time.monotonic()
        with self._pending_lock:
            if not self._pending:
                self._pending_since = now
            self._pending.append(report)
            if len(self._pending) >= BATCH_MAX or now - self._pending_since >= BATCH_WAIT_S:
                self._write_pending()

    def write_batch(self, reports: list[Report]) -> None:
        """Write ``reports`` (and anything pending) now; return once committed.

        For a consumer that acknowledges messages only after they are stored
        (hub/transport/fastsub.py). As in every write, a row that fails even alone is logged and
        counted in ``write_errors``; the others are stored.
        """
        with self._pending_lock:
            if self._idle.is_set():
                self._idle.clear()
            self._pending.extend(reports)
            self._write_pending()

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until everything enqueued so far is written."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._q.empty() and self._idle.wait(0.05):
                return True
            time.sleep(0.01)  # (the queue is busy: do not spin against the writer)
        return False

    def lag(self) -> tuple[int, float]:
        """How far behind the writer is: reports received and not yet written, and the
        seconds since the oldest of them was received (0.0 when none waits)."""
        writing, pending = list(self._writing), list(self._pending)
        with self._q.mutex:  # a glance at the queue, not a drain
            queued = len(self._q.queue)
            head = self._q.queue[0] if queued else None
        waiting = [r for r in (writing[:1] + pending[:1] + [head]) if r is not None]
        oldest = min((r.received for r in waiting), default=None)
        depth = len(writing) + len(pending) + queued  # (+1 for the stop sentinel, at stop)
        return depth, max(0.0, time.time() - oldest) if oldest is not None else 0.0

    # ------------------------------------------------------------- writer thread

    def _run_timer(self) -> None:
        """Inline mode: write a batch that has waited BATCH_WAIT_S (traffic stopped)."""
        while not self._stopping.wait(BATCH_WAIT_S / 2):
            with self._pending_lock:
                if self._pending and time.monotonic() - self._pending_since >= BATCH_WAIT_S:
                    self._write_pending()

    def _write_pending(self) -> None:
        """Write the inline batch (the caller holds ``_pending_lock``)."""
        batch, self._pending = self._pending, []
        if batch:
            self._write(batch)
        self._idle.set()

    def _run(self) -> None:
        stopping = False
        while not stopping:
            item = self._q.get()
            if item is None:
                break
            batch = [item]
            deadline = time.monotonic() + BATCH_WAIT_S
            while len(batch) < BATCH_MAX:
                try:
                    item = self._q.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if item is None:
                    stopping = True
                    break
                batch.append(item)
            self._write(batch)
            if self._q.empty():
                self._idle.set()
        self._idle.set()

    def _write(self, batch: list[Report]) -> None:
        self._writing = batch
        try:
            stored = self._commit_waiting_for_the_database(batch)
        finally:
            self._writing = []
        if not stored:
            return  # stopping with the database away: unacknowledged, it comes again
        if self.on_stored is not None:
            try:
                self.on_stored(batch)
            except Exception:  # never stop writing over an acknowledgement
                log.exception("ingest: on_stored failed")
        for applier in self.appliers:
            self.counts.update(applier.committed(batch))

    def _commit_waiting_for_the_database(self, batch: list[Report]) -> bool:
        """Commit ``batch`` (bad rows counted and dropped); False if it gave up at stop."""
        delay = DB_RETRY_MIN_S
        while True:
            try:
                self._commit(batch)
                return True
            except DatabaseUnavailable as e:
                self.counts["db_unavailable"] += 1
                log.warning("ingest: the database is unavailable (%s); retry in %.1f s", e, delay)
                if self._stopping.wait(delay):
                    return False
                delay = min(delay * 2, DB_RETRY_MAX_S)

    def _commit(self, batch: list[Report]) -> None:
        """Commit ``batch``; a bad row is counted and dropped, the others stored.

        Raises:
            DatabaseUnavailable: the database could not take the write at all.
        """
        try:
            with session(self.engine) as s:
                counts = self._apply(s, batch)
                s.commit()
            self._count(batch, counts)
        except Exception as e:
            if _unavailable(e):
                raise DatabaseUnavailable(str(e)) from e
            log.exception("ingest: batch of %d failed; retrying row by row", len(batch))
            for report in batch:
                try:
                    with session(self.engine) as s:
                        counts = self._apply(s, [report])
                        s.commit()
                    self._count([report], counts)
                except Exception as e:
                    if _unavailable(e):
                        raise DatabaseUnavailable(str(e)) from e
                    self.counts["write_errors"] += 1
                    log.error("ingest: dropped a %s from %s: %s", report.kind, report.device_id, e)

    def _count(self, batch: list[Report], counts: Counter[str]) -> None:
        """Count what a committed write stored (never before: a failed batch is retried)."""
        for r in batch:
            self.counts[r.kind] += 1
        self.counts.update(counts)

    def _apply(self, s: Session, batch: list[Report]) -> Counter[str]:
        """Stage ``batch`` in ``s`` with every applier; what to count once committed."""
        counts: Counter[str] = Counter()
        for applier in self.appliers:
            counts.update(applier.apply(s, batch))
        return counts
