"""One device cannot fill the hub's disk with outsized or future-dated windows (issue 11,
item 4), against a real hub and Mosquitto.

Before: 20,000 telemetry messages with a 4,096-character ``model`` grew the database by
93 MB in 5.4 s, and a window dated far in the future escaped retention. After: a model
name is at most 64 characters like the registry's, and a telemetry or drift window dated
more than ``MAX_CLOCK_SKEW_S`` ahead of the hub's clock is refused and counted.
"""

from __future__ import annotations

import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from pg_schemas import hub_engine
from sqlmodel import func, select
from waiting import wait_for

from hub import Hub, HubConfig
from hub.fleet.deployments import EVENTS_MAX_AGE_S, run_event_retention
from hub.store.tables import EventRecord, Telemetry, session
from hub.transport.broker import Mosquitto
from hub.transport.budget import Budget
from hub.transport.decode import MAX_CLOCK_SKEW_S
from shared import protocol

pytestmark = [pytest.mark.broker]


def window(seq: int, end: float, model: str = "m") -> bytes:
    body = {
        "seq": seq,
        "start": end - 10,
        "end": end,
        "model": model,
        "version": 1,
        "count": 1,
        "errors": 0,
        "latency_us": {"p50": 1.0, "p95": 1.0, "p99": 1.0},
    }
    # the envelope as a device dates it: its own clock, honest or not
    return protocol.encode("telemetry", body, ts=end)


def test_outsized_and_future_windows_are_refused_and_counted(
    private_mosquitto: Mosquitto, tmp_path: Path
) -> None:
    hub = Hub(
        HubConfig(
            data_dir=tmp_path / "hub", broker_url=private_mosquitto.address.url, client_id="h-il"
        )
    ).start()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="greedy-1")
    client.connect(private_mosquitto.address.host, private_mosquitto.address.port)
    client.loop_start()
    try:
        now = time.time()
        topic = protocol.topic("greedy-1", "telemetry")
        sends = [
            window(1, now),  # honest
            window(2, now + MAX_CLOCK_SKEW_S / 2),  # a clock a little ahead: accepted
            window(3, now + 86_400 * 365),  # a year ahead
        ]
        for payload in sends:
            client.publish(topic, payload, qos=1).wait_for_publish(5)
        with pytest.raises(Exception, match="bad_body"):  # the device's own encoder refuses it
            window(4, now, model="m" * 4096)
        raw = window(4, now).replace(b'"model":"m"', b'"model":"' + b"m" * 4096 + b'"')
        client.publish(topic, raw, qos=1).wait_for_publish(5)
        wait_for(lambda: _rows(hub) >= 2, 10, "the accepted windows")
        wait_for(lambda: hub.mqtt.dropped["future_window"] == 1, 10, "the future window")
        wait_for(lambda: hub.mqtt.dropped["bad_body"] == 1, 10, "the outsized model name")
        time.sleep(0.5)
        assert _rows(hub) == 2
    finally:
        client.loop_stop()
        client.disconnect()
        hub.stop()


def _rows(hub: Hub, device_id: str | None = None) -> int:
    q = select(func.count()).select_from(Telemetry)
    if device_id is not None:
        q = q.where(Telemetry.device_id == device_id)
    with session(hub.engine) as s:
        return int(s.exec(q).one())


def event(deployment: str, i: int) -> bytes:
    body = {"deployment": deployment, "model": "m", "version": 1, "stage": "downloading"}
    return protocol.encode("event", {**body, "detail": f"bogus {i}"}, ts=time.time())


def test_a_flooding_device_is_held_to_its_budget_and_its_stray_events_are_dropped(
    private_mosquitto: Mosquitto, tmp_path: Path
) -> None:
    """Before: 5,000 events with bogus deployment ids added 45 MB, for ever, and nothing
    bounded how fast one device wrote. After: events for a deployment the device is not
    part of are dropped and counted; beyond its ingest budget (a burst, then a sustained
    rate) a device's reports are dropped and counted; a quiet device is not affected."""
    budget = Budget(per_s=50.0, burst=300.0, bytes_per_s=1e9, bytes_burst=1e9)
    hub = Hub(
        HubConfig(
            data_dir=tmp_path / "hub",
            broker_url=private_mosquitto.address.url,
            client_id="h-flood",
            ingest_budget=budget,
        )
    ).start()
    flood = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="flood-1")
    quiet = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="quiet-1")
    for c in (flood, quiet):
        c.max_inflight_messages_set(200)
        c.connect(private_mosquitto.address.host, private_mosquitto.address.port)
        c.loop_start()
    try:
        started = time.monotonic()
        events = protocol.topic("flood-1", "events")
        for i in range(2000):  # events for deployments nobody made
            flood.publish(events, event(f"bogus-{i}", i), qos=1)
        now = time.time()
        telemetry = protocol.topic("flood-1", "telemetry")
        last = None
        for i in range(3000):
            last = flood.publish(telemetry, window(i, now), qos=1)
        assert last is not None
        last.wait_for_publish(60)
        sent_s = time.monotonic() - started
        for i in range(5):
            quiet.publish(protocol.topic("quiet-1", "telemetry"), window(i, now), qos=1)
        wait_for(lambda: _rows(hub, "quiet-1") == 5, 20, "the quiet device's windows")
        wait_for(lambda: hub.mqtt.dropped["over_ingest_budget"] > 0, 20, "drops counted")
        time.sleep(1.0)
        hub.ingest.flush()
        elapsed = time.monotonic() - started
        with session(hub.engine) as s:
            stored_events = int(s.exec(select(func.count()).select_from(EventRecord)).one())
        paid = 5000 - hub.mqtt.dropped["over_ingest_budget"]
        print(f"5,000 reports in {sent_s:.1f} s: {paid} let in, {stored_events} events stored")
        # every message the budget let in is accounted for: a stray event or a window
        assert hub.ingest.counts["events_not_addressed"] + _rows(hub, "flood-1") == paid
        assert stored_events == 0
        assert paid <= budget.burst + budget.per_s * elapsed + 1
        assert paid < 5000 / 2, f"sent in {sent_s:.1f} s, {paid} let in"
    finally:
        for c in (flood, quiet):
            c.loop_stop()
            c.disconnect()
        hub.stop()


def test_events_expire_after_their_age(tmp_path: Path) -> None:
    engine = hub_engine(tmp_path)
    now = time.time()
    with session(engine) as s:
        for age_days in (400, 366, 10, 0):
            ts = now - age_days * 86400
            s.add(
                EventRecord(
                    device_id="d", deployment_id="x", model="m", version=1, stage="healthy", ts=ts
                )
            )
        s.commit()
    assert run_event_retention(engine, EVENTS_MAX_AGE_S, now=now) == 2
    with session(engine) as s:
        left = sorted(round((now - e.ts) / 86400) for e in s.exec(select(EventRecord)))
    assert left == [0, 10]
