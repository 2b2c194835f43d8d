"""End to end: a real hub (API + SQLite + registry + TUF) and a simulated fleet running
the real agent code, over a real Mosquitto."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from waiting import wait_for

from edgefleet.client import HubClient
from edgefleet.demo import ApiServer
from hub import Hub, HubConfig
from hub.access.keys import ApiKeys, Role
from hub.transport.broker import Mosquitto
from shared.reasons import Reason
from shared.sensors import generate
from simulator.fleet import Fleet, FleetConfig

pytestmark = [pytest.mark.broker, pytest.mark.slow]

DEVICES = 20


@dataclass
class Stage:
    hub: Hub
    client: HubClient
    fleet: Fleet


@pytest.fixture
def stage(private_mosquitto: Mosquitto, tmp_path: Path) -> Iterator[Stage]:
    # A broker of its own: retained device states of another test never leak in.
    mosquitto, prefix = private_mosquitto, "e2e"
    hub = Hub(
        HubConfig(
            data_dir=tmp_path / "hub",
            broker_url=mosquitto.address.url,
            chunk_size=4096,
            client_id=f"hub-{prefix}",
        )
    ).start()
    api = ApiServer(hub).start()
    client = HubClient(
        api.url, api_key=ApiKeys(hub.engine).create("e2e", Role.operator, "test").key
    )
    root = client.enrol("image", client.create_enrol_token()["token"])["root"].encode()
    fleet = Fleet(
        FleetConfig(
            devices=DEVICES,
            host=mosquitto.address.host,
            port=mosquitto.address.port,
            work_dir=tmp_path / "devices",
            pinned_root=root,
            id_prefix=prefix,
            fetch_timeout_s=3.0,
        )
    ).start()
    thread = fleet.loop.start_thread()
    try:
        wait_for(lambda: len(client.devices(status="online")) == DEVICES, 30, "devices online")
        yield Stage(hub, client, fleet)
    finally:
        fleet.loop.stop()
        thread.join(10)
        fleet.close()
        client.close()
        api.stop()
        hub.stop()


def train(client: HubClient, **settings: Any) -> dict[str, Any]:
    # 20 devices run their health checks at once, in this process, beside the hub, on a
    # 2-core CI machine: the default 5 ms p95 budget measures that crowd, not the model.
    settings.setdefault("latency_budget_us", 50_000.0)
    job = client.train(n_train=3000, probation_s=1.0, probation_min_inferences=5, **settings)
    result: dict[str, Any] = client.wait_job(job["id"], timeout=120)["result"]
    return result


def deploy_and_wait(
    client: HubClient, model: dict[str, Any], timeout: float = 60
) -> dict[str, Any]:
    dep = client.deploy(model["name"], model["version"])
    wait_for(lambda: client.deployment(dep["id"], devices=False)["finished"], timeout, "outcome")
    return client.deployment(dep["id"])


def active_versions(fleet: Fleet) -> set[Any]:
    return {d.device.predictor.active for d in fleet.devices}


def test_fleet_converges_and_reports_telemetry(stage: Stage) -> None:
    model = train(stage.client)
    st = deploy_and_wait(stage.client, model)
    assert st["converged"] == DEVICES, st["stages"]
    assert active_versions(stage.fleet) == {(model["name"], model["version"])}
    # The hub sees what the devices run, from their retained state.
    wait_for(
        lambda: all(d["version"] == model["version"] for d in stage.client.devices()),
        10,
        "state reports",
    )
    # Every step was reported on events, in order, for a device.
    stages = [
        e["stage"] for e in stage.client.events(st["id"], device=st["per_device"][0]["device"])
    ]
    assert stages == ["received", "downloading", "verified", "staged", "activated", "healthy"]
    # Devices infer on live data and report it.
    wait_for(lambda: stage.hub.ingest.counts["telemetry"] >= DEVICES, 20, "telemetry")
    x, y = generate(200, seed=99)
    out = stage.fleet.devices[0].device.predictor.predict(x)
    assert (out["label"] == y).mean() > 0.8


def test_tampered_model_refused_old_version_keeps_serving(stage: Stage) -> None:
    good = train(stage.client)
    st = deploy_and_wait(stage.client, good)
    assert st["converged"] == DEVICES, [d for d in st["per_device"] if d["stage"] != "healthy"]
    bad = train(stage.client, seed=8)
    # The artifact store is compromised after signing: one byte of the file changes.
    path = stage.hub.store.path(bad["sha256"])
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    stage.hub.registry.forget_cached()
    st = deploy_and_wait(stage.client, bad)
    assert st["converged"] == 0
    assert st["reasons"] == {Reason.CHUNK_HASH_MISMATCH.value: DEVICES}
    assert active_versions(stage.fleet) == {(good["name"], good["version"])}
    x, _ = generate(5, seed=1)
    for d in stage.fleet.devices:
        assert d.device.predictor.predict(x)["label"].shape == (5,)
    # Nothing unverified reached the models directory.
    for d in stage.fleet.devices:
        assert not (d.device.store.models_dir / bad["name"] / str(bad["version"])).exists()


def test_model_failing_health_check_is_rolled_back_everywhere(stage: Stage) -> None:
    good = train(stage.client)
    assert deploy_and_wait(stage.client, good)["converged"] == DEVICES
    # A model whose latency budget no device can meet (1 µs p95) fails its health check.
    slow = train(stage.client, seed=9, latency_budget_us=1.0)
    st = deploy_and_wait(stage.client, slow)
    assert st["converged"] == 0
    assert st["reasons"] == {Reason.HEALTH_CHECK_FAILED.value: DEVICES}
    assert all("latency" in (d["detail"] or "") for d in st["per_device"])
    assert active_versions(stage.fleet) == {(good["name"], good["version"])}
    x, _ = generate(3, seed=2)
    assert all(
        np.isfinite(d.device.predictor.predict(x)["probabilities"]).all()
        for d in stage.fleet.devices
    )


def test_bad_requests_get_clear_errors(stage: Stage) -> None:
    from edgefleet.client import HubClientError

    with pytest.raises(HubClientError) as e:
        stage.client.deploy("no-such-model")
    assert e.value.status == 404 and "no-such-model" in e.value.message
    model = train(stage.client)
    with pytest.raises(HubClientError) as e:
        stage.client.deploy(model["name"], devices=["not-a-device"])
    assert e.value.status == 409 and "unknown device" in e.value.message
    with pytest.raises(HubClientError) as e:
        stage.client.train(n_train=-5)
    assert e.value.status == 422
    with pytest.raises(HubClientError) as e:
        stage.client.upload("vibration", b"definitely not onnx")
    assert e.value.status == 422 and "--unevaluated" in e.value.message
    job = stage.client.upload("vibration", b"definitely not onnx", unevaluated=True)
    with pytest.raises(HubClientError) as e:
        stage.client.wait_job(job["id"])
    assert "ONNX" in e.value.message
