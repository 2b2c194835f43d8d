"""A rollout of a ~1 MiB model to N simulated devices on a real Mosquitto, against the
time Mosquitto alone needs to carry the same bytes to N plain clients.

The parts are real: a private Mosquitto started from the hub's generated config
(hub/transport/broker.py, sized per DESIGN §8), the hub (``Hub``: SQLite, trust repository,
registry, its paho connection answering chunk fetches), a real ONNX model imported
through the hub's pipeline (``Hub.build_and_publish(..., onnx_bytes=...)``) and the real
agent code in virtual devices (simulator/fleet.py ``Fleet``, one selector loop per
process). Probation is 0 s / 0 inferences, so ``healthy`` follows activation at once,
and the devices do not infer (``rows_per_s`` 0): the figure is delivery, check, swap.

``seconds`` runs from the deploy command (:func:`deploy`, today's all-at-once path) to
the last ``healthy`` event's timestamp (the device's clock; one machine). Every device is
connected and known online to the hub before the clock starts.

``raw_seconds`` is measured in the same run, on the same broker: N plain subscribers on
the same selector loop (simulator/mqttloop.py, split over the same processes) each
receive as many chunk-sized QoS 1 messages as a device fetches, of the same size (real
chunk blobs), from ONE publisher process using paho the way the hub does (``loop_start``,
200 in flight). The clock runs from the first publish to the last message received. It
is the fair reference because it moves exactly the bytes and messages of the rollout,
over the same broker, the same number of connections and the same client-side paho
parsing, leaving out only what the rollout adds on top of transport: the fetch requests
and their round trips, the hub answering them in Python, and the device verifying,
writing, checking and swapping. ``ratio`` = seconds / raw_seconds is that overhead.

``fanout_raw_seconds`` is the broker's best, measured in the same run too: the same N
plain subscribers all read ONE topic, and one publisher puts each chunk on it once
(QoS 1): the fan-out limit of the broker, which the hub's fan-out (ADR 0030) aims at.
``ratio_fanout`` = seconds / fanout_raw_seconds. Beside them: ``hub_ms_per_device``
(hub CPU-seconds per device updated), ``chunks`` (needed, published once, received
from the fan-out, sent one by one, re-requests after a time-out), the fan-out rounds,
``first_healthy_s`` / ``last_healthy_s`` and the broker's peak RSS. ``--no-fanout``
runs the per-device path; ``--fanout-qos 0`` publishes the fan-out at QoS 0.

Run from the checkout (the model builder uses scikit-learn and skl2onnx)::

    python -m bench rollout [--devices 1000] [--model-bytes 1048576] [--chunk-kib 16]
                            [--processes 2] [--no-fanout] [--fanout-qos 1] [--json]
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import multiprocessing
import os
import platform
import shutil
import sys
import tempfile
import threading
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

log = logging.getLogger("bench.rollout")

# issue 14's goals on 2 cores: 10,000 devices in 60 s, within 2x the broker's fan-out
# limit (1,000 and 10,000), and at most 5 ms of hub CPU per device updated
GOALS = {"seconds": 60.0, "ratio": 2.0, "hub_ms_per_device": 5.0}
MODEL_NAME = "bench-rollout"
N_FEATURES, N_CLASSES = 16, 4  # the sensor dataset's shape (shared/sensors.py)
TRAIN_ROWS = 1000  # rows the MLP trains on: accuracy is not the point here
TRAIN_EPOCHS = 5
REPORT_EVERY_S = 0.25  # worker progress reports
POLL_S = 0.05  # main-thread polling of the hub and the workers
ONLINE_TIMEOUT_S = 120.0  # for every device to connect and be known online to the hub
ONLINE_S_PER_DEVICE = 0.06  # (10,000 devices on a busy 2-core machine: up to 600 s)
RAW_WINDOW = 1000  # raw publisher: messages published and not yet acknowledged, at most
RAW_TOPIC = "bench/raw/{}"
FAN_TOPIC = "bench/fan"  # the fan-out reference: one topic every subscriber reads
# The simulated devices' state directories go on tmpfs: a real device writes its own
# state and its own 1 MiB to its own flash, whereas here a thousand devices would queue on
# one disk (measured on this VM: ~0.7 ms per small file rewrite on ext4, 0.05 on tmpfs).
# --device-dir puts them elsewhere.
DEVICE_DIR = "/dev/shm"


# ----------------------------------------------------------------------------- the model


def build_model(model_bytes: int, seed: int = 0) -> bytes:
    """A StandardScaler + 16-w-w-4 MLP as fp32 ONNX, with w chosen so the file is about
    ``model_bytes`` long (w*w + 22*w + 4 float32 weights)."""
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from shared.sensors import generate

    floats = max(64, model_bytes // 4)
    width = max(4, int((-22 + math.sqrt(22 * 22 + 4 * (floats - 4))) / 2))
    x, y = generate(TRAIN_ROWS, seed=seed)
    clf = make_pipeline(
        StandardScaler(),
        MLPClassifier(hidden_layer_sizes=(width, width), max_iter=TRAIN_EPOCHS, random_state=seed),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(x, y)
    onnx = convert_sklearn(
        clf,
        initial_types=[("input", FloatTensorType([None, N_FEATURES]))],
        options={"zipmap": False},
        target_opset=15,
    )
    return bytes(onnx.SerializeToString())


# ----------------------------------------------------------------------------- the hub


def deploy(hub: Any, model: str, version: int) -> str:
    """Start an all-at-once rollout (hub/fleet/rollouts.py: one wave, no rate limit); its id."""
    from hub.fleet.rollout_spec import RolloutSpec

    return str(hub.rollouts.create(RolloutSpec(model=model, version=version)).id)


def rollout_reasons(hub: Any, rollout_id: str) -> dict[str, int]:
    reasons = Counter(r.reason for r in hub.rollouts.devices(rollout_id) if r.reason)
    return dict(reasons)


def start_hub(
    work: Path, broker_url: str, chunk_size: int, fanout: bool = True, fanout_qos: int = 1
) -> Any:
    from hub import Hub, HubConfig

    config = HubConfig(
        data_dir=work / "hub",
        broker_url=broker_url,
        chunk_size=chunk_size,
        fanout=fanout,
        fanout_qos=fanout_qos,
    )
    return Hub(config).start()


def publish_model(hub: Any, onnx: bytes) -> dict[str, Any]:
    """Import the ONNX file through the hub's pipeline, probation off; signed, registered."""
    from hub import pipeline_config

    config = pipeline_config(name=MODEL_NAME, probation_s=0.0, probation_min_inferences=0)
    return dict(hub.build_and_publish(config, onnx_bytes=onnx))


def online_devices(hub: Any, prefix: str) -> int:
    from sqlmodel import col, func, select

    from hub.store.tables import Device, session

    with session(hub.engine) as s:
        q = select(func.count()).where(Device.status == "online", col(Device.id).startswith(prefix))
        return int(s.exec(q).one())


def last_healthy_ts(hub: Any, deployment_id: str) -> float | None:
    from sqlmodel import func, select

    from hub.store.tables import EventRecord, session

    with session(hub.engine) as s:
        q = select(func.max(EventRecord.ts)).where(
            EventRecord.deployment_id == deployment_id, EventRecord.stage == "healthy"
        )
        return s.exec(q).one()


class HubTimer:
    """Wall time the hub's MQTT thread spends answering fetches and handling messages."""

    def __init__(self, mqtt: Any) -> None:
        self.fetch_s = 0.0
        self.message_s = 0.0
        messages = mqtt.handler  # hub/transport/inbound.py DeviceMessages
        answer, on_message = messages._answer_fetch, mqtt._on_message

        def timed_answer(*a: Any) -> None:
            t = time.perf_counter()
            answer(*a)
            self.fetch_s += time.perf_counter() - t

        def timed_message(*a: Any) -> None:
            t = time.perf_counter()
            on_message(*a)
            self.message_s += time.perf_counter() - t

        messages._answer_fetch = timed_answer  # instance attributes: this hub only
        mqtt._on_message = timed_message
        mqtt._client.on_message = timed_message


# ----------------------------------------------------------------------------- workers


@dataclass
class Progress:
    """What a worker process last reported (cumulative)."""

    connected: int = 0
    done: int = 0  # devices healthy / subscribers with every message
    messages: int = 0
    failed: int = 0  # devices that gave up (failed or rolled back)
    final: dict[str, Any] = field(default_factory=dict)


def _worker_reports(loop: Any, reports: Any, worker: int, stop: Any, state: Any) -> None:
    """Every REPORT_EVERY_S: send this worker's progress; stop the loop when told."""

    def report() -> None:
        reports.put(("progress", worker, state()))
        if stop.is_set():
            loop.stop()

    loop.call_every(REPORT_EVERY_S, report)


def fleet_worker(config: Any, profile: Path | None, worker: int, reports: Any, stop: Any) -> None:
    """One process's share of the fleet: run until told to stop; report timings.

    With ``profile``, the loop runs under cProfile and the stats go to
    ``profile/fleet-<worker>.prof``.
    """
    logging.basicConfig(level=logging.WARNING)
    from simulator.fleet import Fleet

    timings = _instrument_device()
    fleet = Fleet(config).start()
    loop = fleet.loop
    profiler = _start_profile(profile)

    def state() -> tuple[int, int, int, int]:
        healthy = failed = 0
        for d in fleet.devices:
            outcomes = d.device.outcomes
            if outcomes["healthy"]:
                healthy += 1
            elif any(k.startswith(("failed", "rolled_back")) for k in outcomes):
                failed += 1  # gave up: it will not converge in this run
        return loop.stats.connected, healthy, loop.stats.messages_in, failed

    _worker_reports(loop, reports, worker, stop, state)
    cpu0 = time.process_time()
    loop.run()
    _stop_profile(profiler, profile, f"fleet-{worker}")
    summary = fleet.summary()
    reports.put(
        (
            "final",
            worker,
            {
                "cpu_s": time.process_time() - cpu0,
                "actions_s": dict(timings.actions),
                "feed_s": timings.feed,
                "stages": timings.stages,
                "outcomes": summary.outcomes,
                "dropped": summary.dropped,
                "versions": summary.versions,
                "bytes_in": loop.stats.bytes_in,
                "chunk_counts": dict(
                    sum((d.device.core.counts for d in fleet.devices), Counter[str]())
                ),
            },
        )
    )
    fleet.close()


def _start_profile(profile: Path | None) -> Any:
    if profile is None:
        return None
    import cProfile

    profiler = cProfile.Profile()
    profiler.enable()
    return profiler


def _stop_profile(profiler: Any, profile: Path | None, name: str) -> None:
    if profiler is not None and profile is not None:
        profiler.disable()
        profile.mkdir(parents=True, exist_ok=True)
        profiler.dump_stats(str(profile / f"{name}.prof"))


def profile_hub_threads(profile: Path) -> None:
    """Run every paho network thread started from now on under cProfile; each dumps
    ``profile/hub-<client id>.prof`` when it ends (the hub's MQTT side lives there)."""
    import paho.mqtt.client as mqtt

    thread_main = mqtt.Client._thread_main

    def profiled(self: Any) -> None:
        profiler = _start_profile(profile)
        try:
            thread_main(self)
        finally:
            _stop_profile(profiler, profile, f"hub-{self._client_id.decode()}")

    mqtt.Client._thread_main = profiled  # type: ignore[method-assign]


@dataclass
class _DeviceTimings:
    actions: Counter[str] = field(default_factory=Counter)  # action type -> seconds
    feed: float = 0.0  # seconds inside Device.feed (core + actions)
    stages: dict[str, list[float]] = field(default_factory=dict)  # stage -> event times


def _instrument_device() -> _DeviceTimings:
    """Time Device.feed and each action it runs; note when each stage event goes out.

    Patches the class in this worker process only.
    """
    from agent.device import Device
    from agent.events import Publish

    t = _DeviceTimings()
    execute, feed = Device._execute, Device.feed

    def timed_execute(self: Any, action: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return execute(self, action)
        finally:
            t.actions[type(action).__name__] += time.perf_counter() - t0
            if isinstance(action, Publish) and action.topic.endswith("/events"):
                stage = json.loads(action.payload)["body"]["stage"]
                t.stages.setdefault(stage, []).append(time.time())

    def timed_feed(self: Any, event: Any) -> None:
        t0 = time.perf_counter()
        try:
            feed(self, event)
        finally:
            t.feed += time.perf_counter() - t0

    Device._execute = timed_execute  # type: ignore[method-assign]
    Device.feed = timed_feed  # type: ignore[method-assign]
    return t


def raw_subscriber_worker(
    host: str,
    port: int,
    first: int,
    count: int,
    expect: int,
    topic_format: str,
    worker: int,
    reports: Any,
    stop: Any,
) -> None:
    """``count`` plain subscribers on one selector loop, each expecting ``expect`` messages."""
    from simulator.mqttloop import MqttLoop

    loop = MqttLoop(host, port, seed=worker)
    got = [0] * count
    last = [0.0]
    done = [0]

    def add(i: int) -> None:
        topic = topic_format.format(first + i)  # (one topic for all: the fan-out reference)
        handle: Any = None

        def on_connect() -> None:
            handle.subscribe(topic, 1)

        def on_message(_topic: str, _payload: bytes) -> None:
            got[i] += 1
            last[0] = time.time()
            if got[i] == expect:
                done[0] += 1

        handle = loop.add_client(
            f"rawsub-{first + i:05d}",
            on_connect=on_connect,
            on_message=on_message,
            clean_session=True,
        )

    for i in range(count):
        add(i)
    _worker_reports(loop, reports, worker, stop, lambda: (loop.stats.connected, done[0], sum(got)))
    cpu0 = time.process_time()
    loop.run()
    reports.put(("final", worker, {"cpu_s": time.process_time() - cpu0, "last_ts": last[0]}))
    loop.close()


def raw_publisher(
    host: str, port: int, topics: list[str], payloads: list[bytes], qos: int, reports: Any
) -> None:
    """One paho client configured like the hub's (loop_start, 200 in flight), publishing
    each payload to every topic, round-robin, at ``qos``: one topic per subscriber (the
    per-device reference), or one topic all read (the fan-out reference)."""
    import paho.mqtt.client as mqtt

    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2, client_id="rawpub", protocol=mqtt.MQTTv311
    )
    client.max_inflight_messages_set(200)
    client.max_queued_messages_set(0)
    acked = [0]
    cond = threading.Condition()
    connected = threading.Event()

    def on_publish(*_a: Any) -> None:
        with cond:
            acked[0] += 1
            cond.notify()

    client.on_publish = on_publish
    client.on_connect = lambda *_a: connected.set()
    client.connect(host, port, keepalive=30)
    client.loop_start()
    connected.wait(10)
    cpu0 = time.process_time()
    t0 = time.time()
    sent = 0
    for payload in payloads:
        for topic in topics:
            with cond:
                while sent - acked[0] >= RAW_WINDOW:
                    cond.wait(1.0)
            client.publish(topic, payload, qos=qos)
            sent += 1
    with cond:
        while acked[0] < sent:
            cond.wait(1.0)
    reports.put(("final", -1, {"first_publish_ts": t0, "cpu_s": time.process_time() - cpu0}))
    client.disconnect()
    client.loop_stop()


class Workers:
    """Worker processes, their progress reports and their final reports."""

    def __init__(self) -> None:
        self.ctx = multiprocessing.get_context("spawn")
        self.reports = self.ctx.Queue()
        self.stop = self.ctx.Event()
        self.procs: list[Any] = []
        self.progress: dict[int, Progress] = {}

    def start(self, target: Any, args: tuple[Any, ...], worker: int) -> None:
        proc = self.ctx.Process(target=target, args=(*args, worker, self.reports, self.stop))
        proc.start()
        self.procs.append(proc)
        self.progress[worker] = Progress()

    def start_plain(self, target: Any, args: tuple[Any, ...]) -> None:
        proc = self.ctx.Process(target=target, args=(*args, self.reports))
        proc.start()
        self.procs.append(proc)

    def poll(self, timeout: float = POLL_S) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                kind, worker, data = self.reports.get(timeout=max(0.0, deadline - time.monotonic()))
            except Exception:  # queue.Empty
                return
            p = self.progress.setdefault(worker, Progress())
            if kind == "progress":
                p.connected, p.done, p.messages, *rest = data
                p.failed = rest[0] if rest else 0
            else:
                p.final = data

    def total(self, attr: str) -> int:
        return sum(getattr(p, attr) for w, p in self.progress.items() if w >= 0)

    def finish(self, timeout: float = 60.0) -> None:
        self.stop.set()
        deadline = time.monotonic() + timeout
        workers = [w for w in self.progress if w >= 0]
        while time.monotonic() < deadline and not all(self.progress[w].final for w in workers):
            self.poll(0.2)
        for proc in self.procs:
            proc.join(max(1.0, deadline - time.monotonic()))
            if proc.is_alive():
                proc.kill()

    def cpu_times(self) -> dict[int, float]:
        out = {}
        for proc in self.procs:
            with _suppress():
                c = psutil.Process(proc.pid).cpu_times()
                out[proc.pid] = c.user + c.system
        return out


class _suppress:
    def __enter__(self) -> None:
        return None

    def __exit__(self, et: Any, *_: Any) -> bool:
        return et is not None and issubclass(et, psutil.Error)


def _shares(devices: int, processes: int) -> list[tuple[int, int]]:
    """(first index, count) of each process's share."""
    share = -(-devices // processes)
    return [(f, min(share, devices - f)) for f in range(0, devices, share)]


def _say(text: str) -> None:
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def _wait(what: str, done: Any, timeout: float, show: Any, *, give_up: bool = False) -> bool:
    """Wait until ``done()``; whether it came. After ``timeout``: TimeoutError, or with
    ``give_up`` False returned (the caller reports what it saw)."""
    deadline = time.monotonic() + timeout
    last = 0.0
    while not done():
        if time.monotonic() > deadline:
            if give_up:
                _say(f"{what}: timed out after {timeout:.0f} s ({show()})")
                return False
            raise TimeoutError(f"{what}: timed out after {timeout:.0f} s ({show()})")
        if time.monotonic() - last >= 2.0:
            _say(f"{what}: {show()}")
            last = time.monotonic()
    return True


# ----------------------------------------------------------------------------- phases


def measure_rollout(
    hub: Any, model: dict[str, Any], args: argparse.Namespace, work: Path
) -> dict[str, Any]:
    from simulator.fleet import FleetConfig

    n = args.devices
    broker = hub.broker
    workers = Workers()
    for w, (first, count) in enumerate(_shares(n, args.processes)):
        cfg = FleetConfig(
            devices=count,
            host=broker.host,
            port=broker.port,
            work_dir=args.device_dir / "devices",
            pinned_root=hub.trust.pinned_root(),
            id_prefix="sim",
            first_index=first,
            rows_per_s=0.0,  # no inference traffic: the figure is delivery, check, swap
            fanout=not args.no_fanout,
        )
        workers.start(fleet_worker, (cfg, args.profile), w)
    try:
        _wait(
            "fleet  connecting",
            lambda: (
                (workers.poll(), workers.total("connected") >= n)[1]
                and online_devices(hub, "sim-") >= n
            ),
            max(ONLINE_TIMEOUT_S, ONLINE_S_PER_DEVICE * n),
            lambda: (
                f"{workers.total('connected')}/{n} connected, "
                f"{online_devices(hub, 'sim-')}/{n} online at the hub"
            ),
        )
        _say(f"fleet  {n} devices online in {args.processes} process(es)")
        timer = HubTimer(hub.mqtt)
        me = psutil.Process()
        broker_proc = _broker_process()
        cpu0 = _cpu(me), _cpu(broker_proc), workers.cpu_times()
        msgs0 = workers.total("messages")
        t0 = time.time()
        profiler = _start_profile(args.profile)  # the first wave's sends run in this call
        dep_id = deploy(hub, model["name"], model["version"])
        _stop_profile(profiler, args.profile, "hub-deploy")
        create_s = time.time() - t0
        expected = n * model["chunks"]

        rss = [0]

        def converged() -> bool:  # or settled: a device that gave up ends the wait too
            workers.poll()
            rss[0] = max(rss[0], _rss(broker_proc))
            return workers.total("done") + workers.total("failed") >= n

        def show() -> str:
            st = hub.rollouts.status(dep_id)
            stages = " ".join(f"{k}={v}" for k, v in sorted(st.counts.items()))
            delivered = workers.total("messages") - msgs0
            return f"{delivered / expected:6.1%} delivered  [{stages}]"

        deploy_timeout = args.timeout if args.deploy_timeout is None else args.deploy_timeout
        settled = _wait("deploy", converged, deploy_timeout, show, give_up=True)
        t_devices = time.time()
        cpu1 = _cpu(me), _cpu(broker_proc), workers.cpu_times()
        hub.ingest.flush()
        status = hub.rollouts.status(dep_id)
        while settled and status.converged < n and time.time() - t_devices < 30:
            time.sleep(POLL_S)
            status = hub.rollouts.status(dep_id)
        last = last_healthy_ts(hub, dep_id)
        _say(f"deploy {status.converged}/{n} healthy at the hub")
    finally:
        workers.finish()
    finals = [p.final for p in workers.progress.values() if p.final]
    return {
        "seconds": round(last - t0, 3) if last is not None and settled else None,
        "hub_seen_seconds": round(time.time() - t0, 3),
        "converged": status.converged,
        "timed_out": not settled,  # the figures then describe the run up to the time-out
        "stages": status.counts,
        "reasons": rollout_reasons(hub, dep_id),
        "deploy_call_s": round(create_s, 3),
        "messages_to_devices": workers.total("messages") - msgs0,
        "hub_counts": dict(hub.mqtt.counts),
        "fanout_counts": dict(hub.fanout.counts) if hub.fanout is not None else {},
        "fanout_rounds": _rounds(hub, t0),
        "broker_peak_rss_mb": round(rss[0] / 2**20, 1),
        "hub_dropped": dict(hub.mqtt.dropped),
        "cpu": _cpu_report(cpu0, cpu1, t_devices - t0),
        "hub_thread_s": {
            "answer_fetch": round(timer.fetch_s, 2),
            "on_message": round(timer.message_s, 2),
        },
        "devices_side": _device_report(finals, t0),
    }


def measure_raw(
    broker: Any,
    n: int,
    payloads: list[bytes],
    processes: int,
    timeout: float,
    *,
    fanout: bool = False,
) -> dict[str, Any]:
    """Per-device reference (each payload to each subscriber's own topic), or with
    ``fanout`` the broker's fan-out limit (each payload once, on a topic all N read)."""
    workers = Workers()
    shares = _shares(n, processes)
    for w, (first, count) in enumerate(shares):
        args = (
            broker.host,
            broker.port,
            first,
            count,
            len(payloads),
            FAN_TOPIC if fanout else RAW_TOPIC,
        )
        workers.start(raw_subscriber_worker, args, w)
    try:
        _wait(
            "raw    connecting",
            lambda: (workers.poll(), workers.total("connected") >= n)[1],
            max(ONLINE_TIMEOUT_S, ONLINE_S_PER_DEVICE * n),
            lambda: f"{workers.total('connected')}/{n} subscribers connected",
        )
        time.sleep(0.5)  # let the SUBSCRIBEs land (sent right after CONNACK)
        broker_proc = _broker_process()
        cpu0 = _cpu(broker_proc), workers.cpu_times()
        topics = [FAN_TOPIC] if fanout else [RAW_TOPIC.format(d) for d in range(n)]
        workers.start_plain(raw_publisher, (broker.host, broker.port, topics, payloads, 1))
        expected = n * len(payloads)
        rss = [0]

        def done() -> bool:
            workers.poll()
            rss[0] = max(rss[0], _rss(broker_proc))
            return workers.total("done") >= n

        _wait(
            "fanref " if fanout else "raw    ",
            done,
            timeout,
            lambda: f"{workers.total('messages') / expected:6.1%} delivered",
        )
        while not workers.progress.get(-1, Progress()).final:
            workers.poll()
        cpu1 = _cpu(broker_proc), workers.cpu_times()
    finally:
        workers.finish()
    t0 = workers.progress[-1].final["first_publish_ts"]
    last = max(p.final["last_ts"] for w, p in workers.progress.items() if w >= 0)
    cpu = {
        "broker_s": round(cpu1[0] - cpu0[0], 2),
        "subscribers_s": round(
            sum(p.final["cpu_s"] for w, p in workers.progress.items() if w >= 0), 2
        ),
        "publisher_s": round(workers.progress[-1].final["cpu_s"], 2),
        "broker_peak_rss_mb": round(rss[0] / 2**20, 1),
    }
    return {"raw_seconds": round(last - t0, 3), "raw_messages": expected, "raw_cpu": cpu}


def _rounds(hub: Any, t0: float) -> list[dict[str, float]]:
    """The fan-out rounds: start and end (seconds after the deploy), devices served."""
    if hub.fanout is None:
        return []
    shift = time.time() - time.monotonic() - t0  # the fan-out's clock is monotonic
    return [
        {"start_s": round(a + shift, 2), "end_s": round(b + shift, 2), "served": n}
        for a, b, n in hub.fanout.history
    ]


def _rss(proc: psutil.Process | None) -> int:
    if proc is None:
        return 0
    with _suppress():
        return int(proc.memory_info().rss)
    return 0


def _broker_process() -> psutil.Process | None:
    for child in psutil.Process().children():
        with _suppress():
            if child.name() == "mosquitto":
                return child
    return None


def _cpu(proc: psutil.Process | None) -> float:
    if proc is None:
        return 0.0
    c = proc.cpu_times()
    return float(c.user + c.system)


def _cpu_report(cpu0: Any, cpu1: Any, wall: float) -> dict[str, Any]:
    hub, broker = cpu1[0] - cpu0[0], cpu1[1] - cpu0[1]
    fleet = sum(cpu1[2].get(pid, 0.0) - t for pid, t in cpu0[2].items())
    return {
        "wall_s": round(wall, 2),
        "hub_s": round(hub, 2),
        "broker_s": round(broker, 2),
        "fleet_s": round(fleet, 2),
        "busy_cores": round((hub + broker + fleet) / wall, 2) if wall > 0 else None,
    }


def _device_report(finals: list[dict[str, Any]], t0: float) -> dict[str, Any]:
    actions: Counter[str] = Counter()
    outcomes: Counter[str] = Counter()
    stages: dict[str, list[float]] = {}
    chunk_counts: Counter[str] = Counter()
    feed = cpu = 0.0
    for f in finals:
        chunk_counts.update(f.get("chunk_counts", {}))
        actions.update(f["actions_s"])
        outcomes.update(f["outcomes"])
        feed += f["feed_s"]
        cpu += f["cpu_s"]
        for k, v in f["stages"].items():
            stages.setdefault(k, []).extend(v)
    marks = {
        k: {"first_s": round(min(v) - t0, 2), "last_s": round(max(v) - t0, 2)}
        for k, v in sorted(stages.items(), key=lambda kv: min(kv[1]))
    }
    return {
        "cpu_s": round(cpu, 2),
        "agent_s": round(feed, 2),  # inside Device.feed: the core and its actions
        "actions_s": {k: round(v, 2) for k, v in actions.most_common()},
        "stage_times": marks,  # seconds after the deploy command
        "outcomes": dict(outcomes),
        "chunk_counts": dict(chunk_counts),
    }


# ----------------------------------------------------------------------------- main


def run(args: argparse.Namespace) -> dict[str, Any]:
    from hub.transport.broker import Mosquitto
    from shared import protocol
    from shared.chunks import chunk_count, iter_chunks

    work = Path(tempfile.mkdtemp(prefix="bench-rollout-"))
    chunk_size = args.chunk_kib * 1024
    broker = Mosquitto(work / "broker").start()
    hub = None
    try:
        _say(f"model  building an MLP of ~{args.model_bytes:,} bytes")
        onnx = build_model(args.model_bytes)
        if args.profile is not None:
            profile_hub_threads(args.profile)
        hub = start_hub(work, broker.address.url, chunk_size, not args.no_fanout, args.fanout_qos)
        model = publish_model(hub, onnx)
        model["chunks"] = chunk_count(len(onnx), chunk_size)
        _say(
            f"model  {model['name']} v{model['version']}: {len(onnx):,} bytes,"
            f" {model['chunks']} chunks"
        )
        args.device_dir = Path(tempfile.mkdtemp(prefix="bench-rollout-", dir=args.device_dir))
        try:
            rollout = measure_rollout(hub, model, args, work)
        finally:
            shutil.rmtree(args.device_dir, ignore_errors=True)
        hub.stop()
        hub = None
        target = model["target"]
        payloads = [
            protocol.encode_blob(
                {"kind": "chunk", "req": "sim-00000:9", "target": target, "index": i}, c
            )
            for i, c in enumerate(iter_chunks(onnx, chunk_size))
        ]
        raw = measure_raw(broker.address, args.devices, payloads, args.processes, args.timeout)
        fan = measure_raw(
            broker.address, args.devices, payloads, args.processes, args.timeout, fanout=True
        )
    finally:
        if hub is not None:
            hub.stop()
        broker.stop()
        shutil.rmtree(work, ignore_errors=True)
    seconds = rollout.pop("seconds")
    converged = rollout.pop("converged")
    fan_s = fan["raw_seconds"]
    report = {
        "devices": args.devices,
        "converged": converged,
        "seconds": seconds,
        "fanout_raw_seconds": fan_s,
        "ratio_fanout": round(seconds / fan_s, 2) if seconds else None,
        "raw_seconds": raw["raw_seconds"],
        "ratio": round(seconds / raw["raw_seconds"], 2) if seconds else None,
        "goal_seconds": GOALS["seconds"],
        "goal_ratio": GOALS["ratio"],
        "hub_ms_per_device": (
            round(1000 * rollout["cpu"]["hub_s"] / converged, 2) if converged else None
        ),
        "goal_hub_ms_per_device": GOALS["hub_ms_per_device"],
        **_chunk_report(rollout, args.devices, model["chunks"]),
        **_healthy_report(rollout),
        "model_bytes": len(onnx),
        "chunk_bytes": chunk_size,
        "chunks_per_device": model["chunks"],
        "blob_bytes_per_device": sum(len(p) for p in payloads),
        "processes": args.processes,
        "probation": "0 s / 0 inferences: healthy follows activation",
        "inference": "off (rows_per_s 0)",
        "deploy_path": "hub.rollouts.create (one wave, all at once)",
        "fanout": "off" if args.no_fanout else f"on, QoS {args.fanout_qos}",
        "device_dir": str(args.device_dir.parent),
        **rollout,
        **{k: v for k, v in raw.items() if k != "raw_seconds"},
        "fanout_raw_cpu": fan["raw_cpu"],
        "python": platform.python_version(),
        "cpus": len(os.sched_getaffinity(0)),
    }
    report["met"] = bool(
        seconds
        and seconds <= GOALS["seconds"]
        and report["ratio_fanout"] <= GOALS["ratio"]
        and report["hub_ms_per_device"] <= GOALS["hub_ms_per_device"]
    )
    return report


def _chunk_report(rollout: dict[str, Any], devices: int, chunks: int) -> dict[str, Any]:
    """How the chunks went: published once for many, sent one by one, asked again."""
    counts = rollout["devices_side"]["chunk_counts"]
    return {
        "chunks": {
            "needed": devices * chunks,
            "fanned_published": rollout["fanout_counts"].get("chunks_fanned", 0),
            "fanout_rounds": rollout["fanout_counts"].get("rounds", 0),
            "fanned_received": counts.get("fan_chunks", 0),
            "sent_individually": rollout["hub_counts"].get("chunks_sent", 0),
            "asked_individually": counts.get("chunks_asked", 0),
            "re_requests": counts.get("re_requests", 0),
        }
    }


def _healthy_report(rollout: dict[str, Any]) -> dict[str, Any]:
    """Seconds after the deploy command to the first and the last device healthy."""
    healthy = rollout["devices_side"]["stage_times"].get("healthy", {})
    return {"first_healthy_s": healthy.get("first_s"), "last_healthy_s": healthy.get("last_s")}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench rollout",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--devices", type=int, default=1000)
    parser.add_argument("--model-bytes", type=int, default=2**20, help="ONNX file size, about")
    parser.add_argument("--chunk-kib", type=int, default=16, help="hub chunk size, KiB (1..64)")
    parser.add_argument("--processes", type=int, default=2, help="fleet (and raw) processes")
    parser.add_argument(
        "--device-dir",
        type=Path,
        default=Path(DEVICE_DIR) if os.path.isdir(DEVICE_DIR) else None,
        help=f"where the simulated devices keep their files (default {DEVICE_DIR})",
    )
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per phase")
    parser.add_argument(
        "--deploy-timeout",
        type=float,
        default=None,
        help="seconds for the rollout to converge (default: --timeout); past it, the run"
        " reports what it saw and exits 1",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--no-fanout", action="store_true", help="every device fetches every chunk itself"
    )
    parser.add_argument("--fanout-qos", type=int, choices=(0, 1), default=1)
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        help="write cProfile stats of the fleet processes and the hub's MQTT threads here",
    )
    args = parser.parse_args(argv)
    if not 1 <= args.chunk_kib <= 64:
        parser.error("--chunk-kib must be within 1..64")
    logging.basicConfig(level=logging.WARNING)
    report = run(args)
    if args.json:
        print(json.dumps(report))
    else:
        _print_table(report)
    return 0 if report["converged"] == args.devices else 1


def _print_table(r: dict[str, Any]) -> None:
    rows = [
        (
            "devices converged",
            f"{r['converged']}/{r['devices']}" + (" (timed out)" if r["timed_out"] else ""),
        ),
        ("rollout", f"{r['seconds']} s (goal {r['goal_seconds']} s)"),
        ("fan-out reference", f"{r['fanout_raw_seconds']} s"),
        ("ratio (fan-out)", f"{r['ratio_fanout']} (goal {r['goal_ratio']})"),
        ("per-device ref.", f"{r['raw_seconds']} s"),
        ("ratio (per-device)", str(r["ratio"])),
        (
            "hub CPU/device",
            f"{r['hub_ms_per_device']} ms (goal {r['goal_hub_ms_per_device']} ms)",
        ),
        ("healthy", f"first {r['first_healthy_s']} s, last {r['last_healthy_s']} s"),
        ("chunks", json.dumps(r["chunks"])),
        ("fan-out", r["fanout"]),
        ("broker peak RSS", f"{r['broker_peak_rss_mb']} MB"),
        (
            "model",
            f"{r['model_bytes']:,} bytes, {r['chunks_per_device']} chunks of {r['chunk_bytes']:,}",
        ),
        ("processes", str(r["processes"])),
        ("cpu (rollout)", json.dumps(r["cpu"])),
        ("cpu (raw)", json.dumps(r["raw_cpu"])),
        ("cpu (fan-out ref)", json.dumps(r["fanout_raw_cpu"])),
        ("hub thread", json.dumps(r["hub_thread_s"])),
        ("device actions", json.dumps(r["devices_side"]["actions_s"])),
        ("device stages", json.dumps(r["devices_side"]["stage_times"])),
    ]
    for k, v in rows:
        print(f"{k:<18} {v}")
