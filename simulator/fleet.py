"""The fleet simulator: many virtual devices around the real agent code.

Each virtual device is an ``agent.device.Device`` (the same core, store, verifier and
runtime the daemon ships) with its own MQTT connection, its own state directory and
its own stream of sensor rows from the built-in generator, labelled, so live accuracy
is measured. All devices of one process share one selector loop (simulator/mqttloop.py;
paho's own thread-per-client loop stalls near 340 clients) and one cache of model
sessions keyed by sha256. ``run_fleet`` spreads devices over several processes.
"""

from __future__ import annotations

import logging
import multiprocessing
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from agent.core import CoreConfig
from agent.device import Device
from agent.runtime import InferenceError, NoModelError, OnnxBackend, SessionCache
from agent.store import DeviceStore
from shared import protocol
from shared.sensors import SensorStream
from simulator.mqttloop import ClientHandle, MqttLoop, Will

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FleetConfig:
    devices: int
    host: str
    port: int
    work_dir: Path
    pinned_root: bytes
    id_prefix: str = "sim"
    first_index: int = 0
    device_class: str = "sim-gateway"
    seed: int = 1
    rows_per_s: float = 10.0  # inference rate of each device
    batch: int = 5  # rows per inference call
    tick_s: float = 1.0  # how often each device closes a stats tick
    window_s: float = 5.0  # telemetry window
    fetch_timeout_s: float = 10.0


@dataclass
class FleetSummary:
    devices: int
    online: int
    versions: dict[str, int]  # "model:version" -> devices running it
    outcomes: dict[str, int]  # "stage[:reason]" -> events published
    inferences: int
    inference_errors: int
    labelled: int
    correct: int
    telemetry_messages: int
    dropped: dict[str, int] = field(default_factory=dict)

    def merge(self, other: FleetSummary) -> None:
        self.devices += other.devices
        self.online += other.online
        for mine, theirs in (
            (self.versions, other.versions),
            (self.outcomes, other.outcomes),
            (self.dropped, other.dropped),
        ):
            for k, v in theirs.items():
                mine[k] = mine.get(k, 0) + v
        self.inferences += other.inferences
        self.inference_errors += other.inference_errors
        self.labelled += other.labelled
        self.correct += other.correct
        self.telemetry_messages += other.telemetry_messages


class VirtualDevice:
    def __init__(self, fleet: Fleet, index: int) -> None:
        cfg = fleet.config
        self.device_id = f"{cfg.id_prefix}-{index:05d}"
        self.fleet = fleet
        self.stream = SensorStream(cfg.seed * 1_000_003 + index)
        self.inferences = 0
        self.errors = 0
        self.labelled = 0
        self.correct = 0
        self.telemetry = 0
        store = DeviceStore(cfg.work_dir / self.device_id)
        self.device = Device(
            CoreConfig(
                device_id=self.device_id,
                device_class=cfg.device_class,
                window_s=cfg.window_s,
                fetch_timeout_s=cfg.fetch_timeout_s,
            ),
            store,
            publish=self._publish,
            sessions=fleet.sessions,
            pinned_root=cfg.pinned_root,
            check_memory=False,  # sessions are shared: one device's RSS growth is not its own
        )
        self.client: ClientHandle = fleet.loop.add_client(
            self.device_id,
            on_connect=self._on_connect,
            on_message=self._on_message,
            will=Will(protocol.topic(self.device_id, "state"), self.device.offline_state()),
        )

    def _publish(self, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        if topic.endswith("/telemetry"):
            self.telemetry += 1
        self.client.publish(topic, payload, qos, retain)

    def _on_connect(self) -> None:
        self.client.subscribe(protocol.topic(self.device_id, "cmd"))
        self.client.subscribe(protocol.topic(self.device_id, "blob"))
        self.device.connected()

    def _on_message(self, topic: str, payload: bytes) -> None:
        self.device.message(topic.rsplit("/", 1)[-1], payload)

    def infer(self) -> None:
        x, y = self.stream.next(self.fleet.config.batch)
        try:
            out = self.device.predictor.predict(x)
        except NoModelError:
            return
        except InferenceError:
            self.errors += 1
            return
        predicted = out["label"]
        self.device.predictor.record_labels(predicted, y)
        self.inferences += len(x)
        self.labelled += len(y)
        self.correct += int(np.count_nonzero(predicted == y))

    def tick(self) -> None:
        self.device.tick()


class Fleet:
    """N virtual devices on one selector loop (one process)."""

    def __init__(self, config: FleetConfig) -> None:
        self.config = config
        self.loop = MqttLoop(config.host, config.port, seed=config.seed)
        self.sessions = SessionCache(OnnxBackend())
        self.devices: list[VirtualDevice] = []
        self._rng = random.Random(config.seed)

    def start(self) -> Fleet:
        cfg = self.config
        cfg.work_dir.mkdir(parents=True, exist_ok=True)
        for i in range(cfg.first_index, cfg.first_index + cfg.devices):
            dev = VirtualDevice(self, i)
            self.devices.append(dev)
            jitter = self._rng.uniform(0, cfg.tick_s)
            self.loop.call_later(jitter, lambda d=dev: self._every(cfg.tick_s, d.tick))
            if cfg.rows_per_s > 0:
                period = cfg.batch / cfg.rows_per_s
                self.loop.call_later(
                    self._rng.uniform(0, period), lambda d=dev, p=period: self._every(p, d.infer)
                )
        return self

    def _every(self, period: float, fn: Any) -> None:
        fn()
        self.loop.call_every(period, fn)

    def summary(self) -> FleetSummary:
        versions: Counter[str] = Counter()
        outcomes: Counter[str] = Counter()
        dropped: Counter[str] = Counter()
        for d in self.devices:
            active = d.device.predictor.active
            versions[f"{active[0]}:{active[1]}" if active else "none"] += 1
            outcomes.update(d.device.outcomes)
            dropped.update(d.device.core.dropped)
        return FleetSummary(
            devices=len(self.devices),
            online=sum(1 for d in self.devices if d.client.connected),
            versions=dict(versions),
            outcomes=dict(outcomes),
            inferences=sum(d.inferences for d in self.devices),
            inference_errors=sum(d.errors for d in self.devices),
            labelled=sum(d.labelled for d in self.devices),
            correct=sum(d.correct for d in self.devices),
            telemetry_messages=sum(d.telemetry for d in self.devices),
            dropped=dict(dropped),
        )

    def close(self, flush_s: float = 0.5) -> None:
        """Say ``offline`` for every connected device (retained), then disconnect.

        Call it when the loop is not running. A clean disconnect fires no Last Will, so
        without this the broker would keep telling the hub these devices are online.
        """
        for d in self.devices:
            if d.client.connected:
                d.client.publish(
                    protocol.topic(d.device_id, "state"), d.device.offline_state(), 1, True
                )
        self.loop.run(timeout_s=flush_s)
        self.loop.close()


def run_fleet_process(config: FleetConfig, duration_s: float, results: Any) -> None:
    """Run one process's share of the fleet for ``duration_s`` and report its summary."""
    logging.basicConfig(level=logging.WARNING)
    fleet = Fleet(config).start()
    fleet.loop.run(timeout_s=duration_s)
    results.put(fleet.summary())
    fleet.close()


def run_fleet(config: FleetConfig, duration_s: float, processes: int = 1) -> FleetSummary:
    """Run ``config.devices`` devices split over ``processes`` processes."""
    if processes <= 1:
        fleet = Fleet(config).start()
        try:
            fleet.loop.run(timeout_s=duration_s)
            return fleet.summary()
        finally:
            fleet.close()
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    share = -(-config.devices // processes)
    procs = []
    for p in range(processes):
        first = config.first_index + p * share
        count = min(share, config.first_index + config.devices - first)
        if count <= 0:
            break
        part = FleetConfig(**{**config.__dict__, "devices": count, "first_index": first})
        proc = ctx.Process(target=run_fleet_process, args=(part, duration_s, results))
        proc.start()
        procs.append(proc)
    total = FleetSummary(0, 0, {}, {}, 0, 0, 0, 0, 0)
    for _ in procs:
        total.merge(results.get(timeout=duration_s + 120))
    for proc in procs:
        proc.join(30)
    return total
