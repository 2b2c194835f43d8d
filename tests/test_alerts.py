"""Alerts from a whole hub to webhooks (hub/alerts/, hub/api/routes/alerts.py): a drift
alert raised and cleared, a rollout its gate halts, a closed-loop run that fails, a hub
restarted between an alert and its delivery; and the admin routes.

Real parts: a hub on SQLite with a real Mosquitto and a model it trained, served by
uvicorn; drift windows and device events go through the hub's own validation and ingest
(as tests/test_rollout_engine.py feeds them); the receivers are real HTTP servers that
check the signature (tests/alert_receiver.py).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from alert_receiver import WebhookReceiver, closed_port
from test_api_auth import Stage, start_stage, stop_stage
from waiting import wait_for

from agent.drift import DriftRecorder
from hub import Hub, HubConfig, pipeline_config
from hub.access.keys import Role
from hub.alerts import DeliveryPolicy, ReceiverSpec
from hub.fleet.rollout_spec import RolloutSpec
from hub.ingest.report import Report
from hub.store.tables import Device, DriftAlert, session
from hub.telemetry.drift import trust_baselines
from hub.transport.broker import Mosquitto
from shared import protocol
from shared.sensors import FEATURES, Shift, generate

pytestmark = pytest.mark.broker

SECRET = "a-receivers-secret-of-some-length"
FAST = DeliveryPolicy(
    external_url="https://hub.example:8080", tick_s=0.05, backoff_s=0.1, timeout_s=2.0
)
HOT = Shift(offset=tuple(15.0 if f == "temp_c" else 0.0 for f in FEATURES))


@pytest.fixture(scope="module")
def stage(mosquitto: Mosquitto, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stage]:
    s = start_stage(mosquitto, tmp_path_factory.mktemp("alerts"), alerts=FAST)
    s.hub.build_and_publish(pipeline_config(name="press", n_train=600, hidden=(16,)))
    yield s
    stop_stage(s)


@contextmanager
def receiver(stage: Stage, name: str, **settings: Any) -> Iterator[WebhookReceiver]:
    """A live receiver, configured through the API for the test and deleted after it."""
    admin = stage.as_role(Role.admin)
    with WebhookReceiver(SECRET) as hook:
        body = {"name": name, "url": hook.url, "secret": SECRET, **settings}
        r = admin.post("/alert-receivers", json=body)
        assert r.status_code == 201, r.text
        try:
            yield hook
        finally:
            assert admin.delete(f"/alert-receivers/{name}").status_code == 200


def report(hub: Hub, device_id: str, kind: str, msg_type: str, body: dict[str, Any]) -> None:
    """A device's message through the hub's real validation and ingest."""
    msg = protocol.decode(
        protocol.encode(msg_type, body, ts=time.time()), expect=protocol.TOPIC_TYPES[kind]
    )
    hub.ingest.write_batch([Report(device_id, kind, msg)])


def drift_window(hub: Hub, device_id: str, seq: int, *, shifted: bool) -> None:
    """A drift window the agent's recorder made against the signed baseline of press v1
    (of its inputs: the model's outputs would need the model run, and are not the point)."""
    rec = DriftRecorder()
    rec.activate("press", 1, trust_baselines(hub.registry, hub.trust)("press", 1))
    x, _ = generate(3000, seed=seq, shift=HOT if shifted else None)  # JS noise ~0.04
    rec.observe("press", 1, x, {})
    sketch = rec.drain()
    assert sketch is not None
    body = {"seq": seq, "model": "press", "version": 1, "sketch": sketch.sketch.to_dict()}
    report(hub, device_id, "drift", "drift", body)


def device_drift(hook: WebhookReceiver, device_id: str) -> list[dict[str, Any]]:
    return [
        r.alert
        for r in hook.alerts("EdgefleetDrift")
        if r.alert["labels"]["scope"] == "device" and r.alert["labels"]["scope_id"] == device_id
    ]


# ---------------------------------------------------------------- the three sources


def test_a_drift_alert_reaches_the_webhook_firing_then_resolved(stage: Stage) -> None:
    hub = stage.hub
    with receiver(stage, "drift-room", kinds=["drift"], models=["press"]) as hook:
        for seq in range(2):
            drift_window(hub, "press-dev-1", seq, shifted=True)
        wait_for(lambda: device_drift(hook, "press-dev-1"), 10, "the firing alert")
        for seq in range(2, 5):
            drift_window(hub, "press-dev-1", seq, shifted=False)
        wait_for(lambda: len(device_drift(hook, "press-dev-1")) == 2, 10, "the resolved alert")
        received = [
            r for r in hook.alerts("EdgefleetDrift") if r.alert in device_drift(hook, "press-dev-1")
        ]
    firing, resolved = device_drift(hook, "press-dev-1")
    assert all(r.signed and r.answered == 200 for r in received)
    payload = received[0].payload
    assert payload["version"] == "4" and payload["receiver"] == "drift-room"
    assert payload["status"] == "firing" and payload["externalURL"] == "https://hub.example:8080"
    assert payload["groupLabels"] == {"alertname": "EdgefleetDrift"}
    assert payload["commonLabels"] == firing["labels"]
    labels = firing["labels"]
    assert labels["model"] == "press" and labels["version"] == "1"
    assert (labels["scope"], labels["scope_id"], labels["severity"]) == (
        "device", "press-dev-1", "warning",
    )  # fmt: skip
    assert "temp_c" in firing["annotations"]["description"]
    assert firing["annotations"]["summary"] == "press: drift on device press-dev-1"
    assert firing["generatorURL"] == "https://hub.example:8080/drift/alerts?model=press"
    assert firing["endsAt"] == "0001-01-01T00:00:00Z" and firing["startsAt"].endswith("Z")
    assert resolved["status"] == "resolved" and resolved["endsAt"] != "0001-01-01T00:00:00Z"
    assert resolved["fingerprint"] == firing["fingerprint"]
    shown = stage.as_role(Role.viewer).get("/alert-deliveries", params={"receiver": "drift-room"})
    assert shown.status_code == 200
    sent = [d for d in shown.json() if d["fingerprint"] == firing["fingerprint"]]
    assert [d["alert_status"] for d in sent] == ["resolved", "firing"]  # newest first
    assert all(d["status"] == "sent" and d["history"][0]["http_status"] == 200 for d in sent)


def test_a_halted_rollout_reaches_the_webhook(stage: Stage) -> None:
    hub = stage.hub
    devices = ["halt-d1", "halt-d2"]
    with session(hub.engine) as s:  # what the devices' retained state tells the hub
        s.add_all(Device(id=d, status="online", last_seen=time.time()) for d in devices)
        s.commit()
    with receiver(stage, "ops-pager", kinds=["rollout"]) as hook:
        rollout = hub.rollouts.create(
            RolloutSpec(model="press", devices=tuple(devices), max_failure_ratio=0.0, min_sample=1)
        )
        body = {"deployment": rollout.id, "model": "press", "version": 1, "stage": "failed",
                "reason": "health_check_failed"}  # fmt: skip
        report(hub, "halt-d1", "events", "event", body)
        [got] = hook.wait(1, "EdgefleetRolloutHalted")
    alert = got.alert
    assert got.signed and alert["status"] == "firing"
    assert alert["labels"] == {
        "alertname": "EdgefleetRolloutHalted",
        "rollout": rollout.id,
        "model": "press",
        "version": "1",
        "severity": "critical",
    }
    assert alert["annotations"]["description"] == hub.rollouts.get(rollout.id).halted_reason
    assert "1 of 1 devices failed" in alert["annotations"]["description"]
    assert alert["generatorURL"].endswith(f"/rollouts/{rollout.id}")
    assert not hook.alerts("EdgefleetDrift")  # it asked for rollouts only


def test_a_failed_loop_run_reaches_the_webhook_with_why(stage: Stage) -> None:
    hub, operator = stage.hub, stage.as_role(Role.operator)
    policy = {"enabled": True, "capture_s": 0.5, "gather_s": 0, "cooldown_s": 600}
    with receiver(stage, "ml-team", kinds=["loop"], models=["press"]) as hook:
        assert operator.put("/loop/policies/press", json=policy).status_code == 200
        hub.datasets.grace_s = 0.5  # seconds after the capture for uploads to arrive
        with session(hub.engine) as s:  # what hub/telemetry/drift.py opens on a drifting device
            s.add(DriftAlert(model="press", version=1, scope="device", scope_id="ghost-7",
                             devices=["ghost-7"], features=["temp_c"]))  # fmt: skip
            s.commit()
        try:
            [got] = hook.wait(1, "EdgefleetLoopRun", timeout=20)
        finally:
            operator.put("/loop/policies/press", json={"enabled": False})
    [run] = stage.as_role(Role.viewer).get("/loop/runs").json()
    alert = got.alert
    assert got.signed and alert["status"] == "firing"
    assert alert["labels"]["loop_run"] == run["id"] and alert["labels"]["outcome"] == "failed"
    assert alert["labels"]["model"] == "press" and alert["labels"]["severity"] == "warning"
    assert alert["annotations"]["description"] == run["detail"]
    assert run["detail"].startswith("capture")  # why: ghost-7 never answered


# ---------------------------------------------------------------- a restart


def test_a_hub_restarted_between_an_alert_and_its_delivery_still_delivers_it(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    """The receiver is down when the alert fires, the hub stops before it is back, and an
    alert clears while the hub is down: the restarted hub delivers both."""
    port = closed_port()
    config = HubConfig(
        data_dir=tmp_path / "hub",
        broker_url=mosquitto.address.url,
        client_id="hub-alerts-restart",
        alerts=FAST,
        alert_receivers=(ReceiverSpec("later", f"http://127.0.0.1:{port}/hook", SECRET),),
    )
    hub = Hub(config).start()
    try:
        hub.build_and_publish(pipeline_config(name="press", n_train=600, hidden=(16,)))
        for seq in range(2):
            drift_window(hub, "restart-dev", seq, shifted=True)
        wait_for(lambda: any(d["attempts"] for d in hub.alerts.deliveries()), 10, "a try")
        tried = hub.alerts.deliveries()
    finally:
        hub.stop()
    assert tried and tried[0]["history"][0]["error"].startswith("ConnectError")
    with WebhookReceiver(SECRET, port=port) as hook:
        hub = Hub(config).start()
        try:
            for seq in range(2, 5):  # cleared while nothing sends: read from the outbox
                drift_window(hub, "restart-dev", seq, shifted=False)
            wait_for(lambda: len(device_drift(hook, "restart-dev")) == 2, 15, "both alerts")
        finally:
            hub.stop()
    firing, resolved = device_drift(hook, "restart-dev")
    assert (firing["status"], resolved["status"]) == ("firing", "resolved")


# ---------------------------------------------------------------- the routes


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"url": "ftp://example.com/hook"}, "url"),
        ({"url": "javascript:alert(1)"}, "url"),
        ({"url": "http://"}, "url"),
        ({"url": "https://example.com/" + "a" * 2048}, "url"),
        ({"name": "n" * 65}, "name"),
        ({"name": "bad name"}, "name"),
        ({"secret": "short"}, "secret"),
        ({"secret": "s" * 257}, "secret"),
        ({"kinds": ["disk"]}, "kinds"),
        ({"kinds": []}, "kinds"),
        ({"models": ["not a model"]}, "models"),
        ({"models": [f"m{i}" for i in range(101)]}, "models"),
    ],
    ids=["ftp", "javascript", "no-host", "url-too-long", "name-too-long", "name-space",
         "secret-short", "secret-long", "unknown-kind", "no-kind", "bad-model", "many-models"],
)  # fmt: skip
def test_a_bad_receiver_is_refused_with_a_422_naming_the_field(
    stage: Stage, change: dict[str, Any], field: str
) -> None:
    body = {"name": "bad-one", "url": "https://example.com/hook", **change}
    r = stage.as_role(Role.admin).post("/alert-receivers", json=body)
    assert r.status_code == 422, r.text
    assert field in r.text
    assert stage.as_role(Role.admin).get("/alert-receivers/bad-one").status_code == 404


def test_a_receivers_secret_is_shown_once_and_a_test_alert_reaches_it(stage: Stage) -> None:
    admin, viewer = stage.as_role(Role.admin), stage.as_role(Role.viewer)
    with WebhookReceiver("") as hook:
        r = admin.post("/alert-receivers", json={"name": "made-secret", "url": hook.url})
        assert r.status_code == 201, r.text
        secret = r.json()["secret"]
        assert len(secret) >= 32 and r.json()["kinds"] == ["drift", "rollout", "loop"]
        hook.secret = secret  # what the operator copies into the receiver's settings
        again = admin.post("/alert-receivers", json={"name": "made-secret", "url": hook.url})
        assert again.status_code == 409
        tested = admin.post("/alert-receivers/made-secret/test")
        assert tested.status_code == 200, tested.text
        [got] = hook.wait(1, "EdgefleetTest")
        listed = admin.get("/alert-receivers")
        one = admin.get("/alert-receivers/made-secret")
        audit = stage.audit(action="alert_receiver.create")
        deleted = admin.delete("/alert-receivers/made-secret")
    assert got.signed and got.payload["receiver"] == "made-secret"
    shown = tested.json()
    assert shown["status"] == "sent" and shown["history"][0]["http_status"] == 200
    for text in (listed.text, one.text, str(audit), deleted.text):
        assert secret not in text
    assert "made-secret" in listed.text and one.json()["url"] == hook.url
    assert viewer.get("/alert-receivers").status_code == 403  # URLs may carry tokens
    assert viewer.get("/alert-deliveries", params={"status": "sent"}).status_code == 200
    assert viewer.get("/alert-deliveries", params={"status": "lost"}).status_code == 422
    assert admin.post("/alert-receivers/made-secret/test").status_code == 404
    assert admin.delete("/alert-receivers/made-secret").status_code == 404
    assert stage.http().get("/alert-deliveries").status_code == 401  # no key
