"""The rollout engine's rules on a clock the test moves: timeouts count silence while a
device is online, an offline device neither times out nor holds its wave up, a device
back and silent is sent the command again, a halted rollout settles, and an outcome the
hub missed is read back from the device's retained state.

Real SQLite and the hub's real ingest; the commands go to a recorder instead of paho
(the integration tests in test_rollouts.py send them over a real Mosquitto), because
these rules play out over minutes of device time that the test moves in steps.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import pytest
from pg_schemas import hub_engine
from sqlalchemy import Engine
from sqlmodel import select

from hub import make_ingest
from hub.fleet.commands import CommandSender
from hub.fleet.rollout_engine import RECONCILE_GRACE_S
from hub.fleet.rollout_spec import RolloutSpec, spec_dict
from hub.fleet.rollouts import Rollouts
from hub.ingest.report import Report
from hub.ingest.writer import Ingest
from hub.ml.registry import Registry
from hub.store.tables import (
    Device,
    EventRecord,
    Rollout,
    RolloutDevice,
    session,
)
from shared import protocol

T0 = 1_000_000.0


@dataclass
class Recorder:
    """Stands in for the CommandSender: what the engine would have sent."""

    sent: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    revoked: frozenset[str] = frozenset()

    def send_command(self, device_id: str, msg_type: str, body: dict[str, Any]) -> None:
        self.sent.append((device_id, msg_type, dict(body)))

    def to(self, device_id: str, msg_type: str = "deploy") -> int:
        return sum(1 for d, t, _ in self.sent if d == device_id and t == msg_type)


@dataclass
class Clock:
    t: float = T0

    def __call__(self) -> float:
        return self.t


@dataclass
class Bench:
    engine: Engine
    rollouts: Rollouts
    mqtt: Recorder
    clock: Clock
    ingest: Ingest

    def tick(self, seconds: float = 0.0) -> None:
        self.clock.t += seconds
        self.rollouts.tick()

    def row(self, device_id: str, rollout_id: str = "r1") -> RolloutDevice:
        with session(self.engine) as s:
            row = s.get(RolloutDevice, (rollout_id, device_id))
        assert row is not None
        return row

    def rollout(self, rollout_id: str = "r1") -> Rollout:
        with session(self.engine) as s:
            r = s.get(Rollout, rollout_id)
        assert r is not None
        return r

    def ingest_events(self, device_id: str) -> list[EventRecord]:
        with session(self.engine) as s:
            return list(s.exec(select(EventRecord).where(EventRecord.device_id == device_id)))

    def set_status(self, device_id: str, status: str, at: float | None = None) -> None:
        """What the hub learns from a device's retained state (online or its Last Will)."""
        with session(self.engine) as s:
            dev = s.get(Device, device_id)
            assert dev is not None
            dev.status, dev.last_seen = status, self.clock.t if at is None else at
            s.add(dev)
            s.commit()

    def report(self, device_id: str, kind: str, msg_type: str, body: dict[str, Any]) -> None:
        """A device's message through the hub's real validation and ingest."""
        payload = protocol.encode(msg_type, body, ts=self.clock.t)
        msg = protocol.decode(payload, expect=protocol.TOPIC_TYPES[kind])
        self.ingest.write_batch([Report(device_id, kind, msg, received=self.clock.t)])


@pytest.fixture
def bench(tmp_path: Path) -> Iterator[Bench]:
    engine = hub_engine(tmp_path)
    clock, mqtt = Clock(), Recorder()
    rollouts = Rollouts(engine, cast(Registry, None), cast(CommandSender, mqtt), clock=clock)
    ingest = make_ingest(engine, inline=True)
    yield Bench(engine, rollouts, mqtt, clock, ingest)
    ingest.stop()


def start(bench: Bench, devices: dict[str, int], **spec: Any) -> None:
    """A running rollout of m v2 to ``devices`` {id: wave}, every device online on v1."""
    full = RolloutSpec(model="m", version=2, **spec)
    with session(bench.engine) as s:
        s.add(
            Rollout(
                id="r1",
                model="m",
                version=2,
                target="m/2/model.onnx",
                spec=spec_dict(full),
                waves=max(devices.values()) + 1,
                started_at=bench.clock.t,
            )
        )
        for device_id, wave in devices.items():
            s.add(Device(id=device_id, status="online", model="m", version=1, last_seen=T0 - 60))
            s.add(
                RolloutDevice(rollout_id="r1", device_id=device_id, wave=wave, previous_version=1)
            )
        s.commit()


def event(bench: Bench, device_id: str, stage: str, reason: str | None = None) -> None:
    body = {"deployment": "r1", "model": "m", "version": 2, "stage": stage}
    if reason:
        body["reason"] = reason
    bench.report(device_id, "events", "event", body)


def test_the_timeout_counts_silence_while_online_and_spends_a_retry(bench: Bench) -> None:
    start(bench, {"a": 0}, device_timeout_s=60, retries=1)
    bench.tick()
    assert bench.mqtt.to("a") == 1
    bench.tick(59)
    assert bench.mqtt.to("a") == 1
    bench.tick(2)  # 61 s of silence: sent again, one retry spent
    assert bench.mqtt.to("a") == 2 and bench.row("a").timeouts == 1
    event(bench, "a", "downloading")  # progress resets the clock
    bench.tick(50)
    assert bench.mqtt.to("a") == 2
    bench.tick(61)  # silent again past the timeout, no retry left
    assert bench.row("a").state == "timed_out" and bench.mqtt.to("a") == 2


def test_an_offline_device_waits_without_holding_its_wave_and_is_reconciled(
    bench: Bench,
) -> None:
    start(bench, {"a": 0, "b": 0, "c": 1}, device_timeout_s=60, retries=0)
    bench.tick()
    bench.set_status("b", "offline")  # its Last Will: gone before the command reached it
    event(bench, "a", "healthy")
    bench.tick(1)
    assert bench.rollout().wave == 0  # a moment offline (a broker restart?) holds the wave
    bench.tick(60)
    assert bench.rollout().wave == 1 and bench.mqtt.to("c") == 1  # away longer: moves on
    bench.tick(3600)  # an hour offline: no timeout, no failure
    assert bench.row("b").state == "sent" and bench.row("b").timeouts == 0
    event(bench, "c", "healthy")
    bench.tick(1)
    st = bench.rollouts.status("r1")
    assert (st.state, st.offline, st.finished) == ("completed", 1, True)

    bench.set_status("b", "online")  # back, with a clean session: nothing queued for it
    bench.tick(RECONCILE_GRACE_S - 1)
    assert bench.mqtt.to("b") == 1  # it may still act on a queued command: wait
    bench.tick(2)
    assert bench.mqtt.to("b") == 2 and bench.row("b").timeouts == 0  # no retry spent
    bench.tick(RECONCILE_GRACE_S + 1)
    assert bench.mqtt.to("b") == 2  # once per return, not every tick
    event(bench, "b", "healthy")
    assert bench.rollouts.status("r1").converged == 3


def test_a_back_device_reporting_progress_is_left_alone(bench: Bench) -> None:
    start(bench, {"a": 0})
    bench.tick()
    bench.set_status("a", "online")  # reconnected
    bench.tick(1)
    event(bench, "a", "downloading")  # and it is on it
    bench.tick(RECONCILE_GRACE_S + 1)
    assert bench.mqtt.to("a") == 1


def test_an_outcome_lost_with_the_broker_is_read_from_the_retained_state(
    bench: Bench,
) -> None:
    start(bench, {"a": 0})
    bench.tick()
    # the `healthy` event was published while the hub had no subscription; the state
    # the device re-publishes (retained) when the job ends carries it
    last = {"deployment": "r1", "model": "m", "version": 2, "stage": "healthy", "ts": T0}
    state = {"status": "online", "models": {"m": {"version": 2}}, "last": last}
    bench.report("a", "state", "state", state)
    assert bench.row("a").state == "healthy"
    bench.report("a", "state", "state", state)  # the same state again: not a second event
    assert [e.stage for e in bench.ingest_events("a")] == ["healthy"]


def test_a_halted_rollout_settles_and_rolls_back_a_late_activation(bench: Bench) -> None:
    start(bench, {f"d{i}": 0 for i in range(5)}, min_sample=2, device_timeout_s=60)
    bench.tick()
    event(bench, "d0", "failed", "health_check_failed")
    event(bench, "d1", "failed", "health_check_failed")
    event(bench, "d2", "healthy")
    bench.tick(1)
    assert bench.rollout().state == "halted"
    assert bench.mqtt.to("d2", "rollback") == 1
    event(bench, "d3", "downloading")  # still busy with it
    bench.tick(1)
    assert not bench.rollouts.status("r1").finished  # d3 and d4 have no outcome yet
    bench.tick(61)  # silent past the timeout: no deploy is sent again after a halt
    assert bench.row("d3").state == "timed_out" and bench.mqtt.to("d3") == 1
    bench.report(
        "d2",
        "events",
        "event",
        {"deployment": "r1", "model": "m", "version": 1, "stage": "rolled_back"},
    )
    bench.tick(1)
    assert bench.rollouts.status("r1").finished and bench.rollout().settled_at is not None

    event(bench, "d3", "healthy")  # it did finish after all: the halt must undo it
    assert bench.rollout().settled_at is None
    bench.tick(1)
    assert bench.mqtt.to("d3", "rollback") == 1 and not bench.rollouts.status("r1").finished


def test_a_pause_earns_no_rate_credit(bench: Bench) -> None:
    start(bench, {f"d{i}": 0 for i in range(10)}, rate_per_min=60)
    bench.tick()
    assert len(bench.mqtt.sent) == 1
    bench.rollouts.pause("r1")
    bench.tick(30)
    assert len(bench.mqtt.sent) == 1
    bench.rollouts.resume("r1")
    bench.tick(0.5)
    assert len(bench.mqtt.sent) == 1  # no burst of the 30 paused seconds
    bench.tick(2)
    assert len(bench.mqtt.sent) == 3


def test_one_batch_applies_events_and_read_back_outcomes_in_order(bench: Bench) -> None:
    """hub/fleet/progress.py loads a batch's rows once: several messages about the same
    device in one batch still apply in arrival order, and an outcome is recorded once."""
    start(bench, {"a": 0, "b": 0})
    bench.tick()

    def msg(device_id: str, kind: str, msg_type: str, body: dict[str, Any]) -> Report:
        payload = protocol.encode(msg_type, body, ts=bench.clock.t)
        decoded = protocol.decode(payload, expect=protocol.TOPIC_TYPES[kind])
        return Report(device_id, kind, decoded, received=bench.clock.t)

    ev = {"deployment": "r1", "model": "m", "version": 2}
    last = {**ev, "stage": "healthy", "ts": T0}
    state = {"status": "online", "models": {"m": {"version": 2}}, "last": last}
    bench.ingest.write_batch(
        [
            msg("a", "events", "event", {**ev, "stage": "downloading"}),
            msg("a", "state", "state", state),  # the healthy event itself was lost
            msg("a", "state", "state", state),
            msg("b", "events", "event", {**ev, "stage": "healthy"}),
            msg("b", "state", "state", {**state, "last": last}),  # b's event did arrive
            msg("c", "state", "state", {"status": "online"}),  # a device new to the hub
        ]
    )
    assert bench.row("a").state == bench.row("b").state == "healthy"
    assert [e.stage for e in bench.ingest_events("a")] == ["downloading", "healthy"]
    assert [e.stage for e in bench.ingest_events("b")] == ["healthy"]
    with session(bench.engine) as s:
        c = s.get(Device, "c")
    assert c is not None and (c.status, c.last_seen) == ("online", bench.clock.t)


def test_a_deployment_times_out_a_device_that_stays_away_and_finishes(bench: Bench) -> None:
    """A plain deployment (offline_timeout): away for device_timeout_s after its send,
    a device ends timed_out, and the status is finished only then."""
    start(bench, {"a": 0, "b": 0}, device_timeout_s=60, kind="deployment", offline_timeout=True)
    bench.set_status("b", "offline", at=T0 - 600)  # away long before the deployment
    bench.tick()
    event(bench, "a", "healthy")
    bench.tick(30)
    st = bench.rollouts.status("r1")  # (a rollout would call this finished: b is long gone)
    assert (st.state, st.offline, st.finished) == ("completed", 1, False)
    bench.tick(31)  # away longer than the timeout since its send: given up
    row = bench.row("b")
    assert row.state == "timed_out" and "never came back" in (row.detail or ""), row
    st = bench.rollouts.status("r1")
    assert (st.state, st.finished, st.counts) == ("completed", True, {"healthy": 1, "timed_out": 1})
    assert bench.mqtt.to("b") == 1  # nothing sent to a device that is away


def test_probation_terms_travel_in_the_command_and_come_back_on_the_row(bench: Bench) -> None:
    start(bench, {"a": 0, "b": 0}, probation_s=30.0, probation_min_inferences=7)
    bench.tick()
    body = next(b for d, _, b in bench.mqtt.sent if d == "a")
    assert (body["probation_s"], body["probation_min_inferences"]) == (30.0, 7)
    terms = {"probation_s": 30.0, "probation_min_inferences": 7, "probation_max_s": 300.0}
    for device_id in ("a", "b"):
        body = {"deployment": "r1", "model": "m", "version": 2, "stage": "activated", **terms}
        bench.report(device_id, "events", "event", body)
    bench.tick(10)
    st = bench.rollouts.status("r1")
    assert st.in_probation == 2
    assert st.probation[0] == {
        "device": "a",
        "left_s": 20.0,
        "max_left_s": 290.0,
        "inferences": 0,  # no telemetry in this bench
        "min_inferences": 7,
    }
    judged = {"deployment": "r1", "model": "m", "version": 2, "stage": "healthy"}
    bench.report("a", "events", "event", {**judged, "inferences": 0, "errors": 0})
    bench.report("b", "events", "event", {**judged, "inferences": 12, "errors": 0})
    bench.tick(1)
    st = bench.rollouts.status("r1")
    assert (st.in_probation, st.healthy_without_traffic, st.converged) == (0, 1, 2)
    assert bench.row("b").probation == {"since": T0, **terms, "inferences": 12, "errors": 0}


def test_a_device_on_probation_publishing_its_state_is_not_sent_the_command_again(
    bench: Bench,
) -> None:
    """The agent publishes its state right after ``activated``; that state names the
    rollout in ``last``, so a probation longer than the reconcile grace is no silence."""
    start(bench, {"a": 0}, device_timeout_s=600)
    bench.tick()
    event(bench, "a", "activated")
    bench.clock.t += 0.01
    last = {"deployment": "r1", "model": "m", "version": 2, "stage": "activated"}
    state = {"status": "online", "last": {**last, "ts": bench.clock.t}}
    bench.report("a", "state", "state", state)
    bench.tick(RECONCILE_GRACE_S * 4)
    assert bench.mqtt.to("a") == 1, bench.row("a").detail
    assert bench.row("a").state == "activated"


def test_a_deployment_made_before_deployments_were_rollouts_still_reads(bench: Bench) -> None:
    from hub.fleet.deployments import Deployments
    from hub.store.tables import Deployment, DeploymentDevice

    with session(bench.engine) as s:
        s.add(Deployment(id="old1", model="m", version=2, target="m/2/model.onnx", devices=2))
        s.flush()
        s.add(DeploymentDevice(deployment_id="old1", device_id="a", stage="healthy"))
        s.add(DeploymentDevice(deployment_id="old1", device_id="b", stage="sent"))
        s.commit()
    deployments = Deployments(bench.engine, bench.rollouts)

    st = deployments.status("old1")

    assert (st.stages, st.converged, st.finished, st.state) == (
        {"healthy": 1, "sent": 1},
        1,
        False,
        "running",
    )
    assert [d["id"] for d in deployments.list()] == ["old1"]
