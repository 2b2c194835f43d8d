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

Exceptions::

    MqttLoopError      misuse: a call from a foreign thread, a closed loop, a duplicate id
"""

from __future__ import annotations

import contextlib
import enum
import errno
import heapq
import itertools
import logging
import random
import resource
import selectors
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

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
MAX_READS_PER_WAKE = 64  # packets read from one socket per readiness event (fairness)
CLOSE_FLUSH_S = 2.0  # s: close() waits this long for DISCONNECTs to reach the kernel

_R, _W = selectors.EVENT_READ, selectors.EVENT_WRITE


class _State(enum.Enum):
    """Where a client is: QUEUED -> TCP -> HANDSHAKE -> CONNECTED -> BACKOFF -> QUEUED ..."""

    QUEUED = "queued"  # waiting for a connect slot
    TCP = "tcp"  # non-blocking TCP connect in progress
    HANDSHAKE = "handshake"  # CONNECT sent, waiting for CONNACK
    CONNECTED = "connected"
    BACKOFF = "backoff"  # waiting to retry
    CLOSING = "closing"  # DISCONNECT queued
    CLOSED = "closed"  # closed or killed: never reconnects


_FINAL = frozenset({_State.CLOSING, _State.CLOSED})


class MqttLoopError(RuntimeError):
    """The loop was used wrongly (foreign thread, closed loop, duplicate client id)."""


@dataclass(frozen=True)
class Will:
    """The Last Will the broker publishes when a client vanishes without DISCONNECT."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = True

    def __post_init__(self) -> None:
        if not self.topic or "+" in self.topic or "#" in self.topic:
            raise ValueError(f"a will needs a topic without wildcards, got {self.topic!r}")
        if self.qos not in (0, 1, 2):
            raise ValueError(f"will qos must be 0, 1 or 2, got {self.qos}")


@dataclass(frozen=True)
class LoopStats:
    """A snapshot of the loop's counters (totals since the loop was made)."""

    clients: int  # live clients (added, not closed or killed)
    connected: int  # clients with a CONNACKed connection now
    connects: int  # successful CONNACKs, reconnects included
    disconnects: int  # established connections that ended (closes included)
    messages_in: int  # messages delivered to on_message
    messages_out: int  # publishes acknowledged (QoS>0) or written (QoS 0)
    bytes_in: int  # bytes read from the broker's sockets
    bytes_out: int  # bytes written to them
    publish_dropped: int  # publishes refused: QoS 0 offline, queue full, client closed
    connect_failures: int  # connection attempts that failed (refused, timed out, lost)
    callback_errors: int  # exceptions raised by user callbacks and timers


class _Counters:
    __slots__ = (
        "bytes_in",
        "bytes_out",
        "callback_errors",
        "connect_failures",
        "connects",
        "disconnects",
        "messages_in",
        "messages_out",
        "publish_dropped",
    )

    def __init__(self) -> None:
        self.connects = self.disconnects = self.connect_failures = 0
        self.messages_in = self.messages_out = self.publish_dropped = 0
        self.bytes_in = self.bytes_out = self.callback_errors = 0


_RECV = socket.socket.recv
_SEND = socket.socket.send


class _MeteredSocket(socket.socket):
    """A socket that counts its bytes and notes when a read would block."""

    __slots__ = ("counters", "drained")
    counters: _Counters
    drained: bool

    def recv(self, bufsize: int, flags: int = 0, /) -> bytes:
        try:
            data = _RECV(self, bufsize, flags)
        except BlockingIOError:
            self.drained = True
            raise
        self.counters.bytes_in += len(data)
        return data

    def send(self, data: ReadableBuffer, flags: int = 0, /) -> int:
        n = _SEND(self, data, flags)
        self.counters.bytes_out += n
        return n


class _PahoClient(mqtt.Client):
    """paho's client, handed a socket the loop has already connected without blocking.

    paho 2.x has no public way to connect without blocking (``reconnect()`` calls
    ``socket.create_connection``), so this overrides the one private method that makes the
    socket; tests/test_mqttloop.py checks the loop stays live against a broker that never
    accepts.
    """

    next_sock: socket.socket | None = None

    def _create_socket_connection(self) -> socket.socket:
        sock, self.next_sock = self.next_sock, None
        if sock is None:
            raise MqttLoopError("paho asked for a socket the loop did not connect")
        return sock


class Timer:
    """A scheduled call; :meth:`cancel` stops it (loop thread only)."""

    __slots__ = ("_loop", "cancelled", "fn", "interval_s", "jitter_s", "scheduled")

    def __init__(
        self, loop: MqttLoop, fn: Callable[[], None], interval_s: float | None, jitter_s: float
    ) -> None:
        self._loop = loop
        self.fn = fn
        self.interval_s = interval_s
        self.jitter_s = jitter_s
        self.cancelled = False
        self.scheduled = False

    def cancel(self) -> None:
        """Stop the timer; a no-op if it already fired (one-shot) or was cancelled."""
        if not self.cancelled:
            self.cancelled = True
            if self.scheduled:
                self._loop._timer_cancelled()


class _Session:
    """The loop's state for one client."""

    __slots__ = (
        "attempts",
        "client",
        "client_id",
        "dirty",
        "errors",
        "on_connect",
        "on_disconnect",
        "on_message",
        "on_publish",
        "retry",
        "state",
        "tcp_sock",
        "write_watched",
    )

    def __init__(
        self,
        client_id: str,
        client: _PahoClient,
        on_connect: Callable[[], None],
        on_message: Callable[[str, bytes], None],
        on_disconnect: Callable[[], None] | None,
    ) -> None:
        self.client_id = client_id
        self.client = client
        self.on_connect = on_connect
        self.on_message = on_message
        self.on_disconnect = on_disconnect
        self.on_publish: Callable[[int], None] | None = None  # PUBACK of a QoS 1 mid
        self.state = _State.QUEUED
        self.attempts = 0  # failed attempts since the last CONNACK
        self.tcp_sock: _MeteredSocket | None = None  # ours until paho takes it
        self.retry: Timer | None = None
        self.dirty = False  # in the loop's write list
        self.write_watched = False  # registered for EVENT_WRITE
        self.errors: dict[str, int] | None = None  # callback kind -> exceptions


class ClientHandle:
    """One MQTT client on a :class:`MqttLoop`. Use it on the loop thread."""

    __slots__ = ("_loop", "_session", "client_id")

    def __init__(self, loop: MqttLoop, session: _Session) -> None:
        self._loop = loop
        self._session = session
        self.client_id = session.client_id

    @property
    def connected(self) -> bool:
        """True between a successful CONNACK and the end of that connection."""
        return self._session.state is _State.CONNECTED

    def subscribe(self, topic: str, qos: int = 1) -> bool:
        """Subscribe; returns False (and does nothing) unless connected.

        Subscribe in ``on_connect``: it runs after every (re)connect, and a broker without
        persistence forgets subscriptions when it restarts.
        """
        self._loop._check_thread()
        s = self._session
        if s.state is not _State.CONNECTED:
            return False
        rc, _mid = s.client.subscribe(topic, qos)
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
        return self._loop._publish(self._session, topic, payload, qos, retain)

    def publish_mid(self, topic: str, payload: bytes) -> int | None:
        """Publish at QoS 1 while connected; paho's message id, or None (nothing sent).

        For senders that track acknowledgements themselves (agent/spool.py): the id comes
        back through ``add_client(on_publish=...)`` once the broker has the message.
        """
        self._loop._check_thread()
        s = self._session
        if s.state is not _State.CONNECTED:
            return None
        info = s.client.publish(topic, payload, 1, False)
        return info.mid if info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS else None

    def close(self) -> None:
        """Disconnect gracefully (DISCONNECT, so no Last Will); never reconnects."""
        self._loop._check_thread()
        self._loop._close_session(self._session)

    def kill(self) -> None:
        """Drop the connection abruptly (TCP reset, no DISCONNECT) so the broker publishes
        the Last Will, as after a crash or a power loss; never reconnects."""
        self._loop._check_thread()
        self._loop._kill_session(self._session)


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
        self._host, self._port, self._keepalive = host, port, keepalive
        self._batch = connect_batch
        self._max_handshakes = max_handshakes
        self._min_s, self._max_s = reconnect_min_s, reconnect_max_s
        self._max_queued = max_queued_messages
        self._rng = random.Random(seed)
        self._addrs: list[tuple[socket.AddressFamily, Any]] = []  # resolved at first use
        self._addr_i = 0
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector.register(self._wake_r, _R, None)
        self._wake_pending = False
        self._ready: deque[Callable[[], None]] = deque()  # from call_soon_threadsafe
        self._timers: list[tuple[float, int, Timer]] = []  # a heap
        self._dead_timers = 0  # cancelled timers still in the heap
        self._seq = itertools.count()
        self._sessions: dict[str, _Session] = {}
        self._queue: deque[_Session] = deque()  # waiting to connect
        self._handshakes: dict[_Session, float] = {}  # session -> monotonic start
        self._dirty: list[_Session] = []  # paho queued packets: write at iteration end
        self._counters = _Counters()
        self._connected = 0
        self._errors: dict[tuple[str, str], int] = {}  # (kind, function) -> exceptions
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
        if client_id in self._sessions:
            raise MqttLoopError(f"client id {client_id!r} is already on this loop")
        client = _PahoClient(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=clean_session,
            protocol=MQTTProtocolVersion.MQTTv311,
        )
        session = _Session(client_id, client, on_connect, on_message, on_disconnect)
        session.on_publish = on_publish
        client.user_data_set(session)
        client.max_queued_messages_set(self._max_queued)
        if will is not None:
            client.will_set(will.topic, will.payload, will.qos, will.retain)
        client.on_connect = self._on_connack
        client.on_disconnect = self._on_paho_disconnect
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_register_write
        client.on_socket_unregister_write = self._on_unregister_write
        client.connect_async(self._host, self._port, self._keepalive)  # no I/O: sets the target
        self._sessions[client_id] = session
        self._queue.append(session)
        return ClientHandle(self, session)

    @property
    def stats(self) -> LoopStats:
        """A snapshot of the counters (safe from any thread, values may be a moment old)."""
        c = self._counters
        return LoopStats(
            clients=len(self._sessions),
            connected=self._connected,
            connects=c.connects,
            disconnects=c.disconnects,
            messages_in=c.messages_in,
            messages_out=c.messages_out,
            bytes_in=c.bytes_in,
            bytes_out=c.bytes_out,
            publish_dropped=c.publish_dropped,
            connect_failures=c.connect_failures,
            callback_errors=c.callback_errors,
        )

    # -- timers and other threads --------------------------------------------------------

    def call_later(self, delay_s: float, fn: Callable[[], None]) -> Timer:
        """Call ``fn`` on the loop thread once, after ``delay_s`` seconds."""
        self._check_thread()
        timer = Timer(self, fn, None, 0.0)
        self._push(time.monotonic() + max(0.0, delay_s), timer)
        return timer

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
        timer = Timer(self, fn, interval_s, jitter_s)
        self._push(time.monotonic() + self._period(timer), timer)
        return timer

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
        can_connect = self._queue and len(self._handshakes) < self._max_handshakes
        if self._ready or self._dirty or can_connect:
            timeout = 0.0
        else:
            due = self._next_misc
            if self._timers:
                due = min(due, self._timers[0][0])
            if deadline is not None:
                due = min(due, deadline)
            timeout = min(max(0.0, due - now), cap)
        for key, mask in self._selector.select(timeout):
            if key.data is None:
                self._drain_wake()
            else:
                self._on_io(key.data, key.fileobj, mask)  # type: ignore[arg-type]
        self._run_ready()
        now = time.monotonic()
        self._run_timers(now)
        self._start_connects(now)
        if now >= self._next_misc:
            self._next_misc = now + MISC_INTERVAL_S
            self._misc(now)
        self._flush_writes()

    def _on_io(self, s: _Session, sock: socket.socket, mask: int) -> None:
        try:
            if sock is s.tcp_sock:
                self._tcp_connected(s)
                return
            client = s.client
            if client.socket() is not sock:
                return  # a stale event: this socket was closed earlier in the iteration
            if mask & _R:
                self._read(client, sock)  # type: ignore[arg-type]
            if mask & _W and client.socket() is sock:
                client.loop_write()
        except Exception as e:
            self._internal_error(s, "io", e)

    @staticmethod
    def _read(client: _PahoClient, sock: _MeteredSocket) -> None:
        # paho's loop_read() reads one packet when nothing is in flight: read on until the
        # socket would block, so a burst costs one wake-up, not one per packet.
        for _ in range(MAX_READS_PER_WAKE):
            sock.drained = False
            client.loop_read()
            if sock.drained or client.socket() is not sock:
                return

    def _flush_writes(self) -> None:
        dirty, self._dirty = self._dirty, []
        for s in dirty:
            s.dirty = False
            client = s.client
            sock = client.socket()
            if sock is None or s.write_watched or s.state is _State.CLOSED:
                continue
            try:
                client.loop_write()
                if client.socket() is sock and client.want_write():
                    self._selector.modify(sock, _R | _W, s)  # kernel buffer full: wait
                    s.write_watched = True
            except Exception as e:
                self._internal_error(s, "write", e)

    def _drain_wake(self) -> None:
        with contextlib.suppress(OSError):
            while self._wake_r.recv(4096):
                pass
        # Only now: a call queued while the flag was still set runs in this iteration.
        self._wake_pending = False

    def _run_ready(self) -> None:
        for _ in range(len(self._ready)):
            fn = self._ready.popleft()
            self._guard_call(fn, "call_soon_threadsafe")

    def _misc(self, now: float) -> None:
        for s, started in list(self._handshakes.items()):
            if now - started < HANDSHAKE_TIMEOUT_S:
                break  # in start order: the rest are younger
            log.debug("%s: no CONNACK after %.0f s, retrying", s.client_id, now - started)
            self._abort_handshake(s)
        for s in list(self._sessions.values()):
            if s.state is _State.CONNECTED:
                try:
                    s.client.loop_misc()
                except Exception as e:
                    self._internal_error(s, "misc", e)

    # -- connecting ----------------------------------------------------------------------

    def _start_connects(self, now: float) -> None:
        budget = min(self._batch, self._max_handshakes - len(self._handshakes))
        while budget > 0 and self._queue:
            s = self._queue.popleft()
            if s.state is _State.QUEUED:
                self._start_connect(s, now)
                budget -= 1

    def _start_connect(self, s: _Session, now: float) -> None:
        sock: _MeteredSocket | None = None
        try:
            family, addr = self._address()
            sock = _MeteredSocket(family, socket.SOCK_STREAM)
            sock.counters, sock.drained = self._counters, False
            sock.setblocking(False)
            if family in (socket.AF_INET, socket.AF_INET6):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            err = sock.connect_ex(addr)
            if err not in (0, errno.EINPROGRESS, errno.EAGAIN):
                raise OSError(err, errno.errorcode.get(err, str(err)))
            self._selector.register(sock, _W, s)
        except OSError as e:
            if sock is not None:
                sock.close()
            log.debug("%s: connect failed: %s", s.client_id, e)
            self._tcp_failed(s)
            return
        s.tcp_sock, s.state = sock, _State.TCP
        self._handshakes[s] = now

    def _address(self) -> tuple[socket.AddressFamily, Any]:
        if not self._addrs:  # blocks once, for a name; an IP address resolves at once
            info = socket.getaddrinfo(self._host, self._port, type=socket.SOCK_STREAM)
            self._addrs = [(family, addr) for family, _t, _p, _c, addr in info]
        return self._addrs[self._addr_i % len(self._addrs)]

    def _tcp_failed(self, s: _Session) -> None:
        self._addr_i += 1  # "localhost" may resolve to ::1 first, the broker be on 127.0.0.1
        self._connect_failed(s)

    def _tcp_connected(self, s: _Session) -> None:
        sock = s.tcp_sock
        assert sock is not None
        s.tcp_sock = None
        self._selector.unregister(sock)
        err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            sock.close()
            log.debug("%s: connect failed: %s", s.client_id, errno.errorcode.get(err, err))
            self._tcp_failed(s)
            return
        s.state = _State.HANDSHAKE
        s.client.next_sock = sock
        s.client.reconnect()  # takes the socket (on_socket_open) and queues CONNECT

    def _abort_handshake(self, s: _Session) -> None:
        if s.tcp_sock is not None:  # SYN unanswered
            self._drop_tcp_sock(s)
            self._tcp_failed(s)
            return
        sock = s.client.socket()
        if isinstance(sock, socket.socket):  # shut down, then let paho see the EOF
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            self._on_io(s, sock, _R)
        if s.state is _State.HANDSHAKE:  # paho did not notice: give up on this socket anyway
            self._connect_failed(s)

    def _drop_tcp_sock(self, s: _Session) -> None:
        sock, s.tcp_sock = s.tcp_sock, None
        if sock is not None:
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(sock)
            sock.close()

    def _connect_failed(self, s: _Session) -> None:
        self._counters.connect_failures += 1
        self._retry_later(s)

    def _retry_later(self, s: _Session) -> None:
        self._handshakes.pop(s, None)
        if s.state in _FINAL:
            return
        s.attempts += 1
        cap = min(self._max_s, self._min_s * 2.0 ** min(s.attempts, 32))
        self._set_state(s, _State.BACKOFF)
        s.retry = self.call_later(self._rng.uniform(self._min_s, cap), lambda: self._requeue(s))

    def _requeue(self, s: _Session) -> None:
        s.retry = None
        if s.state is _State.BACKOFF:
            s.state = _State.QUEUED
            self._queue.append(s)

    def _set_state(self, s: _Session, state: _State) -> None:
        if s.state is _State.CONNECTED and state is not _State.CONNECTED:
            self._connected -= 1
            self._counters.disconnects += 1
        elif state is _State.CONNECTED and s.state is not _State.CONNECTED:
            self._connected += 1
            self._counters.connects += 1
        s.state = state

    # -- paho callbacks (userdata is the session) ----------------------------------------

    def _on_socket_open(self, client: Any, s: _Session, sock: Any) -> None:
        s.write_watched = False
        self._selector.register(sock, _R, s)

    def _on_socket_close(self, client: Any, s: _Session, sock: Any) -> None:
        s.write_watched = False
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(sock)

    def _on_register_write(self, client: Any, s: _Session, sock: Any) -> None:
        if not s.dirty:
            s.dirty = True
            self._dirty.append(s)

    def _on_unregister_write(self, client: Any, s: _Session, sock: Any) -> None:
        if s.write_watched:
            s.write_watched = False
            with contextlib.suppress(KeyError, ValueError):
                self._selector.modify(sock, _R, s)

    def _on_connack(self, client: Any, s: _Session, flags: Any, reason: Any, props: Any) -> None:
        if s.state is not _State.HANDSHAKE:
            return
        if reason.is_failure:  # paho closes the socket next: _on_paho_disconnect retries
            self._note_error(s, "connack", f"broker refused the connection: {reason}")
            return
        self._handshakes.pop(s, None)
        s.attempts = 0
        self._set_state(s, _State.CONNECTED)
        self._guard_session_call(s, "on_connect", s.on_connect)

    def _on_paho_disconnect(
        self, client: Any, s: _Session, flags: Any, reason: Any, props: Any
    ) -> None:
        was = s.state
        if was in _FINAL:
            self._set_state(s, _State.CLOSED)
            return
        if was is _State.HANDSHAKE:
            self._connect_failed(s)
        elif was is _State.CONNECTED:
            log.debug("%s: connection lost: %s", s.client_id, reason)
            self._retry_later(s)
            if s.on_disconnect is not None:
                self._guard_session_call(s, "on_disconnect", s.on_disconnect)

    def _on_message(self, client: Any, s: _Session, msg: mqtt.MQTTMessage) -> None:
        if s.state is not _State.CONNECTED:
            return
        self._counters.messages_in += 1
        payload = msg.payload  # bytes in practice (struct.unpack); bytearray is typed
        try:
            s.on_message(msg.topic, payload if isinstance(payload, bytes) else bytes(payload))
        except Exception:
            self._callback_failed(s, "on_message")

    def _on_publish(self, client: Any, s: _Session, mid: int, reason: Any, props: Any) -> None:
        self._counters.messages_out += 1
        if s.on_publish is not None:
            try:
                s.on_publish(mid)
            except Exception:
                self._callback_failed(s, "on_publish")

    # -- client operations (called through ClientHandle) ---------------------------------

    def _publish(self, s: _Session, topic: str, payload: bytes, qos: int, retain: bool) -> bool:
        self._check_thread()
        if s.state in _FINAL or (qos == 0 and s.state is not _State.CONNECTED):
            self._counters.publish_dropped += 1
            return False
        info = s.client.publish(topic, payload, qos, retain)
        if info.rc == MQTTErrorCode.MQTT_ERR_QUEUE_SIZE:
            self._counters.publish_dropped += 1
            return False
        return True

    def _close_session(self, s: _Session) -> None:
        if s.state in _FINAL:
            return
        self._forget(s)
        self._set_state(s, _State.CLOSING)
        if s.client.socket() is None:
            self._set_state(s, _State.CLOSED)
        else:
            s.client.disconnect()  # written at the end of this iteration; paho then closes

    def _kill_session(self, s: _Session) -> None:
        if s.state in _FINAL:
            return
        self._forget(s)
        self._set_state(s, _State.CLOSED)
        client = s.client
        for name in (
            "on_connect",
            "on_disconnect",
            "on_message",
            "on_publish",
            "on_socket_open",
            "on_socket_close",
            "on_socket_register_write",
            "on_socket_unregister_write",
        ):
            setattr(client, name, None)
        sock = client.socket()
        if isinstance(sock, socket.socket):
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(sock)
            with contextlib.suppress(OSError):  # linger 0: close sends RST, not FIN
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()

    def _forget(self, s: _Session) -> None:
        """Take a closing client out of every table that could revive it."""
        self._sessions.pop(s.client_id, None)
        self._handshakes.pop(s, None)
        if s.retry is not None:
            s.retry.cancel()
            s.retry = None
        self._drop_tcp_sock(s)

    # -- timers --------------------------------------------------------------------------

    def _period(self, timer: Timer) -> float:
        assert timer.interval_s is not None
        extra = self._rng.uniform(0.0, timer.jitter_s) if timer.jitter_s else 0.0
        return timer.interval_s + extra

    def _push(self, when: float, timer: Timer) -> None:
        timer.scheduled = True
        heapq.heappush(self._timers, (when, next(self._seq), timer))

    def _run_timers(self, now: float) -> None:
        heap = self._timers
        due: list[tuple[float, int, Timer]] = []
        while heap and heap[0][0] <= now:
            due.append(heapq.heappop(heap))
        for when, _seq, timer in due:
            timer.scheduled = False
            if timer.cancelled:
                self._dead_timers -= 1
                continue
            self._guard_call(timer.fn, "timer")
            if timer.interval_s is not None and not timer.cancelled:
                nxt = when + self._period(timer)
                self._push(nxt if nxt > now else now + timer.interval_s, timer)

    def _timer_cancelled(self) -> None:
        self._dead_timers += 1
        if self._dead_timers > 1024 and 2 * self._dead_timers > len(self._timers):
            self._timers = [e for e in self._timers if not e[2].cancelled]
            heapq.heapify(self._timers)
            self._dead_timers = 0

    # -- errors --------------------------------------------------------------------------

    def _guard_call(self, fn: Callable[[], None], kind: str) -> None:
        try:
            fn()
        except Exception:
            self._counters.callback_errors += 1
            key = (kind, getattr(fn, "__qualname__", repr(fn)))
            n = self._errors[key] = self._errors.get(key, 0) + 1
            if n == 1:
                log.exception("%s %s raised (logged once, counted in stats)", kind, key[1])

    def _guard_session_call(self, s: _Session, kind: str, fn: Callable[[], None]) -> None:
        try:
            fn()
        except Exception:
            self._callback_failed(s, kind)

    def _callback_failed(self, s: _Session, kind: str) -> None:
        self._counters.callback_errors += 1
        if self._count_error(s, kind) == 1:
            log.exception("%s: %s raised (logged once, counted in stats)", s.client_id, kind)

    def _note_error(self, s: _Session, kind: str, what: str) -> None:
        if self._count_error(s, kind) == 1:
            log.warning("%s: %s (logged once per client)", s.client_id, what)

    def _internal_error(self, s: _Session, kind: str, e: Exception) -> None:
        if self._count_error(s, kind) == 1:
            log.error("%s: %s failed (logged once per client)", s.client_id, kind, exc_info=e)

    @staticmethod
    def _count_error(s: _Session, kind: str) -> int:
        if s.errors is None:
            s.errors = {}
        n = s.errors[kind] = s.errors.get(kind, 0) + 1
        return n

    # -- threads and teardown ------------------------------------------------------------

    def _check_thread(self) -> None:
        tid = self._thread_id
        if tid is not None and tid != threading.get_ident():
            raise MqttLoopError("call this on the loop thread (see call_soon_threadsafe)")

    def _teardown(self) -> None:
        for s in list(self._sessions.values()):
            self._close_session(s)
        self._flush_writes()
        deadline = time.monotonic() + CLOSE_FLUSH_S
        while len(self._selector.get_map()) > 1 and time.monotonic() < deadline:
            for key, mask in self._selector.select(0.05):
                if key.data is not None:
                    self._on_io(key.data, key.fileobj, mask)  # type: ignore[arg-type]
            self._flush_writes()
        for key in list(self._selector.get_map().values()):
            self._selector.unregister(key.fileobj)
            key.fileobj.close()  # type: ignore[union-attr]
        self._selector.close()
        self._wake_w.close()
        self._timers.clear()
        self._ready.clear()
        self._closed = True
