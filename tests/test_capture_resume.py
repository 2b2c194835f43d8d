"""Capture uploads that survive a disconnect: a real hub, a real Mosquitto, real devices
(docs/capture.md "Resuming an upload", ADR 0039).

The fleet's devices are the real agent (core, Device, its files) around simulated
sensors, as in tests/test_datasets.py; the broker is really stopped and started on its
port, a device really loses what it held in memory. The fake devices of the bad-input
tests are plain paho clients sending what the agent's own encoder builds.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from test_datasets import start_hub, train_and_deploy
from waiting import wait_for

from agent.capture import Reservoir, Sample, decode_sample, encode_sample, upload_messages
from agent.events import CaptureEnded
from edgefleet.client import HubClient
from edgefleet.demo import ApiServer
from hub import Hub
from hub.transport.broker import Mosquitto
from shared import protocol
from shared.reasons import Reason
from simulator.fleet import Fleet, FleetConfig, VirtualDevice

pytestmark = [pytest.mark.broker]

ROWS = 3000  # rows asked of each device: several 64 KiB chunks


@dataclass
class Stage:
    hub: Hub
    client: HubClient
    api: ApiServer
    mosquitto: Mosquitto


@pytest.fixture
def stage(private_mosquitto: Mosquitto, tmp_path: Path) -> Iterator[Stage]:
    hub, api, client = start_hub(private_mosquitto, tmp_path, "res")
    hub.datasets.asks.quiet_s = 1.0  # ask after a second without a chunk
    try:
        yield Stage(hub, client, api, private_mosquitto)
    finally:
        client.close()
        api.stop()
        hub.stop()


def start_fleet(stage: Stage, tmp_path: Path, devices: int) -> Fleet:
    client = stage.client
    root = client.enrol("image", client.create_enrol_token()["token"])["root"].encode()
    return Fleet(
        FleetConfig(
            devices=devices,
            host=stage.mosquitto.address.host,
            port=stage.mosquitto.address.port,
            work_dir=tmp_path / "devices",
            pinned_root=root,
            id_prefix="res",
            rows_per_s=1500.0,
            fetch_timeout_s=3.0,
        )
    ).start()


def sent_uploads(fleet: Fleet) -> dict[str, list[tuple[str, bytes]]]:
    """What each device publishes on ``capture`` and ``upload``, as it hands it on."""
    sent: dict[str, list[tuple[str, bytes]]] = defaultdict(list)
    for d in fleet.devices:
        d.outbound_taps.append(
            lambda topic, payload, dev=d.device_id: (
                sent[dev].append((topic, payload))
                if topic.endswith(("/capture", "/upload"))
                else None
            )
        )
    return sent


def on_chunk(device: VirtualDevice, index: int, act: Any) -> None:
    """Run ``act`` once, when ``device`` first hands on upload chunk ``index``."""
    fired = threading.Event()

    def tap(topic: str, payload: bytes) -> None:
        if (
            topic.endswith("/upload")
            and not fired.is_set()
            and protocol.decode_upload_chunk(payload).index == index
        ):
            fired.set()
            act()

    device.outbound_taps.append(tap)


def check_rows_intact(hub: Hub, dataset_id: str, sent: dict[str, list[tuple[str, bytes]]]) -> None:
    """The stored rows are exactly what each device sampled (its manifest's bytes)."""
    data = hub.datasets.dataset(dataset_id)
    for i, device_id in enumerate(data.devices):
        manifest = next(
            protocol.decode(p).body
            for t, p in sent[device_id]
            if t.endswith("/capture") and protocol.decode(p).type == "upload_manifest"
        )
        chunks: dict[int, bytes] = {}
        for t, p in sent[device_id]:
            if t.endswith("/upload"):
                chunk = protocol.decode_upload_chunk(p)
                assert chunks.setdefault(chunk.index, chunk.data) == chunk.data
        assert sorted(chunks) == list(range(len(manifest["chunks"])))
        arrays = decode_sample(b"".join(chunks[i] for i in sorted(chunks)), manifest["schema"])
        mine = data.device_index == i
        assert manifest["rows"] == mine.sum() > 1000
        assert np.array_equal(data.x[mine], arrays["x"])
        assert np.array_equal(data.labels[mine], arrays["labels"])


def run_capture(stage: Stage, fleet: Fleet, model: dict[str, Any]) -> dict[str, Any]:
    client = stage.client
    ids = [d.device_id for d in fleet.devices]
    capture = client.start_capture(model["name"], devices=ids, rows=ROWS, duration_s=3.0)
    wait_for(lambda: client.capture(capture["id"])["state"] != "running", 120, "capture ends")
    done: dict[str, Any] = client.capture(capture["id"])
    assert done["state"] == "done", done
    assert {d["status"] for d in done["devices"]} == {"verified"}, done["devices"]
    return done


def kept_uploads(fleet: Fleet) -> list[Path]:
    return [p for d in fleet.devices for p in d.device.store.uploads_dir.iterdir()]


@pytest.mark.slow
def test_a_broker_restart_mid_upload_is_resumed_and_every_row_arrives(
    stage: Stage, tmp_path: Path
) -> None:
    fleet = start_fleet(stage, tmp_path, devices=2)
    thread = fleet.loop.start_thread()
    try:
        wait_for(lambda: len(stage.client.devices(status="online")) == 2, 30, "devices online")
        model = train_and_deploy(stage.client)
        sent = sent_uploads(fleet)
        # the broker goes away as the first device hands on its second chunk (its
        # sessions, subscriptions and queued messages with it: no persistence)
        on_chunk(fleet.devices[0], 1, lambda: stage.mosquitto.restart(down_s=2.0))
        done = run_capture(stage, fleet, model)
        check_rows_intact(stage.hub, done["dataset_id"], sent)
        # the devices delete their copies once the hub says it has them
        wait_for(lambda: not kept_uploads(fleet), 30, "kept uploads deleted")
        assert all(d.device.core.uploads == {} for d in fleet.devices)
    finally:
        fleet.loop.stop()
        thread.join(10)
        fleet.close()
    counts = stage.hub.datasets.counts
    resent = sum(d.device.core.counts["upload_chunks_resent"] for d in fleet.devices)
    assert counts["upload_asks"] >= 1 and resent >= 1, (counts, resent)


@pytest.mark.slow
def test_a_device_restarted_mid_upload_sends_the_rest_from_its_disk(
    stage: Stage, tmp_path: Path
) -> None:
    fleet = start_fleet(stage, tmp_path, devices=1)
    thread = fleet.loop.start_thread()
    [device] = fleet.devices
    try:
        wait_for(lambda: len(stage.client.devices(status="online")) == 1, 30, "device online")
        model = train_and_deploy(stage.client)
        sent = sent_uploads(fleet)
        first_life = device.device

        def crash_mid_upload() -> None:
            # the link goes as chunk 1 is handed on; the process dies 0.2 s later, and
            # with it every chunk it still held for the next connection
            device.drop_link()
            fleet.loop.call_later(0.2, lambda: (device.crash(), device.restart()))

        on_chunk(device, 1, crash_mid_upload)
        done = run_capture(stage, fleet, model)
        assert device.device is not first_life  # a new process: the rest came from disk
        assert device.device.core.counts["upload_chunks_resent"] >= 1
        check_rows_intact(stage.hub, done["dataset_id"], sent)
        wait_for(lambda: not kept_uploads(fleet), 30, "kept upload deleted")
    finally:
        fleet.loop.stop()
        thread.join(10)
        fleet.close()


# ------------------------------------------------------------------------ fake devices


class FakeDevice:
    """A paho client that uploads what the agent's encoder builds, and records (and may
    answer) what the hub sends on its ``cmd`` topic."""

    def __init__(self, mosquitto: Mosquitto, device_id: str, *, answer: bool) -> None:
        self.device_id = device_id
        self.answer = answer
        self.requests: list[protocol.Message] = []
        self.manifest = b""
        self.chunks: list[bytes] = []
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=device_id)
        self.client.on_message = self._on_message
        self.client.connect(mosquitto.address.host, mosquitto.address.port)
        self.client.subscribe(protocol.topic(device_id, "cmd"), 1)
        self.client.loop_start()

    def sample(self, capture: str, rows: int) -> Sample:
        r = Reservoir("m", rows, seed=1)
        x = np.random.default_rng(0).normal(size=(rows * 3, 16)).astype(np.float32)
        r.observe("m", 1, x, {"label": np.arange(len(x)) % 4})
        sample = r.sample()
        assert sample is not None
        data, schema = encode_sample(sample)
        ended = CaptureEnded(capture, 0.0, data, tuple(schema), 1, sample.rows, sample.labelled)
        self.manifest, self.chunks = upload_messages(capture, "m", ended, chunk_size=4096)
        return sample

    def send(self, kind: str, payload: bytes) -> None:
        topic = protocol.topic(self.device_id, kind)
        self.client.publish(topic, payload, qos=1).wait_for_publish(5)

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        request = protocol.decode(msg.payload)
        self.requests.append(request)
        if not self.answer or request.type != "upload_ask":
            return
        if "chunks" not in request.body:
            self.client.publish(protocol.topic(self.device_id, "capture"), self.manifest, 1)
            return
        for i in request.body["chunks"]:
            self.client.publish(protocol.topic(self.device_id, "upload"), self.chunks[i], 1)

    def asked(self) -> list[dict[str, Any]]:
        return [r.body for r in self.requests if r.type == "upload_ask"]

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def test_bad_chunks_are_counted_and_dropped_and_the_hub_asks_for_what_it_lacks(
    stage: Stage,
) -> None:
    hub = stage.hub
    datasets = hub.datasets
    device = FakeDevice(stage.mosquitto, "bad-chunks-1", answer=True)
    try:
        capture = datasets.start_capture("m", ["bad-chunks-1"], 500, 60.0)
        sent = device.sample(capture, 500)
        assert len(device.chunks) >= 4
        device.send("upload", protocol.encode_upload_chunk("no-such-capture", 0, b"x"))
        device.send("capture", device.manifest)
        device.send("upload", device.chunks[0])
        device.send("upload", device.chunks[0])  # a duplicate
        device.send("upload", protocol.encode_upload_chunk(capture, 99, b"x" * 4096))
        short = protocol.decode_upload_chunk(device.chunks[1])
        device.send("upload", protocol.encode_upload_chunk(capture, 1, short.data[:-1]))
        for chunk in device.chunks[3:]:  # chunk 2 never comes
            device.send("upload", chunk)
        wait_for(lambda: datasets.capture(capture)["state"] != "running", 30, "capture ends")
    finally:
        device.close()
    result = datasets.capture(capture)
    assert result["state"] == "done" and result["devices"][0]["status"] == "verified"
    data = datasets.dataset(result["dataset_id"])
    assert np.array_equal(data.x, sent.x) and np.array_equal(data.labels, sent.labels)
    # what was wrong is counted, and the upload went on: the hub asked for 1 and 2
    dropped = hub.mqtt.dropped
    assert dropped["unexpected_chunk"] == 1 and dropped["bad_chunk"] == 2
    assert datasets.counts["duplicate_chunks"] >= 1
    assert device.asked()[0] == {"capture": capture, "chunks": [1, 2]}
    wait_for(lambda: any(r.type == "upload_done" for r in device.requests), 10, "done told")
    assert [r.body["status"] for r in device.requests if r.type == "upload_done"] == ["verified"]


def test_a_lost_manifest_is_asked_for_once_the_capture_has_ended(stage: Stage) -> None:
    datasets = stage.hub.datasets
    device = FakeDevice(stage.mosquitto, "no-manifest-1", answer=True)
    try:
        capture = datasets.start_capture("m", ["no-manifest-1"], 300, 0.5)
        sent = device.sample(capture, 300)
        started = protocol.encode(
            "capture_status", {"capture": capture, "model": "m", "status": "started"}, ts=0.0
        )
        device.send("capture", started)
        for chunk in device.chunks:  # before any manifest: dropped, asked for later
            device.send("upload", chunk)
        wait_for(lambda: datasets.capture(capture)["state"] != "running", 30, "capture ends")
    finally:
        device.close()
    result = datasets.capture(capture)
    assert result["state"] == "done", result
    assert np.array_equal(datasets.dataset(result["dataset_id"]).x, sent.x)
    assert device.asked()[0] == {"capture": capture}  # the manifest first, then its chunks
    assert device.asked()[1]["chunks"] == list(range(len(device.chunks)))


def test_the_hub_gives_up_after_its_asks_and_says_why(stage: Stage) -> None:
    datasets, client = stage.hub.datasets, stage.client
    datasets.asks.quiet_s, datasets.asks.max_asks = 0.3, 2
    device = FakeDevice(stage.mosquitto, "silent-1", answer=False)  # never answers
    try:
        capture = datasets.start_capture("m", ["silent-1"], 500, 60.0)
        device.sample(capture, 500)
        device.send("capture", device.manifest)
        device.send("upload", device.chunks[0])
        wait_for(lambda: client.capture(capture)["state"] != "running", 30, "gave up")
        wait_for(lambda: any(r.type == "upload_done" for r in device.requests), 10, "told")
    finally:
        device.close()
    result = client.capture(capture)  # GET /captures/{id}: what the operator sees
    assert result["state"] == "failed"
    [row] = result["devices"]
    assert (row["status"], row["reason"]) == ("failed", Reason.UPLOAD_INCOMPLETE.value)
    missing = len(device.chunks) - 1
    assert row["detail"] == f"{missing} chunk(s) still missing after 2 asks"
    assert [a["chunks"] for a in device.asked()] == [list(range(1, len(device.chunks)))] * 2
    [done] = [r.body for r in device.requests if r.type == "upload_done"]
    assert done == {"capture": capture, "status": "failed", "reason": "upload_incomplete"}


def test_a_hub_restarted_mid_upload_asks_for_the_manifest_and_the_rest(
    stage: Stage, tmp_path: Path
) -> None:
    device = FakeDevice(stage.mosquitto, "hub-restart-1", answer=True)
    try:
        capture = stage.hub.datasets.start_capture("m", ["hub-restart-1"], 500, 0.5)
        sent = device.sample(capture, 500)
        device.send("capture", device.manifest)
        device.send("upload", device.chunks[0])
        wait_for(lambda: stage.hub.datasets.counts["chunks_verified"] == 1, 10, "the first chunk")
        stage.hub.stop()  # what it had in memory of the upload is gone
        hub = Hub(stage.hub.config).start()
        try:
            hub.datasets.asks.quiet_s = 0.5
            datasets = hub.datasets
            wait_for(lambda: datasets.capture(capture)["state"] != "running", 30, "capture ends")
            result = datasets.capture(capture)
            assert result["state"] == "done", result
            assert np.array_equal(datasets.dataset(result["dataset_id"]).x, sent.x)
        finally:
            hub.stop()
    finally:
        device.close()
    asked = device.asked()
    assert asked[0] == {"capture": capture}  # the new process knew no manifest
    assert asked[1]["chunks"] == list(range(len(device.chunks)))
