"""Ingest: what devices report, written to SQL in batches by one writer thread.

The MQTT thread only validates and enqueues; this thread drains the queue in batches
(one transaction each), so a burst of telemetry never stalls the broker connection.
Writes are idempotent: telemetry is unique per (device, sequence) and a replayed
window is ignored and counted, never double counted. Telemetry goes in with one
multi-row statement per batch (SQLite: ``executemany`` of ``INSERT .. ON CONFLICT DO
NOTHING``, the rows stored counted exactly by the connection's ``total_changes``;
PostgreSQL: ``INSERT .. VALUES (..), (..) ON CONFLICT DO NOTHING`` and its rowcount).
A window older than ``raw_max_age_s`` is refused and counted (``telemetry_too_old``):
retention (hub/telemetry/retention.py) may have folded it into a downsampled row already, so
storing it again could count it twice. A row that fails to write is
logged and counted; the batch's other rows are retried one by one, so one bad row never
loses the rest. A database that cannot be reached (``OperationalError``) is not a bad
row: the batch is retried with backoff until it commits or the writer stops.

``on_stored`` is called with each batch once it is handled (committed, or its bad rows
counted): the hub's MQTT client acknowledges the messages only then (hub/transport/link.py), so a
crash loses nothing the broker saw acknowledged. A batch the writer gave up on at stop
is not passed on: unacknowledged, the broker delivers it again.
"""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
from sqlalchemy import Engine
from sqlalchemy.dialects import postgresql
from sqlalchemy.exc import OperationalError
from sqlmodel import Session, select

from hub.fleet.progress import apply_progress
from hub.store.tables import Telemetry, session
from hub.telemetry.drift import DriftMonitor
from shared.protocol import Message

log = logging.getLogger(__name__)

REPORT_KINDS: frozenset[str] = frozenset({"state", "events", "telemetry", "drift"})  # stored here
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


@dataclass(frozen=True)
class Report:
    device_id: str
    kind: str  # state | events | telemetry | drift
    message: Message
    received: float = field(default_factory=time.time)  # the hub's clock
    ack: Any = None  # what the consumer needs to acknowledge it once stored (hub/transport/link.py)


class Ingest:
    def __init__(
        self,
        engine: Engine,
        *,
        raw_max_age_s: float | None = None,
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
        self.raw_max_age_s = raw_max_age_s  # older windows are refused (see above)
        self._too_old = 0  # in the write being applied
        self.counts: Counter[str] = Counter()
        self.drift = DriftMonitor(
            engine
        )  # drift windows, scores and alerts (hub/telemetry/drift.py)
        self._drift_duplicates = 0  # in the write being applied
        self._q: queue.Queue[Report | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._idle = threading.Event()
        self._idle.set()

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
            if any(r.kind == "drift" for r in batch):
                self._judge_drift_scopes()
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
            if any(r.kind == "drift" for r in batch):
                self._judge_drift_scopes()
            if self._q.empty():
                self._idle.set()
        self._idle.set()

    def _write(self, batch: list[Report]) -> None:
        if not self._commit_waiting_for_the_database(batch):
            return  # stopping with the database away: unacknowledged, it comes again
        if self.on_stored is not None:
            try:
                self.on_stored(batch)
            except Exception:  # never stop writing over an acknowledgement
                log.exception("ingest: on_stored failed")

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
                duplicates = self._apply(s, batch)
                s.commit()
            self._count(batch, duplicates)
        except Exception as e:
            if _unavailable(e):
                raise DatabaseUnavailable(str(e)) from e
            log.exception("ingest: batch of %d failed; retrying row by row", len(batch))
            for report in batch:
                try:
                    with session(self.engine) as s:
                        duplicates = self._apply(s, [report])
                        s.commit()
                    self._count([report], duplicates)
                except Exception as e:
                    if _unavailable(e):
                        raise DatabaseUnavailable(str(e)) from e
                    self.counts["write_errors"] += 1
                    log.error("ingest: dropped a %s from %s: %s", report.kind, report.device_id, e)

    def _count(self, batch: list[Report], duplicates: int) -> None:
        """Count what a committed write stored (never before: a failed batch is retried)."""
        for r in batch:
            self.counts[r.kind] += 1
        self.counts["telemetry_duplicates"] += duplicates
        self.counts["drift_duplicates"] += self._drift_duplicates
        self.counts["telemetry_too_old"] += self._too_old

    def _apply(self, s: Session, batch: list[Report]) -> int:
        """Stage ``batch`` in ``s``; the number of duplicate telemetry windows skipped."""
        telemetry: list[tuple[Any, ...]] = []
        drift: list[tuple[str, float, Mapping[str, Any]]] = []
        self._too_old = 0
        cutoff = time.time() - self.raw_max_age_s if self.raw_max_age_s is not None else None
        apply_progress(s, batch)  # states and events (hub/fleet/progress.py)
        for r in batch:
            if r.kind == "drift":
                drift.append((r.device_id, r.message.ts, r.message.body))
            elif r.kind == "telemetry":
                if cutoff is not None and r.message.body["end"] < cutoff:
                    self._too_old += 1
                    continue
                telemetry.append(_telemetry_values(r.device_id, r.message.body))
        self._drift_duplicates = self.drift.ingest(s, drift) if drift else 0
        if not telemetry:
            return 0
        return len(telemetry) - self._insert_telemetry(s, telemetry)

    def _judge_drift_scopes(self) -> None:
        """Group and fleet drift alerts (throttled); a failure is logged, never fatal."""
        try:
            self.drift.maybe_evaluate_scopes()
        except Exception:
            self.counts["drift_scope_errors"] += 1
            log.exception("ingest: group/fleet drift evaluation failed")

    def _insert_telemetry(self, s: Session, values: list[tuple[Any, ...]]) -> int:
        """Insert what is new; the number of rows stored (the rest were duplicates).

        ``values``: one tuple per row in ``_TELEMETRY_COLUMNS`` order (SQLite takes them
        as they are; the other dialects get dictionaries).
        """
        dialect = self.engine.dialect.name
        if dialect == "sqlite":
            return _insert_sqlite(s, values)
        rows = [dict(zip(_TELEMETRY_COLUMNS, v, strict=True)) for v in values]
        if dialect != "postgresql":
            return self._insert_telemetry_portable(s, rows)
        inserted = 0
        for i in range(0, len(rows), PG_ROWS_PER_STATEMENT):
            stmt = (
                postgresql.insert(Telemetry)
                .values(rows[i : i + PG_ROWS_PER_STATEMENT])
                .on_conflict_do_nothing(index_elements=["device_id", "seq"])
            )
            inserted += s.execute(stmt).rowcount  # type: ignore[attr-defined]
        return inserted

    def _insert_telemetry_portable(self, s: Session, rows: list[dict[str, Any]]) -> int:
        inserted = 0
        for row in rows:
            exists = s.exec(
                select(Telemetry).where(
                    Telemetry.device_id == row["device_id"], Telemetry.seq == row["seq"]
                )
            ).first()
            if exists is None:
                s.add(Telemetry(**row))
                inserted += 1
        return inserted


_TELEMETRY_COLUMNS = (
    "device_id",
    "seq",
    "start",
    "end",
    "model",
    "version",
    "count",
    "errors",
    "p50_us",
    "p95_us",
    "p99_us",
    "labelled",
    "correct",
    "cpu_pct",
    "rss_bytes",
    "latency_hist",
    "spool_dropped",
    "windows",
    "resolution_s",
)
_QUOTED_COLUMNS = ", ".join(f'"{c}"' for c in _TELEMETRY_COLUMNS)  # "end" is a keyword
_SQLITE_INSERT = (
    f"INSERT INTO {Telemetry.__tablename__} ({_QUOTED_COLUMNS})"
    f" VALUES ({', '.join('?' for _ in _TELEMETRY_COLUMNS)})"
    " ON CONFLICT (device_id, seq) DO NOTHING"
)


def _insert_sqlite(s: Session, values: list[tuple[Any, ...]]) -> int:
    """One ``executemany`` in the session's transaction; rows stored, counted exactly."""
    conn = s.connection().connection.driver_connection
    assert isinstance(conn, sqlite3.Connection)
    before = conn.total_changes
    conn.executemany(_SQLITE_INSERT, values)
    return conn.total_changes - before


def _compact_json(value: Any) -> str:
    """Compact JSON of a latency histogram (``{"bucket": count}``), the text json.dumps
    with separators=(",", ":") gives: orjson writes it in ~0.3 µs, json in ~4, once per
    telemetry window."""
    return orjson.dumps(value).decode()


def _telemetry_values(device_id: str, b: Mapping[str, Any]) -> tuple[Any, ...]:
    """A validated telemetry body as a row, in ``_TELEMETRY_COLUMNS`` order.

    A tuple straight away rather than a dictionary: this runs once per window.
    """
    lat = b["latency_us"]
    hist = b.get("latency_hist")
    get = b.get
    return (
        device_id,
        b["seq"],
        b["start"],
        b["end"],
        get("model"),
        get("version"),
        b["count"],
        b["errors"],
        lat["p50"],
        lat["p95"],
        lat["p99"],
        get("labelled", 0),
        get("correct", 0),
        get("cpu_pct"),
        get("rss_bytes"),
        _compact_json(hist) if hist is not None else None,
        get("spool_dropped"),
        1,  # windows
        0.0,  # resolution_s
    )
