"""Many paho-mqtt clients on one thread: one epoll loop over every socket and a timer heap.

paho's ``loop_start()`` runs a thread per client and uses ``select()``, which stalls near
340 clients per process (DESIGN §8). :class:`MqttLoop` instead drives paho's external-loop
API (``loop_read`` / ``loop_write`` / ``loop_misc`` and the ``on_socket_*`` callbacks) from
one ``selectors`` (epoll) loop. Every paho callback and every timer runs on that one thread,
so the device logic behind them needs no locks.

What the loop adds to paho:

- TCP connects that never block the loop: the loop connects the socket itself and hands it
  to paho when it is writable. At most ``connect_batch`` attempts start per iteration,
  and at most ``max_handshakes`` (TCP connect to CONNACK) are in flight at once.
- Reconnect forever, with jittered exponential backoff (paho reconnects by itself only in
  ``loop_forever`` / ``loop_start``).
- Writes coalesced per iteration: what paho queues during an iteration is written once at
  its end; the socket is watched for writability only while the kernel's buffer is full.
- ``loop_misc`` (keepalive) once a second per connected client, not once per iteration.
- A user callback that raises is counted, logged once per client (or per function) and
  kind, and the loop goes on.

paho stays quiet: no logger is attached to its clients, and every user callback is wrapped
here, so paho never sees (or logs) an exception.

This module is the loop itself (the thread, the selector, timers, calls from other
threads) and its public API. How clients connect and move their bytes is
simulator/mqttconnect.py; what the loop keeps per client, simulator/mqttclient.py; its
timers, simulator/mqtttimers.py; what it does when a callback raises,
simulator/mqttguard.py.

Exceptions::

    MqttLoopError      misuse: a call from a foreign thread, a closed loop, a duplicate id
"""

from __future__ import annotations

import contextlib
import logging
import random
import resource
import selectors
import socket
import threading
import time
from collections import deque
from collections.abc import Callable

from paho.mqtt.enums import MQTTErrorCode

from simulator.mqttclient import Counters, LoopStats, MqttLoopError, Session, State, Will
from simulator.mqttconnect import Connections
from simulator.mqttguard import CallbackGuard
from simulator.mqtttimers import Timer, TimerHeap

__all__ = ["ClientHandle", "LoopStats", "MqttLoop", "MqttLoopError", "Timer", "Will"]

log = logging.getLogger(__name__)

MAX_QUEUED_MESSAGES = 1000  # per client: QoS>0 publishes paho holds unacknowledged
# Mosquitto listens with a backlog of 100: a SYN past a full accept queue is dropped and
# the kernel retries it only after 1 s, so more connects in flight make connecting slower.
MAX_HANDSHAKES = 64  # connections between connect() and CONNACK, at once
HANDSHAKE_TIMEOUT_S = 10.0  # s: TCP connect + CONNACK, then retry with backoff
MISC_INTERVAL_S = 1.0  # s: how often loop_misc (keepalive, ping timeout) runs per client
MAX_WAIT_S = 1.0  # s: longest select() when nothing is due
UNTIL_POLL_S = 0.05  # s: longest select() while run() watches an until() predicate
CLOSE_FLUSH_S = 2.0  # s: close() waits this long for DISCONNECTs to reach the kernel

_R = selectors.EVENT_READ


class ClientHandle:
    """One MQTT client on a :class:`MqttLoop`. Use it on the loop thread."""

    __slots__ = ("_loop", "_session", "client_id")

    def __init__(self, loop: MqttLoop, session: Session) -> None:
        self._loop = loop
        self._session = session
        self.client_id = session.client_id

    @property
    def connected(self) -> bool:
        """True between a successful CONNACK and the end of that connection."""
        return self._session.state is State.CONNECTED

    def subscribe(self, topic: str, qos: int = 1) -> bool:
        """Subscribe; returns False (and does nothing) unless connected.

        Subscribe in ``on_connect``: it runs after every (re)connect, and a broker without
        persistence forgets subscriptions when it restarts.
        """
        self._loop._check_thread()
        s = self._session
        if s.state is not State.CONNECTED:
            return False
        rc, _mid = s.client.subscribe(topic, qos)
        return rc == MQTTErrorCode.MQTT_ERR_SUCCESS

    def unsubscribe(self, topic: str) -> bool:
        """Unsubscribe; returns False (and does nothing) unless connected."""
        self._loop._check_thread()
        s = self._session
        if s.state is not State.CONNECTED:
            return False
        rc, _mid = s.client.unsubscribe(topic)
        return rc == MQTTErrorCode.MQTT_ERR_SUCCESS

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> bool:
        """Publish; returns False when the message was dropped (and counted).

        While the client is offline (connecting, backing off), paho keeps QoS>0 messages in
        memory, up to ``max_queued_messages`` unacknowledged per client, and sends them after
        the next CONNACK; past that cap, and for QoS 0 while offline, and after close() or
        kill(), the message is dropped and counted in ``stats.publish_dropped``. The queue
        lives in this process only: a crash loses it.

        Raises:
            ValueError: a bad topic or QoS (from paho).
        """
        self._loop._check_thread()
        return self._loop._connections.publish(self._session, topic, payload, qos, retain)

    def publish_mid(self, topic: str, payload: bytes) -> int | None:
        """Publish at QoS 1 while connected; paho's message id, or None (nothing sent).

        For senders that track acknowledgements themselves (agent/spool.py): the id comes
        back through ``add_client(on_publish=...)`` once the broker has the message.
        """
        self._loop._check_thread()
        s = self._session
        if s.state is not State.CONNECTED:
            return None
        info = s.client.publish(topic, payload, 1, False)
        return info.mid if info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS else None

    def close(self) -> None:
        """Disconnect gracefully (DISCONNECT, so no Last Will); never reconnects."""
        self._loop._check_thread()
        self._loop._connections.close(self._session)

    def kill(self) -> None:
        """Drop the connection abruptly (TCP reset, no DISCONNECT) so the broker publishes
        the Last Will, as after a crash or a power loss; never reconnects."""
        self._loop._check_thread()
        self._loop._connections.kill(self._session)


def _raise_open_files_limit() -> int:
    """Raise this process's open-files limit to its hard limit; returns the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


class MqttLoop:
    """Many MQTT 3.1.1 clients driven by one selector loop on one thread.

    Everything except :meth:`call_soon_threadsafe`, :meth:`stop`, :meth:`close` and
    :attr:`stats` must be called on the loop thread (from a callback or a timer), or while
    the loop is not running.

    Args:
        host: the broker's host name or address (resolved once, at the first connect).
        port: the broker's port.
        keepalive: MQTT keepalive, seconds.
        connect_batch: most connection attempts started per loop iteration.
        reconnect_min_s: shortest wait before a retry, seconds.
        reconnect_max_s: longest wait before a retry, seconds.
        seed: seeds the backoff and timer jitter.
        max_queued_messages: QoS>0 publishes paho holds per client while unacknowledged.
        max_handshakes: most connections between connect() and CONNACK at once; keep it
            under the broker's listen backlog (Mosquitto: 100).
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        keepalive: int = 60,
        connect_batch: int = 200,
        reconnect_min_s: float = 0.5,
        reconnect_max_s: float = 15.0,
        seed: int = 0,
        max_queued_messages: int = MAX_QUEUED_MESSAGES,
        max_handshakes: int = MAX_HANDSHAKES,
    ) -> None:
        if max_handshakes < 1 or connect_batch < 1 or keepalive < 0 or max_queued_messages < 0:
            raise ValueError("need connect_batch, max_handshakes >= 1; keepalive, queue >= 0")
        if not 0 < reconnect_min_s <= reconnect_max_s:
            raise ValueError("need 0 < reconnect_min_s <= reconnect_max_s")
        rng = random.Random(seed)  # one generator: backoff and timer jitter
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector.register(self._wake_r, _R, None)
        self._wake_pending = False
        self._ready: deque[Callable[[], None]] = deque()  # from call_soon_threadsafe
        self._timers = TimerHeap(rng)
        self._counters = Counters()
        self._guard = CallbackGuard(self._counters, log)
        self._connections = Connections(
            host,
            port,
            keepalive,
            selector=self._selector,
            timers=self._timers,
            counters=self._counters,
            guard=self._guard,
            rng=rng,
            connect_batch=connect_batch,
            max_handshakes=max_handshakes,
            reconnect_min_s=reconnect_min_s,
            reconnect_max_s=reconnect_max_s,
            max_queued_messages=max_queued_messages,
            handshake_timeout_s=HANDSHAKE_TIMEOUT_S,
        )
        self._next_misc = 0.0
        self._thread_id: int | None = None  # the thread inside run()
        self._thread: threading.Thread | None = None
        self._running = threading.Event()
        self._stopped = threading.Event()
        self._stopped.set()
        self._stopping = False
        self._close_requested = False
        self._closed = False

    # -- clients -------------------------------------------------------------------------

    def add_client(
        self,
        client_id: str,
        *,
        on_connect: Callable[[], None],
        on_message: Callable[[str, bytes], None],
        on_disconnect: Callable[[], None] | None = None,
        will: Will | None = None,
        clean_session: bool = False,
        on_publish: Callable[[int], None] | None = None,
    ) -> ClientHandle:
        """Add a client; it connects in the next iterations and reconnects until closed.

        Args:
            client_id: the MQTT client id (unique among this loop's live clients).
            on_connect: called after every successful CONNACK: (re)subscribe here.
            on_message: called with (topic, payload) for each message while connected.
            on_disconnect: called when an established connection is lost (not after
                close() or kill()).
            will: the Last Will, if any.
            clean_session: MQTT 3.1.1 clean session; False keeps a persistent session.
            on_publish: called with the mid of each QoS 1 publish the broker acknowledged.

        Raises:
            MqttLoopError: a live client already has this id, or the loop is closed.
        """
        self._check_thread()
        if self._closed:
            raise MqttLoopError("the loop is closed")
        if client_id in self._connections.sessions:
            raise MqttLoopError(f"client id {client_id!r} is already on this loop")
        session = self._connections.add(
            client_id,
            on_connect=on_connect,
            on_message=on_message,
            on_disconnect=on_disconnect,
            will=will,
            clean_session=clean_session,
            on_publish=on_publish,
        )
        return ClientHandle(self, session)

    @property
    def stats(self) -> LoopStats:
        """A snapshot of the counters (safe from any thread, values may be a moment old)."""
        return self._counters.snapshot(len(self._connections.sessions), self._connections.connected)

    # -- timers and other threads --------------------------------------------------------

    def call_later(self, delay_s: float, fn: Callable[[], None]) -> Timer:
        """Call ``fn`` on the loop thread once, after ``delay_s`` seconds."""
        self._check_thread()
        return self._timers.once(delay_s, fn)

    def call_every(
        self, interval_s: float, fn: Callable[[], None], *, jitter_s: float = 0.0
    ) -> Timer:
        """Call ``fn`` on the loop thread every ``interval_s`` seconds until cancelled.

        Each wait, the first included, is ``interval_s`` plus a uniform random extra in
        ``[0, jitter_s)``, so timers started together drift apart. A loop that falls
        behind skips the missed calls rather than bursting.
        """
        self._check_thread()
        if interval_s <= 0 or jitter_s < 0:
            raise ValueError("need interval_s > 0 and jitter_s >= 0")
        return self._timers.every(interval_s, fn, jitter_s)

    def call_soon_threadsafe(self, fn: Callable[[], None]) -> None:
        """Call ``fn`` on the loop thread soon; safe from any thread.

        Raises:
            MqttLoopError: the loop is closed.
        """
        if self._closed:
            raise MqttLoopError("the loop is closed")
        self._ready.append(fn)
        if self._thread_id != threading.get_ident() and not self._wake_pending:
            self._wake_pending = True
            with contextlib.suppress(OSError):  # full (a wake is pending) or closing
                self._wake_w.send(b"\0")

    # -- running -------------------------------------------------------------------------

    def run(self, until: Callable[[], bool] | None = None, timeout_s: float | None = None) -> bool:
        """Run the loop on the calling thread.

        Args:
            until: stop as soon as this returns True (checked after every iteration).
            timeout_s: stop after this many seconds.

        Returns:
            True if ``until()`` became true; False on timeout or :meth:`stop`.

        Raises:
            MqttLoopError: the loop is closed or already running.
        """
        if self._closed:
            raise MqttLoopError("the loop is closed")
        if self._thread_id is not None:
            raise MqttLoopError("the loop is already running")
        _raise_open_files_limit()
        self._thread_id = threading.get_ident()
        self._stopped.clear()
        self._running.set()
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        cap = MAX_WAIT_S if until is None else UNTIL_POLL_S
        try:
            while True:
                if until is not None and until():
                    return True
                now = time.monotonic()
                if self._stopping or (deadline is not None and now >= deadline):
                    return False
                self._iterate(now, deadline, cap)
        finally:
            self._stopping = False
            self._thread_id = None
            if self._close_requested:
                self._teardown()
            self._running.clear()
            self._stopped.set()

    def start_thread(self, name: str = "mqttloop") -> threading.Thread:
        """Run the loop in a daemon thread; returns once the loop is running."""
        if self._closed:
            raise MqttLoopError("the loop is closed")
        if self._thread is not None and self._thread.is_alive():
            raise MqttLoopError("the loop already runs in a thread")
        self._running.clear()
        thread = threading.Thread(target=self.run, name=name, daemon=True)
        self._thread = thread
        thread.start()
        self._running.wait(5.0)
        return thread

    def stop(self) -> None:
        """Make run() return after the current iteration; safe from any thread."""
        self._stopping = True
        with contextlib.suppress(MqttLoopError):
            self.call_soon_threadsafe(lambda: None)

    def close(self, timeout_s: float = 10.0) -> None:
        """Disconnect every client cleanly (DISCONNECT, so no Last Will) and close sockets.

        From another thread while the loop runs, this stops the loop and waits up to
        ``timeout_s`` for it; from the loop thread, the clients are closed when run()
        returns, which it does after the current iteration.
        """
        if self._closed:
            return
        if self._thread_id == threading.get_ident():
            self._close_requested = True
            self._stopping = True
            return
        if self._thread_id is not None:
            self._close_requested = True
            self.stop()
            self._stopped.wait(timeout_s)
            thread = self._thread
            if thread is not None and thread is not threading.current_thread():
                thread.join(timeout_s)
            return
        self._teardown()

    # -- one iteration -------------------------------------------------------------------

    def _iterate(self, now: float, deadline: float | None, cap: float) -> None:
        links = self._connections
        if self._ready or links.busy:
            timeout = 0.0
        else:
            due = self._next_misc
            if (first := self._timers.next_due()) is not None:
                due = min(due, first)
            if deadline is not None:
                due = min(due, deadline)
            timeout = min(max(0.0, due - now), cap)
        for key, mask in self._selector.select(timeout):
            if key.data is None:
                self._drain_wake()
            else:
                links.on_io(key.data, key.fileobj, mask)  # type: ignore[arg-type]
        self._run_ready()
        now = time.monotonic()
        self._timers.run_due(now, self._run_timer)
        links.start_connects(now)
        if now >= self._next_misc:
            self._next_misc = now + MISC_INTERVAL_S
            links.misc(now)
        links.flush_writes()

    def _run_timer(self, fn: Callable[[], None]) -> None:
        self._guard.call(fn, "timer")

    def _drain_wake(self) -> None:
        with contextlib.suppress(OSError):
            while self._wake_r.recv(4096):
                pass
        # Only now: a call queued while the flag was still set runs in this iteration.
        self._wake_pending = False

    def _run_ready(self) -> None:
        for _ in range(len(self._ready)):
            fn = self._ready.popleft()
            self._guard.call(fn, "call_soon_threadsafe")

    # -- threads and teardown ------------------------------------------------------------

    def _check_thread(self) -> None:
        tid = self._thread_id
        if tid is not None and tid != threading.get_ident():
            raise MqttLoopError("call this on the loop thread (see call_soon_threadsafe)")

    def _teardown(self) -> None:
        links = self._connections
        for s in list(links.sessions.values()):
            links.close(s)
        links.flush_writes()
        deadline = time.monotonic() + CLOSE_FLUSH_S
        while len(self._selector.get_map()) > 1 and time.monotonic() < deadline:
            for key, mask in self._selector.select(0.05):
                if key.data is not None:
                    links.on_io(key.data, key.fileobj, mask)  # type: ignore[arg-type]
            links.flush_writes()
        for key in list(self._selector.get_map().values()):
            self._selector.unregister(key.fileobj)
            key.fileobj.close()  # type: ignore[union-attr]
        self._selector.close()
        self._wake_w.close()
        self._timers.clear()
        self._ready.clear()
        self._closed = True
