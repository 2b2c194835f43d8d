"""A model's drift policy (when a window exceeds, when an alert opens and clears) and
the open alerts, as other hub code reads them (:func:`open_alerts`: the closed loop)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine
from sqlmodel import Session, col, select

from hub.store.tables import DriftAlert, DriftPolicy, session


@dataclass(frozen=True)
class Policy:
    """Thresholds and the persistence rule of one model (see the module docstring)."""

    psi_threshold: float = 0.2
    js_threshold: float = 0.1
    k: int = 2
    n: int = 3
    # A window needs enough rows for its scores to mean something: with B bins, a sample
    # of N rows from the baseline itself scores PSI ~ (B-1)/N and JS distance ~
    # sqrt((B-1) / (8 N ln 2)): at 10 bins and 500 rows, ~0.02 and ~0.05, well under the
    # thresholds; at 100 rows JS noise alone (~0.11) would cross 0.1.
    min_rows: int = 500
    scope_window_s: float = 60.0  # seconds
    # Seconds without a window (telemetry or drift) from a device before its open alerts
    # go stale: three idle heartbeats (an idle device sends a zero window every 300 s,
    # ADR 0034), so a quiet but living device never goes stale.
    silence_s: float = 900.0

    def __post_init__(self) -> None:
        if not 1 <= self.k <= self.n <= 100:
            raise ValueError("persistence needs 1 <= k <= n <= 100")
        if self.psi_threshold <= 0 or not 0 < self.js_threshold <= 1:
            raise ValueError("thresholds: psi > 0, 0 < js <= 1")
        if self.min_rows < 1 or self.scope_window_s <= 0 or self.silence_s <= 0:
            raise ValueError("min_rows >= 1, scope_window_s > 0 and silence_s > 0")

    def drifted(self, rows: int, scores: Mapping[str, Any] | None) -> list[str]:
        """The features (and ``__outputs__``) over a threshold; none for a small window."""
        if scores is None or rows < self.min_rows:
            return []
        return sorted(
            name
            for name, sc in scores.items()
            if sc["psi"] > self.psi_threshold or sc["js"] > self.js_threshold
        )

    def verdict(self, rows: int, scores: Mapping[str, Any]) -> dict[str, Any]:
        """What a drift report says of ``rows`` rows: the scores and drifted features, or,
        under ``min_rows``, that there is not enough data: PSI/JS ``None``, since a handful
        of rows scores high against any baseline (one row: PSI ~8) and means nothing."""
        if rows >= self.min_rows:
            return {"enough_data": True, "scores": scores, "drifted": self.drifted(rows, scores)}
        return {
            "enough_data": False,
            "scores": {name: {**sc, "psi": None, "js": None} for name, sc in scores.items()},
            "drifted": [],
            "note": self.too_few(rows),
        }

    def enough(self, versions: list[dict[str, Any]]) -> dict[str, Any]:
        """A drift report's top line: whether every version had ``min_rows`` rows."""
        rows = sum(v["rows"] for v in versions)
        enough = bool(versions) and all(v["enough_data"] for v in versions)
        note = {} if enough else {"note": self.too_few(rows)}
        return {"enough_data": enough, "rows": rows, "min_rows": self.min_rows, **note}

    def too_few(self, rows: int) -> str:
        return (
            f"not enough data: {rows} row(s) < min_rows {self.min_rows}; PSI/JS are"
            f" given once the range holds at least {self.min_rows} rows"
        )


@dataclass(frozen=True)
class AlertInfo:
    """An alert as other hub code (data capture, retraining) sees it."""

    id: int
    model: str
    version: int | None
    scope: str  # device | group | fleet
    scope_id: str  # device id, tag, or "*"
    # device scope: the device; group/fleet: the devices that drove it (module docstring),
    # possibly none
    devices: tuple[str, ...]
    features: tuple[str, ...]  # drifted features ("__outputs__": the predictions)
    opened_at: float
    state: str  # open | stale
    stale_reason: str | None = None


def open_alerts(engine: Engine, model: str | None = None) -> list[AlertInfo]:
    """Every open drift alert (of ``model``), oldest first."""
    q = select(DriftAlert).where(DriftAlert.state == "open")
    if model is not None:
        q = q.where(DriftAlert.model == model)
    with session(engine) as s:
        rows = s.exec(q.order_by(col(DriftAlert.opened_at))).all()
    return [alert_info(a) for a in rows]


def live_alerts(engine: Engine, model: str) -> list[AlertInfo]:
    """The model's open and stale drift alerts (what the closed loop weighs), oldest first."""
    q = select(DriftAlert).where(
        DriftAlert.model == model, col(DriftAlert.state).in_(("open", "stale"))
    )
    with session(engine) as s:
        rows = s.exec(q.order_by(col(DriftAlert.opened_at))).all()
    return [alert_info(a) for a in rows]


def alert_info(a: DriftAlert) -> AlertInfo:
    assert a.id is not None
    return AlertInfo(
        a.id,
        a.model,
        a.version,
        a.scope,
        a.scope_id,
        tuple(a.devices),
        tuple(a.features),
        a.opened_at,
        a.state,
        a.stale_reason,
    )


def load_policy(s: Session, model: str) -> Policy:
    row = s.get(DriftPolicy, model)
    if row is None:
        return Policy()
    return Policy(
        row.psi_threshold,
        row.js_threshold,
        row.k,
        row.n,
        row.min_rows,
        row.scope_window_s,
        row.silence_s,
    )
