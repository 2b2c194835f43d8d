"""Several models on one device, end to end: a real hub and Mosquitto, the agent daemon
with its local endpoint, onnxruntime. Each model is deployed and judged on its own; a bad
version of one fails while the other keeps serving; a model that would not fit the
device's memory budget is refused with ``no_room``."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import col, select
from test_daemon import get, post
from waiting import wait_for

from agent.core.budget import MEMORY_FACTOR, MIB
from agent.daemon import AgentConfig, AgentDaemon
from edgefleet.cli import main
from edgefleet.client import HubClient
from edgefleet.demo import ApiServer
from hub import Hub, HubConfig
from hub.access.keys import ApiKeys, Role
from hub.store.tables import DriftWindow, Telemetry, session
from hub.transport.broker import Mosquitto, free_port
from shared.reasons import Reason
from shared.sensors import generate

pytestmark = [pytest.mark.broker, pytest.mark.slow]

DEVICE = "press-17"


def train(client: HubClient, name: str, **settings: Any) -> dict[str, Any]:
    settings.setdefault("latency_budget_us", 50_000.0)  # a 2-core machine shared with CI
    settings.setdefault("hidden", [8])
    job = client.train(
        name=name, n_train=1000, probation_s=1.0, probation_min_inferences=3, **settings
    )
    result: dict[str, Any] = client.wait_job(job["id"], timeout=120)["result"]
    return result


class Agent:
    """The agent daemon on its own thread, as ``edgefleet agent run`` runs it."""

    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.daemon: AgentDaemon | None = None
        self.runner: threading.Thread | None = None

    def start(self) -> None:
        self.daemon = AgentDaemon(self.config)
        self.daemon.start()
        self.runner = threading.Thread(target=self.daemon.run_forever, daemon=True)
        self.runner.start()

    def stop(self) -> None:
        if self.daemon is not None:
            self.daemon.stop()
        if self.runner is not None:
            self.runner.join(5)
        self.daemon = self.runner = None


@dataclass
class Stage:
    hub: Hub
    client: HubClient
    port: int  # the device's local endpoint
    models: dict[str, dict[str, Any]]  # trained before the device started
    agent: Agent


class Traffic:
    """An application on the device: calls each model's own route every 50 ms and keeps
    each answer's status, by model, with when it came."""

    def __init__(self, port: int, models: tuple[str, ...]) -> None:
        self.port, self.models = port, models
        self.answers: dict[str, list[tuple[float, int, dict[str, Any]]]] = {m: [] for m in models}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.x = generate(4, seed=5)[0].tolist()

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.is_set():
            for model in self.models:
                status, body = post(self.port, f"/v1/models/{model}/predict", {"inputs": self.x})
                self.answers[model].append((time.monotonic(), status, body))
            time.sleep(0.05)

    def since(self, model: str, t0: float) -> list[tuple[int, Any]]:
        """(status, version) of each answer for ``model`` since ``t0``."""
        return [(s, b.get("version")) for t, s, b in list(self.answers[model]) if t >= t0]


@pytest.fixture
def stage(private_mosquitto: Mosquitto, tmp_path: Path) -> Iterator[Stage]:
    hub = Hub(HubConfig(data_dir=tmp_path / "hub", broker_url=private_mosquitto.address.url))
    hub.start()
    api = ApiServer(hub).start()
    client = HubClient(api.url, api_key=ApiKeys(hub.engine).create("t", Role.operator, "test").key)
    agent: Agent | None = None
    try:
        models = {
            "vibration": train(client, "vibration"),
            "anomaly": train(client, "anomaly", seed=3),
            # a version no device can run within its 1 µs p95 budget: fails its health check
            "anomaly-bad": train(client, "anomaly", seed=9, latency_budget_us=1.0),
            "sound": train(client, "sound", hidden=[256, 256]),  # too big beside the two
        }
        small = models["vibration"]["size_bytes"] + models["anomaly"]["size_bytes"]
        assert models["sound"]["size_bytes"] > 10 * small  # so the budget below is apt
        # room for the two small models (and a new version of either), not for sound
        budget_mb = MEMORY_FACTOR * (small + 20_000) / MIB
        cfg_path, port = tmp_path / "agent.toml", free_port()
        argv = ["agent", "enrol", "--hub", api.url, "--device-id", DEVICE]
        argv += ["--token", client.create_enrol_token(DEVICE)["token"]]
        argv += ["--device-class", "generic-linux", "--state-dir", str(tmp_path / "device")]
        argv += ["--config-out", str(cfg_path), "--endpoint", f"127.0.0.1:{port}"]
        assert main(argv) == 0
        config = AgentConfig.load(cfg_path)
        config = AgentConfig(**{**config.__dict__, "window_s": 1.0, "memory_budget_mb": budget_mb})
        agent = Agent(config)
        agent.start()
        wait_for(lambda: client.devices(status="online"), 10, "the device online")
        yield Stage(hub, client, port, models, agent)
    finally:
        if agent is not None:
            agent.stop()
        client.close()
        api.stop()
        hub.stop()


def deploy(stage: Stage, model: dict[str, Any]) -> dict[str, Any]:
    """Deploy ``model`` to the device and wait for its outcome there."""
    dep = stage.client.deploy(model["name"], model["version"], devices=[DEVICE])
    wait_for(
        lambda: stage.client.deployment(dep["id"], devices=False)["finished"], 60, "the outcome"
    )
    row: dict[str, Any] = stage.client.deployment(dep["id"])["per_device"][0]
    return row


def test_two_models_served_each_updated_on_its_own(stage: Stage) -> None:
    vib, anomaly, bad = (stage.models[k] for k in ("vibration", "anomaly", "anomaly-bad"))
    with Traffic(stage.port, ("vibration", "anomaly")) as app:
        assert deploy(stage, vib)["stage"] == "healthy"
        t0 = time.monotonic()  # from now on vibration serves, whatever happens to anomaly
        assert deploy(stage, anomaly)["stage"] == "healthy"

        # Each model has its routes; the bare ones name the models and send you there.
        status, body = post(stage.port, "/v1/predict", {"inputs": app.x})
        assert (status, body["error"]) == (409, "several_models"), body
        assert body["models"] == ["anomaly", "vibration"]
        assert body["routes"]["anomaly"] == "/v1/models/anomaly/predict"
        assert "/v1/models/{name}/predict" in body["detail"]
        status, body = get(stage.port, "/v1/model")
        assert (status, body["error"]) == (409, "several_models")
        status, info = get(stage.port, "/v1/models/anomaly")
        assert (status, info["model"], info["version"]) == (200, "anomaly", anomaly["version"])
        status, body = post(stage.port, "/v1/models/vibration/predict", {"inputs": app.x})
        assert (status, body["model"], len(body["outputs"]["label"])) == (200, "vibration", 4)
        status, body = post(stage.port, "/v1/models/nope/predict", {"inputs": app.x})
        assert (status, body["error"], body["models"]) == (
            404,
            "unknown_model",
            ["anomaly", "vibration"],
        )

        # The hub shows both models and their versions.
        want = {"vibration": vib["version"], "anomaly": anomaly["version"]}

        def on_hub() -> dict[str, int]:
            models = stage.client.device(DEVICE)["models"] or {}
            return {m: i["version"] for m, i in models.items()}

        wait_for(lambda: on_hub() == want, 10, "both models on the device's row")

        # A rollout of anomaly's bad version fails on the device; anomaly stays at its
        # version, and vibration is untouched and never stopped answering.
        r = stage.client.create_rollout("anomaly", version=bad["version"], devices=[DEVICE])
        wait_for(lambda: stage.client.rollout(r["id"])["finished"], 60, "the rollout")
        (row,) = stage.client.rollout_devices(r["id"])
        assert (row["state"], row["reason"]) == ("failed", Reason.HEALTH_CHECK_FAILED.value), row
        # the hub knew which anomaly version to go back to, though it is not the first model
        assert row["previous_version"] == anomaly["version"], row
        status, info = get(stage.port, "/v1/models/anomaly")
        assert info["version"] == anomaly["version"]
        status, body = get(stage.port, "/v1/status")
        assert body["serving_models"] == want
        assert body["models"]["vibration"]["version"] == vib["version"]
        time.sleep(0.5)  # more traffic after the rollout
    served = app.since("vibration", t0)
    assert len(served) > 20
    assert set(served) == {(200, vib["version"])}, [a for a in served if a[0] != 200][:3]
    assert (200, anomaly["version"]) in set(app.since("anomaly", t0))

    # Telemetry and drift windows come per model (each its own seq: the hub's key).
    def models_reported(table: type[Telemetry] | type[DriftWindow]) -> set[str | None]:
        with session(stage.hub.engine) as s:
            q = select(table.model).where(col(table.device_id) == DEVICE).distinct()
            return set(s.exec(q))

    both = {"vibration", "anomaly"}
    wait_for(lambda: both <= models_reported(Telemetry), 15, "telemetry of both models")
    wait_for(lambda: both <= models_reported(DriftWindow), 15, "drift of both models")


def test_a_model_that_would_not_fit_the_memory_budget_is_refused(stage: Stage) -> None:
    vib, anomaly, sound = (stage.models[k] for k in ("vibration", "anomaly", "sound"))
    with Traffic(stage.port, ("vibration", "anomaly")):
        assert deploy(stage, vib)["stage"] == "healthy"
        assert deploy(stage, anomaly)["stage"] == "healthy"
        row = deploy(stage, sound)
    assert (row["stage"], row["reason"]) == ("failed", Reason.NO_ROOM.value), row
    assert "sound needs" in row["detail"] and "budget" in row["detail"], row["detail"]
    status, body = get(stage.port, "/v1/status")
    assert set(body["models"]) == {"vibration", "anomaly"}
    status, body = post(stage.port, "/v1/models/sound/predict", {"inputs": [[0.0] * 16]})
    assert (status, body["error"]) == (404, "unknown_model")


def test_both_models_serve_again_after_a_restart(stage: Stage) -> None:
    vib, anomaly = stage.models["vibration"], stage.models["anomaly"]
    with Traffic(stage.port, ("vibration", "anomaly")):
        assert deploy(stage, vib)["stage"] == "healthy"
        assert deploy(stage, anomaly)["stage"] == "healthy"
    stage.agent.stop()
    stage.agent.start()  # the same state directory: both models load from disk
    x = generate(3, seed=4)[0].tolist()
    for model in (vib, anomaly):
        status, body = post(stage.port, f"/v1/models/{model['name']}/predict", {"inputs": x})
        assert (status, body["model"], body["version"]) == (200, model["name"], model["version"])
    status, body = get(stage.port, "/v1/status")
    assert body["serving_models"] == {"vibration": vib["version"], "anomaly": anomaly["version"]}
