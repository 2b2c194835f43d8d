"""Telemetry windows into SQL: the ingest writer's applier for ``telemetry`` reports.

Writes are idempotent: a window is unique per (device, sequence), so a replayed window is
skipped and counted (``telemetry_duplicates``), never double counted. The rows of a batch
go in with multi-row statements (``INSERT .. VALUES (..), (..) ON CONFLICT DO NOTHING
RETURNING device_id, seq``, on SQLite and PostgreSQL alike), so the rows stored are known
exactly: their figures are added to the fleet's running totals in the same transaction
(hub/telemetry/figures.py), a replay never.
A window older than ``raw_max_age_s`` is refused and counted (``telemetry_too_old``):
retention (hub/telemetry/retention.py) may have folded it into a downsampled row
already, so storing it again could count it twice.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Mapping, Sequence
from typing import Any

import orjson
from sqlalchemy.dialects import postgresql
from sqlmodel import Session, col, select

from hub.ingest.report import Report
from hub.store.tables import Telemetry
from hub.telemetry.figures import RunningTotals

PG_ROWS_PER_STATEMENT = 1000  # telemetry rows per multi-row INSERT (bind-parameter limits)


class TelemetryWindows:
    """Stores ``telemetry`` reports (a :class:`hub.ingest.report.ReportApplier`)."""

    def __init__(self, raw_max_age_s: float | None = None) -> None:
        self.raw_max_age_s = raw_max_age_s  # older windows are refused (see above)
        self.totals = RunningTotals()  # the fleet's figures, added as windows are stored

    def apply(self, s: Session, reports: Sequence[Report]) -> Mapping[str, int]:
        values: list[tuple[Any, ...]] = []
        bodies: list[Mapping[str, Any]] = []
        too_old = 0
        cutoff = time.time() - self.raw_max_age_s if self.raw_max_age_s is not None else None
        for r in reports:
            if r.kind != "telemetry":
                continue
            if cutoff is not None and r.message.body["end"] < cutoff:
                too_old += 1
                continue
            values.append(_telemetry_values(r.device_id, r.message.body))
            bodies.append(r.message.body)
        duplicates = 0
        if values:
            stored = self._insert_telemetry(s, values)
            duplicates = len(values) - len(stored)
            fresh = _first_of_each(values, stored) if duplicates else range(len(values))
            self.totals.add(s, [bodies[i] for i in fresh], [values[i][0] for i in fresh])
        return {"telemetry_duplicates": duplicates, "telemetry_too_old": too_old}

    def committed(self, reports: Sequence[Report]) -> Mapping[str, int]:
        return {}

    def _insert_telemetry(self, s: Session, values: list[tuple[Any, ...]]) -> set[WindowKey]:
        """Insert what is new; the (device, seq) of the rows stored (the rest were duplicates).

        ``values``: one tuple per row in ``_TELEMETRY_COLUMNS`` order (SQLite takes them
        as they are; the other dialects get dictionaries).
        """
        dialect = s.get_bind().dialect.name
        if dialect == "sqlite":
            return _insert_sqlite(s, values)
        rows = [dict(zip(_TELEMETRY_COLUMNS, v, strict=True)) for v in values]
        if dialect != "postgresql":
            return self._insert_telemetry_portable(s, rows)
        stored: set[WindowKey] = set()
        for i in range(0, len(rows), PG_ROWS_PER_STATEMENT):
            stmt = (
                postgresql.insert(Telemetry)
                .values(rows[i : i + PG_ROWS_PER_STATEMENT])
                .on_conflict_do_nothing(index_elements=["device_id", "seq"])
                .returning(col(Telemetry.device_id), col(Telemetry.seq))
            )
            stored.update((d, q) for d, q in s.connection().execute(stmt))
        return stored

    def _insert_telemetry_portable(self, s: Session, rows: list[dict[str, Any]]) -> set[WindowKey]:
        stored: set[WindowKey] = set()
        for row in rows:
            key = (row["device_id"], row["seq"])
            exists = s.exec(
                select(Telemetry).where(Telemetry.device_id == key[0], Telemetry.seq == key[1])
            ).first()
            if exists is None and key not in stored:
                s.add(Telemetry(**row))
                stored.add(key)
        return stored


WindowKey = tuple[str, int]  # (device_id, seq): a window's identity


def _first_of_each(values: list[tuple[Any, ...]], stored: set[WindowKey]) -> list[int]:
    """The indices of the rows stored: the first row of each stored key (a key sent twice
    in one batch is stored once)."""
    seen: set[WindowKey] = set()
    out = []
    for i, v in enumerate(values):
        key = (v[0], v[1])
        if key in stored and key not in seen:
            seen.add(key)
            out.append(i)
    return out


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
    "abs_err_sum",
    "sq_err_sum",
    "other_versions",
    "cpu_pct",
    "rss_bytes",
    "latency_hist",
    "spool_dropped",
    "windows",
    "resolution_s",
)
_QUOTED_COLUMNS = ", ".join(f'"{c}"' for c in _TELEMETRY_COLUMNS)  # "end" is a keyword
_SQLITE_ROW = f"({', '.join('?' for _ in _TELEMETRY_COLUMNS)})"
SQLITE_ROWS_PER_STATEMENT = 1000  # 22 columns: under SQLite's 32,766 bound parameters


def _sqlite_insert(rows: int) -> str:
    return (
        f"INSERT INTO {Telemetry.__tablename__} ({_QUOTED_COLUMNS})"
        f" VALUES {', '.join(_SQLITE_ROW for _ in range(rows))}"
        " ON CONFLICT (device_id, seq) DO NOTHING RETURNING device_id, seq"
    )


def _insert_sqlite(s: Session, values: list[tuple[Any, ...]]) -> set[WindowKey]:
    """Multi-row INSERTs in the session's transaction; the keys stored, as RETURNING
    names them (as fast as ``executemany`` here: 2,000 rows in ~20 ms either way)."""
    conn = s.connection().connection.driver_connection
    assert isinstance(conn, sqlite3.Connection)
    stored: set[WindowKey] = set()
    for i in range(0, len(values), SQLITE_ROWS_PER_STATEMENT):
        chunk = values[i : i + SQLITE_ROWS_PER_STATEMENT]
        params = [x for row in chunk for x in row]
        stored.update(conn.execute(_sqlite_insert(len(chunk)), params).fetchall())
    return stored


def _compact_json(value: Any) -> str:
    """Compact JSON of a latency histogram (``{"bucket": count}``) or of the labels of
    other versions, the text json.dumps with separators=(",", ":") gives: orjson writes
    it in ~0.3 µs, json in ~4, once per telemetry window."""
    return orjson.dumps(value).decode()


def _telemetry_values(device_id: str, b: Mapping[str, Any]) -> tuple[Any, ...]:
    """A validated telemetry body as a row, in ``_TELEMETRY_COLUMNS`` order.

    A tuple straight away rather than a dictionary: this runs once per window.
    """
    lat = b["latency_us"]
    hist = b.get("latency_hist")
    others = b.get("other_versions")
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
        get("abs_err_sum"),
        get("sq_err_sum"),
        _compact_json(others) if others is not None else None,
        get("cpu_pct"),
        get("rss_bytes"),
        _compact_json(hist) if hist is not None else None,
        get("spool_dropped"),
        1,  # windows
        0.0,  # resolution_s
    )
