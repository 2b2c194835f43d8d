"""A subscribe-only MQTT 3.1.1 client for the hub's ingest processes (no paho).

Under paho an ingest process spends about as much CPU on the client's generic machinery
(select, small reads, a PUBACK and a wake-up per message, locks) as on decoding and
storing the message (bench/ingest.py). An ingest process needs far less: it only
subscribes. :class:`FastSubscriber` reads the broker's socket in large
blocks, parses every complete packet of the block, hands the batch of
``(topic, payload)`` to a callback, and only after the callback returned sends the
PUBACKs of the whole batch in one write. The callback commits the batch to SQL, so
nothing the broker sees acknowledged can be lost: a crash before the commit leaves the
messages unacknowledged in the broker's persistent session (clean session off), and
it redelivers them (DUP set) to the next connection with the same client id; the
hub's (device, sequence) dedup absorbs the copies. A batch is what one drain of the
socket holds, at most ``BATCH_MAX`` messages (and the broker's in-flight window, if
it holds back more unacknowledged messages than that).

:class:`hub.transport.inbound.IngestSubscriber` wires it to the hub's writer: the same
decode and validation as the hub's link (``decode_device_message``), one committed write
per batch.

Bad input never stops the loop: a malformed or oversize packet is counted and logged,
the connection dropped and made again (with backoff); a callback that raises is
counted and logged and its batch left unacknowledged for redelivery.

Exceptions::

    FastSubError
     ├── ConnectRefused(code)       the broker's CONNACK refused the connection
     ├── PacketError(reason)        a packet that breaks MQTT 3.1.1 or our size bound
     └── HandlerFailed              the batch handler raised (the loop reconnects)
"""

from __future__ import annotations

import logging
import random
import selectors
import socket
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence

from hub.transport.broker import MAX_PACKET_BYTES, BrokerAddress, TlsIdentity

log = logging.getLogger(__name__)

READ_BYTES = 256 * 2**10  # bytes asked of the kernel per recv()
BATCH_MAX = 2000  # messages handed to the callback at most at once
KEEPALIVE_S = 30  # seconds; MQTT keepalive sent in CONNECT
CONNECT_TIMEOUT_S = 10.0  # seconds for TCP/TLS connect + CONNACK + SUBACK
RECONNECT_MIN_S = 0.2  # seconds; first reconnect delay (doubles, jittered)
RECONNECT_MAX_S = 10.0  # seconds; longest reconnect delay
STOP_POLL_S = 0.1  # seconds; how often an idle loop looks at stop()
MAX_TOPIC_FILTERS = 64  # filters in one SUBSCRIBE

Batch = list[tuple[str, bytes]]
BatchHandler = Callable[[Batch], None]

# Fixed packets (MQTT 3.1.1 §3)
_PINGREQ = b"\xc0\x00"
_DISCONNECT = b"\xe0\x00"
_PUBLISH, _PUBREL, _SUBACK, _CONNACK, _PINGRESP, _UNSUBACK = 3, 6, 9, 2, 13, 11
RETAINED_KIND = "/state"  # the one device topic whose retained message the hub reads
CONNACK_CODES = {
    1: "unacceptable protocol version",
    2: "client identifier rejected",
    3: "server unavailable",
    4: "bad user name or password",
    5: "not authorised",
}


class FastSubError(Exception):
    """Root of this module's errors."""


class ConnectRefused(FastSubError):
    """The broker answered CONNECT with a refusal.

    Attributes:
        code: the CONNACK return code (1..5, or another byte a broker sent).
    """

    def __init__(self, code: int) -> None:
        super().__init__(f"broker refused the connection: {CONNACK_CODES.get(code, code)}")
        self.code = code


class HandlerFailed(FastSubError):
    """The batch handler raised: the batch stays unacknowledged (internal to the loop)."""


class PacketError(FastSubError):
    """A packet that breaks MQTT 3.1.1 or the size bound.

    Attributes:
        reason: ``malformed_packet`` or ``oversize_packet``.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


def _utf8(text: str) -> bytes:
    data = text.encode()
    return len(data).to_bytes(2, "big") + data


def _remaining_length(n: int) -> bytes:
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def connect_packet(
    client_id: str, keepalive_s: int, username: str | None = None, password: str | None = None
) -> bytes:
    """CONNECT, MQTT 3.1.1, clean session off (the broker keeps our queue)."""
    flags = 0x00  # clean session off
    payload = _utf8(client_id)
    if username is not None:
        flags |= 0x80
        payload += _utf8(username)
        if password is not None:
            flags |= 0x40
            payload += _utf8(password)
    var = _utf8("MQTT") + bytes([4, flags]) + keepalive_s.to_bytes(2, "big")
    body = var + payload
    return b"\x10" + _remaining_length(len(body)) + body


def subscribe_packet(packet_id: int, filters: Sequence[tuple[str, int]]) -> bytes:
    """SUBSCRIBE of ``(filter, qos)`` pairs (``$share/group/...`` filters included)."""
    body = packet_id.to_bytes(2, "big")
    for topic_filter, qos in filters:
        body += _utf8(topic_filter) + bytes([qos])
    return b"\x82" + _remaining_length(len(body)) + body


class FastSubscriber:
    """Subscribe, read in blocks, hand batches to ``on_batch``, then acknowledge them.

    Args:
        address: the broker (``mqtts`` needs ``tls``).
        client_id: the persistent session's id (clean session off).
        subscriptions: ``(filter, qos)``; qos 1 for anything that matters.
        on_batch: called on the loop's thread with each batch of ``(topic, payload)``
            in the order received; the batch is acknowledged after it returns. Topics
            that are not UTF-8 reach it with U+FFFD in place of the bad bytes.
        tls: CA, certificate and key for ``mqtts``.
        username, password: optional MQTT credentials.
        keepalive_s: the MQTT keepalive; a PINGREQ goes out when nothing was sent for
            that long, and a broker silent for 1.5 keepalives counts as lost.
        max_packet_bytes: bigger packets are refused (the connection is made again).
    """

    def __init__(
        self,
        address: BrokerAddress,
        client_id: str,
        subscriptions: Sequence[tuple[str, int]],
        on_batch: BatchHandler,
        *,
        tls: TlsIdentity | None = None,
        username: str | None = None,
        password: str | None = None,
        keepalive_s: int = KEEPALIVE_S,
        max_packet_bytes: int = MAX_PACKET_BYTES,
    ) -> None:
        if address.tls and tls is None:
            raise ValueError(f"{address.url} needs a TLS identity (CA, cert, key)")
        if not 0 < len(subscriptions) <= MAX_TOPIC_FILTERS:
            raise ValueError(f"1..{MAX_TOPIC_FILTERS} subscriptions, got {len(subscriptions)}")
        if not 0 < keepalive_s <= 65535:
            raise ValueError("keepalive_s must be within 1..65535")
        self.address = address
        self.client_id = client_id
        self.subscriptions = list(subscriptions)
        self.on_batch = on_batch
        self.keepalive_s = keepalive_s
        self.max_packet_bytes = max_packet_bytes
        self._connect = connect_packet(client_id, keepalive_s, username, password)
        self._ssl: ssl.SSLContext | None = None
        if tls is not None and address.tls:
            self._ssl = ssl.create_default_context(cafile=str(tls.ca))
            self._ssl.load_cert_chain(str(tls.cert), str(tls.key))
        self.counts: Counter[str] = Counter()  # messages, batches, connects, pings, ...
        self.dropped: Counter[str] = Counter()  # malformed_packet, callback_error, ...
        self.connected = threading.Event()
        self.refused: ConnectRefused | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None
        self._packet_id = 0
        self._connacked = False
        self._last_sent = 0.0  # monotonic seconds of the last write to the broker

    # ------------------------------------------------------------- lifecycle

    def start(self, timeout: float = CONNECT_TIMEOUT_S) -> None:
        """Run the loop on a thread; return once subscribed.

        Raises:
            ConnectRefused: the broker refused the first CONNECT.
            ConnectionError: not subscribed within ``timeout`` seconds.
        """
        self._stop.clear()
        self._thread = threading.Thread(target=self.run, name="fastsub", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.connected.wait(0.02):
            if self.refused is not None:
                self.stop()
                raise self.refused
            if time.monotonic() > deadline or not self._thread.is_alive():
                self.stop()
                raise ConnectionError(f"could not subscribe at {self.address.url}")

    def stop(self) -> None:
        """Stop the loop (after the batch in hand is handled and acknowledged)."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(30)
        self._thread = None

    def run(self) -> None:
        """Connect, read, reconnect with backoff until :meth:`stop`."""
        delay = RECONNECT_MIN_S
        while not self._stop.is_set():
            handler_failed = False
            try:
                self._session()
            except ConnectRefused as e:
                self.refused = e
                log.error("fastsub %s: %s", self.client_id, e)
            except PacketError as e:
                self._count_drop(e.reason, str(e))
            except HandlerFailed:
                handler_failed = True  # counted and logged; the broker redelivers the batch
            except (OSError, EOFError) as e:
                if not self._stop.is_set():
                    log.warning("fastsub %s: connection lost (%s)", self.client_id, e)
            except Exception:  # never let one bad packet or callback end the loop
                self.dropped["internal_error"] += 1
                log.exception("fastsub %s: unexpected error", self.client_id)
            finally:
                self._close()
            if self._stop.is_set():
                break
            self.counts["reconnects"] += 1
            if self.connected.is_set() and not handler_failed:
                delay = RECONNECT_MIN_S  # it had worked: come back quickly
            self.connected.clear()
            self._stop.wait(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, RECONNECT_MAX_S)
        self.connected.clear()

    # ------------------------------------------------------------- one connection

    def _open(self) -> socket.socket:
        sock = socket.create_connection(
            (self.address.host, self.address.port), timeout=CONNECT_TIMEOUT_S
        )
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self._ssl is not None:
            sock = self._ssl.wrap_socket(sock, server_hostname=self.address.host)
        return sock

    def _session(self) -> None:
        sock = self._sock = self._open()
        sock.setblocking(False)  # reads drain the kernel; _send waits when it must
        self._send(sock, self._connect)
        self._connacked = False
        self._read_loop(sock)

    def _read_loop(self, sock: socket.socket) -> None:
        sel = selectors.DefaultSelector()
        sel.register(sock, selectors.EVENT_READ)
        buf = b""
        batch: Batch = []
        acks: list[bytes] = []
        now = time.monotonic()
        self._last_sent = last_heard = now
        connack_by = now + CONNECT_TIMEOUT_S
        try:
            while not self._stop.is_set():
                try:
                    data = sock.recv(READ_BYTES)
                except (BlockingIOError, ssl.SSLWantReadError):
                    data = None
                if data == b"":
                    raise EOFError("the broker closed the connection")
                if data:
                    last_heard = time.monotonic()
                    buf = buf + data if buf else data
                    buf = buf[self._parse(sock, buf, batch, acks) :]
                    if len(batch) < BATCH_MAX:
                        continue  # read on while the kernel has more
                if batch or acks:
                    self._deliver(sock, batch, acks)
                    batch, acks = [], []
                now = time.monotonic()
                if not self.connected.is_set() and now > connack_by:
                    raise TimeoutError("no CONNACK and SUBACK from the broker in time")
                if now - last_heard > 1.5 * self.keepalive_s:
                    raise TimeoutError(f"broker silent for {now - last_heard:.1f} s")
                if now - self._last_sent >= self.keepalive_s:
                    self._send(sock, _PINGREQ)
                    self.counts["pings"] += 1
                if data is None:  # else more may wait: in the kernel or (TLS) decrypted
                    wait = min(STOP_POLL_S, self._last_sent + self.keepalive_s - now)
                    sel.select(max(0.0, wait))
            if batch or acks:
                self._deliver(sock, batch, acks)
            if self._connacked:
                self._send(sock, _DISCONNECT)
        finally:
            sel.close()

    def _deliver(self, sock: socket.socket, batch: Batch, acks: list[bytes]) -> None:
        """Hand the batch over; acknowledge it only once the callback returned."""
        if batch:
            try:
                self.on_batch(batch)
            except Exception as e:
                self.dropped["callback_error"] += 1
                log.exception("fastsub %s: the batch handler failed", self.client_id)
                raise HandlerFailed(len(batch)) from e  # unacknowledged: redelivered
            self.counts["batches"] += 1
            self.counts["messages"] += len(batch)
        if acks:
            self._send(sock, b"".join(acks))

    def _parse(self, sock: socket.socket, buf: bytes, batch: Batch, acks: list[bytes]) -> int:
        """Take every complete packet at the start of ``buf``; the bytes consumed.

        PUBLISH goes to ``batch`` and its acknowledgement to ``acks``; the rest is
        handled here.

        Raises:
            PacketError: a packet that breaks MQTT 3.1.1 or ``max_packet_bytes``.
            ConnectRefused: a CONNACK with a refusal.
        """
        pos, end, limit = 0, len(buf), self.max_packet_bytes
        while pos + 2 <= end:
            header, length, p = buf[pos], buf[pos + 1], pos + 2
            if length & 0x80:
                length &= 0x7F
                shift = 7
                while True:
                    if p >= end:
                        return pos  # the length itself is still incomplete
                    digit = buf[p]
                    p += 1
                    length |= (digit & 0x7F) << shift
                    if not digit & 0x80:
                        break
                    shift += 7
                    if shift > 21:
                        raise PacketError("malformed_packet", "remaining length over 4 bytes")
            if length > limit:
                raise PacketError("oversize_packet", f"a packet of {length} bytes > {limit}")
            stop = p + length
            if stop > end:
                return pos
            if header >> 4 == _PUBLISH:
                topic_end = p + 2 + ((buf[p] << 8) | buf[p + 1]) if length >= 2 else end + 1
                qos = (header >> 1) & 3
                payload_at = topic_end + 2 if qos else topic_end
                if payload_at > stop or qos == 3:
                    raise PacketError("malformed_packet", f"PUBLISH header {header:#x}")
                topic = buf[p + 2 : topic_end].decode("utf-8", "replace")
                if header & 0x01 and not topic.endswith(RETAINED_KIND):
                    # A retained report would come back at every reconnect (issue 11 item 7):
                    # acknowledged, counted, never stored.
                    self._count_drop("retained", topic)
                else:
                    batch.append((topic, buf[payload_at:stop]))
                if qos == 1:
                    acks.append(b"\x40\x02" + buf[topic_end:payload_at])  # PUBACK
                elif qos == 2:
                    acks.append(b"\x50\x02" + buf[topic_end:payload_at])  # PUBREC
                if header & 0x08:
                    self.counts["redelivered"] += 1
            else:
                self._control(sock, header, buf[p:stop], acks)
            pos = stop
        return pos

    def _control(self, sock: socket.socket, header: int, body: bytes, acks: list[bytes]) -> None:
        kind = header >> 4
        if kind == _CONNACK and len(body) == 2 and not self._connacked:
            if body[1]:
                raise ConnectRefused(body[1])
            self._connacked = True
            self.refused = None
            self.counts["connects"] += 1
            self._packet_id = self._packet_id % 65535 + 1
            self._send(sock, subscribe_packet(self._packet_id, self.subscriptions))
        elif kind == _SUBACK and len(body) == 2 + len(self.subscriptions):
            refused = [
                f for (f, _q), code in zip(self.subscriptions, body[2:], strict=True) if code & 0x80
            ]
            if refused:
                self._count_drop("subscription_refused", f"broker refused {refused}")
            self.connected.set()
            log.info("fastsub %s: subscribed at %s", self.client_id, self.address.url)
        elif kind == _PUBREL and len(body) == 2:
            acks.append(b"\x70\x02" + body)  # PUBCOMP (QoS 2, after our PUBREC)
        elif kind == _PINGRESP and not body:
            self.counts["pongs"] += 1
        elif kind == _UNSUBACK and len(body) == 2:
            pass
        else:
            raise PacketError(
                "malformed_packet", f"unexpected packet {header:#x}, {len(body)} bytes"
            )

    def _send(self, sock: socket.socket, data: bytes) -> None:
        """Write all of ``data`` on the non-blocking socket (waiting when the kernel is full)."""
        view = memoryview(data)
        deadline = time.monotonic() + CONNECT_TIMEOUT_S
        while view:
            try:
                view = view[sock.send(view) :]
            except (BlockingIOError, ssl.SSLWantWriteError):
                if time.monotonic() > deadline:
                    raise TimeoutError("the broker does not read") from None
                with selectors.DefaultSelector() as sel:
                    sel.register(sock, selectors.EVENT_WRITE)
                    sel.select(STOP_POLL_S)
        self._last_sent = time.monotonic()

    def _close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()

    def _count_drop(self, reason: str, detail: str) -> None:
        if self.dropped[reason] == 0:
            log.warning("fastsub %s: %s (further ones are counted)", self.client_id, detail)
        self.dropped[reason] += 1
