"""What the selector loop (simulator/mqttloop.py) keeps for each MQTT client.

A client's :class:`Session` moves through :class:`State`; its paho client is handed a
socket the loop connected without blocking (:class:`PahoClient`), and that socket counts
its bytes into the loop's :class:`Counters` (:class:`MeteredSocket`).
"""

from __future__ import annotations

import enum
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import paho.mqtt.client as mqtt

from simulator.mqtttimers import Timer

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

__all__ = [
    "FINAL",
    "Counters",
    "LoopStats",
    "MeteredSocket",
    "MqttLoopError",
    "PahoClient",
    "Session",
    "State",
    "Will",
]


class State(enum.Enum):
    """Where a client is: QUEUED -> TCP -> HANDSHAKE -> CONNECTED -> BACKOFF -> QUEUED ..."""

    QUEUED = "queued"  # waiting for a connect slot
    TCP = "tcp"  # non-blocking TCP connect in progress
    HANDSHAKE = "handshake"  # CONNECT sent, waiting for CONNACK
    CONNECTED = "connected"
    BACKOFF = "backoff"  # waiting to retry
    CLOSING = "closing"  # DISCONNECT queued
    CLOSED = "closed"  # closed or killed: never reconnects


FINAL = frozenset({State.CLOSING, State.CLOSED})


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


class Counters:
    """The loop's running totals (see :class:`LoopStats`); written on the loop thread."""

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

    def snapshot(self, clients: int, connected: int) -> LoopStats:
        return LoopStats(
            clients=clients,
            connected=connected,
            connects=self.connects,
            disconnects=self.disconnects,
            messages_in=self.messages_in,
            messages_out=self.messages_out,
            bytes_in=self.bytes_in,
            bytes_out=self.bytes_out,
            publish_dropped=self.publish_dropped,
            connect_failures=self.connect_failures,
            callback_errors=self.callback_errors,
        )


_RECV = socket.socket.recv
_SEND = socket.socket.send


class MeteredSocket(socket.socket):
    """A socket that counts its bytes and notes when a read would block."""

    __slots__ = ("counters", "drained")
    counters: Counters
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


class PahoClient(mqtt.Client):
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


class Session:
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
        client: PahoClient,
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
        self.state = State.QUEUED
        self.attempts = 0  # failed attempts since the last CONNACK
        self.tcp_sock: MeteredSocket | None = None  # ours until paho takes it
        self.retry: Timer | None = None
        self.dirty = False  # in the loop's write list
        self.write_watched = False  # registered for EVENT_WRITE
        self.errors: dict[str, int] | None = None  # callback kind -> exceptions
