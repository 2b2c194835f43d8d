"""The fleet side of ``python -m bench drill``: one process's share of the devices, the
device faults it injects, and what the devices saw, counted per device.

A worker process runs :class:`simulator.fleet.Fleet` on its selector loop and takes
orders from the drill on a queue (:class:`Order`): which model version is the target now
and, for the faulted run, which device faults to arm (simulator/faults.py
``FaultInjector``: ``crash_mid_download``, ``disconnect``, ``corrupt_chunks``; the process
faults stay with the drill). Every ``REPORT_EVERY_S`` it reports its progress; when told
to stop it stops its loop and sends one :class:`DeviceTally` per device.

What is counted, on the device side, over every life of a device (a crash restarts it
from its state directory):

- windows produced, telemetry and drift: every window the agent put into its spool, by
  ``seq`` (simulator/fleet.py ``VirtualDevice._spooled``); a ``seq`` produced twice with
  different bodies would make the hub's ``(device, seq)`` dedup swallow a real window,
  so those are counted apart (``seq_reused``);
- windows still pending in the spool when the loop stopped (not lost: they go out on the
  next connection), and the spool's drop counter (agent/spool.py ``Spool.dropped``,
  persisted, so it survives a crash);
- command executions per command id: a command counts as executed when its id enters
  the agent's replay memory (agent/core/commands.py), i.e. the agent acted on it; an id
  executed twice is a command the device ran twice;
- stage events per deployment (``received``: a job started; ``activated``: an install);
  the answer to a deploy re-sent for the job in progress repeats its current stage with
  the detail ``in progress (...)`` and is counted apart (``activated(re-sent)``).
"""

from __future__ import annotations

import hashlib
import logging
import queue
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from shared import protocol
from simulator.faults import FaultInjector, FaultSpec
from simulator.fleet import Deliver, Fleet, FleetConfig, VirtualDevice

REPORT_EVERY_S = 0.25  # progress reports to the drill
SPOOLED = ("telemetry", "drift")  # the windows that go through a device's spool
# agent/core/update.py answers a deploy re-sent for the job in progress with the stage
# the job is at and this detail; such an event repeats a stage, it does not redo it
RESENT_DETAIL = "in progress ("
RESENT_SUFFIX = "(re-sent)"
CONTROL_EVERY_S = 0.1  # how often the worker reads its orders


@dataclass(frozen=True)
class Order:
    """What the drill tells a worker: ``target`` (model, version) to converge to, the
    device faults to arm for it (``faults``: FaultSpec tables), or ``stop``."""

    kind: str  # "target" | "stop"
    model: str = ""
    version: int = 0
    faults: tuple[dict[str, Any], ...] = ()
    seed: int = 0


@dataclass
class DeviceTally:
    """One device's counts over all its lives (see the module docstring)."""

    device_id: str
    # kind (telemetry, drift) -> seq -> windows produced
    produced: dict[str, dict[int, int]] = field(default_factory=dict)
    seq_reused: int = 0  # a seq produced again with another body
    pending: dict[str, list[int]] = field(default_factory=dict)  # seqs left in the spool
    spool_dropped: int = 0
    executions: dict[str, int] = field(default_factory=dict)  # command id -> times run
    stages: dict[str, int] = field(default_factory=dict)  # "deployment:version:stage" -> n
    converged_at: float | None = None  # wall time of its healthy event for the target
    faults: list[str] = field(default_factory=list)  # fault kinds that hit it


class _NoProcesses:
    """The worker runs device faults only: the drill restarts the broker and the hub."""

    def restart_broker(self, down_s: float) -> None:
        raise RuntimeError("process faults belong to the drill, not to a fleet worker")

    def kill_hub(self) -> None:
        raise RuntimeError("process faults belong to the drill, not to a fleet worker")

    def start_hub(self) -> None:
        raise RuntimeError("process faults belong to the drill, not to a fleet worker")


class DrillWatch:
    """Taps on every device of a fleet that keep the :class:`DeviceTally` figures."""

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self.tallies = {d.device_id: DeviceTally(d.device_id) for d in fleet.devices}
        self._bodies: dict[tuple[str, str, int], bytes] = {}  # (device, kind, seq) -> digest
        self.target: tuple[str, int] | None = None
        self.injector: FaultInjector | None = None
        for dev in fleet.devices:
            dev.outbound_taps.append(self._outbound(dev))
            # first in the chain: the command reaches the core inside deliver()
            dev.inbound_faults.insert(0, self._inbound(dev))

    def _outbound(self, dev: VirtualDevice) -> Deliver:
        tally = self.tallies[dev.device_id]

        def tap(topic: str, payload: bytes) -> None:
            kind = topic.rsplit("/", 1)[-1]
            if kind in SPOOLED:
                self._produced(tally, kind, payload)
            elif kind == "events":
                self._event(tally, payload)

        return tap

    def _produced(self, tally: DeviceTally, kind: str, payload: bytes) -> None:
        body = protocol.decode(payload).body
        seq = int(body["seq"])
        digest = hashlib.sha256(payload).digest()
        key = (tally.device_id, kind, seq)
        if key in self._bodies and self._bodies[key] != digest:
            tally.seq_reused += 1
        self._bodies[key] = digest
        produced = tally.produced.setdefault(kind, {})
        produced[seq] = produced.get(seq, 0) + 1

    def _event(self, tally: DeviceTally, payload: bytes) -> None:
        body = protocol.decode(payload).body
        stage = body["stage"]
        if str(body.get("detail", "")).startswith(RESENT_DETAIL):
            # the answer to a re-sent deploy: where the job stands, not a step taken again
            stage = f"{stage}{RESENT_SUFFIX}"
        key = f"{body['deployment']}:{body['version']}:{stage}"
        tally.stages[key] = tally.stages.get(key, 0) + 1
        if (
            self.target is not None
            and body["stage"] == "healthy"
            and body.get("model") == self.target[0]
            and int(body["version"]) == self.target[1]
            and tally.converged_at is None
        ):
            tally.converged_at = time.time()

    def _inbound(self, dev: VirtualDevice) -> Any:
        tally = self.tallies[dev.device_id]

        def tap(topic: str, payload: bytes, deliver: Deliver) -> None:
            if not topic.endswith("/cmd"):
                deliver(topic, payload)
                return
            try:
                cmd_id = str(protocol.decode(payload).id)
            except Exception:  # not ours to judge: the core drops and counts it
                deliver(topic, payload)
                return
            before = cmd_id in dev.device.core.state["commands"]
            deliver(topic, payload)
            if dev.up and not before and cmd_id in dev.device.core.state["commands"]:
                tally.executions[cmd_id] = tally.executions.get(cmd_id, 0) + 1

        return tap

    def set_target(self, order: Order) -> None:
        self.target = (order.model, order.version)
        for tally in self.tallies.values():
            tally.converged_at = None
        if order.faults:
            specs = [FaultSpec.from_table(self._exact(t)) for t in order.faults]
            self.injector = FaultInjector(
                specs, self.fleet, _NoProcesses(), seed=order.seed, say=lambda _line: None
            )
            self.injector.arm()

    def _exact(self, table: dict[str, Any]) -> dict[str, Any]:
        """A ``fraction`` as a count of this worker's devices: crashes are picked first,
        so a fraction of the link losses would apply to the devices left, not all."""
        if "fraction" not in table:
            return table
        share = table["fraction"]
        rest = {k: v for k, v in table.items() if k != "fraction"}
        return {**rest, "count": max(1, round(share * len(self.fleet.devices)))}

    def progress(self) -> dict[str, Any]:
        done = failed = 0
        target = self.target
        for dev in self.fleet.devices:
            tally = self.tallies[dev.device_id]
            if tally.converged_at is not None:
                done += 1
            elif target is not None and _gave_up(tally, target[1]):
                failed += 1
        return {
            "version": target[1] if target else None,  # the target these counts are for
            "connected": self.fleet.loop.stats.connected,
            "done": done,
            "failed": failed,
            "faults_busy": bool(self.injector and self.injector.busy),
            "last_converged": max(
                (t.converged_at for t in self.tallies.values() if t.converged_at), default=None
            ),
        }

    def final(self) -> dict[str, Any]:
        """Per-device tallies (the loop has stopped) and the fault injector's counts."""
        hit: dict[str, list[str]] = {}
        if self.injector is not None:
            for kind, ids in self.injector.devices_hit.items():
                for device_id in ids:
                    hit.setdefault(device_id, []).append(kind)
        out = []
        for dev in self.fleet.devices:
            tally = self.tallies[dev.device_id]
            tally.pending = _pending(dev)
            tally.spool_dropped = dev.spool.dropped
            tally.faults = sorted(hit.get(dev.device_id, []))
            out.append(tally.__dict__)
        dropped: Counter[str] = Counter()  # what the agents dropped as bad input, by reason
        for dev in self.fleet.devices:
            dropped.update(dev.device.core.dropped)
        injected = dict(self.injector.counts) if self.injector else {}
        planned = self.injector.planned() if self.injector else {}
        return {
            "devices": out,
            "injected": injected,
            "planned": planned,
            "agent_dropped": dict(dropped),
        }


def _pending(dev: VirtualDevice) -> dict[str, list[int]]:
    """The seqs of the windows still in the device's spool, by kind."""
    out: dict[str, list[int]] = {}
    for e in dev.spool.spool.pending():
        kind = e.topic.rsplit("/", 1)[-1]
        out.setdefault(kind, []).append(int(protocol.decode(e.payload).body["seq"]))
    return out


def _gave_up(tally: DeviceTally, version: int) -> bool:
    ended = Counter(
        stage for _dep, v, stage in (k.rsplit(":", 2) for k in tally.stages) if v == str(version)
    )
    return bool(ended["failed"] or ended["rolled_back"])


def infer_only(share: float, seed: int) -> None:
    """Let only ``share`` of the devices infer (picked by seed; patches this process's
    VirtualDevice class): the others still close a telemetry window every ``window_s``."""
    infer = VirtualDevice.infer
    chosen: dict[str, bool] = {}

    def some(self: VirtualDevice) -> None:
        if self.device_id not in chosen:
            draw = hashlib.sha256(f"{seed}:{self.device_id}".encode()).digest()
            chosen[self.device_id] = int.from_bytes(draw[:8], "big") / 2**64 < share
        if chosen[self.device_id]:
            infer(self)

    VirtualDevice.infer = some  # type: ignore[method-assign]


def drill_worker(
    config: FleetConfig, infer_share: float, worker: int, orders: Any, reports: Any
) -> None:
    """One process's share of the fleet, until a ``stop`` order; then the tallies."""
    # each refused (corrupted) chunk is a warning: hundreds of lines at 1,000 devices
    logging.basicConfig(level=logging.ERROR)
    if infer_share < 1.0:
        infer_only(infer_share, config.seed)
    fleet = Fleet(config).start()
    watch = DrillWatch(fleet)
    loop = fleet.loop

    def read_orders() -> None:
        while True:
            try:
                order: Order = orders.get_nowait()
            except queue.Empty:
                return
            if order.kind == "stop":
                loop.stop()
                return
            watch.set_target(order)

    loop.call_every(CONTROL_EVERY_S, read_orders)
    loop.call_every(REPORT_EVERY_S, lambda: reports.put(("progress", worker, watch.progress())))
    cpu0 = time.process_time()
    loop.run()
    final = watch.final()
    final["cpu_s"] = time.process_time() - cpu0
    reports.put(("final", worker, final))
    fleet.close()
