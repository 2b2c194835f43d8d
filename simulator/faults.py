"""Faults for a rehearsal: real failures on the real code path, on a schedule, seeded.

A scenario (simulator/scenario.py) lists faults (their kinds and parameters:
simulator/faultspec.py); :class:`FaultInjector` picks the devices each one hits
(``random.Random(seed)``, so a scenario hits the same devices every run) and carries them
out while the rollout runs. Device faults work on the fleet's selector loop; process
faults (broker and hub restarts) go through :class:`Processes`, which whoever set up the
stage provides (edgefleet/stage.py): the simulator never starts or stops the hub itself.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import random
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from agent.runtime import Backend, ModelSession, OnnxBackend, RunFn, SessionCache
from agent.store import DeviceStore
from shared import protocol
from shared.manifest import Manifest
from shared.trust import VerifiedTarget
from simulator.faultspec import DEVICE_KINDS, KINDS, PROCESS_KINDS, FaultError, FaultSpec
from simulator.fleet import Deliver, Fleet, InboundFault, VirtualDevice

__all__ = [
    "DEVICE_KINDS",
    "KINDS",
    "PROCESS_KINDS",
    "FaultError",
    "FaultInjector",
    "FaultSpec",
    "PerturbedBackend",
    "Processes",
]

# --------------------------------------------------------------------------- runtime


class PerturbedBackend:
    """A backend whose sessions shift every float output by ``shift``: a broken runtime.

    The model file, its hash and its I/O specs are untouched; only what the runtime
    computes is wrong, as with a faulty delegate or a miscompiled kernel.
    """

    def __init__(self, inner: Backend, shift: float) -> None:
        self.inner = inner
        self.shift = shift

    @property
    def name(self) -> str:
        return self.inner.name

    def load(self, path: Path, sha256: str | None = None) -> ModelSession:
        return self._perturb(self.inner.load(path, sha256))

    def load_bytes(self, data: bytes, sha256: str | None = None) -> ModelSession:
        return self._perturb(self.inner.load_bytes(data, sha256))

    def _perturb(self, session: ModelSession) -> ModelSession:
        run, shift = session.run_fn, np.float32(self.shift)

        def perturbed(names: list[str], feeds: dict[str, Any], opts: None) -> list[Any]:
            return [
                o + shift if np.issubdtype(o.dtype, np.floating) else o
                for o in run(names, feeds, opts)
            ]

        run_fn: RunFn = perturbed
        return dataclasses.replace(session, run_fn=run_fn)


class Processes(Protocol):
    """The scenario's processes, for the process faults (called off the loop thread)."""

    def restart_broker(self, down_s: float) -> None: ...

    def kill_hub(self) -> None: ...

    def start_hub(self) -> None: ...


Say = Callable[[str], None]


class FaultInjector:
    """Carries out a scenario's faults on a running fleet.

    Device faults run on the fleet's loop thread (``arm`` schedules them there); process
    faults run on the caller's thread, from :meth:`run_due` (it blocks while a process
    stops or starts). :attr:`counts` says how often each fault was injected.
    """

    def __init__(
        self,
        specs: Sequence[FaultSpec],
        fleet: Fleet,
        processes: Processes,
        *,
        seed: int,
        say: Say = print,
    ) -> None:
        self.specs = list(specs)
        self.fleet = fleet
        self.processes = processes
        self.say = say
        self.seed = seed
        self.counts: Counter[str] = Counter()  # kind -> injections
        self.devices_hit: dict[str, set[str]] = {}  # kind -> device ids
        self.crashes: list[dict[str, Any]] = []  # one record per crash (see summary)
        # process faults: when each first struck, and how many devices were healthy on
        # the new version then (so a rehearsal shows it struck mid-rollout)
        self.struck: dict[str, dict[str, float | int]] = {}
        self._pending = 0  # faults waiting for their recovery (restart, reconnect)
        self._lock = threading.Lock()
        self._t0 = 0.0
        self._process_queue: list[tuple[float, int, Callable[[], None]]] = []
        # Crashes and disconnects hit different devices: a device that is down cannot
        # also lose its link, and the scenario would inject fewer faults than it planned.
        self._down: set[str] = set()
        self._targets = [self._pick(i, s) for i, s in enumerate(self.specs)]

    def _pick(self, i: int, spec: FaultSpec) -> list[VirtualDevice]:
        if spec.kind in PROCESS_KINDS:
            return []
        exclusive = spec.kind in ("crash_mid_download", "disconnect")
        eligible = [
            d
            for d in self.fleet.devices
            if (spec.device_class is None or d.device_class == spec.device_class)
            and not (exclusive and d.device_id in self._down)
        ]
        if spec.count is not None:
            n = min(spec.count, len(eligible))
        elif spec.fraction is not None:
            n = max(1, round(spec.fraction * len(eligible))) if eligible else 0
        else:
            n = len(eligible)
        chosen = random.Random(f"{self.seed}:{i}:{spec.kind}").sample(eligible, n)
        if exclusive:
            self._down.update(d.device_id for d in chosen)
        return sorted(chosen, key=lambda d: d.device_id)

    def planned(self) -> dict[str, int]:
        """Devices each device fault will hit (process faults: 1 each)."""
        out: Counter[str] = Counter()
        for spec, targets in zip(self.specs, self._targets, strict=True):
            out[spec.kind] += len(targets) if spec.kind in DEVICE_KINDS else 1
        return dict(out)

    @property
    def busy(self) -> bool:
        """A fault has struck and its recovery (restart, reconnect, hub start) is due."""
        with self._lock:
            return self._pending > 0

    def arm(self) -> None:
        """Start the clock (t = 0 is the rollout's start) and schedule every fault."""
        self._t0 = time.monotonic()
        for i, (spec, targets) in enumerate(zip(self.specs, self._targets, strict=True)):
            if spec.kind == "broker_restart":
                self._queue(spec.at_s, i, functools.partial(self._restart_broker, spec))
            elif spec.kind == "hub_restart":
                self._queue(spec.at_s, i, self._kill_hub)
                self._queue(spec.at_s + spec.params["down_s"], i, self._start_hub)
            else:
                self._schedule_on_loop(spec, targets)

    def _schedule_on_loop(self, spec: FaultSpec, targets: list[VirtualDevice]) -> None:
        start: Callable[[FaultSpec, list[VirtualDevice]], None]
        start = getattr(self, f"_start_{spec.kind}")
        loop = self.fleet.loop

        def schedule() -> None:
            loop.call_later(spec.at_s, lambda: start(spec, targets))

        loop.call_soon_threadsafe(schedule)

    def _queue(self, at_s: float, i: int, fn: Callable[[], None]) -> None:
        with self._lock:
            self._process_queue.append((at_s, i, fn))
            self._process_queue.sort(key=lambda e: (e[0], e[1]))

    def run_due(self) -> None:
        """Carry out the process faults that are due (call from the orchestrating thread)."""
        while True:
            with self._lock:
                if not self._process_queue or self._process_queue[0][0] > self.elapsed():
                    return
                _at, _i, fn = self._process_queue.pop(0)
            fn()

    def elapsed(self) -> float:
        return time.monotonic() - self._t0

    def _note(self, kind: str, text: str) -> None:
        self.say(f"t={self.elapsed():6.1f}s  fault {kind}: {text}")

    def _hit(self, kind: str, dev: VirtualDevice, n: int = 1) -> None:
        self.counts[kind] += n
        self.devices_hit.setdefault(kind, set()).add(dev.device_id)

    # -- process faults (orchestrating thread) -------------------------------------------

    def _mark(self, kind: str) -> None:
        if kind not in self.struck:
            healthy = {
                e.device_id
                for d in self.fleet.devices
                for e in list(d.events)
                if e.stage == "healthy" and e.t >= self._t0
            }
            self.struck[kind] = {"at_s": round(self.elapsed(), 2), "healthy": len(healthy)}

    def _restart_broker(self, spec: FaultSpec) -> None:
        self._mark("broker_restart")
        self._note("broker_restart", "stopping the broker")
        self.processes.restart_broker(spec.params["down_s"])
        self.counts["broker_restart"] += 1
        self._note("broker_restart", "broker is back on its port")

    def _kill_hub(self) -> None:
        with self._lock:
            self._pending += 1
        self._mark("hub_restart")
        self.processes.kill_hub()
        self.counts["hub_restart"] += 1
        self._note("hub_restart", "hub killed (SIGKILL)")

    def _start_hub(self) -> None:
        self._note("hub_restart", "starting the hub again")
        try:
            self.processes.start_hub()
        finally:
            with self._lock:
                self._pending -= 1
        self._note("hub_restart", "hub is back")

    # -- device faults (loop thread) -----------------------------------------------------

    def _start_crash_mid_download(self, spec: FaultSpec, targets: list[VirtualDevice]) -> None:
        for dev in targets:
            dev.inbound_faults.append(_CrashAfterChunks(self, dev, spec))

    def _crash(self, dev: VirtualDevice, spec: FaultSpec) -> None:
        if not dev.up:
            return
        dev.crash()
        kept = _chunks_on_disk(DeviceStore(dev.fleet.config.work_dir / dev.device_id))
        record: dict[str, Any] = {"device": dev.device_id, "persisted": kept, "refetched": []}
        self.crashes.append(record)
        self._hit("crash_mid_download", dev)
        with self._lock:
            self._pending += 1
        delay = spec.params["restart_after_s"]
        self._note(
            "crash_mid_download",
            f"{dev.device_id} crashed with {len(kept)} chunks on disk; restarts in {delay:g} s",
        )
        self.fleet.loop.call_later(delay, lambda: self._restart(dev, record))

    def _restart(self, dev: VirtualDevice, record: dict[str, Any]) -> None:
        persisted = set(record["persisted"])

        def watch(topic: str, payload: bytes) -> None:
            if topic.endswith("/fetch"):
                body = protocol.decode(payload).body
                record["refetched"] += [i for i in body.get("chunks", []) if i in persisted]

        dev.restart()
        dev.outbound_taps.append(watch)
        with self._lock:
            self._pending -= 1
        self._note("crash_mid_download", f"{dev.device_id} restarted from its state directory")

    def _start_disconnect(self, spec: FaultSpec, targets: list[VirtualDevice]) -> None:
        duration = spec.params["duration_s"]
        for dev in targets:
            if not dev.up or not dev.link_up:
                continue
            dev.drop_link()
            self._hit("disconnect", dev)
            with self._lock:
                self._pending += 1
            self.fleet.loop.call_later(duration, functools.partial(self._reconnect, dev))
        self._note("disconnect", f"{len(targets)} devices lost their link for {duration:g} s")

    def _reconnect(self, dev: VirtualDevice) -> None:
        dev.restore_link()
        with self._lock:
            self._pending -= 1

    def _start_slow_link(self, spec: FaultSpec, targets: list[VirtualDevice]) -> None:
        p = spec.params
        for dev in targets:
            link = _SlowLink(self, dev, p["delay_ms"] / 1000.0, p["rate_per_s"])
            self._add_for(dev, link, p["duration_s"])
        rate = f", {p['rate_per_s']:g} msg/s" if p["rate_per_s"] else ""
        self._note("slow_link", f"{len(targets)} devices: +{p['delay_ms']:g} ms{rate}")

    def _start_corrupt_chunks(self, spec: FaultSpec, targets: list[VirtualDevice]) -> None:
        p = spec.params
        for dev in targets:
            self._add_for(dev, _CorruptChunks(self, dev, p["p"]), p["duration_s"])
        self._note("corrupt_chunks", f"{len(targets)} devices: p={p['p']:g} per chunk")

    def _add_for(self, dev: VirtualDevice, fault: InboundFault, duration_s: float | None) -> None:
        dev.inbound_faults.append(fault)
        if duration_s is None:
            return

        def lift() -> None:
            if fault in dev.inbound_faults:
                dev.inbound_faults.remove(fault)

        self.fleet.loop.call_later(duration_s, lift)

    def _start_faulty_class(self, spec: FaultSpec, targets: list[VirtualDevice]) -> None:
        cache = SessionCache(PerturbedBackend(OnnxBackend(), spec.params["shift"]))
        for dev in targets:
            dev.sessions = cache  # a restarted Device gets it too
            dev.device.sessions = cache  # models it loads from now on run perturbed
            self._hit("faulty_class", dev)
        self._note(
            "faulty_class",
            f"{len(targets)} {spec.device_class} devices now run a runtime whose outputs are "
            f"off by {spec.params['shift']:g}",
        )


class _CrashAfterChunks:
    """Lets ``after_chunks`` chunks of a download through, then crashes the device.

    The crash runs from the loop, right after the message that triggered it; what
    arrives in between is lost with the process.
    """

    def __init__(self, injector: FaultInjector, dev: VirtualDevice, spec: FaultSpec) -> None:
        self.injector, self.dev, self.spec = injector, dev, spec
        self.dying = False

    def __call__(self, topic: str, payload: bytes, deliver: Deliver) -> None:
        if self.dying:
            return
        deliver(topic, payload)
        job = self.dev.device.core.state.get("job")
        enough = self.spec.params["after_chunks"]
        if job and job["phase"] == "chunks" and len(job["have"]) >= enough:
            self.dying = True
            self.injector.fleet.loop.call_later(0.0, self._crash)

    def _crash(self) -> None:
        self.dev.inbound_faults.remove(self)
        self.injector._crash(self.dev, self.spec)


class _SlowLink:
    """Delays what reaches the device by ``delay_s``, at most ``rate`` messages a second."""

    def __init__(
        self, injector: FaultInjector, dev: VirtualDevice, delay_s: float, rate: float | None
    ) -> None:
        self.injector, self.dev = injector, dev
        self.delay_s = delay_s
        self.gap_s = 1.0 / rate if rate else 0.0
        self.next_free = 0.0

    def __call__(self, topic: str, payload: bytes, deliver: Deliver) -> None:
        now = time.monotonic()
        at = max(now + self.delay_s, self.next_free)
        self.next_free = at + self.gap_s
        self.injector._hit("slow_link", self.dev)
        self.injector.fleet.loop.call_later(at - now, lambda: deliver(topic, payload))


_BLOB_HEAD = struct.Struct(">4sI")


class _CorruptChunks:
    """Flips one byte of a chunk's data with probability ``p``.

    The decision for the n-th arrival of a chunk index is a hash of (seed, device, index,
    n), so a scenario corrupts the same arrivals every run, whatever the timing.
    """

    def __init__(self, injector: FaultInjector, dev: VirtualDevice, p: float) -> None:
        self.injector, self.dev, self.p = injector, dev, p
        self.seen: Counter[tuple[str, int]] = Counter()

    def __call__(self, topic: str, payload: bytes, deliver: Deliver) -> None:
        if topic.endswith("/blob") and len(payload) > _BLOB_HEAD.size:
            payload = self._maybe_corrupt(payload)
        deliver(topic, payload)

    def _maybe_corrupt(self, payload: bytes) -> bytes:
        magic, n = _BLOB_HEAD.unpack_from(payload)
        start = _BLOB_HEAD.size + n
        if magic != protocol.BLOB_MAGIC or start >= len(payload):
            return payload
        try:
            header = json.loads(payload[_BLOB_HEAD.size : start])
        except ValueError:
            return payload
        if header.get("kind") != "chunk":
            return payload
        key = (str(header.get("target")), int(header.get("index", -1)))
        self.seen[key] += 1
        seed = f"{self.injector.seed}:{self.dev.device_id}:{key}:{self.seen[key]}"
        draw = int.from_bytes(hashlib.sha256(seed.encode()).digest()[:8], "big") / 2**64
        if draw >= self.p:
            return payload
        data = bytearray(payload)
        pos = start + int(draw * 2**32) % (len(payload) - start)
        data[pos] ^= 0xFF
        self.injector._hit("corrupt_chunks", self.dev)
        return bytes(data)


def _chunks_on_disk(store: DeviceStore) -> list[int]:
    """The chunks of the download in progress that the staging file holds intact (the
    device re-hashes the same file when it restarts)."""
    job = (store.load_state() or {}).get("job") or {}
    info = job.get("target_info")
    if not info:
        return []
    target = VerifiedTarget(info["name"], info["length"], info["sha256"], info["custom"])
    manifest = Manifest.from_custom(info["custom"])
    every = range(len(manifest.chunks))
    return sorted(store.valid_chunks(target, manifest.chunk_size, manifest.chunks, every))
