"""``GET /metrics`` (hub/api/metrics.py): the Prometheus text a real hub serves behind
uvicorn, with devices reporting over a real Mosquitto, accepted by ``promtool check
metrics`` (Debian's prometheus package) and read back with the client's own parser."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import paho.mqtt.client as mqtt
import pytest
from prometheus_client.parser import text_string_to_metric_families
from waiting import wait_for

from edgefleet.demo import ApiServer
from hub import Hub, HubConfig
from hub.access.keys import ApiKeys, Role
from hub.transport.broker import Mosquitto
from shared import protocol

pytestmark = [pytest.mark.broker]


@pytest.fixture
def served(private_mosquitto: Mosquitto, tmp_path: Path) -> Iterator[tuple[Hub, str, str]]:
    hub = Hub(
        HubConfig(
            data_dir=tmp_path / "hub", broker_url=private_mosquitto.address.url, client_id="h-m"
        )
    ).start()
    api = ApiServer(hub).start()
    key = ApiKeys(hub.engine).create("scraper", Role.viewer, "t").key
    try:
        yield hub, api.url, key
    finally:
        api.stop()
        hub.stop()


def report(broker: Mosquitto, devices: dict[str, str]) -> None:
    """Each device (id -> class) says it is online, and one message that is not JSON."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="metrics-devices")
    client.connect(broker.address.host, broker.address.port)
    client.loop_start()
    try:
        for device, cls in devices.items():
            body = {"status": "online", "device_class": cls}
            payload = protocol.encode("state", body, ts=time.time())
            client.publish(protocol.topic(device, "state"), payload, qos=1).wait_for_publish(5)
        client.publish(protocol.topic("gw-1", "events"), b"{not json", qos=1).wait_for_publish(5)
    finally:
        client.loop_stop()
        client.disconnect()


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def test_metrics_are_valid_prometheus_text_with_the_fleet_in_bounded_series(
    private_mosquitto: Mosquitto, served: tuple[Hub, str, str]
) -> None:
    hub, url, key = served
    report(
        private_mosquitto, {"gw-1": "generic-linux", "gw-2": "generic-linux", "pi-1": "pi-litert"}
    )
    wait_for(lambda: sum(hub.mqtt.dropped.values()) >= 1, 10, "the bad message counted")
    with httpx.Client(base_url=url) as http:
        assert http.get("/metrics").status_code == 401  # a scraper needs a key
        # a request on a route with a device in its path, to see how it is labelled
        http.get("/devices/gw-1", headers={"authorization": f"Bearer {key}"})
        wait_for(
            lambda: (
                len(
                    [
                        d
                        for d in http.get(
                            "/devices", headers={"authorization": f"Bearer {key}"}
                        ).json()
                    ]
                )
                == 3
            ),
            10,
            "the three devices",
        )
        r = http.get("/metrics", headers={"authorization": f"Bearer {key}"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    got = samples(text)
    online = {labels: v for (name, labels), v in got.items() if name == "edgefleet_devices"}
    assert online[frozenset({("status", "online"), ("device_class", "generic-linux")})] == 2
    assert online[frozenset({("status", "online"), ("device_class", "pi-litert")})] == 1
    assert any(n == "edgefleet_device_messages_dropped_total" for n, _ in got)
    # alerts to webhooks: every event's series from the start, at 0 with no receiver
    sent = frozenset({("event", "sent")})
    assert got[("edgefleet_alert_deliveries_total", sent)] == 0
    # the API's own requests, by route template (never the path: no device id in a label)
    routes = {dict(labels).get("route") for n, labels in got if n.startswith("edgefleet_api_")}
    assert "/devices/{device_id}" in routes and "/devices/gw-1" not in routes
    assert not any("gw-1" in v for _, labels in got for _, v in labels)

    # every metric the alert rules use (deploy/prometheus/rules.yml) is one the hub serves
    rules = (Path(__file__).resolve().parents[1] / "deploy/prometheus/rules.yml").read_text()
    names = {n for n, _ in got} | {f.name for f in text_string_to_metric_families(text)}
    for used in set(re.findall(r"\bedgefleet_[a-z_]+", rules)):
        family = re.sub(r"_(total|count|sum|bucket)$", "", used)  # a family with no sample yet
        assert used in names or family in names, f"rules.yml uses {used}: not in /metrics"

    promtool = shutil.which("promtool")
    assert promtool is not None, "promtool missing: ./scripts/setup installs Debian's prometheus"
    checked = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
