"""The dispatcher: a thread that fills the outbox and sends what is due, with retries.

Each pass (every ``tick_s``, or at once when woken) it reads the sources into the outbox
(hub/alerts/outbox.py), fails deliveries older than ``max_age_s``, and gives each receiver
with deliveries due a turn on a small pool of sender threads: one turn per receiver at a
time, so a slow or dead receiver holds up only itself. A turn sends that receiver's due
deliveries oldest first (``batch`` at most, then another turn at once) and stops at the
first that fails; the receiver then rests until that delivery's next try (its backoff).
Every try is an ``AlertAttempt`` row.

What it counts, for /metrics (``counts``, plain ints): ``messages`` written, ``attempts``
made, ``sent``, ``retried`` (a try failed, another will come), ``failed`` (given up:
``max_attempts``, ``max_age`` or a refusing 4xx), ``dropped`` (over ``max_pending``),
``deleted`` (rows past ``retention_s``).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Final

import httpx
from sqlalchemy import Engine, func, update
from sqlmodel import col, select

from hub.alerts.history import deliveries, delivery_view
from hub.alerts.messages import probe_message
from hub.alerts.outbox import Outbox
from hub.alerts.payload import notification_body
from hub.alerts.policy import DeliveryPolicy, backoff_delay
from hub.alerts.receivers import Receivers, spec_of
from hub.alerts.sender import Outcome, post
from hub.store.alert_tables import AlertAttempt, AlertDelivery, AlertMessage, AlertReceiver
from hub.store.expiry import delete_older
from hub.store.tables import session

__all__ = ["Dispatcher"]

log = logging.getLogger(__name__)

RETENTION_EVERY_S: Final = 300.0  # seconds between deletions of rows past retention_s


class Dispatcher:
    """Fills the outbox and delivers it. Thread-safe.

    Args:
        engine: the hub's database.
        policy: timeouts, retries, backoff and bounds (hub/alerts/policy.py).
        seed: for the backoff's jitter (None: unpredictable).
    """

    def __init__(
        self,
        engine: Engine,
        policy: DeliveryPolicy | None = None,
        *,
        clock: Callable[[], float] = time.time,
        seed: int | None = None,
    ) -> None:
        self.engine = engine
        self.policy = policy or DeliveryPolicy()
        self.clock = clock
        self.counts: Counter[str] = Counter()
        self.receivers = Receivers(engine)
        self.outbox = Outbox(engine, self.policy, self._count, clock=clock)
        self._client = httpx.Client(trust_env=False)  # receivers are reached directly
        self._pool = ThreadPoolExecutor(self.policy.workers, thread_name_prefix="hub-alert")
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._busy: set[str] = set()  # receivers in a turn
        self._rest: dict[str, float] = {}  # receiver -> when it may be tried again
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._retained_at = 0.0

    def _count(self, name: str, n: int = 1) -> None:
        with self._lock:  # sender threads, the dispatcher and API calls all count
            self.counts[name] += n

    # ------------------------------------------------------------- lifecycle

    def start(self) -> Dispatcher:
        # A first start's cursors are set here, not when the thread first runs: an alert
        # raised after start() returns is one to send, however late the thread begins.
        self.outbox.collect()
        self._thread = threading.Thread(target=self._run, name="hub-alerts", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop passing; a POST under way ends within ``timeout_s``."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._client.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception:  # keep dispatching; the next pass may succeed
                log.exception("alerts: dispatcher pass failed")
            self._wake.wait(self.policy.tick_s)
            self._wake.clear()

    # ------------------------------------------------------------- a pass

    def tick(self) -> None:
        """Collect new alerts, fail the too old, and give due receivers a turn."""
        self.outbox.collect()
        now = self.clock()
        self._expire(now)
        if now - self._retained_at >= RETENTION_EVERY_S:
            self._retained_at = now
            self._retain(now)
        pending = col(AlertDelivery.status) == "pending"
        with session(self.engine) as s:
            q = select(AlertDelivery.receiver).where(pending, col(AlertDelivery.next_at) <= now)
            due = set(s.exec(q.distinct()))
        with self._lock:
            ready = [r for r in sorted(due) if r not in self._busy and self._rest.get(r, 0) <= now]
            self._busy.update(ready)
        for receiver in ready:
            self._pool.submit(self._turn, receiver)

    def _turn(self, name: str) -> None:
        try:
            receiver = self.receivers.find(name)
            if receiver is None:  # deleted since the pass
                with self._lock:
                    self._rest.pop(name, None)
                return
            sent = 0
            for delivery in self._in_order(name):
                if self._stop.is_set() or not self._send(receiver, delivery):
                    break
                sent += 1
            if sent == self.policy.batch:  # more may be due: another turn at once
                self._wake.set()
        except Exception:  # one receiver's trouble must not stop the others
            log.exception("alerts: sending to %s failed", name)
        finally:
            with self._lock:
                self._busy.discard(name)

    def _in_order(self, name: str) -> list[AlertDelivery]:
        """The receiver's due deliveries, oldest first, at most a batch, none of them an
        alert whose older message still waits: a receiver never gets an alert's
        ``resolved`` before its ``firing`` (the firing one may wait for a retry)."""
        with session(self.engine) as s:
            pending = s.exec(
                select(AlertDelivery)
                .where(col(AlertDelivery.receiver) == name, col(AlertDelivery.status) == "pending")
                .order_by(col(AlertDelivery.id))
            ).all()
        now, held, due = self.clock(), set(), []
        for delivery in pending:
            if delivery.next_at <= now and delivery.fingerprint not in held:
                due.append(delivery)
                if len(due) == self.policy.batch:
                    break
            held.add(delivery.fingerprint)  # a later message of it goes after this one
        return due

    def _send(self, receiver: AlertReceiver, delivery: AlertDelivery) -> bool:
        """Try one delivery and record it; whether the receiver took it."""
        assert delivery.id is not None
        with session(self.engine) as s:
            message = s.get(AlertMessage, delivery.message_id)
        if message is None:  # deleted by retention meanwhile
            return True
        body = notification_body(receiver.name, message, self.policy.external_url)
        outcome = post(
            self._client, receiver.url, receiver.secret, body, delivery.id, self.policy.timeout_s
        )
        self._record(delivery.id, outcome)
        return outcome.delivered

    def _record(self, delivery_id: int, outcome: Outcome) -> None:
        """The attempt, and what it means for the delivery, in one transaction."""
        now = self.clock()
        with session(self.engine) as s:
            d = s.get(AlertDelivery, delivery_id)
            if d is None:
                return
            d.attempts += 1
            d.last_status, d.last_error, d.updated_at = outcome.http_status, outcome.error, now
            s.add(
                AlertAttempt(
                    delivery_id=delivery_id,
                    receiver=d.receiver,
                    fingerprint=d.fingerprint,
                    attempt=d.attempts,
                    http_status=outcome.http_status,
                    error=outcome.error,
                    duration_ms=outcome.duration_ms,
                    ts=now,
                )
            )
            self._count("attempts")
            if d.status == "pending":  # not dropped meanwhile (its receiver deleted)
                self._judge(d, outcome, now)
            s.add(d)
            s.commit()
            if d.status == "failed":
                log.warning("alerts: delivery %d to %s failed: %s", d.id, d.receiver, d.reason)

    def _judge(self, d: AlertDelivery, outcome: Outcome, now: float) -> None:
        """Sent, failed, or another try after a backoff (the receiver rests till then)."""
        policy = self.policy
        if outcome.delivered:
            d.status = "sent"
            self._count("sent")
        elif not outcome.retryable:
            d.status, d.reason = "failed", f"refused: HTTP {outcome.http_status}"
            self._count("failed")
        elif d.attempts >= policy.max_attempts:
            d.status, d.reason = "failed", f"max_attempts ({policy.max_attempts})"
            self._count("failed")
        else:
            with self._lock:
                d.next_at = now + backoff_delay(policy, d.attempts, self._rng)
                self._rest[d.receiver] = d.next_at
            self._count("retried")

    def _expire(self, now: float) -> None:
        """Fail pending deliveries older than ``max_age_s`` (counted)."""
        too_old = (col(AlertDelivery.status) == "pending") & (
            col(AlertDelivery.created_at) < now - self.policy.max_age_s
        )
        with session(self.engine) as s:
            ids = s.exec(select(AlertDelivery.id).where(too_old)).all()
            if not ids:  # no write transaction on a quiet pass
                return
            gone = s.execute(  # type: ignore[attr-defined]
                update(AlertDelivery)
                .where(too_old, col(AlertDelivery.id).in_(ids))
                .values(status="failed", reason="max_age", updated_at=now)
            ).rowcount
            s.commit()
        if gone:
            self._count("failed", gone)
            log.warning("alerts: %d deliveries failed past max_age_s", gone)

    def _retain(self, now: float) -> None:
        cutoff = now - self.policy.retention_s
        gone = delete_older(self.engine, AlertAttempt, AlertAttempt.ts, cutoff)
        gone += delete_older(self.engine, AlertDelivery, AlertDelivery.created_at, cutoff)
        gone += delete_older(self.engine, AlertMessage, AlertMessage.created_at, cutoff)
        self._count("deleted", gone)

    # ------------------------------------------------------------- the API's calls

    def send_test(self, name: str, by: str | None) -> int:
        """Queue a test alert for receiver ``name`` now; its delivery id.

        Raises:
            ReceiverError: ``unknown``.
        """
        receiver = self.receivers.get(name)
        delivery = self.outbox.enqueue(probe_message(name, by), [spec_of(receiver)])
        assert delivery.id is not None
        with self._lock:
            self._rest.pop(name, None)  # an operator is waiting: try it now
        self._wake.set()
        return delivery.id

    def wait_tried(self, delivery_id: int, timeout_s: float) -> dict[str, Any] | None:
        """The delivery once it has been tried (or ``timeout_s`` passed)."""
        deadline = time.monotonic() + timeout_s
        while True:
            view = delivery_view(self.engine, delivery_id)
            if view is None or view["attempts"] > 0 or time.monotonic() > deadline:
                return view
            time.sleep(0.05)

    def pending(self) -> dict[str, int]:
        """Deliveries waiting, per receiver (for a gauge)."""
        with session(self.engine) as s:
            rows = s.exec(
                select(AlertDelivery.receiver, func.count())
                .where(col(AlertDelivery.status) == "pending")
                .group_by(col(AlertDelivery.receiver))
            ).all()
        return {receiver: int(n) for receiver, n in rows}

    def deliveries(
        self, receiver: str | None = None, status: str | None = None, limit: int = 100
    ) -> list[dict[str, Any]]:
        """Deliveries newest first, each with its attempts (hub/alerts/history.py)."""
        return deliveries(self.engine, receiver, status, limit)
