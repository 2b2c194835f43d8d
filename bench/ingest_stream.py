"""The ingest benchmark's stream: valid telemetry windows, and a publisher fast enough to
refill a broker queue between measured drains (bench/ingest.py).

The publisher is not what is measured: it fills the queues while every consumer is away.
It writes pre-built QoS 1 PUBLISH packets in large blocks with up to ``PUBLISH_WINDOW``
unacknowledged (MQTT 3.1.1 sets no limit on what a client sends), several times as fast
as paho's one-call-per-message publish, so the rounds of a run of ≥ 10 s per side are
not mostly spent publishing.
"""

from __future__ import annotations

import random
import socket
import time

from hub.transport.fastsub import connect_packet

PUBLISH_WINDOW = 5000  # QoS 1 messages in flight at once
PUBLISH_BLOCK = 500  # packets per write
PUBLISH_TIMEOUT_S = 600.0  # seconds for the broker to acknowledge a whole stream
PUBLISHER_ID = "bench-ingest-pub"

Stream = list[tuple[str, bytes]]


def make_stream(devices: int, windows: int, replay: float, seed: int = 1) -> Stream:
    """(topic, payload) of every message, in publish order; replays at random places."""
    from agent.telemetry import InferenceStats
    from shared import protocol

    rng = random.Random(seed)
    out: Stream = []
    # recent windows: the hub refuses ones older than its retention keeps raw (RAW_AGE_S)
    t0 = time.time() - windows * 10.0 - 60.0
    for w in range(windows):
        for d in range(devices):
            stats = InferenceStats(count=50, rows=250, labelled=250, correct=240)
            for _ in range(50):
                stats.latency.record(int(rng.lognormvariate(11.5, 0.3)))  # ~100 µs
            body = {
                "seq": w,
                "start": t0 + w * 10.0,
                "end": t0 + (w + 1) * 10.0,
                "model": "bench",
                "version": 1,
                **stats.summary(),
                "cpu_pct": 3.5,
                "rss_bytes": 60_000_000,
                "spool_dropped": 0,
            }
            device_id = f"bench-{d:05d}"
            payload = protocol.encode("telemetry", body, ts=body["end"])
            out.append((protocol.topic(device_id, "telemetry"), payload))
    n_replay = int(len(out) * replay)
    for topic, payload in rng.sample(out, n_replay):
        out.insert(rng.randrange(len(out)), (topic, payload))
    return out


def _publish_packet(topic: str, payload: bytes, packet_id: int) -> bytes:
    t = topic.encode()
    body = len(t).to_bytes(2, "big") + t + packet_id.to_bytes(2, "big") + payload
    n, length = len(body), bytearray()
    while True:
        n, digit = divmod(n, 128)
        length.append(digit | (0x80 if n else 0))
        if not n:
            break
    return b"\x32" + bytes(length) + body  # PUBLISH, QoS 1


def publish_packets(stream: Stream) -> list[bytes]:
    """The stream as QoS 1 PUBLISH packets (ids 1..65535, reused in order)."""
    return [_publish_packet(t, p, i % 65535 + 1) for i, (t, p) in enumerate(stream)]


def publish(host: str, port: int, packets: list[bytes]) -> float:
    """Publish ``packets`` and wait until the broker acknowledged all; seconds taken.

    Raises:
        RuntimeError: the broker refused the connection or did not acknowledge in time.
    """
    with socket.create_connection((host, port), timeout=PUBLISH_TIMEOUT_S) as sock:
        sock.sendall(connect_packet(PUBLISHER_ID, 60))
        connack = sock.recv(4)
        if len(connack) != 4 or connack[0] != 0x20 or connack[3] != 0:
            raise RuntimeError(f"publisher: broker refused the connection ({connack!r})")
        t0 = time.monotonic()
        sent = acked = 0
        pending = b""
        while acked < len(packets):
            while sent < len(packets) and sent - acked < PUBLISH_WINDOW:
                block = packets[sent : sent + PUBLISH_BLOCK]
                sock.sendall(b"".join(block))
                sent += len(block)
            data = sock.recv(65536)
            if not data:
                raise RuntimeError(f"publisher: connection closed after {acked} acknowledgements")
            pending += data
            whole = len(pending) - len(pending) % 4
            if pending[:whole:4].strip(b"\x40"):
                raise RuntimeError("publisher: the broker answered other than PUBACK")
            acked += whole // 4
            pending = pending[whole:]
        seconds = time.monotonic() - t0
        sock.sendall(b"\xe0\x00")  # DISCONNECT
    return seconds
