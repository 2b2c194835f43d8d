"""The fleet's model figures, rollouts in progress, drift and ingest for ``GET /metrics``.

:class:`FleetCollector` reads, at each scrape, rows whose number does not grow with the
fleet: the running totals per model version that the ingest writers keep as they store
windows (hub/telemetry/figures.py), devices of the rollouts in progress counted per state
in SQL, open drift alerts counted per model and scope in SQL, the spool drops devices
reported (a row per device that ever dropped, summed in SQL), and the hub's own ingest
writer's backlog from memory.

Model figures are counters (inferences, errors, labels, a latency histogram) over every
window the hub stored; a version no window came for in ``FIGURES_IDLE_S`` leaves the
output, so versions long retired do not pile up. Live accuracy is a ratio of two of them
over a range (``increase(edgefleet_model_correct_total[15m]) /
increase(edgefleet_model_labelled_total[15m])``), which Prometheus computes exactly:
a gauge served here would have to pick the range for every reader.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Final

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector
from sqlalchemy import Engine, func
from sqlmodel import Session, col, select

from hub.ingest.writer import Ingest
from hub.store.tables import DriftAlert, Rollout, RolloutDevice, session
from hub.telemetry.figures import (
    LATENCY_BOUNDS_S,
    VersionFigures,
    read_figures,
    spool_dropped_total,
)

__all__ = ["FIGURES_IDLE_S", "FleetCollector"]

FIGURES_IDLE_S: Final = 24 * 3600.0  # seconds without a window before a version leaves
ACTIVE_ROLLOUTS: Final = ("running", "paused")  # rollouts whose devices are in progress
INGEST_DROPS: Final = {"write_errors": "write_error", "telemetry_too_old": "too_old"}


class FleetCollector(Collector):
    """What the fleet's devices measured and where its work stands (module docstring)."""

    def __init__(self, engine: Engine, ingest: Ingest) -> None:
        self.engine = engine
        self.ingest = ingest  # the hub process's writer: its backlog and drops

    def collect(self) -> Iterator[Metric]:
        with session(self.engine) as s:
            figures = read_figures(s, time.time() - FIGURES_IDLE_S)
            rollout_devices = _rollout_devices(s)
            alerts = _alerts_in(s, "open")
            stale = _alerts_in(s, "stale")
            spool = spool_dropped_total(s)
        yield from _model_families(figures)
        yield rollout_devices
        yield alerts
        yield stale
        yield CounterMetricFamily(
            "edgefleet_spool_dropped",
            "Telemetry windows devices' spools dropped (full spool), as they reported them",
            value=spool,
        )
        yield from self._ingest()

    def _ingest(self) -> Iterator[Metric]:
        depth, oldest_s = self.ingest.lag()
        yield GaugeMetricFamily(
            "edgefleet_ingest_queue_depth",
            "Reports the hub's ingest writer received and has not written yet",
            value=depth,
        )
        yield GaugeMetricFamily(
            "edgefleet_ingest_oldest_waiting_seconds",
            "Age of the oldest report the hub's ingest writer has not written yet",
            value=oldest_s,
        )
        dropped = CounterMetricFamily(
            "edgefleet_ingest_dropped",
            "Reports the ingest writer dropped: a row that failed to write, a window too old",
            labels=["reason"],
        )
        counts = self.ingest.counts
        for kind, reason in sorted(INGEST_DROPS.items(), key=lambda kv: kv[1]):
            dropped.add_metric([reason], counts.get(kind, 0))
        yield dropped


def _model_families(figures: list[VersionFigures]) -> Iterator[Metric]:
    labels = ["model", "version"]
    inferences = CounterMetricFamily(
        "edgefleet_model_inferences", "Inferences devices ran, by model version", labels=labels
    )
    errors = CounterMetricFamily(
        "edgefleet_model_errors", "Inferences that failed, by model version", labels=labels
    )
    labelled = CounterMetricFamily(
        "edgefleet_model_labelled",
        "Predictions a label came back for, by model version",
        labels=labels,
    )
    correct = CounterMetricFamily(
        "edgefleet_model_correct",
        "Of the labelled predictions of a classifier, those that were right",
        labels=labels,
    )
    abs_error = CounterMetricFamily(
        "edgefleet_model_abs_error",
        "Of the labelled predictions of a regressor, the sum of |prediction - label|",
        labels=labels,
    )
    latency = HistogramMetricFamily(
        "edgefleet_model_latency_seconds",
        "Inference latency devices measured, by model version (hub/telemetry/figures.py)",
        labels=labels,
    )
    for v in figures:
        key = [v.model, str(v.version)]
        inferences.add_metric(key, v.inferences)
        errors.add_metric(key, v.errors)
        labelled.add_metric(key, v.labelled)
        if v.regression:
            abs_error.add_metric(key, v.abs_err_sum)
        else:
            correct.add_metric(key, v.correct)
        cumulative, buckets = 0.0, []
        for bound, n in zip((*LATENCY_BOUNDS_S, float("inf")), v.latency_buckets, strict=True):
            cumulative += n
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
        latency.add_metric(key, buckets, v.latency_sum)
    yield from (inferences, errors, labelled, correct, abs_error, latency)


def _rollout_devices(s: Session) -> GaugeMetricFamily:
    """Devices of the rollouts in progress (a deployment is one: ADR 0019), by state."""
    family = GaugeMetricFamily(
        "edgefleet_rollout_devices",
        "Devices in running or paused rollouts, by the rollout's model and the device's state",
        labels=["model", "state"],
    )
    rows = s.exec(
        select(Rollout.model, RolloutDevice.state, func.count())
        .join(Rollout, col(Rollout.id) == col(RolloutDevice.rollout_id))
        .where(col(Rollout.state).in_(ACTIVE_ROLLOUTS))
        .group_by(col(Rollout.model), col(RolloutDevice.state))
        .order_by(col(Rollout.model), col(RolloutDevice.state))
    ).all()
    for model, state, n in rows:
        family.add_metric([model, state], n)
    return family


ALERT_STATES = {
    "open": "Drift alerts open, by model and scope (device, group, fleet)",
    "stale": "Drift alerts whose device fell silent, by model and scope (docs/drift.md)",
}


def _alerts_in(s: Session, state: str) -> GaugeMetricFamily:
    family = GaugeMetricFamily(
        f"edgefleet_drift_alerts_{state}", ALERT_STATES[state], labels=["model", "scope"]
    )
    rows = s.exec(
        select(DriftAlert.model, DriftAlert.scope, func.count())
        .where(DriftAlert.state == state)
        .group_by(col(DriftAlert.model), col(DriftAlert.scope))
        .order_by(col(DriftAlert.model), col(DriftAlert.scope))
    ).all()
    for model, scope, n in rows:
        family.add_metric([model, scope], n)
    return family
