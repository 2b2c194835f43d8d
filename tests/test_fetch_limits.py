"""A device's fetch is no amplifier (issue 11, items 2 and 8).

Before: a 907-byte fetch naming chunk 0 x256 got 256 blobs (x3,592 the bytes), any
device could download any model in the registry, and nothing bounded one device's rate.
After: each chunk once and at most MAX_FETCH_CHUNKS per fetch, only targets deployed to
that device, and a per-device budget of fetches and bytes per second (excess dropped and
counted). The end-to-end test runs the attack as a device would, through a real
Mosquitto against a real hub; the budget is tested on FetchAnswers with a fake clock.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from waiting import wait_for

from hub import Hub, HubConfig, pipeline_config
from hub.store.tables import Device, session
from hub.transport.broker import Mosquitto
from hub.transport.entitlements import Entitlements
from hub.transport.fetch import (
    BYTES_PER_S,
    FETCH_BURST,
    FETCHES_PER_S,
    MAX_FETCH_CHUNKS,
    FetchAnswers,
)
from shared import protocol
from shared.frames import decode_blob

CHUNK = 1024


class FakeDevice:
    """A plain MQTT client speaking the device's protocol, collecting its blobs."""

    def __init__(self, broker: Mosquitto, device_id: str) -> None:
        self.device_id = device_id
        self.blobs: list[bytes] = []
        self.lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=device_id)
        self.client.on_message = self._on_message
        self.client.connect(broker.address.host, broker.address.port)
        self.client.subscribe(protocol.topic(device_id, "blob"), qos=1)
        self.client.loop_start()

    def _on_message(self, _c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.blobs.append(bytes(msg.payload))

    def send(self, kind: str, msg_type: str, body: dict[str, object]) -> None:
        payload = protocol.encode(msg_type, body, ts=time.time())
        self.client.publish(protocol.topic(self.device_id, kind), payload, qos=1).wait_for_publish(
            5
        )

    def fetch(self, req: str, target: str, chunks: list[int]) -> None:
        self.send("fetch", "fetch_chunks", {"req": req, "target": target, "chunks": chunks})

    def answers(self, req: str) -> list[dict[str, object]]:
        with self.lock:
            blobs = [decode_blob(b) for b in self.blobs]
        return [dict(b.header) for b in blobs if b.header.get("req") == req]

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.mark.broker
def test_fetches_are_deduplicated_and_answered_only_for_deployed_targets(
    private_mosquitto: Mosquitto, tmp_path: Path
) -> None:
    hub = Hub(
        HubConfig(
            data_dir=tmp_path / "hub",
            broker_url=private_mosquitto.address.url,
            chunk_size=CHUNK,
            client_id="hub-fetch",
        )
    ).start()
    device = FakeDevice(private_mosquitto, "fetcher-1")
    try:
        model = hub.build_and_publish(pipeline_config(name="m", n_train=600, hidden=(16,)))
        target = str(model["target"])
        device.send("state", "state", {"status": "online", "device_class": "sim-gateway"})
        wait_for(lambda: _known(hub, "fetcher-1"), 10, "the device's state")
        hub.deployments.create("m", device_ids=["fetcher-1"])

        device.fetch("amp", target, [0] * 256)  # the amplification attack, as found
        wait_for(lambda: device.answers("amp"), 10, "an answer")
        time.sleep(0.5)
        assert [a["index"] for a in device.answers("amp")] == [0]  # once, not 256 times

        n_chunks = -(-int(model["size_bytes"]) // CHUNK)
        wide = list(range(min(n_chunks, MAX_FETCH_CHUNKS + 10)))
        device.fetch("wide", target, wide)
        wait_for(
            lambda: len(device.answers("wide")) >= min(n_chunks, MAX_FETCH_CHUNKS), 10, "chunks"
        )
        time.sleep(0.5)
        assert len(device.answers("wide")) == min(n_chunks, MAX_FETCH_CHUNKS)

        other = hub.build_and_publish(pipeline_config(name="other", n_train=600, hidden=(16,)))
        device.fetch("steal", str(other["target"]), [0])  # never deployed to this device
        wait_for(lambda: device.answers("steal"), 10, "the refusal")
        [refusal] = device.answers("steal")
        assert refusal["kind"] == "error" and "was not deployed to this device" in str(
            refusal["detail"]
        )
    finally:
        device.close()
        hub.stop()


def _known(hub: Hub, device_id: str) -> bool:
    with session(hub.engine) as s:
        return s.get(Device, device_id) is not None


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class Chunks:
    def __init__(self, size: int) -> None:
        self.size = size

    def chunk(self, target: str, index: int) -> bytes | None:
        return b"x" * self.size if index < 1000 else None


class NoMetadata:
    def refresh_timestamp(self, min_remaining_s: float) -> bool:
        return False

    def metadata_for(
        self,
        device_root_version: int,
        target: str | None = None,
        targets_version: int | None = None,
    ) -> list[tuple[str, bytes]]:
        return []


def fetch(req: str, chunks: list[int]) -> protocol.Message:
    body = {"req": req, "target": "m/1/model.onnx", "chunks": chunks}
    return protocol.decode(protocol.encode("fetch_chunks", body, ts=0.0))


def test_a_device_over_its_budget_is_dropped_and_others_are_not() -> None:
    clock = Clock()
    grants = Entitlements({("greedy", "m/1/model.onnx"), ("quiet", "m/1/model.onnx")})
    answers = FetchAnswers(Chunks(100), NoMetadata(), grants, clock=clock)
    sent = [answers.answer("greedy", fetch(f"r{i}", [i % 900])) for i in range(200)]
    assert sum(1 for s in sent if s) == int(FETCH_BURST)  # the burst, then nothing
    assert answers.refused["over_budget"] == 200 - int(FETCH_BURST)
    assert answers.answer("quiet", fetch("q", [0]))  # another device is not affected
    clock.t += 1.0  # a second later: the sustained rate again
    again = [answers.answer("greedy", fetch(f"s{i}", [0])) for i in range(100)]
    assert sum(1 for s in again if s) == int(FETCHES_PER_S)


def test_the_byte_budget_bounds_a_device_that_asks_for_big_answers() -> None:
    clock = Clock()
    grants = Entitlements({("big", "m/1/model.onnx")})
    answers = FetchAnswers(Chunks(64 * 1024), NoMetadata(), grants, clock=clock)
    total = 0
    for i in range(40):  # 40 fetches of 64 chunks of 64 KiB: 160 MiB asked for
        total += sum(len(b) for b, _ in answers.answer("big", fetch(f"r{i}", list(range(64)))))
    assert total <= 2 * BYTES_PER_S + 64 * 65 * 1024  # the burst, plus one answer over it
    assert answers.refused["over_budget"] > 0


def test_one_fetch_names_at_most_the_window_and_each_chunk_once() -> None:
    answers = FetchAnswers(Chunks(10), NoMetadata(), Entitlements({("d", "m/1/model.onnx")}))
    blobs = answers.answer("d", fetch("r", [*range(100), *range(100)]))
    indexes = [decode_blob(b).header["index"] for b, _ in blobs]
    assert indexes == list(range(MAX_FETCH_CHUNKS))
