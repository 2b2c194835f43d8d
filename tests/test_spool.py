"""The on-disk telemetry spool (agent/spool.py): bound, drop-oldest, order, reopen, damage."""

from __future__ import annotations

import contextlib
import itertools
import queue
import threading
import time
from pathlib import Path

import pytest

from agent.spool import REPLAY_BURST, REPLAY_PER_S, SEGMENT_BYTES, Entry, Spool, SpoolSender
from hub.transport.budget import INGEST

TOPIC = "ef/v1/dev/d1/telemetry"


def payload(i: int, size: int = 100) -> bytes:
    return f"{i:08d}".encode().ljust(size, b".")


def fill(spool: Spool, n: int, size: int = 100) -> list[Entry]:
    return [spool.append(TOPIC, payload(i, size)) for i in range(n)]


def pending_payloads(spool: Spool) -> list[bytes]:
    return [e.payload for e in spool.pending()]


def test_entries_come_back_in_order_and_ack_removes_them(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    entries = fill(spool, 5)
    spool.ack(entries[1].id)  # out of order: kept out of pending, the cursor stays
    assert pending_payloads(spool) == [payload(i) for i in (0, 2, 3, 4)]
    spool.ack(entries[0].id)
    assert pending_payloads(spool) == [payload(i) for i in (2, 3, 4)]
    assert len(spool) == 3


def test_bound_drops_oldest_first_and_counts(tmp_path: Path) -> None:
    one = Entry(0, TOPIC, payload(0)).size
    spool = Spool(tmp_path, max_bytes=10 * one)
    fill(spool, 25)
    assert spool.dropped == 15
    assert pending_payloads(spool) == [payload(i) for i in range(15, 25)]
    assert spool.size_bytes <= spool.max_bytes


def test_drop_count_and_pending_survive_reopen(tmp_path: Path) -> None:
    one = Entry(0, TOPIC, payload(0)).size
    spool = Spool(tmp_path, max_bytes=4 * one)
    entries = fill(spool, 6)  # 2 dropped
    spool.ack(entries[2].id)
    again = Spool(tmp_path, max_bytes=4 * one)
    assert again.dropped == 2
    assert pending_payloads(again) == [payload(i) for i in (3, 4, 5)]
    new = again.append(TOPIC, b"after")
    assert new.id == 6  # ids never reused: an old ack cannot remove a new entry


def test_reopen_many_segments_and_delete_delivered_ones(tmp_path: Path) -> None:
    size = 20_000
    n = 3 * SEGMENT_BYTES // size
    spool = Spool(tmp_path, max_bytes=64 * SEGMENT_BYTES)
    entries = fill(spool, n, size)
    assert len(list(tmp_path.glob("*.seg"))) >= 3
    for e in entries[: n - 2]:
        spool.ack(e.id)
    assert len(list(tmp_path.glob("*.seg"))) == 1  # segments wholly delivered are gone
    again = Spool(tmp_path, max_bytes=64 * SEGMENT_BYTES)
    assert pending_payloads(again) == [payload(i, size) for i in (n - 2, n - 1)]


def test_torn_tail_is_skipped_and_counted_and_appends_go_on(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    fill(spool, 3)
    (segment,) = tmp_path.glob("*.seg")
    data = segment.read_bytes()
    segment.write_bytes(data[:-40])  # a crash in the middle of the last write
    again = Spool(tmp_path)
    assert again.corrupt == 1
    assert pending_payloads(again) == [payload(0), payload(1)]
    again.append(TOPIC, b"next")
    third = Spool(tmp_path)
    assert pending_payloads(third) == [payload(0), payload(1), b"next"]


def test_flipped_byte_stops_its_segment_only(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    fill(spool, 3)
    (segment,) = tmp_path.glob("*.seg")
    data = bytearray(segment.read_bytes())
    data[len(data) // 2] ^= 0xFF  # inside the second record
    segment.write_bytes(bytes(data))
    again = Spool(tmp_path)
    assert again.corrupt == 1
    assert pending_payloads(again) == [payload(0)]


def test_garbage_cursor_and_foreign_files_do_not_crash(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    fill(spool, 2)
    (tmp_path / "cursor").write_bytes(b"xx")  # too short: ignored
    (tmp_path / "notes.seg").write_bytes(b"junk")  # not a spool name: ignored
    again = Spool(tmp_path)
    assert pending_payloads(again) == [payload(0), payload(1)]


def test_a_message_larger_than_the_whole_bound_is_a_counted_drop(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spool = Spool(tmp_path, max_bytes=4096)
    fill(spool, 2)
    assert spool.append(TOPIC, b"x" * 5000) is None  # can never fit: dropped, not raised
    assert spool.dropped == 1
    assert "larger than the whole spool (4096 bytes)" in caplog.text
    assert pending_payloads(spool) == [payload(0), payload(1)]  # what fits stays
    fill(spool, 1)  # and the spool goes on
    again = Spool(tmp_path, max_bytes=4096)
    assert again.dropped == 1  # reported after a restart too
    assert len(again) == 3


class FakeLink:
    """Stands in for paho: the sender's transport contract is just send() -> mid."""

    def __init__(self) -> None:
        self.online = True
        self.sent: list[tuple[int, bytes]] = []
        self._mid = 0

    def send(self, topic: str, data: bytes) -> int | None:
        if not self.online:
            return None
        self._mid += 1
        self.sent.append((self._mid, data))
        return self._mid


def test_the_sender_drops_a_message_larger_than_the_spool_and_goes_on(tmp_path: Path) -> None:
    link = FakeLink()
    sender = SpoolSender(Spool(tmp_path, max_bytes=4096), link.send)
    sender.connected()
    sender.submit(TOPIC, b"x" * 5000)  # no exception reaches the device's loop
    sender.submit(TOPIC, payload(1))
    assert sender.dropped == 1
    assert [data for _mid, data in link.sent] == [payload(1)]


def test_sender_keeps_a_window_and_resends_in_order_after_reconnect(tmp_path: Path) -> None:
    link = FakeLink()
    sender = SpoolSender(Spool(tmp_path), link.send, window=3)
    sender.connected()
    for i in range(5):
        sender.submit(TOPIC, payload(i))
    assert [p for _, p in link.sent] == [payload(i) for i in range(3)]  # the window is full
    sender.acked(link.sent[0][0])
    assert [p for _, p in link.sent][-1] == payload(3)
    link.online = False
    sender.disconnected()
    sender.submit(TOPIC, payload(5))
    link.online = True
    link.sent.clear()
    sender.connected()  # unacknowledged ones again, oldest first
    assert [p for _, p in link.sent] == [payload(i) for i in (1, 2, 3)]
    for mid, _ in list(link.sent):
        sender.acked(mid)
    for mid, _ in list(link.sent[3:]):
        sender.acked(mid)
    assert [p for _, p in link.sent] == [payload(i) for i in (1, 2, 3, 4, 5)]
    assert len(sender.spool) == 0


def test_sender_ignores_acks_of_other_messages(tmp_path: Path) -> None:
    link = FakeLink()
    sender = SpoolSender(Spool(tmp_path), link.send)
    sender.connected()
    sender.submit(TOPIC, payload(0))
    sender.acked(999)  # an event's or a state message's PUBACK
    assert len(sender.spool) == 1


def test_acks_from_paho_thread_while_the_device_submits(tmp_path: Path) -> None:
    """paho acks on its own thread; the spool must neither lose nor trip over them."""
    acks: queue.Queue[int] = queue.Queue()
    mids = itertools.count(1)

    def send(topic: str, data: bytes) -> int:
        mid = next(mids)
        acks.put(mid)  # the broker acknowledges at once, on another thread
        return mid

    sender = SpoolSender(Spool(tmp_path), send, window=8, burst=2000)  # unpaced
    sender.connected()
    stop = threading.Event()

    def paho_thread() -> None:
        while not (stop.is_set() and acks.empty()):
            with contextlib.suppress(queue.Empty):
                sender.acked(acks.get(timeout=0.01))

    thread = threading.Thread(target=paho_thread)
    thread.start()
    for i in range(2000):
        sender.submit(TOPIC, payload(i))
    deadline = time.monotonic() + 10
    while len(sender.spool) and time.monotonic() < deadline:
        sender.pump()  # the daemon's tick
        time.sleep(0.01)
    stop.set()
    thread.join(10)
    assert len(sender.spool) == 0
    assert next(mids) - 1 >= 2000  # every window was sent (some twice is allowed)


def test_a_replay_after_an_outage_is_paced_under_the_hubs_ingest_budget(tmp_path: Path) -> None:
    """A long outage's backlog goes out as a burst, then at a sustained pace: the hub
    drops a device's reports beyond its ingest budget, so an honest agent stays inside."""
    now = [0.0]
    link = FakeLink()
    sender = SpoolSender(Spool(tmp_path), link.send, window=10_000, clock=lambda: now[0])
    for i in range(1000):  # spooled while offline
        sender.submit(TOPIC, payload(i))
    assert link.sent == []
    sender.connected()
    assert len(link.sent) == REPLAY_BURST
    now[0] += 10.0
    sender.pump()  # the daemon's tick
    assert len(link.sent) == REPLAY_BURST + int(10 * REPLAY_PER_S)
    # the pace stays inside the hub's budget with room for the device's own reports
    assert INGEST.burst / 2 >= REPLAY_BURST and INGEST.per_s / 2 >= REPLAY_PER_S
    for _ in range(1000):
        now[0] += 1.0
        sender.pump()
    assert [int(p[:8]) for _, p in link.sent] == list(range(1000))  # in order, all of them
