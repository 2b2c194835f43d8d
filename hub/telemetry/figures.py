"""The fleet's running totals per model version, added as telemetry windows are stored.

The ingest writer (hub/telemetry/windows.py) hands :func:`add_figures` the bodies of the
windows it has just inserted, in the same transaction: each adds its inferences, errors,
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

import time
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from sqlalchemy import case, func
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session, col, select

from hub.store.figure_tables import ModelFigure, SpoolDrop
from shared.latency import N_BUCKETS, bucket_bounds

__all__ = [
    "LATENCY_BOUNDS_S",
    "FigureKey",
    "VersionFigures",
    "add_figures",
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
ROWS_PER_STATEMENT: Final = 500  # figure rows per multi-row upsert (bind-parameter limits)

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


def add_figures(s: Session, bodies: Iterable[Mapping[str, Any]], device_ids: Iterable[str]) -> None:
    """Add the figures of freshly stored windows to the totals, in ``s``'s transaction.

    Args:
        s: the ingest writer's session (not committed here).
        bodies: the validated ``telemetry`` bodies of the windows just inserted.
        device_ids: the device of each body, in the same order.
    """
    totals: defaultdict[FigureKey, float] = defaultdict(float)
    spool: dict[str, int] = {}
    for device_id, body in zip(device_ids, bodies, strict=True):
        _fold(totals, body)
        dropped = body.get("spool_dropped")
        if dropped:
            spool[device_id] = max(dropped, spool.get(device_id, 0))
    if totals:
        _upsert_totals(s, totals)
    if spool:
        _upsert_spool(s, spool)


def _fold(totals: defaultdict[FigureKey, float], body: Mapping[str, Any]) -> None:
    """Add one window's figures to ``totals``."""
    model, version = body.get("model"), body.get("version")
    if model is not None and version is not None:
        totals[(model, version, "inferences")] += body["count"]
        totals[(model, version, "errors")] += body["errors"]
        _fold_labels(totals, model, version, body)
        hist = body.get("latency_hist")
        if hist:
            n_all, sum_s = 0, 0.0
            for key, n in hist.items():
                index = int(key)
                totals[(model, version, _LE_FIGURES[_TO_PROMETHEUS[index]])] += n
                n_all += n
                sum_s += n * _MIDPOINT_S[index]
            totals[(model, version, "latency_count")] += n_all
            totals[(model, version, "latency_sum")] += sum_s
    for entry in body.get("other_versions") or ():  # late labels of other versions
        _fold_labels(totals, entry["model"], entry["version"], entry)


def _fold_labels(
    totals: defaultdict[FigureKey, float], model: str, version: int, fields: Mapping[str, Any]
) -> None:
    labelled = fields.get("labelled", 0)
    if not labelled:
        return
    totals[(model, version, "labelled")] += labelled
    if "abs_err_sum" in fields or "sq_err_sum" in fields:  # a regressor (hub/telemetry/labels.py)
        totals[(model, version, "abs_err_sum")] += fields.get("abs_err_sum") or 0.0
    else:
        totals[(model, version, "correct")] += fields.get("correct", 0)


def _insert_for(s: Session) -> Any:
    dialect = s.get_bind().dialect.name
    if dialect == "sqlite":
        return sqlite.insert
    if dialect == "postgresql":
        return postgresql.insert
    raise NotImplementedError(f"running totals on {dialect}: SQLite or PostgreSQL")


def _upsert_totals(s: Session, totals: Mapping[FigureKey, float]) -> None:
    """Add ``totals`` to the rows, in key order (concurrent writers lock rows in one order)."""
    now = time.time()
    rows = [
        {"model": m, "version": v, "figure": f, "value": x, "updated_at": now}
        for (m, v, f), x in sorted(totals.items())
    ]
    insert = _insert_for(s)
    for i in range(0, len(rows), ROWS_PER_STATEMENT):
        stmt = insert(ModelFigure).values(rows[i : i + ROWS_PER_STATEMENT])
        stmt = stmt.on_conflict_do_update(
            index_elements=["model", "version", "figure"],
            set_={
                "value": col(ModelFigure.value) + stmt.excluded.value,
                "updated_at": stmt.excluded.updated_at,
            },
        )
        s.connection().execute(stmt)


def _upsert_spool(s: Session, spool: Mapping[str, int]) -> None:
    """Keep each device's highest count: a replayed older window never lowers it."""
    now = time.time()
    rows = [{"device_id": d, "dropped": n, "updated_at": now} for d, n in sorted(spool.items())]
    insert = _insert_for(s)
    for i in range(0, len(rows), ROWS_PER_STATEMENT):
        stmt = insert(SpoolDrop).values(rows[i : i + ROWS_PER_STATEMENT])
        higher = stmt.excluded.dropped > col(SpoolDrop.dropped)
        stmt = stmt.on_conflict_do_update(
            index_elements=["device_id"],
            set_={
                "dropped": case((higher, stmt.excluded.dropped), else_=col(SpoolDrop.dropped)),
                "updated_at": case(
                    (higher, stmt.excluded.updated_at), else_=col(SpoolDrop.updated_at)
                ),
            },
        )
        s.connection().execute(stmt)


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

    def regression(self) -> bool:
        return self.abs_err_sum > 0 and self.correct == 0


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
    return [v for key, v in out.items() if latest[key] >= since]


_PLAIN: Final = frozenset(
    {"inferences", "errors", "labelled", "correct", "abs_err_sum", "latency_count", "latency_sum"}
)


def spool_dropped_total(s: Session) -> int:
    """Spool drops the fleet's devices reported: each device's highest count, summed."""
    return int(s.exec(select(func.coalesce(func.sum(SpoolDrop.dropped), 0))).one())
