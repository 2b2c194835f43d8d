"""Faults for a rehearsal: real failures on the real code path, on a schedule, seeded.

A scenario (simulator/scenario.py) lists faults; :class:`FaultPlan` picks the devices
each one hits (``random.Random(seed)``, so a scenario hits the same devices every run)
and :class:`FaultInjector` carries them out while the rollout runs. Nothing is mocked:

- ``crash_mid_download``: once the device has ``after_chunks`` chunks of its download,
  its connection is reset (the broker publishes its Last Will) and its ``Device`` is
  thrown away; ``restart_after_s`` later a new ``Device`` starts from the same state
  directory and must resume from its persisted bitmap.
- ``disconnect``: the connection is reset for ``duration_s``; the device runs on.
- ``slow_link``: what the broker sends the device reaches it ``delay_ms`` later and at
  most ``rate_per_s`` messages a second (in the selector loop, order kept).
- ``corrupt_chunks``: a chunk blob has one byte of its data flipped with probability
  ``p``; the device must refuse it by its signed sha256 and ask again.
- ``faulty_class``: devices of ``device_class`` load models with a runtime whose float
  outputs are shifted by ``shift``, so the real health check (golden outputs) fails.
- ``broker_restart``: the scenario's Mosquitto stops and starts again on its port.
- ``hub_restart``: the hub process is killed (SIGKILL) and started again ``down_s``
  later on the same data directory and ports.

Exceptions::

    FaultError(field, message)   a fault table that is not valid
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from agent.runtime import Backend, ModelSession, OnnxBackend, RunFn, SessionCache
from agent.store import DeviceStore
from shared import protocol
from shared.manifest import Manifest
from shared.trust import VerifiedTarget
from simulator.fleet import Deliver, Fleet, VirtualDevice

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

DEVICE_KINDS = (
    "crash_mid_download",
    "disconnect",
    "slow_link",
    "corrupt_chunks",
    "faulty_class",
)
PROCESS_KINDS = ("broker_restart", "hub_restart")
KINDS = DEVICE_KINDS + PROCESS_KINDS

_REQUIRED = object()
# kind -> {parameter: (type, default)}; at_s, fraction, count, device_class are common.
PARAMS: dict[str, dict[str, tuple[type, Any]]] = {
    "crash_mid_download": {"restart_after_s": (float, 2.0), "after_chunks": (int, 1)},
    "disconnect": {"duration_s": (float, _REQUIRED)},
    "slow_link": {
        "delay_ms": (float, 0.0),
        "rate_per_s": (float, None),
        "duration_s": (float, None),
    },
    "corrupt_chunks": {"p": (float, _REQUIRED), "duration_s": (float, None)},
    "faulty_class": {"shift": (float, 0.25)},
    "broker_restart": {"down_s": (float, 0.0)},
    "hub_restart": {"down_s": (float, 0.0)},
}
COMMON = ("kind", "at_s", "fraction", "count", "device_class")


class FaultError(ValueError):
    """A fault table that is not valid: ``field`` names what is wrong."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True)
class FaultSpec:
    """One ``[[fault]]`` table, validated.

    Attributes:
        kind: one of KINDS.
        at_s: seconds after the rollout starts.
        fraction / count: how many of the eligible devices it hits (device faults only;
            neither given: all of them).
        device_class: only devices of this class are eligible (required by faulty_class).
        params: the kind's own parameters (PARAMS), defaults filled in.
    """

    kind: str
    at_s: float = 0.0
    fraction: float | None = None
    count: int | None = None
    device_class: str | None = None
    params: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    @classmethod
    def from_table(cls, table: Mapping[str, Any]) -> FaultSpec:
        """Raises: FaultError naming the first bad field."""
        kind = table.get("kind")
        if kind is None:
            raise FaultError("kind", f"missing (one of {', '.join(KINDS)})")
        if kind not in KINDS:
            raise FaultError("kind", f"unknown kind {kind!r} (one of {', '.join(KINDS)})")
        schema = PARAMS[kind]
        for key in table:
            if key not in COMMON and key not in schema:
                allowed = ", ".join([*COMMON[1:], *schema])
                raise FaultError(key, f"unknown field for {kind} (allowed: {allowed})")
        at_s = _number(table, "at_s", float, 0.0)
        if at_s is None or at_s < 0:
            raise FaultError("at_s", f"must be >= 0 seconds, got {table.get('at_s')!r}")
        fraction = _number(table, "fraction", float, None)
        count = _number(table, "count", int, None)
        device_class = table.get("device_class")
        if device_class is not None and (not isinstance(device_class, str) or not device_class):
            raise FaultError("device_class", f"must be a class name, got {device_class!r}")
        if kind in PROCESS_KINDS:
            for key in ("fraction", "count", "device_class"):
                if key in table:
                    raise FaultError(key, f"{kind} hits a process, not devices")
        if fraction is not None and count is not None:
            raise FaultError("count", "give fraction or count, not both")
        if fraction is not None and not 0 < fraction <= 1:
            raise FaultError("fraction", f"must be within (0, 1], got {fraction}")
        if count is not None and count < 1:
            raise FaultError("count", f"must be >= 1, got {count}")
        if kind == "faulty_class" and device_class is None:
            raise FaultError("device_class", "missing (faulty_class needs the class it hits)")
        params = {name: _number(table, name, t, d) for name, (t, d) in schema.items()}
        _check_params(kind, params)
        return cls(kind, at_s, fraction, count, device_class, params)


def _number(table: Mapping[str, Any], name: str, kind: type, default: Any) -> Any:
    value = table.get(name, default)
    if value is _REQUIRED:
        raise FaultError(name, f"missing (required by {table['kind']})")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else int):
        what = "a number" if kind is float else "an integer"
        raise FaultError(name, f"must be {what}, got {value!r}")
    return kind(value)


def _check_params(kind: str, p: Mapping[str, Any]) -> None:
    for name, value in p.items():
        if value is not None and value < 0:
            raise FaultError(name, f"must be >= 0, got {value}")
    if kind == "corrupt_chunks" and not 0 < p["p"] <= 1:
        raise FaultError("p", f"must be within (0, 1], got {p['p']}")
    if kind == "slow_link" and not p["delay_ms"] and not p["rate_per_s"]:
        raise FaultError("delay_ms", "slow_link needs delay_ms > 0 or rate_per_s > 0")
    if kind == "crash_mid_download" and p["after_chunks"] < 1:
        raise FaultError("after_chunks", "must be >= 1")
    if kind == "disconnect" and p["duration_s"] <= 0:
        raise FaultError("duration_s", "must be > 0 seconds")


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
                self._queue(spec.at_s, i, lambda s=spec: self._restart_broker(s))
            elif spec.kind == "hub_restart":
                self._queue(spec.at_s, i, self._kill_hub)
                self._queue(spec.at_s + spec.params["down_s"], i, self._start_hub)
            else:
                start = getattr(self, f"_start_{spec.kind}")
                self.fleet.loop.call_soon_threadsafe(
                    lambda s=spec, t=targets, f=start: self.fleet.loop.call_later(
                        s.at_s, lambda: f(s, t)
                    )
                )

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
            self.fleet.loop.call_later(duration, lambda d=dev: self._reconnect(d))
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

    def _add_for(self, dev: VirtualDevice, fault: Any, duration_s: float | None) -> None:
        dev.inbound_faults.append(fault)
        if duration_s is not None:
            self.fleet.loop.call_later(
                duration_s,
                lambda: dev.inbound_faults.remove(fault) if fault in dev.inbound_faults else None,
            )

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
