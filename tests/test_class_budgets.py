"""A version that would not fit a device's memory budget is refused at the hub, before a
deploy command goes out (the rule the device applies too, shared/memory_budget.py): real
hub and Mosquitto, a device of a class whose profile the hub reads."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from waiting import wait_for

from hub import Hub, HubConfig, pipeline_config
from hub.fleet.rollout_spec import RolloutSpec
from hub.store.tables import Device, session
from hub.transport.broker import Mosquitto
from shared import protocol

pytestmark = [pytest.mark.broker]

PROFILE = """device_class = "{name}"
runtime = "onnxruntime"
architectures = ["arm64"]
python = ">=3.11"
memory_budget_mb = {budget}
latency_budget_us = 5000
"""


def test_a_version_too_big_for_the_class_is_refused_before_it_is_sent(
    private_mosquitto: Mosquitto, tmp_path: Path
) -> None:
    classes = tmp_path / "classes"
    for name, budget in (("tiny", 0.001), ("roomy", 64)):
        (classes / name).mkdir(parents=True)
        (classes / name / "profile.toml").write_text(PROFILE.format(name=name, budget=budget))
    hub = Hub(
        HubConfig(
            data_dir=tmp_path / "hub",
            broker_url=private_mosquitto.address.url,
            client_id="hub-budget",
            classes_dir=classes,
        )
    ).start()
    commands: list[str] = []
    lock = threading.Lock()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="budget-watcher")

    def on_message(_c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        with lock:
            commands.append(msg.topic)

    client.on_message = on_message
    client.connect(private_mosquitto.address.host, private_mosquitto.address.port)
    client.subscribe([(protocol.topic(d, "cmd"), 1) for d in ("small-1", "big-1")])
    client.loop_start()
    try:
        model = hub.build_and_publish(pipeline_config(name="m", n_train=600, hidden=(16,)))
        for device, cls in (("small-1", "tiny"), ("big-1", "roomy")):
            state = {"status": "online", "device_class": cls, "runtime": "onnxruntime"}
            client.publish(
                protocol.topic(device, "state"), protocol.encode("state", state, ts=time.time())
            ).wait_for_publish(5)
        wait_for(lambda: _known(hub, "small-1") and _known(hub, "big-1"), 10, "both devices")
        rollout = hub.rollouts.create(RolloutSpec(model="m", version=model["version"]))
        wait_for(
            lambda: (
                {r.device_id: r.state for r in hub.rollouts.devices(rollout.id)}["small-1"]
                == "failed"
            ),
            20,
            "the tiny device refused at the hub",
        )
        row = {r.device_id: r for r in hub.rollouts.devices(rollout.id)}["small-1"]
        assert row.reason == "no_room" and row.attempts == 0
        assert row.detail is not None and "at the hub: m needs" in row.detail
        assert "> this device's budget of 0.001 MiB" in row.detail
        wait_for(lambda: protocol.topic("big-1", "cmd") in commands, 20, "the roomy one's command")
        time.sleep(0.5)
        with lock:
            assert protocol.topic("small-1", "cmd") not in commands  # nothing sent to it
    finally:
        client.loop_stop()
        client.disconnect()
        hub.stop()


def _known(hub: Hub, device_id: str) -> bool:
    with session(hub.engine) as s:
        return s.get(Device, device_id) is not None
