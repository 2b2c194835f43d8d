"""Retained messages on device topics (issue 11, item 7), against a real hub and Mosquitto.

Only a device's ``state`` is meant to be retained. Before: a retained ``events`` message
was inserted again at every hub start (rows 1 -> 2 -> 3) and a retained ``fetch`` was
answered again; a revoked device's retained state stayed in the broker. After: the hub
reads the retained ``state``, drops and counts every other retained message, and clears a
revoked device's retained state.
"""

from __future__ import annotations

import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from sqlmodel import func, select
from waiting import wait_for

from hub import Hub, HubConfig
from hub.store.tables import Device, EventRecord, session
from hub.transport.broker import Mosquitto
from shared import protocol

pytestmark = [pytest.mark.broker]


def publish_retained(broker: Mosquitto, messages: list[tuple[str, bytes]]) -> None:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="retained-writer")
    client.connect(broker.address.host, broker.address.port)
    client.loop_start()
    for topic, payload in messages:
        client.publish(topic, payload, qos=1, retain=True).wait_for_publish(5)
    client.loop_stop()
    client.disconnect()


def retained_on(broker: Mosquitto, topic: str, wait_s: float = 1.5) -> list[bytes]:
    """What a new subscriber to ``topic`` gets at once: the retained message, if any."""
    got: list[bytes] = []
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="retained-reader")
    client.on_message = lambda _c, _u, m: got.append(bytes(m.payload)) if m.retain else None
    client.connect(broker.address.host, broker.address.port)
    client.subscribe(topic, qos=1)
    client.loop_start()
    time.sleep(wait_s)
    client.loop_stop()
    client.disconnect()
    return got


def start_hub(broker: Mosquitto, data: Path) -> Hub:
    return Hub(HubConfig(data_dir=data, broker_url=broker.address.url, client_id="hub-ret")).start()


def test_only_state_is_read_retained_and_a_revoked_state_is_cleared(
    private_mosquitto: Mosquitto, tmp_path: Path
) -> None:
    now = time.time()
    event = {"deployment": "dep-1", "model": "m", "version": 1, "stage": "healthy"}
    state = {"status": "online", "device_class": "sim-gateway"}
    publish_retained(
        private_mosquitto,
        [
            (protocol.topic("ret-1", "events"), protocol.encode("event", event, ts=now)),
            (
                protocol.topic("ret-1", "fetch"),
                protocol.encode("fetch_meta", {"req": "r1", "root_version": 1}, ts=now),
            ),
            (protocol.topic("ret-1", "state"), protocol.encode("state", state, ts=now)),
        ],
    )
    for start in range(2):  # a hub restart must not read them again
        hub = start_hub(private_mosquitto, tmp_path / "hub")
        try:
            wait_for(lambda h=hub: h.mqtt.dropped["retained"] >= 2, 10, "retained drops")
            wait_for(lambda h=hub: _device(h, "ret-1") is not None, 10, "the retained state")
            time.sleep(0.5)
            assert hub.mqtt.dropped["retained"] == 2, hub.mqtt.dropped
            with session(hub.engine) as s:
                assert s.exec(select(func.count()).select_from(EventRecord)).one() == 0
            if start == 1:
                hub.revoke_device("ret-1", "keyCompromise", "test")
                wait_for(
                    lambda: not retained_on(private_mosquitto, protocol.topic("ret-1", "state")),
                    10,
                    "the revoked device's retained state cleared",
                )
        finally:
            hub.stop()
    # the other retained messages are still in the broker: the hub ignores, not deletes them
    assert retained_on(private_mosquitto, protocol.topic("ret-1", "events"))


def _device(hub: Hub, device_id: str) -> Device | None:
    with session(hub.engine) as s:
        return s.get(Device, device_id)
