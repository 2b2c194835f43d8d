"""The fleet simulator: many virtual devices around the real agent code.

Each virtual device is an ``agent.device.Device`` (the same core, store, verifier and
runtime the daemon ships) with its own MQTT connection, its own state directory and
its own stream of sensor rows from the built-in generator, labelled, so live accuracy
is measured; or, with ``FleetConfig.rows``, the rows of a dataset file played by
simulator/player.py (labels at once or later, by prediction id). All devices of one
process share one selector loop (simulator/mqttloop.py; paho's own thread-per-client
loop stalls near 340 clients) and one cache of model sessions keyed by sha256.
``run_fleet`` spreads devices over several processes.

Fault hooks (simulator/faults.py drives them, on the loop thread): a device can crash
and restart from its state directory (:meth:`VirtualDevice.crash`, :meth:`restart`),
lose its network for a while (:meth:`drop_link`, :meth:`restore_link`), pass what it
receives through faulty links (:attr:`VirtualDevice.inbound_faults`) and load models
with a runtime of its own (:attr:`VirtualDevice.sessions`).
"""

from __future__ import annotations

import functools
import logging
import multiprocessing
import random
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from agent.backends import backend_for
from agent.core import CoreConfig
from agent.device import Device
from agent.runtime import InferenceError, NoModelError, OnnxBackend, SessionCache
from agent.spool import REPLAY_PER_S, Spool, SpoolSender
from agent.store import DeviceStore
from shared import protocol
from shared.sensors import SensorStream
from simulator.fleet_config import FleetConfig as FleetConfig  # re-exported: callers import it here
from simulator.mqttloop import ClientHandle, MqttLoop, Will
from simulator.player import RowPlayer, Tally

log = logging.getLogger(__name__)

AGENT_WINDOW_S = 10.0  # an agent's telemetry window by default (agent/daemon.py)
MAX_OFFLINE_PUBLISHES = 1000  # per device: QoS 1 messages kept while its link is down

Deliver = Callable[[str, bytes], None]  # (topic, payload) on to the device
# A fault on the way in: gets each (topic, payload) and the next step; it may change,
# delay or drop the message.
InboundFault = Callable[[str, bytes, Deliver], None]
LabelTap = Callable[["VirtualDevice", npt.NDArray[np.int64], npt.NDArray[np.int64]], None]


@dataclass(frozen=True)
class DeviceEvent:
    """An ``event`` a device published (the simulator's own record, by device)."""

    t: float  # time.monotonic() when published
    device_id: str
    deployment: str
    version: int
    stage: str
    reason: str | None


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
    labelled_values: int = 0  # of the labelled rows, a regressor's
    abs_err_sum: float = 0.0  # over those: sum of |value - label|
    late_labels: int = 0  # rows whose label was sent later, by prediction id
    late_joined: int = 0  # of those, joined by the agent
    late_refused: int = 0  # of those, refused or lost (a restart in between)
    unmatched_labels: int = 0  # rows whose label is not a class of the model

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
        self.labelled_values += other.labelled_values
        self.abs_err_sum += other.abs_err_sum
        self.late_labels += other.late_labels
        self.late_joined += other.late_joined
        self.late_refused += other.late_refused
        self.unmatched_labels += other.unmatched_labels


class VirtualDevice:
    def __init__(self, fleet: Fleet, index: int) -> None:
        cfg = fleet.config
        self.device_id = f"{cfg.id_prefix}-{index:05d}"
        self.device_class = cfg.class_of(index)
        self.fleet = fleet
        seed = cfg.seed * 1_000_003 + index
        self.stream = SensorStream(seed)
        self.tally = Tally()  # what it inferred and labelled
        self.player = (
            None
            if cfg.rows is None
            else RowPlayer(
                cfg.rows,
                seed,
                self.tally,
                lambda: self.device.predictor if self.up else None,
                fleet.loop.call_later,
                passes=cfg.row_passes,
                late_share=cfg.late_label_share,
                late_after_s=cfg.late_label_after_s,
            )
        )
        self.telemetry = 0
        self.runtime = cfg.runtime_of(self.device_class)
        # shared by the devices of one runtime; a fault may give it a runtime of its own
        self.sessions: SessionCache = fleet.sessions_for(self.runtime)
        self.inbound_faults: list[InboundFault] = []  # applied in order to what arrives
        self.outbound_taps: list[Deliver] = []  # see (topic, payload) of what it publishes
        self.events: list[DeviceEvent] = []  # every event it published, all lives
        self.up = True  # False between crash() and restart()
        self.link_up = True  # False between drop_link() and restore_link()
        self.lives = 1  # incarnations: a message in flight dies with its device
        self._offline: deque[tuple[str, bytes, int, bool]] = deque()
        self.device = self._new_device()
        self.client: ClientHandle = self._new_client()

    def _new_device(self) -> Device:
        cfg = self.fleet.config
        spool_dir = (
            cfg.work_dir / self.device_id / "spool"
            if cfg.spool_dir is None
            else cfg.spool_dir / self.device_id
        )
        # a new life reopens the spool from disk, as a restarted agent would
        replay = cfg.spool_replay_per_s or REPLAY_PER_S * AGENT_WINDOW_S / cfg.window_s
        self.spool = SpoolSender(
            Spool(spool_dir, cfg.spool_max_bytes), self._send_spooled, per_s=replay
        )
        return Device(
            CoreConfig(
                device_id=self.device_id,
                device_class=self.device_class,
                runtime=self.runtime,
                window_s=cfg.window_s,
                heartbeat_s=30 * cfg.window_s if cfg.heartbeat_s is None else cfg.heartbeat_s,
                fetch_timeout_s=cfg.fetch_timeout_s,
                fanout=cfg.fanout,
            ),
            DeviceStore(cfg.work_dir / self.device_id),
            publish=self._publish,
            sessions=self.sessions,
            pinned_root=cfg.pinned_root,
            check_memory=False,  # sessions are shared: one device's RSS growth is not its own
            spool=self.spool,
            on_spooled=self._spooled,
            subscribe=self._subscribe if cfg.fanout else None,
        )

    def _new_client(self, clean_session: bool = False) -> ClientHandle:
        return self.fleet.loop.add_client(
            self.device_id,
            on_connect=self._on_connect,
            on_message=self._on_message,
            on_disconnect=self._on_disconnect,
            on_publish=self._on_ack,
            will=Will(protocol.topic(self.device_id, "state"), self.device.offline_state()),
            clean_session=clean_session,
        )

    # -- faults (loop thread) -------------------------------------------------------------

    def crash(self) -> None:
        """Die abruptly: the connection is reset (the broker publishes the Last Will) and
        the ``Device`` with everything it held in memory is gone; its files stay."""
        if not self.up:
            return
        self.up = False
        self.lives += 1
        self.client.kill()
        self._offline.clear()  # paho's queue lived in the dead process

    def restart(self) -> None:
        """Start again from the same state directory: a new ``Device``, a new connection."""
        if self.up:
            return
        self.up, self.link_up = True, True
        self.device = self._new_device()
        self.client = self._new_client()

    def drop_link(self) -> None:
        """Lose the network: the connection is reset, the device runs on and keeps what
        it publishes (QoS 1, up to MAX_OFFLINE_PUBLISHES) for the next connection."""
        if not self.up or not self.link_up:
            return
        self.link_up = False
        self.lives += 1
        self.client.kill()

    def restore_link(self, session_lost: bool = False) -> None:
        """Get the network back. ``session_lost``: the broker no longer has this
        device's session (it expired, or the broker restarted without persistence), so
        nothing queued for it while it was away arrives."""
        if self.up and not self.link_up:
            self.link_up = True
            self.client = self._new_client(clean_session=session_lost)

    # -- MQTT -----------------------------------------------------------------------------

    def _publish(self, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        if topic.endswith("/telemetry"):
            self.telemetry += 1
        elif topic.endswith("/events"):
            self._record_event(payload)
        for tap in self.outbound_taps:
            tap(topic, payload)
        if not self.link_up:
            if qos > 0 and len(self._offline) < MAX_OFFLINE_PUBLISHES:
                self._offline.append((topic, payload, qos, retain))
            return
        self.client.publish(topic, payload, qos, retain)

    def _subscribe(self, topic: str, qos: int) -> None:
        """Read (``qos`` >= 0) or stop reading a fan-out topic; while the link is down
        the core subscribes again at the next connect (it resumes the job)."""
        if self.link_up:
            if qos < 0:
                self.client.unsubscribe(topic)
            else:
                self.client.subscribe(topic, qos)

    def _spooled(self, topic: str, payload: bytes) -> None:
        """A telemetry or drift window went into the spool (sent now or after reconnect)."""
        if topic.endswith("/telemetry"):
            self.telemetry += 1
        for tap in self.outbound_taps:
            tap(topic, payload)

    def _send_spooled(self, topic: str, payload: bytes) -> int | None:
        return self.client.publish_mid(topic, payload) if self.link_up else None

    def _on_ack(self, mid: int) -> None:
        self.spool.acked(mid)

    def _on_disconnect(self) -> None:
        self.spool.disconnected()

    def _record_event(self, payload: bytes) -> None:
        body = protocol.decode(payload).body
        self.events.append(
            DeviceEvent(
                time.monotonic(),
                self.device_id,
                str(body["deployment"]),
                int(body["version"]),
                str(body["stage"]),
                body.get("reason"),
            )
        )

    def _on_connect(self) -> None:
        self.client.subscribe(protocol.topic(self.device_id, "cmd"))
        self.client.subscribe(protocol.topic(self.device_id, "blob"))
        while self._offline:
            self.client.publish(*self._offline.popleft())
        self.device.connected()
        self.spool.connected()  # what was spooled while offline, oldest first

    def _on_message(self, topic: str, payload: bytes) -> None:
        if self.up:
            self._pass_on(0, self.lives, topic, payload)

    def _pass_on(self, i: int, life: int, topic: str, payload: bytes) -> None:
        if life != self.lives:  # the device died (or lost its link) while this was delayed
            return
        if i < len(self.inbound_faults):
            self.inbound_faults[i](topic, payload, lambda t, p: self._pass_on(i + 1, life, t, p))
        else:
            self.device.message(topic.rsplit("/", 1)[-1], payload)

    # -- work -----------------------------------------------------------------------------

    def infer(self) -> None:
        if not self.up:
            return
        if self.player is not None:
            played = self.player.play(self.device.predictor, self.fleet.config.batch)
            if played is not None:
                for tap in self.fleet.label_taps:
                    tap(self, *played)
            return
        x, y = self.stream.next(self.fleet.config.batch)
        try:
            out = self.device.predictor.predict(x)
        except NoModelError:
            return
        except InferenceError:
            self.tally.errors += 1
            return
        predicted = out["label"]
        self.device.predictor.record_labels(predicted, y)
        self.tally.inferences += len(x)
        self.tally.labelled += len(y)
        self.tally.correct += int(np.count_nonzero(predicted == y))
        for tap in self.fleet.label_taps:
            tap(self, predicted, y)

    def tick(self) -> None:
        if self.up:
            self.device.tick()


class Fleet:
    """N virtual devices on one selector loop (one process)."""

    def __init__(self, config: FleetConfig) -> None:
        self.config = config
        self.loop = MqttLoop(config.host, config.port, seed=config.seed)
        self.sessions = SessionCache(OnnxBackend())  # onnxruntime devices share it
        self._sessions = {"onnxruntime": self.sessions}
        self.devices: list[VirtualDevice] = []
        self._rng = random.Random(config.seed)
        # See (device, predicted, labels) of every labelled inference, on the loop thread
        # (simulator/drift.py: live accuracy per window).
        self.label_taps: list[LabelTap] = []

    def sessions_for(self, runtime: str) -> SessionCache:
        """The session cache the devices of ``runtime`` share (made at first use).

        Raises:
            BackendError: an unknown runtime, or its package is not installed.
        """
        if runtime not in self._sessions:
            self._sessions[runtime] = SessionCache(backend_for(runtime))
        return self._sessions[runtime]

    def start(self) -> Fleet:
        cfg = self.config
        cfg.work_dir.mkdir(parents=True, exist_ok=True)
        for i in range(cfg.first_index, cfg.first_index + cfg.devices):
            dev = VirtualDevice(self, i)
            self.devices.append(dev)
            jitter = self._rng.uniform(0, cfg.tick_s)
            self.loop.call_later(jitter, functools.partial(self._every, cfg.tick_s, dev.tick))
            if cfg.rows_per_s > 0:
                period = cfg.batch / cfg.rows_per_s
                first = self._rng.uniform(0, period)
                self.loop.call_later(first, functools.partial(self._every, period, dev.infer))
        return self

    def _every(self, period: float, fn: Callable[[], None]) -> None:
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
        tallies = [d.tally for d in self.devices]
        return FleetSummary(
            devices=len(self.devices),
            online=sum(1 for d in self.devices if d.client.connected),
            versions=dict(versions),
            outcomes=dict(outcomes),
            inferences=sum(t.inferences for t in tallies),
            inference_errors=sum(t.errors for t in tallies),
            labelled=sum(t.labelled for t in tallies),
            correct=sum(t.correct for t in tallies),
            telemetry_messages=sum(d.telemetry for d in self.devices),
            dropped=dict(dropped),
            labelled_values=sum(t.labelled_values for t in tallies),
            abs_err_sum=sum(t.abs_err_sum for t in tallies),
            late_labels=sum(t.late for t in tallies),
            late_joined=sum(t.late_joined for t in tallies),
            late_refused=sum(t.late_refused for t in tallies),
            unmatched_labels=sum(t.unmatched for t in tallies),
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
