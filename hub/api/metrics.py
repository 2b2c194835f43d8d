"""``GET /metrics``: the hub and its fleet in the Prometheus text format.

Read at each scrape (:class:`HubCollector`, no background work): devices by reported
status and class, rollouts by state, build jobs by status, the messages devices sent by
kind and those dropped by reason, fetches refused by reason; and, measured by
:class:`RequestMetrics`, the admin API's requests and their latency by route template
and status class.

Series stay bounded whatever the fleet's size: no label names a device, a rollout or a
key. Devices are counted per (status, class): a fleet of 10,000 devices in 3 classes
gives at most 3 × 4 device series (statuses: online, offline, unknown, revoked), as one
of 10 devices does. Route labels are the route templates (``/devices/{device_id}``), never
the paths asked for; a path that is no route counts as ``other``. The fleet's model
figures, rollouts in progress, drift alerts and ingest backlog: hub/api/metrics_fleet.py.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Final

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func
from sqlmodel import col, select
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from hub.api.metrics_fleet import FleetCollector
from hub.store.tables import Device, Job, Rollout, session

if TYPE_CHECKING:
    from hub.app import Hub

__all__ = ["CONTENT_TYPE", "HubCollector", "RequestMetrics", "metrics_registry", "render"]

CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class HubCollector(Collector):
    """The hub's state at scrape time, from its database and its counters."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    def collect(self) -> Iterator[Metric]:
        hub = self.hub
        devices = GaugeMetricFamily(
            "edgefleet_devices",
            "Devices by the status they reported and their class",
            labels=["status", "device_class"],
        )
        rollouts = GaugeMetricFamily("edgefleet_rollouts", "Rollouts by state", labels=["state"])
        jobs = GaugeMetricFamily("edgefleet_jobs", "Build jobs by status", labels=["status"])
        revoked = hub.revoked()
        with session(hub.engine) as s:
            # counted in SQL: a scrape reads a row per (status, class), not per device
            per_kind = s.exec(
                select(Device.status, Device.device_class, func.count()).group_by(
                    col(Device.status), col(Device.device_class)
                )
            ).all()
            gone = s.exec(  # revoked devices: a handful, counted as revoked instead
                select(Device.status, Device.device_class).where(col(Device.id).in_(revoked))
            ).all()
            by_state = s.exec(select(Rollout.state, func.count()).group_by(Rollout.state)).all()
            by_status = s.exec(select(Job.status, func.count()).group_by(Job.status)).all()
        tally: dict[tuple[str, str], int] = {}
        for status, cls, n in per_kind:
            key = (str(status), str(cls or "unknown"))
            tally[key] = tally.get(key, 0) + n
        for status, cls in gone:
            tally[(str(status), str(cls or "unknown"))] -= 1
            key = ("revoked", str(cls or "unknown"))
            tally[key] = tally.get(key, 0) + 1
        for (status, cls), n in sorted(tally.items()):
            if n:
                devices.add_metric([status, cls], n)
        for state, n in by_state:
            rollouts.add_metric([str(state)], n)
        for status, n in by_status:
            jobs.add_metric([str(status)], n)
        yield devices
        yield rollouts
        yield jobs
        yield from _links(hub)
        yield _counter(
            "edgefleet_ingest",
            "What the ingest writer stored or skipped, by kind",
            "kind",
            hub.ingest.counts,
        )
        yield _counter(
            "edgefleet_fetches_refused",
            "Device fetches refused, by reason (not_deployed, over_budget)",
            "reason",
            hub.fetch.refused,
        )
        alerts = {k: hub.alerts.counts[k] for k in ALERT_EVENTS}  # each series from the start
        yield _counter(
            "edgefleet_alert_deliveries",
            "Alerts to webhooks: messages written, tries, and their outcomes (docs/alerts.md)",
            "event",
            alerts,
        )
        pending = GaugeMetricFamily(
            "edgefleet_alert_pending", "Alert deliveries waiting, per receiver", labels=["receiver"]
        )
        for receiver, n in sorted(hub.alerts.pending().items()):
            pending.add_metric([receiver], n)
        yield pending


# What the alert dispatcher counts (hub/alerts/dispatcher.py), served as one counter's
# events; at most 100 receivers bound the pending gauge's series.
ALERT_EVENTS = ("messages", "attempts", "sent", "retried", "failed", "dropped")


def _links(hub: Hub) -> Iterator[Metric]:
    """Whether this process leads (ADR 0032), and what its links took and dropped (a
    replica has two: its own and, while it leads, the leader's)."""
    leader = GaugeMetricFamily(
        "edgefleet_hub_leader", "1 if this hub process runs the leader's work (ADR 0032)"
    )
    leader.add_metric([], 1.0 if hub.leader.leading() else 0.0)
    yield leader
    links = [hub.mqtt, *([hub.lead_link] if hub.lead_link is not None else [])]
    yield _counter(
        "edgefleet_device_messages",
        "Device messages the hub took, by topic kind",
        "kind",
        sum((link.counts for link in links), Counter()),
    )
    yield _counter(
        "edgefleet_device_messages_dropped",
        "Device messages dropped, by reason (bad input, budgets, revoked devices)",
        "reason",
        sum((link.dropped for link in links), Counter()),
    )


def _counter(name: str, doc: str, label: str, values: Any) -> CounterMetricFamily:
    family = CounterMetricFamily(name, doc, labels=[label])
    for key, n in sorted(dict(values).items()):
        family.add_metric([str(key)], float(n))
    return family


class RequestMetrics:
    """ASGI middleware: each API request's latency by method, route template and status
    class (2xx ... 5xx)."""

    def __init__(self, app: ASGIApp, registry: CollectorRegistry) -> None:
        self.app = app
        self.latency = Histogram(
            "edgefleet_api_request_seconds",
            "Admin API requests and their latency, by route template",
            ["method", "route", "status"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = [500]

        async def watch(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, watch)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "other"
            self.latency.labels(scope["method"], template, f"{status[0] // 100}xx").observe(
                time.perf_counter() - started
            )


def metrics_registry(hub: Hub) -> CollectorRegistry:
    """A registry of the hub's own (not the process-global one): the hub's collectors."""
    registry = CollectorRegistry(auto_describe=True)
    registry.register(HubCollector(hub))
    registry.register(FleetCollector(hub.engine, hub.ingest))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    """The registry in the Prometheus text format."""
    return generate_latest(registry)
