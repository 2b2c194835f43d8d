"""How the selector loop (simulator/mqttloop.py) connects, feeds and drops its clients.

Each client moves QUEUED -> TCP -> HANDSHAKE -> CONNECTED -> BACKOFF -> QUEUED ...
(simulator/mqttclient.py: :class:`State`). :class:`Connections` owns that cycle for every
client of one loop:

- TCP connects that never block: the socket is connected here and handed to paho when it
  is writable. At most ``connect_batch`` attempts start per iteration and at most
  ``max_handshakes`` (TCP connect to CONNACK) are in flight at once.
- Reconnect forever, with jittered exponential backoff.
- Reads until the socket would block; writes coalesced per iteration, the socket watched
  for writability only while the kernel's buffer is full.
- paho's callbacks (userdata is the session) and the client operations behind
  :class:`simulator.mqttloop.ClientHandle`: publish, close (DISCONNECT), kill (RST).

Everything here runs on the loop thread.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import random
import selectors
import socket
import struct
from collections import deque
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion

from simulator.mqttclient import (
    FINAL,
    Counters,
    MeteredSocket,
    PahoClient,
    Session,
    State,
    Will,
)
from simulator.mqttguard import CallbackGuard
from simulator.mqtttimers import TimerHeap

__all__ = ["Connections"]

log = logging.getLogger(__name__)

MAX_READS_PER_WAKE = 64  # packets read from one socket per readiness event (fairness)

_R, _W = selectors.EVENT_READ, selectors.EVENT_WRITE


class Connections:
    """Every client of one loop, and the state of its connection.

    Args:
        host, port, keepalive: the broker, and the MQTT keepalive (seconds).
        selector: the loop's selector; sockets are registered with their session as data.
        timers: the loop's timers (backoff waits).
        counters: the loop's counters.
        guard: counts and logs what callbacks raise.
        rng: draws the backoff (the loop's seeded generator).
        connect_batch, max_handshakes, reconnect_min_s, reconnect_max_s,
        max_queued_messages, handshake_timeout_s: see :class:`simulator.mqttloop.MqttLoop`.
    """

    def __init__(
        self,
        host: str,
        port: int,
        keepalive: int,
        *,
        selector: selectors.BaseSelector,
        timers: TimerHeap,
        counters: Counters,
        guard: CallbackGuard,
        rng: random.Random,
        connect_batch: int,
        max_handshakes: int,
        reconnect_min_s: float,
        reconnect_max_s: float,
        max_queued_messages: int,
        handshake_timeout_s: float,
    ) -> None:
        self._host, self._port, self._keepalive = host, port, keepalive
        self._selector = selector
        self._timers = timers
        self._counters = counters
        self._guard = guard
        self._rng = rng
        self._batch = connect_batch
        self._max_handshakes = max_handshakes
        self._min_s, self._max_s = reconnect_min_s, reconnect_max_s
        self._max_queued = max_queued_messages
        self._handshake_timeout_s = handshake_timeout_s
        self._addrs: list[tuple[socket.AddressFamily, Any]] = []  # resolved at first use
        self._addr_i = 0
        self.sessions: dict[str, Session] = {}  # live clients by id
        self._queue: deque[Session] = deque()  # waiting to connect
        self._handshakes: dict[Session, float] = {}  # session -> monotonic start
        self._dirty: list[Session] = []  # paho queued packets: write at iteration end
        self.connected = 0  # clients with a CONNACKed connection now

    @property
    def busy(self) -> bool:
        """Work is waiting now: packets to write, or a client to connect with a free slot."""
        can_connect = self._queue and len(self._handshakes) < self._max_handshakes
        return bool(self._dirty or can_connect)

    def add(
        self,
        client_id: str,
        *,
        on_connect: Callable[[], None],
        on_message: Callable[[str, bytes], None],
        on_disconnect: Callable[[], None] | None,
        will: Will | None,
        clean_session: bool,
        on_publish: Callable[[int], None] | None,
    ) -> Session:
        """A new client, queued to connect (see ``MqttLoop.add_client``)."""

        client = PahoClient(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=clean_session,
            protocol=MQTTProtocolVersion.MQTTv311,
        )
        session = Session(client_id, client, on_connect, on_message, on_disconnect)
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
        self.sessions[client_id] = session
        self._queue.append(session)
        return session

    def on_io(self, s: Session, sock: socket.socket, mask: int) -> None:
        """A client's socket is ready: finish its TCP connect, or read, or write."""
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
            self._guard.internal(s, "io", e)

    @staticmethod
    def _read(client: PahoClient, sock: MeteredSocket) -> None:
        # paho's loop_read() reads one packet when nothing is in flight: read on until the
        # socket would block, so a burst costs one wake-up, not one per packet.
        for _ in range(MAX_READS_PER_WAKE):
            sock.drained = False
            client.loop_read()
            if sock.drained or client.socket() is not sock:
                return

    def flush_writes(self) -> None:
        """Write what paho queued this iteration, once per client."""
        dirty, self._dirty = self._dirty, []
        for s in dirty:
            s.dirty = False
            client = s.client
            sock = client.socket()
            if sock is None or s.write_watched or s.state is State.CLOSED:
                continue
            try:
                client.loop_write()
                if client.socket() is sock and client.want_write():
                    self._selector.modify(sock, _R | _W, s)  # kernel buffer full: wait
                    s.write_watched = True
            except Exception as e:
                self._guard.internal(s, "write", e)

    def misc(self, now: float) -> None:
        """Retry handshakes that took too long; keepalive for connected clients."""
        for s, started in list(self._handshakes.items()):
            if now - started < self._handshake_timeout_s:
                break  # in start order: the rest are younger
            log.debug("%s: no CONNACK after %.0f s, retrying", s.client_id, now - started)
            self._abort_handshake(s)
        for s in list(self.sessions.values()):
            if s.state is State.CONNECTED:
                try:
                    s.client.loop_misc()
                except Exception as e:
                    self._guard.internal(s, "misc", e)

    # -- connecting ----------------------------------------------------------------------

    def start_connects(self, now: float) -> None:
        """Start the queued connects that the batch and handshake limits allow."""
        budget = min(self._batch, self._max_handshakes - len(self._handshakes))
        while budget > 0 and self._queue:
            s = self._queue.popleft()
            if s.state is State.QUEUED:
                self._start_connect(s, now)
                budget -= 1

    def _start_connect(self, s: Session, now: float) -> None:
        sock: MeteredSocket | None = None
        try:
            family, addr = self._address()
            sock = MeteredSocket(family, socket.SOCK_STREAM)
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
        s.tcp_sock, s.state = sock, State.TCP
        self._handshakes[s] = now

    def _address(self) -> tuple[socket.AddressFamily, Any]:
        if not self._addrs:  # blocks once, for a name; an IP address resolves at once
            info = socket.getaddrinfo(self._host, self._port, type=socket.SOCK_STREAM)
            self._addrs = [(family, addr) for family, _t, _p, _c, addr in info]
        return self._addrs[self._addr_i % len(self._addrs)]

    def _tcp_failed(self, s: Session) -> None:
        self._addr_i += 1  # "localhost" may resolve to ::1 first, the broker be on 127.0.0.1
        self._connect_failed(s)

    def _tcp_connected(self, s: Session) -> None:
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
        s.state = State.HANDSHAKE
        s.client.next_sock = sock
        s.client.reconnect()  # takes the socket (on_socket_open) and queues CONNECT

    def _abort_handshake(self, s: Session) -> None:
        if s.tcp_sock is not None:  # SYN unanswered
            self._drop_tcp_sock(s)
            self._tcp_failed(s)
            return
        sock = s.client.socket()
        if isinstance(sock, socket.socket):  # shut down, then let paho see the EOF
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            self.on_io(s, sock, _R)
        if s.state is State.HANDSHAKE:  # paho did not notice: give up on this socket anyway
            self._connect_failed(s)

    def _drop_tcp_sock(self, s: Session) -> None:
        sock, s.tcp_sock = s.tcp_sock, None
        if sock is not None:
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(sock)
            sock.close()

    def _connect_failed(self, s: Session) -> None:
        self._counters.connect_failures += 1
        self._retry_later(s)

    def _retry_later(self, s: Session) -> None:
        self._handshakes.pop(s, None)
        if s.state in FINAL:
            return
        s.attempts += 1
        cap = min(self._max_s, self._min_s * 2.0 ** min(s.attempts, 32))
        self._set_state(s, State.BACKOFF)
        s.retry = self._timers.once(self._rng.uniform(self._min_s, cap), lambda: self._requeue(s))

    def _requeue(self, s: Session) -> None:
        s.retry = None
        if s.state is State.BACKOFF:
            s.state = State.QUEUED
            self._queue.append(s)

    def _set_state(self, s: Session, state: State) -> None:
        if s.state is State.CONNECTED and state is not State.CONNECTED:
            self.connected -= 1
            self._counters.disconnects += 1
        elif state is State.CONNECTED and s.state is not State.CONNECTED:
            self.connected += 1
            self._counters.connects += 1
        s.state = state

    # -- paho callbacks (userdata is the session) ----------------------------------------

    def _on_socket_open(self, client: Any, s: Session, sock: Any) -> None:
        s.write_watched = False
        self._selector.register(sock, _R, s)

    def _on_socket_close(self, client: Any, s: Session, sock: Any) -> None:
        s.write_watched = False
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(sock)

    def _on_register_write(self, client: Any, s: Session, sock: Any) -> None:
        if not s.dirty:
            s.dirty = True
            self._dirty.append(s)

    def _on_unregister_write(self, client: Any, s: Session, sock: Any) -> None:
        if s.write_watched:
            s.write_watched = False
            with contextlib.suppress(KeyError, ValueError):
                self._selector.modify(sock, _R, s)

    def _on_connack(self, client: Any, s: Session, flags: Any, reason: Any, props: Any) -> None:
        if s.state is not State.HANDSHAKE:
            return
        if reason.is_failure:  # paho closes the socket next: _on_paho_disconnect retries
            self._guard.note(s, "connack", f"broker refused the connection: {reason}")
            return
        self._handshakes.pop(s, None)
        s.attempts = 0
        self._set_state(s, State.CONNECTED)
        self._guard.session_call(s, "on_connect", s.on_connect)

    def _on_paho_disconnect(
        self, client: Any, s: Session, flags: Any, reason: Any, props: Any
    ) -> None:
        was = s.state
        if was in FINAL:
            self._set_state(s, State.CLOSED)
            return
        if was is State.HANDSHAKE:
            self._connect_failed(s)
        elif was is State.CONNECTED:
            log.debug("%s: connection lost: %s", s.client_id, reason)
            self._retry_later(s)
            if s.on_disconnect is not None:
                self._guard.session_call(s, "on_disconnect", s.on_disconnect)

    def _on_message(self, client: Any, s: Session, msg: mqtt.MQTTMessage) -> None:
        if s.state is not State.CONNECTED:
            return
        self._counters.messages_in += 1
        payload = msg.payload  # bytes in practice (struct.unpack); bytearray is typed
        try:
            s.on_message(msg.topic, payload if isinstance(payload, bytes) else bytes(payload))
        except Exception:
            self._guard.callback_failed(s, "on_message")

    def _on_publish(self, client: Any, s: Session, mid: int, reason: Any, props: Any) -> None:
        self._counters.messages_out += 1
        if s.on_publish is not None:
            try:
                s.on_publish(mid)
            except Exception:
                self._guard.callback_failed(s, "on_publish")

    # -- client operations (called through ClientHandle) ---------------------------------

    def publish(self, s: Session, topic: str, payload: bytes, qos: int, retain: bool) -> bool:
        """Queue a publish (see ``ClientHandle.publish``); False when it was dropped."""
        if s.state in FINAL or (qos == 0 and s.state is not State.CONNECTED):
            self._counters.publish_dropped += 1
            return False
        info = s.client.publish(topic, payload, qos, retain)
        if info.rc == MQTTErrorCode.MQTT_ERR_QUEUE_SIZE:
            self._counters.publish_dropped += 1
            return False
        return True

    def close(self, s: Session) -> None:
        """DISCONNECT (no Last Will); the client never reconnects."""
        if s.state in FINAL:
            return
        self._forget(s)
        self._set_state(s, State.CLOSING)
        if s.client.socket() is None:
            self._set_state(s, State.CLOSED)
        else:
            s.client.disconnect()  # written at the end of this iteration; paho then closes

    def kill(self, s: Session) -> None:
        """TCP reset, no DISCONNECT (the broker publishes the Last Will); never reconnects."""
        if s.state in FINAL:
            return
        self._forget(s)
        self._set_state(s, State.CLOSED)
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

    def _forget(self, s: Session) -> None:
        """Take a closing client out of every table that could revive it."""
        self.sessions.pop(s.client_id, None)
        self._handshakes.pop(s, None)
        if s.retry is not None:
            s.retry.cancel()
            s.retry = None
        self._drop_tcp_sock(s)
