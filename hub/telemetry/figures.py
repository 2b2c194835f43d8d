"""The fleet's running totals per model version, added as telemetry windows are stored.

The ingest writer (hub/telemetry/windows.py) hands :class:`RunningTotals` the bodies of
the windows it has just inserted, in the same transaction: each adds its inferences, errors,
labels and latency histogram to the :class:`~hub.store.figure_tables.ModelFigure` rows of
its model version, and its spool drops to the device's
:class:`~hub.store.figure_tables.SpoolDrop` row. A window stored once is counted once (a
replay is not inserted, so not counted), and ingest worker processes add theirs too.
``GET /metrics`` reads these rows (:func:`read_figures`): a row per figure, whatever the
number of devices or windows.

Latency: a window carries its latencies as a histogram of log-scale buckets, each 12.5%
wide (shared/latency.py). Each device bucket is counted in the first Prometheus bucket
(:data:`LATENCY_BOUNDS_S`) its upper end does not pass; one that straddles a bound goes
to the next, so a ``le`` count never includes a latency above ``le``, and misses at most
those within 12.5% under it. The windows carry no sum of latencies: ``latency_sum`` is
estimated from each device bucket's midpoint (within 6.25% of the true sum).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from sqlalchemy import case, event, func
from sqlalchemy.dialects import postgresql
from sqlmodel import Session, col, select

from hub.store.figure_tables import ModelFigure, SpoolDrop
from shared.latency import N_BUCKETS, bucket_bounds

__all__ = [
    "LATENCY_BOUNDS_S",
    "FigureKey",
    "RunningTotals",
    "VersionFigures",
    "read_figures",
    "spool_dropped_total",
]

# Prometheus latency buckets, seconds: one inference on a small device model takes
# ~10 µs to a few ms (DESIGN §8); the top bounds catch a stalled device.
LATENCY_BOUNDS_S: Final = (
    0.00001,
    0.000025,
    0.00005,
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
)

FigureKey = tuple[str, int, str]  # (model, version, figure)


def _prometheus_bucket(index: int) -> int:
    """The Prometheus bucket (len(LATENCY_BOUNDS_S): +Inf) a device bucket counts in."""
    high_s = bucket_bounds(index)[1] / 1e9
    for i, bound in enumerate(LATENCY_BOUNDS_S):
        if high_s <= bound:
            return i
    return len(LATENCY_BOUNDS_S)


_TO_PROMETHEUS: Final = tuple(_prometheus_bucket(i) for i in range(N_BUCKETS))
_MIDPOINT_S: Final = tuple(sum(bucket_bounds(i)) / 2 / 1e9 for i in range(N_BUCKETS))
_LE_FIGURES: Final = tuple(f"latency_le_{i}" for i in range(len(LATENCY_BOUNDS_S) + 1))


class RunningTotals:
    """Adds freshly stored windows' figures to the totals (module docstring): one per
    ingest writer, which remembers the spool counts it wrote so that a device reporting
    the same count in every window costs no write."""

    def __init__(self) -> None:
        self._spool_written: dict[str, int] = {}  # device -> count committed (by this writer)

    def add(
        self, s: Session, bodies: Iterable[Mapping[str, Any]], device_ids: Iterable[str]
    ) -> None:
        """Add the figures of windows just inserted, in ``s``'s transaction.

        Args:
            s: the ingest writer's session (not committed here).
            bodies: the validated ``telemetry`` bodies of the windows just inserted.
            device_ids: the device of each body, in the same order.
        """
        batch: dict[tuple[str, int], _BatchFigures] = {}
        spool: dict[str, int] = {}
        for device_id, body in zip(device_ids, bodies, strict=True):
            _fold(batch, body)
            dropped = body.get("spool_dropped")
            if dropped and dropped > self._spool_written.get(device_id, 0):
                spool[device_id] = max(dropped, spool.get(device_id, 0))
        totals = {
            k: x for (model, version), v in batch.items() for k, x in v.totals(model, version)
        }
        if totals:
            _upsert_totals(s, totals)
        if spool:
            _upsert_spool(s, spool)
            # remembered once committed: a batch rolled back is written again
            event.listen(s, "after_commit", lambda _: self._spool_written.update(spool), once=True)


_SCALARS: Final = ("inferences", "errors", "labelled", "correct", "abs_err_sum")


class _BatchFigures:
    """One model version's figures in one batch of windows: plain lists, since
    :func:`_fold` adds to them once per stored window."""

    __slots__ = ("counts", "regression", "scalars")

    def __init__(self) -> None:
        self.scalars = [0.0] * len(_SCALARS)  # in _SCALARS order
        self.counts: dict[str, int] = {}  # device latency buckets, as the wire names them
        self.regression = False  # labels with error sums came (even sums of 0: no error)

    def totals(self, model: str, version: int) -> Iterator[tuple[FigureKey, float]]:
        """As totals to add: inferences and errors always, the rest when there is some;
        device latency buckets mapped to Prometheus buckets, a count and a sum."""
        for i, (name, x) in enumerate(zip(_SCALARS, self.scalars, strict=True)):
            if x or i < 2 or (self.regression and name == "abs_err_sum"):
                yield (model, version, name), x
        if not self.counts:
            return
        buckets = [0] * len(_LE_FIGURES)
        n_all, sum_s = 0, 0.0
        for key, n in self.counts.items():
            index = int(key)
            buckets[_TO_PROMETHEUS[index]] += n
            n_all += n
            sum_s += n * _MIDPOINT_S[index]
        for figure, n in zip(_LE_FIGURES, buckets, strict=True):
            if n:
                yield (model, version, figure), n
        yield (model, version, "latency_count"), n_all
        yield (model, version, "latency_sum"), sum_s


def _fold(batch: dict[tuple[str, int], _BatchFigures], body: Mapping[str, Any]) -> None:
    """Add one window's figures to its version's in ``batch`` (and late labels to theirs)."""
    model, version = body.get("model"), body.get("version")
    if model is not None and version is not None:
        v = batch.get((model, version))
        if v is None:
            v = batch[(model, version)] = _BatchFigures()
        v.scalars[0] += body["count"]
        v.scalars[1] += body["errors"]
        if body.get("labelled"):
            _fold_labels(v, body)
        hist = body.get("latency_hist")
        if hist:
            counts = v.counts
            get = counts.get
            for key, n in hist.items():  # string keys: no int() per bucket and window
                counts[key] = get(key, 0) + n
    for entry in body.get("other_versions") or ():  # late labels of other versions
        if entry.get("labelled"):
            key = (entry["model"], entry["version"])
            _fold_labels(batch.setdefault(key, _BatchFigures()), entry)


def _fold_labels(v: _BatchFigures, fields: Mapping[str, Any]) -> None:
    v.scalars[2] += fields["labelled"]
    if "abs_err_sum" in fields or "sq_err_sum" in fields:  # a regressor (hub/telemetry/labels.py)
        v.scalars[4] += fields.get("abs_err_sum") or 0.0
        v.regression = True
    else:
        v.scalars[3] += fields.get("correct", 0)


def _upsert_totals(s: Session, totals: Mapping[FigureKey, float]) -> None:
    """Add ``totals`` to the rows, in key order (concurrent writers lock rows in one order).

    SQLite: the driver's ``executemany`` (a batch's few dozen rows in ~0.05 ms, where
    SQLAlchemy's execution costs ~0.3 ms, once per ingest batch); PostgreSQL: one
    cached statement with the rows as parameters.
    """
    now = time.time()
    rows = [(m, v, f, x, now) for (m, v, f), x in sorted(totals.items())]
    if s.get_bind().dialect.name == "sqlite":
        _driver(s).executemany(_SQLITE_ADD_TOTALS, rows)
        return
    stmt = postgresql.insert(ModelFigure)
    stmt = stmt.on_conflict_do_update(
        index_elements=["model", "version", "figure"],
        set_={
            "value": col(ModelFigure.value) + stmt.excluded.value,
            "updated_at": stmt.excluded.updated_at,
        },
    )
    keys = ("model", "version", "figure", "value", "updated_at")
    s.connection().execute(stmt, [dict(zip(keys, r, strict=True)) for r in rows])


_SQLITE_ADD_TOTALS: Final = (
    f"INSERT INTO {ModelFigure.__tablename__} (model, version, figure, value, updated_at)"
    " VALUES (?, ?, ?, ?, ?) ON CONFLICT (model, version, figure) DO UPDATE"
    " SET value = value + excluded.value, updated_at = excluded.updated_at"
)


def _driver(s: Session) -> sqlite3.Connection:
    conn = s.connection().connection.driver_connection
    assert isinstance(conn, sqlite3.Connection)
    return conn


def _upsert_spool(s: Session, spool: Mapping[str, int]) -> None:
    """Keep each device's highest count: a replayed older window never lowers it."""
    now = time.time()
    rows = [(d, n, now) for d, n in sorted(spool.items())]
    if s.get_bind().dialect.name == "sqlite":
        _driver(s).executemany(_SQLITE_RAISE_SPOOL, rows)
        return
    stmt = postgresql.insert(SpoolDrop)
    higher = stmt.excluded.dropped > col(SpoolDrop.dropped)
    stmt = stmt.on_conflict_do_update(
        index_elements=["device_id"],
        set_={
            "dropped": case((higher, stmt.excluded.dropped), else_=col(SpoolDrop.dropped)),
            "updated_at": case((higher, stmt.excluded.updated_at), else_=col(SpoolDrop.updated_at)),
        },
    )
    keys = ("device_id", "dropped", "updated_at")
    s.connection().execute(stmt, [dict(zip(keys, r, strict=True)) for r in rows])


_SQLITE_RAISE_SPOOL: Final = (
    f"INSERT INTO {SpoolDrop.__tablename__} (device_id, dropped, updated_at) VALUES (?, ?, ?)"
    " ON CONFLICT (device_id) DO UPDATE SET dropped = excluded.dropped,"
    " updated_at = excluded.updated_at WHERE excluded.dropped > dropped"
)


@dataclass
class VersionFigures:
    """The running totals of one model version, as ``GET /metrics`` serves them."""

    model: str
    version: int
    inferences: float = 0.0
    errors: float = 0.0
    labelled: float = 0.0
    correct: float = 0.0
    abs_err_sum: float = 0.0
    latency_count: float = 0.0
    latency_sum: float = 0.0  # seconds, estimated (module docstring)
    latency_buckets: list[float] = field(
        default_factory=lambda: [0.0] * (len(LATENCY_BOUNDS_S) + 1)
    )  # per Prometheus bucket (the last: above every bound), not cumulative
    regression: bool = False  # a regressor: its labels came with error sums


def read_figures(s: Session, since: float) -> list[VersionFigures]:
    """The totals of every model version a window was stored for since ``since``.

    Whole versions: a bucket no recent window reached stays in, so the histogram stays
    whole; a version no device reported since ``since`` leaves (its series end).
    """
    rows = s.exec(select(ModelFigure)).all()
    out: dict[tuple[str, int], VersionFigures] = {}
    latest: dict[tuple[str, int], float] = {}
    for row in sorted(rows, key=lambda r: (r.model, r.version)):
        key = (row.model, row.version)
        v = out.setdefault(key, VersionFigures(row.model, row.version))
        latest[key] = max(row.updated_at, latest.get(key, 0.0))
        if row.figure.startswith("latency_le_"):
            v.latency_buckets[int(row.figure.removeprefix("latency_le_"))] = row.value
        elif row.figure in _PLAIN:
            setattr(v, row.figure, row.value)
            v.regression = v.regression or row.figure == "abs_err_sum"
    return [v for key, v in out.items() if latest[key] >= since]


_PLAIN: Final = frozenset(
    {"inferences", "errors", "labelled", "correct", "abs_err_sum", "latency_count", "latency_sum"}
)


def spool_dropped_total(s: Session) -> int:
    """Spool drops the fleet's devices reported: each device's highest count, summed."""
    return int(s.exec(select(func.coalesce(func.sum(SpoolDrop.dropped), 0))).one())
