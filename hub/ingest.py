"""Ingest: what devices report, written to SQL in batches by one writer thread.

The MQTT thread only validates and enqueues; this thread drains the queue in batches
(one transaction each), so a burst of telemetry never stalls the broker connection.
Writes are idempotent: telemetry is unique per (device, sequence) and a replayed
window is ignored and counted, never double counted. A row that fails to write is
logged and counted; the batch's other rows are retried one by one, so one bad row never
loses the rest.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session, select

from hub.db import DeploymentDevice, Device, EventRecord, Telemetry, session
from shared.protocol import TERMINAL_STAGES, Message

log = logging.getLogger(__name__)

BATCH_MAX = 2000  # messages per transaction
BATCH_WAIT_S = 0.05  # how long to gather a batch


@dataclass(frozen=True)
class Report:
    device_id: str
    kind: str  # state | events | telemetry | drift
    message: Message


class Ingest:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.counts: Counter[str] = Counter()
        self._q: queue.Queue[Report | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._idle = threading.Event()
        self._idle.set()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="hub-ingest", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._q.put(None)
            self._thread.join(30)
            self._thread = None

    def put(self, report: Report) -> None:
        self._idle.clear()
        self._q.put(report)

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until everything enqueued so far is written."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._q.empty() and self._idle.wait(0.05):
                return True
        return False

    # ------------------------------------------------------------- writer thread

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
        try:
            with session(self.engine) as s:
                self._apply(s, batch)
                s.commit()
        except Exception:
            log.exception("ingest: batch of %d failed; retrying row by row", len(batch))
            for report in batch:
                try:
                    with session(self.engine) as s:
                        self._apply(s, [report])
                        s.commit()
                except Exception as e:
                    self.counts["write_errors"] += 1
                    log.error("ingest: dropped a %s from %s: %s", report.kind, report.device_id, e)

    def _apply(self, s: Session, batch: list[Report]) -> None:
        telemetry: list[dict[str, Any]] = []
        for r in batch:
            if r.kind == "state":
                self._state(s, r)
            elif r.kind == "events":
                self._event(s, r)
            elif r.kind == "telemetry":
                telemetry.append(_telemetry_row(r.device_id, r.message.body))
            self.counts[r.kind] += 1
        if telemetry:
            inserted = self._insert_telemetry(s, telemetry)
            self.counts["telemetry_duplicates"] += len(telemetry) - inserted

    def _state(self, s: Session, r: Report) -> None:
        body = r.message.body
        dev = s.get(Device, r.device_id)
        if dev is None:
            dev = Device(id=r.device_id)
        dev.status = str(body["status"])
        dev.last_seen = max(dev.last_seen, r.message.ts) if dev.last_seen else r.message.ts
        for field in ("device_class", "runtime", "agent_version", "root_version"):
            if field in body:
                setattr(dev, field, body[field])
        models: Mapping[str, Any] | None = body.get("models")
        if models is not None:
            name, info = next(iter(models.items()), (None, None))
            dev.model = name
            dev.version = info["version"] if info else None
            dev.sha256 = info.get("sha256") if info else None
        s.add(dev)

    def _event(self, s: Session, r: Report) -> None:
        b = r.message.body
        s.add(
            EventRecord(
                device_id=r.device_id,
                deployment_id=b["deployment"],
                model=b["model"],
                version=b["version"],
                stage=b["stage"],
                reason=b.get("reason"),
                detail=b.get("detail"),
                ts=r.message.ts,
            )
        )
        row = s.get(DeploymentDevice, (b["deployment"], r.device_id))
        if row is None:
            return  # an event for a deployment this hub did not make (or a rollback id)
        if row.stage in TERMINAL_STAGES and b["stage"] not in TERMINAL_STAGES:
            return  # a late progress event after the outcome
        row.stage = b["stage"]
        row.reason = b.get("reason")
        row.detail = b.get("detail")
        row.updated_at = r.message.ts
        s.add(row)

    def _insert_telemetry(self, s: Session, rows: list[dict[str, Any]]) -> int:
        dialect = self.engine.dialect.name
        ins: Any
        if dialect == "postgresql":
            ins = postgresql.insert(Telemetry)
        elif dialect == "sqlite":
            ins = sqlite.insert(Telemetry)
        else:
            return self._insert_telemetry_portable(s, rows)
        stmt = ins.on_conflict_do_nothing(index_elements=["device_id", "seq"])
        inserted = 0
        for row in rows:  # rowcount per row: executemany does not report it reliably
            inserted += s.execute(stmt.values(**row)).rowcount  # type: ignore[attr-defined]
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


def _telemetry_row(device_id: str, b: Mapping[str, Any]) -> dict[str, Any]:
    lat = b["latency_us"]
    return {
        "device_id": device_id,
        "seq": b["seq"],
        "start": b["start"],
        "end": b["end"],
        "model": b.get("model"),
        "version": b.get("version"),
        "count": b["count"],
        "errors": b["errors"],
        "p50_us": lat["p50"],
        "p95_us": lat["p95"],
        "p99_us": lat["p99"],
        "labelled": b.get("labelled", 0),
        "correct": b.get("correct", 0),
        "cpu_pct": b.get("cpu_pct"),
        "rss_bytes": b.get("rss_bytes"),
    }
