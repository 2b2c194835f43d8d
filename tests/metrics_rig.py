"""A real hub behind uvicorn for the ``GET /metrics`` tests, and what devices tell it.

Used by tests/test_metrics_fleet.py, tests/test_metrics_scale.py and
tests/test_grafana_dashboards.py: a hub on a private Mosquitto, a viewer key to scrape
with, telemetry bodies as an agent sends them (shared/bodies.py's schema, a latency
histogram in shared/latency.py's layout), and the Prometheus text parsed back.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
from prometheus_client.parser import text_string_to_metric_families

from edgefleet.demo import ApiServer
from hub import Hub, HubConfig
from hub.access.keys import ApiKeys, Role
from hub.ingest.report import Report
from hub.store.tables import DriftAlert, Rollout, RolloutDevice, session
from hub.transport.broker import Mosquitto
from shared import protocol
from shared.latency import LatencyHistogram

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@dataclass
class Served:
    hub: Hub
    url: str
    key: str

    def scrape(self) -> str:
        r = httpx.get(
            f"{self.url}/metrics", headers={"authorization": f"Bearer {self.key}"}, timeout=30
        )
        assert r.status_code == 200, r.text
        return r.text


@contextmanager
def served_hub(broker: Mosquitto, data_dir: Path) -> Iterator[Served]:
    hub = Hub(HubConfig(data_dir=data_dir, broker_url=broker.address.url, client_id="h-m")).start()
    api = ApiServer(hub).start()
    key = ApiKeys(hub.engine).create("scraper", Role.viewer, "t").key
    try:
        yield Served(hub, api.url, key)
    finally:
        api.stop()
        hub.stop()


def samples(text: str) -> Samples:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(got: Samples, name: str, **labels: str) -> float:
    return got[(name, frozenset(labels.items()))]


def window(
    seq: int,
    model: str | None,
    version: int | None,
    latencies_ns: Iterable[int] = (),
    *,
    errors: int = 0,
    labels: tuple[int, int] | None = None,  # (labelled, correct)
    spool_dropped: int | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A ``telemetry`` body: one window of ``latencies_ns`` inferences, as the agent sends."""
    hist = LatencyHistogram()
    for ns in latencies_ns:
        hist.record(ns)
    end = time.time()
    body: dict[str, Any] = {
        "seq": seq,
        "start": end - 10,
        "end": end,
        "count": hist.count,
        "errors": errors,
        "latency_us": {
            "p50": hist.percentile(50),
            "p95": hist.percentile(95),
            "p99": hist.percentile(99),
        },
        "latency_hist": hist.to_dict(),
        **extra,
    }
    if model is not None:
        body["model"], body["version"] = model, version
    if labels is not None:
        body["labelled"], body["correct"] = labels
    if spool_dropped is not None:
        body["spool_dropped"] = spool_dropped
    return body


def publish(broker: Mosquitto, messages: Iterable[tuple[str, str, dict[str, Any]]]) -> int:
    """Send ``(device, kind, body)`` messages as devices do (QoS 1); how many were sent."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="metrics-devices")
    client.connect(broker.address.host, broker.address.port)
    client.loop_start()
    sent = 0
    try:
        for device, kind, body in messages:
            payload = protocol.encode(kind, body, ts=time.time())
            client.publish(protocol.topic(device, kind), payload, qos=1).wait_for_publish(5)
            sent += 1
    finally:
        client.loop_stop()
        client.disconnect()
    return sent


def report(device: str, kind: str, body: dict[str, Any]) -> Report:
    """A validated report, as the hub's MQTT link hands one to the ingest writer."""
    payload = protocol.encode(kind, body, ts=time.time())
    return Report(device, kind, protocol.decode(payload))


def paused_rollout(hub: Hub, rollout_id: str, model: str, states: dict[str, str]) -> None:
    """A paused rollout of ``model`` whose devices stand at ``states`` (device -> state).

    Paused, so the hub's rollout engine leaves it as it is while the test reads it.
    """
    with session(hub.engine) as s:
        s.add(Rollout(id=rollout_id, model=model, version=2, target=f"{model}/2", state="paused"))
        s.flush()
        for device, state in states.items():
            s.add(RolloutDevice(rollout_id=rollout_id, device_id=device, state=state))
        s.commit()


def open_alert(hub: Hub, model: str, scope: str, scope_id: str) -> None:
    """An open drift alert, as the drift monitor writes one (hub/telemetry/drift.py)."""
    with session(hub.engine) as s:
        s.add(DriftAlert(model=model, version=1, scope=scope, scope_id=scope_id))
        s.commit()
