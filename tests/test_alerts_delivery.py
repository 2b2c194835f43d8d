"""Delivering alerts (hub/alerts/): retries with backoff, a receiver that is down or slow,
the bounds on what waits, and the signature a receiver checks.

Real parts: SQLite files, the hub's DriftMonitor raising and clearing alerts from drift
windows the agent's recorder made (as tests/test_drift.py feeds them), the dispatcher's
own thread and httpx, and real HTTP receivers on loopback (tests/alert_receiver.py). No
broker: nothing here travels over MQTT. The flows through a whole hub (drift, rollout
halts, the loop, a restart) are in tests/test_alerts.py.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from alert_receiver import WebhookReceiver, closed_port
from pg_schemas import hub_engine
from sqlalchemy import Engine
from test_drift import BASELINE, feed
from waiting import wait_for

from hub import HubConfig
from hub.alerts import (
    DeliveryPolicy,
    Dispatcher,
    ReceiverError,
    ReceiverSpec,
    SignatureError,
    sign,
    verify,
)
from hub.telemetry.drift import DriftMonitor

SECRET = "s3cret-for-the-alert-tests"


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    e = hub_engine(tmp_path)
    yield e
    e.dispose()


@pytest.fixture
def monitor(engine: Engine) -> DriftMonitor:
    return DriftMonitor(engine, baselines=lambda model, version: BASELINE)


def dispatcher(engine: Engine, **policy: float) -> Dispatcher:
    settings = {"tick_s": 0.02, "backoff_s": 0.2, "timeout_s": 1.0, **policy}
    return Dispatcher(engine, DeliveryPolicy(**settings), seed=7)  # type: ignore[arg-type]


def raise_drift(monitor: DriftMonitor, device: str, seq: int = 0) -> int:
    """Two shifted windows of three: the default policy opens a device alert."""
    for i in range(2):
        feed(monitor, device, seq + i, time.time(), shifted=True)
    return seq + 2


def clear_drift(monitor: DriftMonitor, device: str, seq: int) -> int:
    for i in range(3):
        feed(monitor, device, seq + i, time.time(), shifted=False)
    return seq + 3


def test_a_receiver_answering_500_twice_gets_it_on_the_third_try_after_backoff(
    engine: Engine, monitor: DriftMonitor
) -> None:
    d = dispatcher(engine, backoff_s=0.2).start()
    with WebhookReceiver(SECRET, answers=(500, 500)) as hook:
        d.receivers.add(ReceiverSpec("flaky", hook.url, SECRET, ("drift",)), by="test")
        try:
            raise_drift(monitor, "dev-1")
            got = hook.wait(3)
            wait_for(lambda: d.deliveries("flaky")[0]["status"] == "sent", 5, "sent")
        finally:
            d.stop()
    assert [r.answered for r in got] == [500, 500, 200] and all(r.signed for r in got)
    assert got[0].body == got[2].body  # the same alert, retried
    ids = {r.headers["x-edgefleet-delivery"] for r in got}
    assert len(ids) == 1  # one delivery, three tries
    # backoff: 0.2 s then 0.4 s, each drawn between half and all of it
    first, second = got[1].at - got[0].at, got[2].at - got[1].at
    assert 0.1 <= first < 0.2 + 0.15, first
    assert 0.2 <= second < 0.4 + 0.15, second
    [delivery] = d.deliveries("flaky")
    assert delivery["attempts"] == 3 and delivery["last_status"] == 200
    assert [a["http_status"] for a in delivery["history"]] == [500, 500, 200]
    assert all(a["duration_ms"] > 0 and a["ts"] > 0 for a in delivery["history"])
    assert d.counts["sent"] == 1 and d.counts["retried"] == 2 and d.counts["attempts"] == 3


def test_an_alerts_resolved_waits_for_its_firing_that_waits_for_a_retry(
    engine: Engine, monitor: DriftMonitor
) -> None:
    """The firing message fails once and waits 1 s for its retry; the hub restarts (what
    rested the receiver is gone) and the alert clears at once: the receiver still gets
    firing, then resolved, never resolved first."""
    d = dispatcher(engine, backoff_s=1.0).start()
    with WebhookReceiver(SECRET, answers=(500,)) as hook:
        d.receivers.add(ReceiverSpec("ordered", hook.url, SECRET, ("drift",)), by="test")
        try:
            seq = raise_drift(monitor, "dev-o")
            hook.wait(1)  # the first try of firing: 500
        finally:
            d.stop()
        clear_drift(monitor, "dev-o", seq)
        restarted = dispatcher(engine, backoff_s=1.0).start()
        try:
            got = hook.wait(3, timeout=10)
        finally:
            restarted.stop()
    assert [(r.answered, r.alert["status"]) for r in got] == [
        (500, "firing"),
        (200, "firing"),
        (200, "resolved"),
    ]


def test_a_dead_or_slow_receiver_fails_after_its_bound_and_others_are_unaffected(
    engine: Engine, monitor: DriftMonitor
) -> None:
    d = dispatcher(engine, max_attempts=3, backoff_s=0.05, timeout_s=0.5).start()
    dead_url = f"http://127.0.0.1:{closed_port()}/hook"
    with (
        WebhookReceiver(SECRET) as alive,
        WebhookReceiver(SECRET, delay_s=2.0) as slow,
    ):
        for name, url in (("dead", dead_url), ("slow", slow.url), ("alive", alive.url)):
            d.receivers.add(ReceiverSpec(name, url, SECRET, ("drift",)), by="test")
        try:
            raised_at = time.monotonic()
            seq = raise_drift(monitor, "dev-2")
            [firing] = alive.wait(1)
            clear_drift(monitor, "dev-2", seq)  # while slow still hangs on its first try
            cleared_at = time.monotonic()
            [_, resolved] = alive.wait(2)

            def given_up() -> bool:
                return all(
                    x["status"] == "failed" for r in ("dead", "slow") for x in d.deliveries(r)
                )

            wait_for(given_up, 15, "the dead and slow receivers' deliveries to fail")
        finally:
            d.stop()
    # the live receiver had each at once, while the others were failing
    assert firing.at - raised_at < 1.0 and resolved.at - cleared_at < 1.0
    assert (firing.alert["status"], resolved.alert["status"]) == ("firing", "resolved")
    assert firing.alert["fingerprint"] == resolved.alert["fingerprint"]
    for name, error in (("dead", "ConnectError"), ("slow", "ReadTimeout")):
        for delivery in d.deliveries(name):
            assert delivery["attempts"] == 3 and delivery["reason"] == "max_attempts (3)"
            assert [a["attempt"] for a in delivery["history"]] == [1, 2, 3]
            assert all(
                a["http_status"] is None and a["error"].startswith(error)
                for a in delivery["history"]
            ), delivery
            assert "127.0.0.1" not in str(delivery)  # no URL in what viewers see
    assert d.counts["sent"] == 2 and d.counts["failed"] == 4


def test_what_waits_for_a_receiver_is_capped_and_expires(
    engine: Engine, monitor: DriftMonitor
) -> None:
    """A receiver that stays down holds at most ``max_pending`` deliveries, the oldest
    dropped, and none past ``max_age_s``: each counted."""
    d = dispatcher(engine, max_pending=2, backoff_s=30.0, max_age_s=1.0, retention_s=1.0)
    d.start()
    d.receivers.add(ReceiverSpec("down", f"http://127.0.0.1:{closed_port()}/", SECRET), "t")
    try:
        seq = raise_drift(monitor, "dev-3")
        seq = clear_drift(monitor, "dev-3", seq)
        seq = raise_drift(monitor, "dev-3", seq)
        wait_for(lambda: d.counts["messages"] == 3, 5, "three alerts in the outbox")
        wait_for(lambda: d.counts["dropped"] == 1, 5, "the oldest dropped")
        statuses = sorted(x["status"] for x in d.deliveries("down"))
        assert statuses == ["dropped", "pending", "pending"] and d.pending() == {"down": 2}
        [dropped] = d.deliveries("down", status="dropped")
        assert dropped["reason"] == "over max_pending" and dropped["alert_status"] == "firing"
        wait_for(lambda: d.counts["failed"] == 2, 5, "the rest failed past max_age_s")
        assert {x["reason"] for x in d.deliveries("down", status="failed")} == {"max_age"}
        assert d.pending() == {}
    finally:
        d.stop()


@pytest.mark.parametrize(
    ("tamper", "reason"),
    [
        ({}, None),
        ({"secret": "another-secret-entirely"}, "mismatch"),
        ({"body": b'{"status":"resolved"}'}, "mismatch"),
        ({"now": 1_000_000.0 + 301}, "stale"),
        ({"now": 1_000_000.0 - 301}, "stale"),
        ({"headers": {"X-Edgefleet-Timestamp": "1000000"}}, "missing"),
        ({"headers": {"X-Edgefleet-Timestamp": "soon", "X-Edgefleet-Signature": "x"}},
         "malformed"),
    ],
    ids=["good", "wrong-secret", "body-changed", "replayed-later", "from-the-future",
         "no-signature", "bad-timestamp"],
)  # fmt: skip
def test_a_receiver_detects_a_wrong_signature_or_a_replay(
    tamper: dict[str, object], reason: str | None
) -> None:
    body = b'{"status":"firing"}'
    headers = sign(SECRET, body, timestamp=1_000_000)
    assert headers["X-Edgefleet-Signature"].startswith("sha256=")
    args = {"secret": SECRET, "headers": headers, "body": body, "now": 1_000_000.0 + 5}
    args.update(tamper)
    if reason is None:
        verify(**args)  # type: ignore[arg-type]
        return
    with pytest.raises(SignatureError) as e:
        verify(**args)  # type: ignore[arg-type]
    assert e.value.reason == reason


def test_the_snippet_in_the_docs_checks_what_the_hub_signs() -> None:
    """docs/alerts.md's verification snippet, run as a receiver would paste it."""
    page = (Path(__file__).parent.parent / "docs" / "alerts.md").read_text()
    section = page.split("## Checking the signature", 1)[1]
    [code] = re.findall(r"```python\n(.*?)```", section, re.S)[:1]
    namespace: dict[str, object] = {}
    exec(code, namespace)
    check = namespace["check"]
    assert callable(check)
    body = b'{"status":"firing"}'

    def lower(headers: dict[str, str]) -> dict[str, str]:
        return {k.lower(): v for k, v in headers.items()}

    run: Callable[..., bool] = check
    assert run(SECRET, lower(sign(SECRET, body)), body) is True
    assert run("another-secret-entirely", lower(sign(SECRET, body)), body) is False
    assert run(SECRET, lower(sign(SECRET, body)), body + b" ") is False
    replayed = lower(sign(SECRET, body, timestamp=int(time.time()) - 600))
    assert run(SECRET, replayed, body) is False
    assert run(SECRET, {}, body) is False


def test_bad_settings_are_refused_before_anything_runs(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="needs a secret"):
        HubConfig(data_dir=tmp_path, alert_receivers=(ReceiverSpec("x", "https://a.example/"),))
    with pytest.raises(ReceiverError, match="http:// or https:// only"):
        ReceiverSpec("x", "file:///etc/passwd", SECRET)
    with pytest.raises(ValueError, match="max_attempts"):
        DeliveryPolicy(max_attempts=0)


def test_what_happened_before_the_first_start_is_not_sent_and_later_is(
    engine: Engine, monitor: DriftMonitor
) -> None:
    """An existing hub gaining alerts does not page anyone for last month's drift."""
    seq = raise_drift(monitor, "dev-4")  # before alerts existed
    d = dispatcher(engine)
    d.receivers.add(ReceiverSpec("new", "http://127.0.0.1:9/", SECRET), "t")
    d.tick()
    assert d.counts["messages"] == 0
    clear_drift(monitor, "dev-4", seq)  # after: sent, as the alert's resolution
    d.tick()
    d.stop()
    [delivery] = d.deliveries("new")
    assert delivery["alert_status"] == "resolved" and d.counts["messages"] == 1


def test_a_receiver_refusing_the_signature_fails_the_delivery_at_once(
    engine: Engine, monitor: DriftMonitor
) -> None:
    """The hub holds another secret than the receiver: the receiver detects it (401), and
    a 4xx other than 408 or 429 is not retried."""
    d = dispatcher(engine).start()
    with WebhookReceiver(SECRET) as hook:
        d.receivers.add(ReceiverSpec("mismatched", hook.url, "not-the-receivers-secret"), "t")
        try:
            raise_drift(monitor, "dev-5")
            [got] = hook.wait(1)
            wait_for(lambda: d.deliveries("mismatched")[0]["status"] == "failed", 5, "failed")
            time.sleep(0.3)  # a backoff's worth: no second try comes
        finally:
            d.stop()
    assert not got.signed and got.answered == 401 and len(hook.received) == 1
    [delivery] = d.deliveries("mismatched")
    assert delivery["reason"] == "refused: HTTP 401" and delivery["attempts"] == 1
