"""The outbox: alerts read from the rows that record what happened, written once, with a
delivery for each receiver that wants them, in the same transaction as the read cursor.

Sources, each read behind a cursor kept in ``AlertCursor`` (so a restarted hub goes on
where it stopped, and nothing that happened while it was down is lost):

- ``drift``: ``DriftEvent`` rows by id (hub/telemetry/drift.py writes one per raise and
  clear);
- ``rollout``: ``Rollout`` rows halted, by ``ended_at`` (hub/fleet/rollout_engine.py);
- ``loop``: ``LoopRun`` rows done or failed, by ``ended_at`` (hub/loop.py).

Each read goes back a little behind its cursor (``ID_SLACK``, ``TIME_SLACK_S``): a
transaction that committed after a later one (PostgreSQL) is still seen, and the message's
unique ``source_key`` keeps it from being sent twice. A hub's first start sets the cursors
to what is there: what happened before alerts existed is not sent.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Final, TypeVar

from sqlalchemy import Engine, String, exists, func, literal
from sqlmodel import Session, col, select

from hub.alerts.messages import drift_message, loop_message, rollout_message
from hub.alerts.policy import DeliveryPolicy
from hub.alerts.receivers import ReceiverSpec, spec_of
from hub.store.alert_tables import AlertCursor, AlertDelivery, AlertMessage, AlertReceiver
from hub.store.tables import DriftAlert, DriftEvent, LoopRun, Rollout, session

__all__ = ["ID_SLACK", "TIME_SLACK_S", "Outbox"]

ID_SLACK: Final = 100  # drift event ids read again behind the cursor
TIME_SLACK_S: Final = 600.0  # seconds of ended rollouts and runs read again behind it
BATCH: Final = 500  # source rows read per pass and source

T = TypeVar("T")


class Outbox:
    """Reads the sources into messages and deliveries. One caller at a time."""

    def __init__(
        self,
        engine: Engine,
        policy: DeliveryPolicy,
        count: Callable[[str, int], None],
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.engine = engine
        self.policy = policy
        self.count = count  # the dispatcher's counters
        self.clock = clock

    def collect(self) -> int:
        """Read every source once; how many messages were written."""
        written = 0
        with session(self.engine) as s:
            receivers = [spec_of(r) for r in s.exec(select(AlertReceiver))]
            written += self._drift(s, receivers)
            written += self._ended(s, receivers, "rollout")
            written += self._ended(s, receivers, "loop")
            s.commit()
        return written

    def enqueue(self, message: AlertMessage, receivers: Sequence[ReceiverSpec]) -> AlertDelivery:
        """Write ``message`` with a delivery to each of ``receivers`` (a test alert: one);
        the first delivery."""
        with session(self.engine) as s:
            deliveries = self._write(s, message, receivers)
            s.commit()
            for d in deliveries:
                s.refresh(d)
        return deliveries[0]

    # ------------------------------------------------------------- sources

    def _drift(self, s: Session, receivers: list[ReceiverSpec]) -> int:
        cursor = self._cursor(s, "drift", lambda: s.exec(select(func.max(DriftEvent.id))).one())
        since = self.clock() - self.policy.retention_s  # never again what retention deleted
        ids = s.exec(
            select(DriftEvent.id)
            .where(col(DriftEvent.id) > cursor.position - ID_SLACK, col(DriftEvent.ts) > since)
            .order_by(col(DriftEvent.id))
            .limit(BATCH + ID_SLACK)
        ).all()
        fresh = self._unseen(s, {f"drift-event:{i}": i for i in ids})
        events = (
            select(DriftEvent).where(col(DriftEvent.id).in_(fresh)).order_by(col(DriftEvent.id))
        )
        for event in s.exec(events):
            self._write(s, drift_message(event, s.get(DriftAlert, event.alert_id)), receivers)
        self._advance(s, cursor, [float(i or 0) for i in ids])
        return len(fresh)

    def _ended(self, s: Session, receivers: list[ReceiverSpec], source: str) -> int:
        """Halted rollouts, or loop runs that ended, since the source's cursor: those
        without a message yet (so a busy stretch behind the cursor never stalls it)."""
        cursor = self._cursor(s, source, self.clock)
        after = cursor.position - TIME_SLACK_S
        sent = select(AlertMessage.source_key)
        messages: list[AlertMessage] = []
        ends: list[float] = []
        if source == "rollout":
            key = literal("rollout:", String) + col(Rollout.id) + ":halted"
            for r in s.exec(
                select(Rollout)
                .where(col(Rollout.state) == "halted", col(Rollout.ended_at) > after)
                .where(~exists(sent.where(col(AlertMessage.source_key) == key)))
                .order_by(col(Rollout.ended_at))
                .limit(BATCH)
            ):
                messages.append(rollout_message(r))
                ends.append(r.ended_at or 0.0)
        else:
            key = literal("loop:", String) + col(LoopRun.id) + ":" + col(LoopRun.stage)
            for run in s.exec(
                select(LoopRun)
                .where(col(LoopRun.stage).in_(("done", "failed")), col(LoopRun.ended_at) > after)
                .where(~exists(sent.where(col(AlertMessage.source_key) == key)))
                .order_by(col(LoopRun.ended_at))
                .limit(BATCH)
            ):
                messages.append(loop_message(run))
                ends.append(run.ended_at or 0.0)
        for message in messages:
            self._write(s, message, receivers)
        self._advance(s, cursor, ends)
        return len(messages)

    def _cursor(self, s: Session, source: str, start: Callable[[], float | None]) -> AlertCursor:
        cursor = s.get(AlertCursor, source)
        if cursor is None:  # the first start: from what is there now, slack and all
            slack = ID_SLACK if source == "drift" else TIME_SLACK_S
            cursor = AlertCursor(source=source, position=float(start() or 0) + slack)
            s.add(cursor)
        return cursor

    def _advance(self, s: Session, cursor: AlertCursor, seen: list[float]) -> None:
        """Move the cursor past ``seen`` (written only when it moves)."""
        if seen and max(seen) > cursor.position:
            cursor.position, cursor.updated_at = max(seen), self.clock()
            s.add(cursor)

    @staticmethod
    def _unseen(s: Session, keyed: dict[str, T]) -> list[T]:
        if not keyed:
            return []
        seen = set(
            s.exec(select(AlertMessage.source_key).where(col(AlertMessage.source_key).in_(keyed)))
        )
        return [row for key, row in keyed.items() if key not in seen]

    # ------------------------------------------------------------- fan-out

    def _write(
        self, s: Session, message: AlertMessage, receivers: Sequence[ReceiverSpec]
    ) -> list[AlertDelivery]:
        now = self.clock()
        message.created_at = now
        s.add(message)
        s.flush()
        assert message.id is not None
        deliveries = []
        for receiver in receivers:
            if message.kind != "test" and not receiver.wants(message.kind, message.model):
                continue
            self._make_room(s, receiver.name)
            delivery = AlertDelivery(
                message_id=message.id,
                receiver=receiver.name,
                fingerprint=message.fingerprint,
                next_at=now,
                created_at=now,
                updated_at=now,
            )
            s.add(delivery)
            deliveries.append(delivery)
        self.count("messages", 1)
        s.flush()
        return deliveries

    def _make_room(self, s: Session, receiver: str) -> None:
        """Drop a receiver's oldest pending deliveries beyond ``max_pending`` (counted)."""
        pending = col(AlertDelivery.status) == "pending"
        mine = col(AlertDelivery.receiver) == receiver
        n = s.exec(select(func.count()).select_from(AlertDelivery).where(pending, mine)).one()
        over = n - self.policy.max_pending + 1
        if over <= 0:
            return
        oldest = s.exec(
            select(AlertDelivery).where(pending, mine).order_by(col(AlertDelivery.id)).limit(over)
        ).all()
        for d in oldest:
            d.status, d.reason, d.updated_at = "dropped", "over max_pending", self.clock()
            s.add(d)
        self.count("dropped", len(oldest))
