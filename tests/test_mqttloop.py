"""MqttLoop against a real Mosquitto: many clients on one thread, wills, reconnects, timers."""

from __future__ import annotations

import itertools
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from hub.transport.broker import Mosquitto
from simulator import mqttloop
from simulator.mqttloop import ClientHandle, MqttLoop, MqttLoopError, Will


class Peer:
    """A plain paho client on its own thread (loop_start), standing in for the hub."""

    def __init__(self, broker: Mosquitto) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self._lock = threading.Lock()
        self._connected = threading.Event()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"peer-{uuid.uuid4()}")
        self.client.max_inflight_messages_set(1000)
        self.client.on_connect = lambda *_: self._connected.set()
        self.client.on_subscribe = lambda *_: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect(broker.address.host, broker.address.port)
        self.client.loop_start()
        assert self._connected.wait(5), "the peer did not connect"

    def _on_message(self, _client: object, _userdata: object, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append((msg.topic, bytes(msg.payload)))

    def received(self) -> list[tuple[str, bytes]]:
        with self._lock:
            return list(self.messages)

    def subscribe(self, topic: str) -> None:
        self._subscribed.clear()
        self.client.subscribe(topic, 1)
        assert self._subscribed.wait(5), "no SUBACK"

    def publish_all(self, messages: list[tuple[str, bytes]]) -> None:
        infos = [self.client.publish(topic, payload, qos=1) for topic, payload in messages]
        for info in infos:
            info.wait_for_publish(10)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def peers() -> Iterator[Callable[[Mosquitto], Peer]]:
    made: list[Peer] = []

    def make(broker: Mosquitto) -> Peer:
        made.append(Peer(broker))
        return made[-1]

    yield make
    for peer in made:
        peer.close()


@pytest.fixture
def loops() -> Iterator[Callable[..., MqttLoop]]:
    made: list[MqttLoop] = []

    def make(broker: Mosquitto, **kwargs: object) -> MqttLoop:
        made.append(MqttLoop(broker.address.host, broker.address.port, **kwargs))  # type: ignore[arg-type]
        return made[-1]

    yield make
    for loop in made:
        loop.close()


def prefix() -> str:
    return f"test/{uuid.uuid4().hex[:12]}"


def test_500_clients_each_receive_their_own_messages(
    mosquitto: Mosquitto, loops: Callable[..., MqttLoop], peers: Callable[[Mosquitto], Peer]
) -> None:
    n, root = 500, prefix()
    peer = peers(mosquitto)
    peer.subscribe(f"{root}/ready/+")
    loop = loops(mosquitto)
    got: dict[int, list[tuple[str, bytes]]] = {i: [] for i in range(n)}
    handles: list[ClientHandle] = []

    def add(i: int) -> None:
        def on_connect() -> None:
            handles[i].subscribe(f"{root}/dev/{i}", 1)
            # Same connection, after the SUBSCRIBE: when the peer sees this, the
            # subscription is in place.
            handles[i].publish(f"{root}/ready/{i}", b"ready")

        handles.append(
            loop.add_client(
                f"{root}-{i}",
                on_connect=on_connect,
                on_message=lambda topic, payload: got[i].append((topic, payload)),
            )
        )

    for i in range(n):
        add(i)
    assert loop.run(until=lambda: len(peer.received()) == n, timeout_s=20)
    assert loop.stats.connected == n

    peer.publish_all([(f"{root}/dev/{i}", str(i).encode()) for i in range(n)])
    assert loop.run(until=lambda: loop.stats.messages_in == n, timeout_s=20)
    loop.run(timeout_s=0.2)  # nothing more may arrive

    assert all(got[i] == [(f"{root}/dev/{i}", str(i).encode())] for i in range(n))
    stats = loop.stats
    assert (stats.clients, stats.connected, stats.connects) == (n, n, n)
    assert (stats.messages_in, stats.messages_out) == (n, n)  # n "ready" messages PUBACKed
    assert stats.publish_dropped == stats.callback_errors == stats.connect_failures == 0
    assert stats.bytes_in > 0 and stats.bytes_out > 0


def test_publish_reaches_an_external_subscriber(
    mosquitto: Mosquitto, loops: Callable[..., MqttLoop], peers: Callable[[Mosquitto], Peer]
) -> None:
    root = prefix()
    peer = peers(mosquitto)
    peer.subscribe(f"{root}/#")
    loop = loops(mosquitto)
    handle = loop.add_client(f"{root}-dev", on_connect=lambda: None, on_message=lambda t, p: None)
    loop.run(until=lambda: handle.connected, timeout_s=5)

    assert handle.publish(f"{root}/dev/telemetry", b"\x00\x01payload", qos=1)
    assert loop.run(until=lambda: loop.stats.messages_out == 1, timeout_s=5)  # PUBACK
    assert loop.run(until=lambda: len(peer.received()) == 1, timeout_s=5)
    assert peer.received() == [(f"{root}/dev/telemetry", b"\x00\x01payload")]


def test_offline_publishes_qos1_queued_qos0_and_overflow_dropped(
    mosquitto: Mosquitto, loops: Callable[..., MqttLoop], peers: Callable[[Mosquitto], Peer]
) -> None:
    root = prefix()
    peer = peers(mosquitto)
    peer.subscribe(f"{root}/#")
    loop = loops(mosquitto, max_queued_messages=2)
    handle = loop.add_client(f"{root}-dev", on_connect=lambda: None, on_message=lambda t, p: None)

    assert not handle.connected
    assert handle.publish(f"{root}/a", b"1")  # queued by paho until the CONNACK
    assert handle.publish(f"{root}/a", b"2")
    assert not handle.publish(f"{root}/a", b"3")  # past max_queued_messages
    assert not handle.publish(f"{root}/a", b"4", qos=0)  # QoS 0 is never queued
    assert loop.stats.publish_dropped == 2

    assert loop.run(until=lambda: len(peer.received()) == 2, timeout_s=5)
    loop.run(timeout_s=0.2)
    assert peer.received() == [(f"{root}/a", b"1"), (f"{root}/a", b"2")]


def test_kill_fires_the_last_will_and_close_does_not(
    mosquitto: Mosquitto, loops: Callable[..., MqttLoop], peers: Callable[[Mosquitto], Peer]
) -> None:
    root = prefix()
    peer = peers(mosquitto)
    peer.subscribe(f"{root}/+/state")
    loop = loops(mosquitto)
    closed, killed = (
        loop.add_client(
            f"{root}-{name}",
            on_connect=lambda: None,
            on_message=lambda t, p: None,
            will=Will(f"{root}/{name}/state", b"offline"),
        )
        for name in ("closed", "killed")
    )
    assert loop.run(until=lambda: closed.connected and killed.connected, timeout_s=5)

    closed.close()
    loop.run(timeout_s=0.2)  # DISCONNECT written, socket closed
    killed.kill()
    assert loop.run(until=lambda: len(peer.received()) >= 1, timeout_s=5)
    loop.run(timeout_s=0.3)  # a will for the closed client would have come before this

    assert peer.received() == [(f"{root}/killed/state", b"offline")]
    assert not closed.connected and not killed.connected
    assert loop.stats.clients == 0
    assert not killed.publish(f"{root}/killed/x", b"late")  # dead clients stay dead


def test_closing_the_loop_from_another_thread_fires_no_will(
    mosquitto: Mosquitto, peers: Callable[[Mosquitto], Peer]
) -> None:
    n, root = 20, prefix()
    peer = peers(mosquitto)
    peer.subscribe(f"{root}/+/state")
    loop = MqttLoop(mosquitto.address.host, mosquitto.address.port)
    for i in range(n):
        loop.add_client(
            f"{root}-{i}",
            on_connect=lambda: None,
            on_message=lambda t, p: None,
            will=Will(f"{root}/{i}/state", b"offline", retain=False),
        )
    thread = loop.start_thread()
    deadline = time.monotonic() + 5
    while loop.stats.connected < n and time.monotonic() < deadline:
        time.sleep(0.01)
    assert loop.stats.connected == n

    loop.close()  # from this (foreign) thread: stops the loop, then DISCONNECTs everyone
    assert not thread.is_alive()
    time.sleep(0.3)
    assert peer.received() == []
    assert loop.stats.connected == 0
    with pytest.raises(MqttLoopError):
        loop.call_soon_threadsafe(lambda: None)


def test_clients_reconnect_and_resubscribe_after_a_broker_restart(
    private_mosquitto: Mosquitto,
    loops: Callable[..., MqttLoop],
    peers: Callable[[Mosquitto], Peer],
) -> None:
    n, root = 50, prefix()
    loop = loops(private_mosquitto, reconnect_min_s=0.1, reconnect_max_s=1.0)
    connects: Counter[int] = Counter()
    disconnects: Counter[int] = Counter()
    got: dict[int, list[bytes]] = {i: [] for i in range(n)}
    handles: list[ClientHandle] = []

    def add(i: int) -> None:
        def on_connect() -> None:
            connects[i] += 1
            handles[i].subscribe(f"{root}/dev/{i}")  # the broker keeps no sessions over a restart
            handles[i].publish(f"{root}/ready/{i}", str(connects[i]).encode())

        def on_disconnect() -> None:
            disconnects[i] += 1

        handles.append(
            loop.add_client(
                f"{root}-{i}",
                on_connect=on_connect,
                on_message=lambda topic, payload: got[i].append(payload),
                on_disconnect=on_disconnect,
            )
        )

    for i in range(n):
        add(i)
    # Wait for the PUBACKs too: paho would resend an unacknowledged "ready" after the restart.
    assert loop.run(until=lambda: loop.stats.messages_out == n, timeout_s=10)

    private_mosquitto.restart()
    peer = peers(private_mosquitto)
    peer.subscribe(f"{root}/ready/+")
    assert loop.run(until=lambda: all(connects[i] == 2 for i in range(n)), timeout_s=20)
    # Each client's second "ready" follows its SUBSCRIBE on the same connection.
    assert loop.run(until=lambda: len(peer.received()) == n, timeout_s=10)
    assert all(payload == b"2" for _topic, payload in peer.received())

    peer.publish_all([(f"{root}/dev/{i}", b"after restart") for i in range(n)])
    assert loop.run(until=lambda: loop.stats.messages_in == n, timeout_s=10)
    assert all(got[i] == [b"after restart"] for i in range(n))
    assert all(disconnects[i] == 1 for i in range(n))
    stats = loop.stats
    assert (stats.connected, stats.connects, stats.disconnects) == (n, 2 * n, n)


def test_timers_and_threadsafe_calls_run_on_the_loop_thread(mosquitto: Mosquitto) -> None:
    loop = MqttLoop(mosquitto.address.host, mosquitto.address.port)
    calls: list[tuple[str, int]] = []

    def note(what: str) -> Callable[[], None]:
        return lambda: calls.append((what, threading.get_ident()))

    loop.call_later(0.10, note("later-2"))
    loop.call_later(0.05, note("later-1"))
    loop.call_later(0.05, note("cancelled")).cancel()
    every = loop.call_every(0.02, note("every"), jitter_s=0.01)
    thread = loop.start_thread()
    try:
        with pytest.raises(MqttLoopError):
            loop.call_later(0.0, note("from a foreign thread"))
        other = threading.Thread(target=lambda: loop.call_soon_threadsafe(note("soon")))
        other.start()
        other.join()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and [w for w, _ in calls].count("every") < 5:
            time.sleep(0.01)
        loop.call_soon_threadsafe(every.cancel)
        time.sleep(0.15)
        ticks = [w for w, _ in calls].count("every")
        time.sleep(0.1)
        assert [w for w, _ in calls].count("every") == ticks  # cancelled: no more ticks
    finally:
        loop.close()
    thread.join(5)

    names = [w for w, _ in calls]
    assert {"later-1", "later-2", "soon"} <= set(names) and "cancelled" not in names
    assert names.index("later-1") < names.index("later-2")
    assert ticks >= 5
    assert {ident for _, ident in calls} == {thread.ident}
    assert not thread.is_alive()


def test_a_raising_callback_does_not_stop_the_loop(
    mosquitto: Mosquitto,
    loops: Callable[..., MqttLoop],
    peers: Callable[[Mosquitto], Peer],
    caplog: pytest.LogCaptureFixture,
) -> None:
    root = prefix()
    peer = peers(mosquitto)
    loop = loops(mosquitto)
    good: list[bytes] = []

    def boom(*_: object) -> None:
        raise RuntimeError("boom")

    handles: dict[str, ClientHandle] = {}

    def subscriber(name: str) -> Callable[[], None]:
        def on_connect() -> None:
            handles[name].subscribe(f"{root}/{name}")

        return on_connect

    for name, on_message in (("bad", boom), ("good", lambda t, p: good.append(p))):
        handles[name] = loop.add_client(
            f"{root}-{name}", on_connect=subscriber(name), on_message=on_message
        )
    ticks: list[int] = []
    loop.call_every(0.02, boom)
    loop.call_every(0.02, lambda: ticks.append(1))
    assert loop.run(until=lambda: loop.stats.connected == 2, timeout_s=5)
    loop.run(timeout_s=0.1)  # the SUBSCRIBEs reach the broker before the peer publishes

    peer.publish_all([(f"{root}/{name}", b"m%d" % i) for i in range(3) for name in ("bad", "good")])
    assert loop.run(until=lambda: len(good) == 3 and loop.stats.messages_in == 6, timeout_s=5)

    assert good == [b"m0", b"m1", b"m2"] and len(ticks) >= 3
    assert loop.stats.callback_errors >= 3 + 3  # three messages, at least three timer calls
    logged = [r for r in caplog.records if r.name == "simulator.mqttloop" and r.exc_info]
    assert sum("on_message raised" in r.getMessage() for r in logged) == 1  # once per client
    assert sum("timer" in r.getMessage() for r in logged) == 1  # once per function


def test_an_unresponsive_broker_does_not_block_the_loop() -> None:
    # A listener whose accept queue is full: the kernel drops further SYNs, so a
    # blocking connect() would hang for paho's 5 s connect timeout.
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(0)
    fillers = []
    for _ in range(4):
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(server.getsockname())
        fillers.append(filler)
    loop = MqttLoop("127.0.0.1", server.getsockname()[1])
    try:
        for i in range(3):
            loop.add_client(f"stuck-{i}", on_connect=lambda: None, on_message=lambda t, p: None)
        ticks: list[float] = []
        loop.call_every(0.02, lambda: ticks.append(time.monotonic()))
        loop.run(timeout_s=1.0)
        assert len(ticks) >= 25
        assert max(b - a for a, b in itertools.pairwise(ticks)) < 0.25
        assert loop.stats.connected == 0
    finally:
        loop.close()
        for s in [*fillers, server]:
            s.close()


def test_a_broker_that_never_answers_connect_is_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mqttloop, "HANDSHAKE_TIMEOUT_S", 0.2)
    server = socket.socket()  # accepts TCP (in the kernel) but never sends a CONNACK
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    server.setblocking(False)
    loop = MqttLoop("127.0.0.1", server.getsockname()[1], reconnect_min_s=0.1, reconnect_max_s=0.2)
    accepted: list[socket.socket] = []
    try:
        loop.add_client("silent", on_connect=lambda: None, on_message=lambda t, p: None)
        loop.run(timeout_s=2.5)  # timeouts are checked once a second
        assert loop.stats.connect_failures >= 2 and loop.stats.connected == 0
        while True:
            try:
                accepted.append(server.accept()[0])
            except BlockingIOError:
                break
        assert len(accepted) >= 3  # the first attempt and at least two retries
    finally:
        loop.close()
        for s in [*accepted, server]:
            s.close()


def test_misuse_is_refused(mosquitto: Mosquitto, loops: Callable[..., MqttLoop]) -> None:
    loop = loops(mosquitto)
    loop.add_client("dup", on_connect=lambda: None, on_message=lambda t, p: None)
    with pytest.raises(MqttLoopError):
        loop.add_client("dup", on_connect=lambda: None, on_message=lambda t, p: None)
    with pytest.raises(ValueError):
        Will("a/+/state", b"offline")
    with pytest.raises(ValueError):
        MqttLoop("127.0.0.1", 1, reconnect_min_s=2.0, reconnect_max_s=1.0)
    loop.close()
    with pytest.raises(MqttLoopError):
        loop.run(timeout_s=0.1)
