"""One device cannot fill the hub's disk with outsized or future-dated windows (issue 11,
item 4), against a real hub and Mosquitto.

Before: 20,000 telemetry messages with a 4,096-character ``model`` grew the database by
93 MB in 5.4 s, and a window dated far in the future escaped retention. After: a model
name is at most 64 characters like the registry's, and a telemetry or drift window dated
more than ``MAX_CLOCK_SKEW_S`` ahead of the hub's clock is refused and counted.
"""

from __future__ import annotations

import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from sqlmodel import func, select
from waiting import wait_for

from hub import Hub, HubConfig
from hub.store.tables import Telemetry, session
from hub.transport.broker import Mosquitto
from hub.transport.decode import MAX_CLOCK_SKEW_S
from shared import protocol

pytestmark = [pytest.mark.broker]


def window(seq: int, end: float, model: str = "m") -> bytes:
    body = {
        "seq": seq,
        "start": end - 10,
        "end": end,
        "model": model,
        "version": 1,
        "count": 1,
        "errors": 0,
        "latency_us": {"p50": 1.0, "p95": 1.0, "p99": 1.0},
    }
    # the envelope as a device dates it: its own clock, honest or not
    return protocol.encode("telemetry", body, ts=end)


def test_outsized_and_future_windows_are_refused_and_counted(
    private_mosquitto: Mosquitto, tmp_path: Path
) -> None:
    hub = Hub(
        HubConfig(
            data_dir=tmp_path / "hub", broker_url=private_mosquitto.address.url, client_id="h-il"
        )
    ).start()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="greedy-1")
    client.connect(private_mosquitto.address.host, private_mosquitto.address.port)
    client.loop_start()
    try:
        now = time.time()
        topic = protocol.topic("greedy-1", "telemetry")
        sends = [
            window(1, now),  # honest
            window(2, now + MAX_CLOCK_SKEW_S / 2),  # a clock a little ahead: accepted
            window(3, now + 86_400 * 365),  # a year ahead
        ]
        for payload in sends:
            client.publish(topic, payload, qos=1).wait_for_publish(5)
        with pytest.raises(Exception, match="bad_body"):  # the device's own encoder refuses it
            window(4, now, model="m" * 4096)
        raw = window(4, now).replace(b'"model":"m"', b'"model":"' + b"m" * 4096 + b'"')
        client.publish(topic, raw, qos=1).wait_for_publish(5)
        wait_for(lambda: _rows(hub) >= 2, 10, "the accepted windows")
        wait_for(lambda: hub.mqtt.dropped["future_window"] == 1, 10, "the future window")
        wait_for(lambda: hub.mqtt.dropped["bad_body"] == 1, 10, "the outsized model name")
        time.sleep(0.5)
        assert _rows(hub) == 2
    finally:
        client.loop_stop()
        client.disconnect()
        hub.stop()


def _rows(hub: Hub) -> int:
    with session(hub.engine) as s:
        return int(s.exec(select(func.count()).select_from(Telemetry)).one())
