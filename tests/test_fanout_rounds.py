"""When the hub's fan-out starts a round, what it publishes, and the devices' adaptive
fetch time-out: hub/transport/fanout.py with a recording link and a fake clock, and
agent/core/roundtrip.py (the end-to-end path is tests/test_fanout.py)."""

from __future__ import annotations

from agent.core.roundtrip import MAX_TIMEOUT_FACTOR, RoundTrip
from hub.ingest.report import Report
from hub.transport.fanout import BLIND_WAIT_S, MAX_BLIND_ROUNDS, MAX_WAIT_S, QUIET_S, FanOut
from shared import protocol


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class Recorder:
    """A link that records every publish (and acknowledges at once)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, protocol.Blob, int]] = []

    def publish_info(self, topic: str, payload: bytes, qos: int) -> None:
        self.sent.append((topic, protocol.decode_blob(payload), qos))


class Chunks:
    def __init__(self, n: int) -> None:
        self.n = n

    def chunk(self, target: str, index: int) -> bytes | None:
        return bytes([index]) * 10 if index < self.n else None


def event(device: str, deployment: str, stage: str) -> Report:
    body = {"deployment": deployment, "model": "m", "version": 2, "stage": stage}
    return Report(device, "events", protocol.Message("event", "x", 1.0, body))


def rig(n_chunks: int = 3) -> tuple[FanOut, Recorder, Clock]:
    link, clock = Recorder(), Clock()
    return FanOut(link, Chunks(n_chunks), clock=clock), link, clock


def test_a_round_starts_once_every_device_is_ready_and_publishes_each_chunk_once() -> None:
    fan, link, clock = rig()
    topics = {fan.join("r1", "m/2/model.onnx", d) for d in ("a", "b")}
    fan.observe(event("a", "r1", "downloading"))
    clock.t += QUIET_S / 2

    assert not fan.poll()  # b is not ready yet
    fan.observe(event("b", "r1", "downloading"))
    clock.t += 0.3
    assert fan.poll()

    (topic,) = topics
    assert protocol.is_fanout_topic(topic)
    assert [(t, b.header["index"], b.header["req"]) for t, b, _ in link.sent] == [
        (topic, 0, "fan"),
        (topic, 1, "fan"),
        (topic, 2, "fan"),
    ]
    assert all(b.data == bytes([b.header["index"]]) * 10 for _, b, _ in link.sent)
    assert fan.counts["chunks_fanned"] == 3 and fan.counts["devices_served"] == 2
    assert not fan.poll()  # nothing left to do


def test_silent_stragglers_hold_the_ready_devices_only_until_it_is_quiet() -> None:
    fan, link, clock = rig()
    for d in ("a", "b", "c"):
        fan.join("r1", "t", d)
    fan.observe(event("a", "r1", "downloading"))

    clock.t += QUIET_S - 0.1
    assert not fan.poll()
    clock.t += 0.2
    assert fan.poll()
    assert len(link.sent) == 3

    fan.observe(event("b", "r1", "downloading"))  # later: a round of its own
    clock.t += QUIET_S + 0.1
    assert fan.poll()
    assert len(link.sent) == 6


def test_a_device_that_fails_or_already_runs_it_is_not_waited_for() -> None:
    fan, _link, clock = rig()
    for d in ("a", "b"):
        fan.join("r1", "t", d)
    fan.observe(event("a", "r1", "downloading"))
    fan.observe(event("b", "r1", "healthy"))  # "already active"
    clock.t += 0.3

    assert fan.poll()


def test_with_no_device_heard_from_a_bounded_number_of_blind_rounds_run() -> None:
    fan, link, clock = rig(2)
    fan.join("r1", "t", "a")

    clock.t += BLIND_WAIT_S - 0.1
    assert not fan.poll()
    ran = 0
    for _ in range(MAX_BLIND_ROUNDS + 2):
        clock.t += BLIND_WAIT_S + 0.1
        ran += fan.poll()
    assert ran == MAX_BLIND_ROUNDS
    assert len(link.sent) == 2 * MAX_BLIND_ROUNDS


def test_a_trickle_of_ready_devices_is_batched_into_few_rounds() -> None:
    fan, _link, clock = rig(2)
    start = clock.t
    for d in range(10):
        fan.join("r1", "t", f"d{d}")
    fan.join("r1", "t", "late")  # never heard from
    rounds = 0
    for d in range(10):  # one ready every 0.5 s: never quiet for QUIET_S
        fan.observe(event(f"d{d}", "r1", "downloading"))
        clock.t += 0.5
        rounds += fan.poll()
    assert rounds == 1
    assert fan.history[0][0] - start == MAX_WAIT_S  # after the first ready one
    assert fan.history[0][2] == 10  # (all ten were ready by then)
    clock.t += QUIET_S + 0.1
    assert not fan.poll()  # nobody new is ready: no second round


def test_rollouts_and_targets_have_topics_of_their_own() -> None:
    fan, _link, _clock = rig()
    a = fan.join("r1", "m/2/model.onnx", "d1")
    b = fan.join("r1", "m/2/model.tflite", "d2")
    c = fan.join("r2", "m/2/model.onnx", "d3")
    assert len({a, b, c}) == 3
    assert fan.join("r1", "m/2/model.onnx", "d4") == a


def test_the_fetch_time_out_follows_the_round_trip_within_bounds() -> None:
    rtt = RoundTrip(10.0)
    assert rtt.timeout() == 10.0  # nothing measured: the configured time-out

    for i in range(20):  # a quiet hub: answers in 50 ms
        rtt.asked(f"r{i}", 100.0 + i)
        rtt.answered(f"r{i}", 100.05 + i)
    assert rtt.timeout() == 10.0  # never under the configured one

    for i in range(20):  # a busy hub: answers in 30 s
        rtt.asked(f"s{i}", 200.0 + 40 * i)
        rtt.answered(f"s{i}", 230.0 + 40 * i)
    assert 30.0 < rtt.timeout() <= MAX_TIMEOUT_FACTOR * 10.0

    rtt.answered("s0", 10_000.0)  # answered already: measures nothing
    assert rtt.samples == 40

    late = RoundTrip(10.0)  # asked, asked again after a time-out, then the first answer
    late.asked("m1", 0.0)
    late.asked("m2", 10.0)
    late.answered("m1", 25.0)
    assert late.samples == 1 and late.srtt == 25.0 and late.timeout() > 25.0
