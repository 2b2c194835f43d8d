"""Fan-out: each chunk of a target published once for the devices of a wave.

Without it, N devices installing the same target each fetch every chunk, and the hub
answers N x chunks requests in Python. With it, the rollout engine asks
:meth:`FanOut.join` for a topic as it sends each deploy command; the command names the
topic (``ef/v1/fan/{key}/blob``, one per rollout and target), the device subscribes, and
once the wave's devices are ready the hub publishes each chunk there once, in order. The
broker copies it to every subscriber. A device checks each chunk against the signed
manifest exactly as a fetched one, and fetches individually only what it missed
(agent/core/download.py); the per-device path stays for stragglers and reboots.

When a round starts (:meth:`FanOut.poll`, on the fan-out's own thread):

- every device that joined has said ``downloading`` (:meth:`FanOut.ready`: its metadata
  is verified, so it can check chunks), or
- no device became ready for ``QUIET_S`` (the burst is over), or the first ready device
  has waited ``max_wait_s``, or nobody said anything for ``blind_wait_s`` after the
  first join or the last round (a replica that does not see the events; at most
  ``MAX_BLIND_ROUNDS`` such rounds).

Devices that become ready while a round runs catch its rest and the next round brings
the start they missed (measured: starting rounds on every few ready devices, each round
goes to every subscriber still missing chunks, and devices lagging behind their socket
pile up several; batching the readiness keeps each device near one round's bytes).
A round publishes at most ``window`` chunks ahead of the broker's acknowledgement, which
paces the publisher to what the broker can copy (docs/protocol.md "Fan-out"; the broker
keeps one copy of a message for all its subscribers' queues, DESIGN §8).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

from hub.ingest.report import Report
from hub.transport.fetch import ChunkSource
from shared import protocol

log = logging.getLogger(__name__)

MAX_WAIT_S: Final = 5.0  # a ready device waits for stragglers this long, at most
QUIET_S: Final = 1.0  # no device became ready for this long: the burst is over, start
BLIND_WAIT_S: Final = 4.0  # no device said it is ready: start anyway after this long
MAX_BLIND_ROUNDS: Final = 2  # per rollout and target (the devices fetch the rest)
SETTLE_S: Final = 0.2  # every joined device is ready: still let a burst of joins land
WINDOW: Final = 8  # chunks published and not yet acknowledged by the broker
POLL_S: Final = 0.05
PUBLISH_TIMEOUT_S: Final = 30.0  # the broker acknowledges a chunk within this, or we go on
IDLE_FORGET_S: Final = 600.0  # a round with nothing to do for this long is forgotten


class Publisher(Protocol):
    def publish_info(self, topic: str, payload: bytes, qos: int) -> Any:
        """Publish; returns paho's MQTTMessageInfo (``wait_for_publish``)."""
        ...


def fanout_key(rollout_id: str, target: str) -> str:
    """The key of a rollout's fan-out of ``target`` (hex; the same on every call)."""
    return hashlib.sha256(f"{rollout_id}\0{target}".encode()).hexdigest()[:32]


@dataclass
class Round:
    """One rollout's fan-out of one target: who joined, who is ready, who was served."""

    key: str
    topic: str
    target: str
    joined: set[str] = field(default_factory=set)  # sent the command, not yet ready
    ready: set[str] = field(default_factory=set)  # said downloading, not yet served
    first_join: float = 0.0
    first_ready: float | None = None
    last_change: float = 0.0
    last_ready: float = 0.0
    rounds: int = 0
    blind: int = 0  # rounds started with no device known ready
    served: int = 0  # devices the running round started for


class FanOut:
    """The hub's fan-out rounds (thread-safe: the engine, the link and its own thread).

    Args:
        link: publishes (the hub's MQTT link).
        chunks: where chunks come from (the registry).
        qos: of the fan-out publishes (the device subscribes at 1; the lower wins).
    """

    def __init__(
        self,
        link: Publisher,
        chunks: ChunkSource,
        *,
        qos: int = 1,
        max_wait_s: float = MAX_WAIT_S,
        blind_wait_s: float = BLIND_WAIT_S,
        window: int = WINDOW,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.link = link
        self.chunks = chunks
        self.qos = qos
        self.max_wait_s = max_wait_s
        self.blind_wait_s = blind_wait_s
        self.window = window
        self.clock = clock
        self.counts: Counter[str] = Counter()  # rounds, chunks_fanned, devices_served
        # (start, end, devices served) of the latest rounds, by the clock
        self.history: deque[tuple[float, float, int]] = deque(maxlen=64)
        self._rounds: dict[str, Round] = {}
        self._device_round: dict[tuple[str, str], str] = {}  # (device, rollout) -> key
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------- who takes part

    def join(self, rollout_id: str, target: str, device_id: str) -> str:
        """``device_id`` is being sent ``target`` by ``rollout_id``: its fan-out topic."""
        key = fanout_key(rollout_id, target)
        now = self.clock()
        with self._lock:
            rnd = self._rounds.get(key)
            if rnd is None:
                rnd = self._rounds[key] = Round(key, protocol.fanout_topic(key), target)
            if not rnd.joined and not rnd.ready:
                rnd.first_join, rnd.first_ready = now, None
            rnd.joined.add(device_id)
            rnd.ready.discard(device_id)
            rnd.last_change = now
            self._device_round[(device_id, rollout_id)] = key
        return rnd.topic

    def ready(self, device_id: str, deployment: str) -> None:
        """``device_id`` verified the metadata of ``deployment``: it can take chunks."""
        with self._lock:
            key = self._device_round.pop((device_id, deployment), None)
            rnd = self._rounds.get(key) if key is not None else None
            if rnd is None:
                return
            now = self.clock()
            rnd.joined.discard(device_id)
            rnd.ready.add(device_id)
            rnd.last_change = rnd.last_ready = now
            if rnd.first_ready is None:
                rnd.first_ready = now

    def leave(self, device_id: str, deployment: str) -> None:
        """``device_id`` is done with ``deployment`` another way (failed, refused, already
        running it): no round waits for it."""
        with self._lock:
            key = self._device_round.pop((device_id, deployment), None)
            rnd = self._rounds.get(key) if key is not None else None
            if rnd is not None:
                rnd.joined.discard(device_id)
                rnd.ready.discard(device_id)

    def observe(self, report: Report) -> None:
        """A device report on its way to the ingest: ``downloading`` makes it ready; an
        outcome before that takes it out."""
        if report.kind != "events":
            return
        body = report.message.body
        stage = body.get("stage")
        if stage == "downloading":
            self.ready(report.device_id, str(body.get("deployment")))
        elif stage != "received":
            self.leave(report.device_id, str(body.get("deployment")))

    # ------------------------------------------------------------- rounds

    def due(self, now: float) -> Round | None:
        """The round to run now, if any (its ready devices are taken as served)."""
        with self._lock:
            for key, rnd in list(self._rounds.items()):
                if not rnd.ready and not rnd.joined and now - rnd.last_change > IDLE_FORGET_S:
                    del self._rounds[key]
                    continue
                if self._starts(rnd, now):
                    blind = rnd.first_ready is None  # for whoever joined (each is
                    rnd.blind += blind  # served again once it says it is ready)
                    rnd.served = len(rnd.joined) if blind else len(rnd.ready)
                    self.counts["devices_served"] += rnd.served
                    rnd.ready.clear()
                    rnd.first_ready = None
                    rnd.first_join = now
                    rnd.rounds += 1
                    return rnd
        return None

    def _starts(self, rnd: Round, now: float) -> bool:
        if rnd.first_ready is None:
            waited = now - rnd.first_join >= self.blind_wait_s
            return bool(rnd.joined) and waited and rnd.blind < MAX_BLIND_ROUNDS
        if not rnd.joined:
            return now - rnd.last_change >= SETTLE_S
        if now - rnd.last_ready >= QUIET_S:
            return True
        return now - rnd.first_ready >= self.max_wait_s

    def run_round(self, rnd: Round) -> int:
        """Publish every chunk of the round's target once, paced; the chunks published."""
        self.counts["rounds"] += 1
        started = self.clock()
        sent = 0
        in_flight: deque[Any] = deque()
        index = 0
        data = self.chunks.chunk(rnd.target, 0)
        while data is not None and not self._stop.is_set():
            following = self.chunks.chunk(rnd.target, index + 1)
            header: dict[str, Any] = {
                "kind": "chunk",
                "req": protocol.FANOUT_REQ,
                "target": rnd.target,
                "index": index,
            }
            blob = protocol.encode_blob(header, data)
            in_flight.append(self.link.publish_info(rnd.topic, blob, self.qos))
            sent += 1
            while len(in_flight) >= self.window:
                _wait(in_flight.popleft())
            index, data = index + 1, following
        while in_flight:
            _wait(in_flight.popleft())
        self.counts["chunks_fanned"] += sent
        self.history.append((started, self.clock(), rnd.served))
        log.info("fan-out %s: %d chunks of %s", rnd.key, sent, rnd.target)
        return sent

    def poll(self) -> bool:
        """Run one due round, if any; whether one ran."""
        rnd = self.due(self.clock())
        if rnd is None:
            return False
        self.run_round(rnd)
        return True

    # ------------------------------------------------------------- thread

    def start(self) -> FanOut:
        self._thread = threading.Thread(target=self._run, name="fanout", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                if not self.poll():
                    self._stop.wait(POLL_S)
            except Exception:  # the next poll may succeed; devices fall back meanwhile
                log.exception("fan-out: a round failed")
                self._stop.wait(1.0)


def _wait(info: Any) -> None:
    """Wait for the broker's acknowledgement of one publish (bounded: a broker that is
    gone does not hang the fan-out; its devices fetch what they missed)."""
    wait = getattr(info, "wait_for_publish", None)
    if wait is not None:
        # not queued (disconnected): nothing to wait for
        with contextlib.suppress(RuntimeError, ValueError):
            wait(PUBLISH_TIMEOUT_S)
