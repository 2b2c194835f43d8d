"""Capture, datasets and retraining: a real hub, real devices, a real Mosquitto.

The fleet's devices are the real agent (core, Device, onnxruntime) around simulated
sensors; the fake devices of the corrupt-upload test are plain paho clients that send
what the agent's own encoder builds, with one chunk changed on the way.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from waiting import wait_for

from agent.capture import Reservoir, Sample, decode_sample, encode_sample, upload_messages
from agent.events import CaptureEnded
from edgefleet.client import HubClient, HubClientError
from edgefleet.demo import ApiServer
from hub import Hub, HubConfig
from hub.access.audit import AuditLog
from hub.access.keys import ApiKeys, Role
from hub.ml.data.captures import Datasets
from hub.transport.broker import Mosquitto
from shared import protocol
from shared.reasons import Reason
from simulator.fleet import Fleet, FleetConfig

pytestmark = [pytest.mark.broker]

DEVICES = 2


@dataclass
class Stage:
    hub: Hub
    client: HubClient
    fleet: Fleet | None
    mosquitto: Mosquitto


def start_hub(
    mosquitto: Mosquitto, tmp_path: Path, prefix: str
) -> tuple[Hub, ApiServer, HubClient]:
    hub = Hub(
        HubConfig(
            data_dir=tmp_path / "hub",
            broker_url=mosquitto.address.url,
            chunk_size=4096,
            client_id=f"hub-{prefix}",
        )
    ).start()
    api = ApiServer(hub).start()
    key = ApiKeys(hub.engine).create(prefix, Role.operator, "test").key
    return hub, api, HubClient(api.url, api_key=key)


@pytest.fixture
def fleet_stage(private_mosquitto: Mosquitto, tmp_path: Path) -> Iterator[Stage]:
    hub, api, client = start_hub(private_mosquitto, tmp_path, "cap")
    root = client.enrol("image", client.create_enrol_token()["token"])["root"].encode()
    fleet = Fleet(
        FleetConfig(
            devices=DEVICES,
            host=private_mosquitto.address.host,
            port=private_mosquitto.address.port,
            work_dir=tmp_path / "devices",
            pinned_root=root,
            id_prefix="cap",
            rows_per_s=100.0,
            fetch_timeout_s=3.0,
        )
    ).start()
    thread = fleet.loop.start_thread()
    try:
        wait_for(lambda: len(client.devices(status="online")) == DEVICES, 30, "devices online")
        yield Stage(hub, client, fleet, private_mosquitto)
    finally:
        fleet.loop.stop()
        thread.join(10)
        fleet.close()
        client.close()
        api.stop()
        hub.stop()


def train_and_deploy(client: HubClient) -> dict[str, Any]:
    job = client.train(
        n_train=3000, probation_s=1.0, probation_min_inferences=5, latency_budget_us=50_000.0
    )
    model: dict[str, Any] = client.wait_job(job["id"], timeout=120)["result"]
    dep = client.deploy(model["name"], model["version"])
    wait_for(lambda: client.deployment(dep["id"], devices=False)["finished"], 60, "deployed")
    return model


@pytest.mark.slow
def test_devices_capture_upload_and_a_retrain_ships_a_new_signed_version(
    fleet_stage: Stage,
) -> None:
    client, fleet = fleet_stage.client, fleet_stage.fleet
    assert fleet is not None
    model = train_and_deploy(client)
    # What each device sent on `capture` and `upload`, as the broker got it.
    sent: dict[str, list[tuple[str, bytes]]] = defaultdict(list)
    for d in fleet.devices:
        d.outbound_taps.append(
            lambda topic, payload, dev=d.device_id: sent[dev].append((topic, payload))
        )
    ids = [d.device_id for d in fleet.devices]
    capture = client.start_capture(model["name"], devices=ids, rows=150, duration_s=3.0)
    # A snapshot taken as the commands go out: a fast device may already have answered.
    statuses = capture["statuses"]
    assert set(statuses) <= {"sent", "started"} and sum(statuses.values()) == DEVICES
    wait_for(lambda: client.capture(capture["id"])["state"] != "running", 30, "capture ends")
    done = client.capture(capture["id"])
    assert done["state"] == "done", done
    assert {d["status"] for d in done["devices"]} == {"verified"}
    dataset = client.capture_dataset(done["dataset_id"])
    assert [d["id"] for d in client.capture_datasets(model["name"])] == [dataset["id"]]
    assert dataset["devices"] == sorted(ids) and dataset["version"] == model["version"]

    # The stored rows are exactly the rows each device sampled and sent.
    data = fleet_stage.hub.datasets.dataset(dataset["id"])
    for i, device_id in enumerate(data.devices):
        manifest = next(
            protocol.decode(p).body
            for t, p in sent[device_id]
            if t.endswith("/capture") and protocol.decode(p).type == "upload_manifest"
        )
        chunks = sorted(
            (protocol.decode_upload_chunk(p) for t, p in sent[device_id] if t.endswith("/upload")),
            key=lambda c: c.index,
        )
        arrays = decode_sample(b"".join(c.data for c in chunks), manifest["schema"])
        mine = data.device_index == i
        assert 0 < mine.sum() <= 150 and manifest["rows"] == mine.sum()
        assert np.array_equal(data.x[mine], arrays["x"])
        assert np.array_equal(data.labels[mine], arrays["labels"])
        assert np.array_equal(data.outputs["label"][mine], arrays["out.label"])
    # the simulator reports a label for every prediction: every sampled row has one
    assert dataset["labelled"] == dataset["rows"] == len(data.x)

    job = client.retrain(model["name"], [dataset["id"]])
    result = client.wait_job(job["id"], timeout=120)["result"]
    assert result["version"] == model["version"] + 1 and result["base_config"] == "recorded"
    assert result["rows_captured_holdout"] > 0 and result["rows_original"] == 3000
    for key in ("accuracy_original_holdout", "accuracy_captured_holdout"):
        assert 0.5 < result[key] <= 1.0, result
    assert client.models(model["name"])[-1]["source"] == "retrained"
    lineage = client.lineage(model["name"], result["version"])["training"]
    assert (lineage["source"], lineage["status"]) == ("retrained", "published")
    assert lineage["gates"][0]["name"] == "int8_loss" and lineage["package_version"]
    audited = {r.action for r in AuditLog(fleet_stage.hub.engine).query(limit=50)}
    assert {"capture.create", "model.retrain"} <= audited
    # signed: the devices verify it through TUF and run it
    dep = client.deploy(model["name"], result["version"])
    wait_for(lambda: client.deployment(dep["id"], devices=False)["finished"], 60, "deployed")
    assert {d.device.predictor.active for d in fleet.devices} == {
        (model["name"], result["version"])
    }


# ------------------------------------------------------------------------ bad uploads


@pytest.fixture
def hub_stage(private_mosquitto: Mosquitto, tmp_path: Path) -> Iterator[Stage]:
    hub, api, client = start_hub(private_mosquitto, tmp_path, "bad")
    try:
        yield Stage(hub, client, None, private_mosquitto)
    finally:
        client.close()
        api.stop()
        hub.stop()


class FakeDevice:
    """A paho client sending what the agent's encoder builds for a capture."""

    def __init__(self, mosquitto: Mosquitto, device_id: str) -> None:
        self.device_id = device_id
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=device_id)
        self.client.connect(mosquitto.address.host, mosquitto.address.port)
        self.client.loop_start()

    def upload(
        self, capture: str, rows: int, *, corrupt: int | None = None, drop: int | None = None
    ) -> Sample:
        r = Reservoir("m", rows, seed=1)
        x = np.random.default_rng(0).normal(size=(rows * 3, 16)).astype(np.float32)
        r.observe("m", 1, x, {"label": np.arange(len(x)) % 4})
        r.observe_labels(np.arange(len(x)) % 4, np.arange(len(x)) % 4)
        sample = r.sample()
        assert sample is not None
        data, schema = encode_sample(sample)
        ended = CaptureEnded(capture, 0.0, data, tuple(schema), 1, sample.rows, sample.labelled)
        manifest, chunks = upload_messages(capture, "m", ended, chunk_size=4096)
        self._send("capture", manifest)
        for i, chunk in enumerate(chunks):
            if i == drop:
                continue
            if i == corrupt:
                chunk = chunk[:-1] + bytes([chunk[-1] ^ 1])
            self._send("upload", chunk)
        return sample

    def _send(self, kind: str, payload: bytes) -> None:
        self.client.publish(protocol.topic(self.device_id, kind), payload, qos=1).wait_for_publish(
            5
        )

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def artifacts(hub: Hub) -> set[Path]:
    return {p for p in (hub.config.data_dir / "artifacts").rglob("*") if p.is_file()}


def test_a_corrupt_chunk_is_never_stored(hub_stage: Stage) -> None:
    hub = hub_stage.hub
    datasets: Datasets = hub.datasets
    before = artifacts(hub)
    good, bad = FakeDevice(hub_stage.mosquitto, "good-1"), FakeDevice(hub_stage.mosquitto, "bad-1")
    try:
        capture = datasets.start_capture("m", ["good-1", "bad-1"], 500, 60.0)
        sent = good.upload(capture, 500)  # 500 rows: several 4 KiB chunks
        bad.upload(capture, 500, corrupt=2)
        wait_for(lambda: datasets.capture(capture)["state"] != "running", 15, "capture ends")
    finally:
        good.close()
        bad.close()
    result = datasets.capture(capture)
    by_device = {d["device_id"]: d for d in result["devices"]}
    assert by_device["bad-1"]["status"] == "failed"
    assert by_device["bad-1"]["reason"] == Reason.CHUNK_HASH_MISMATCH.value
    assert by_device["good-1"]["status"] == "verified"
    data = datasets.dataset(result["dataset_id"])
    assert data.devices == ("good-1",)
    assert np.array_equal(data.x, sent.x) and np.array_equal(data.labels, sent.labels)
    # the good device's rows, and their labelled rows kept as a dataset version (whose
    # source file and canonical arrays are the same bytes); nothing left in staging
    kept = hub.dataset_store.get("captured-m")
    assert (kept.source, kept.capture_id, kept.rows) == ("capture", capture, sent.labelled)
    assert len(artifacts(hub) - before) == 2
    assert not any((hub.config.data_dir / "uploads").rglob("*.npz"))


def test_labels_posted_to_the_hub_make_a_new_version_of_captured_rows(
    hub_stage: Stage,
) -> None:
    hub, client = hub_stage.hub, hub_stage.client
    device = FakeDevice(hub_stage.mosquitto, "lab-1")
    try:
        capture = hub.datasets.start_capture("m", ["lab-1"], 300, 60.0)
        sent = device.upload(capture, 300)
        wait_for(lambda: hub.datasets.capture(capture)["state"] == "done", 15, "capture done")
    finally:
        device.close()
    first = hub.datasets.capture(capture)["dataset_id"]
    relabel = [(0, 3), (1, 2), (2, 1)]
    made = client.label_capture(first, relabel)
    assert made["id"] != first and made["capture_id"] == capture
    data = hub.datasets.dataset(made["id"])
    assert [int(data.labels[r]) for r, _ in relabel] == [3, 2, 1]
    assert np.array_equal(data.labels[3:], sent.labels[3:])  # the rest as the device sent
    assert hub.dataset_store.get("captured-m:2").rows == made["labelled"]
    with pytest.raises(HubClientError) as e:
        client.label_capture(first, [(0, 1), (0, 2), (10_000, 1)])
    assert e.value.status == 422
    assert (
        "row 0 labelled twice" in e.value.message and "row 10000 is not within" in e.value.message
    )
    with pytest.raises(HubClientError) as e:
        client.label_capture("nope", [(0, 1)])
    assert e.value.status == 404


def test_missing_chunks_fail_the_upload_at_the_deadline(hub_stage: Stage) -> None:
    hub = hub_stage.hub
    datasets = hub.datasets
    datasets.grace_s = 1.0
    device = FakeDevice(hub_stage.mosquitto, "lossy-1")
    try:
        capture = datasets.start_capture("m", ["lossy-1"], 500, 0.5)
        device.upload(capture, 500, drop=1)
        wait_for(lambda: datasets.capture(capture)["state"] != "running", 15, "deadline")
    finally:
        device.close()
    result = datasets.capture(capture)
    assert result["state"] == "failed" and result["dataset_id"] is None
    [row] = result["devices"]
    assert (row["status"], row["reason"]) == ("failed", Reason.UPLOAD_INCOMPLETE.value)
    assert datasets.datasets("m") == []


def test_bad_capture_requests_get_clear_errors(hub_stage: Stage) -> None:
    client = hub_stage.client
    with pytest.raises(Exception, match="404"):
        client.start_capture("nope", devices=["d-1"], rows=10, duration_s=5)
    with pytest.raises(Exception, match="422"):
        client.start_capture("nope", devices=["bad id"], rows=10, duration_s=5)
    with pytest.raises(Exception, match="404"):
        client.capture("no-such-capture")
    with pytest.raises(Exception, match="404"):
        client.retrain("nope", ["no-such-dataset"])
