"""Device states and deployment events of one ingest batch, written with a few queries.

Each ``state`` updates the device's row (status, class, runtime, the model it runs, when
the hub last heard of it); each ``event`` is recorded and moves the device's row of its
rollout (hub/fleet/states.py) or of its plain deployment. A state's ``last`` field (the
device's latest event, docs/protocol.md) is applied like an event unless the hub has it
already: that is how an event lost while the hub had no subscription comes back.
:func:`forget_presence` marks devices ``unknown`` when the hub's broker changed.

An event (or a ``last``) for a deployment or rollout the device is not part of is
dropped and counted as ``events_not_addressed``: the hub made no such deployment for that
device, so the row would only be a device's free write to the disk (issue 11, item 4).

Messages are applied in arrival order, so a later event overrides an earlier one. The rows
a batch touches are loaded with one query per table (not a query per message, and no
autoflush in between), the event log is appended with one ``executemany``: a 1,000-device
rollout sends ~10 such messages per device within seconds (bench/rollout.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TypeVar

from sqlalchemy import Engine, insert, update
from sqlmodel import Session, col, select

from hub.fleet import probation
from hub.fleet.states import CHANGED, IN_FLIGHT, accepts, apply_event
from hub.ingest.report import Report
from hub.store.tables import DeploymentDevice, Device, EventRecord, Rollout, RolloutDevice
from shared.protocol import Message

IN_LIST_MAX = 500  # values per SQL IN (...) list: well under SQLite's parameter limit
READ_BACK = "read back from the device's retained state"
UNKNOWN = "unknown"  # a device's status while the hub cannot tell (forget_presence)

Key = tuple[str, str]  # (deployment id, device id)
EventKey = tuple[str, str, str, int]  # (device, deployment, stage, version)


R = TypeVar("R", RolloutDevice, DeploymentDevice)


class ProgressApplier:
    """Stores ``state`` and ``events`` reports (a :class:`hub.ingest.report.ReportApplier`)."""

    def apply(self, s: Session, reports: Sequence[Report]) -> Mapping[str, int]:
        return apply_progress(s, reports)

    def committed(self, reports: Sequence[Report]) -> Mapping[str, int]:
        return {}


def apply_progress(s: Session, reports: Sequence[Report]) -> Mapping[str, int]:
    """Stage the states and events among ``reports`` in ``s`` (the caller commits); the
    counts of what was dropped."""
    mine = [r for r in reports if r.kind in ("state", "events")]
    if not mine:
        return {}
    with s.no_autoflush:
        batch = _Batch(s, mine)
        batch.apply()
    return {"events_not_addressed": batch.not_addressed} if batch.not_addressed else {}


class _Batch:
    def __init__(self, s: Session, reports: list[Report]) -> None:
        self.s = s
        self.reports = reports
        self.records: list[dict[str, Any]] = []
        self.reopen: set[str] = set()
        self.not_addressed = 0  # events for a deployment the device is not part of
        lasts = [(r.device_id, r.message.body["last"]) for r in reports if _last(r.message)]
        keys = {(r.message.body["deployment"], r.device_id) for r in reports if r.kind == "events"}
        keys |= {(last["deployment"], device_id) for device_id, last in lasts}
        reporting = {r.device_id for r in reports if r.kind == "state"}
        self.devices = {d.id: d for d in _in(s, Device, col(Device.id), reporting)}
        self.rollout_rows = _pairs(s, RolloutDevice, col(RolloutDevice.rollout_id), keys)
        self.deployment_rows = _pairs(
            s, DeploymentDevice, col(DeploymentDevice.deployment_id), keys - set(self.rollout_rows)
        )
        self.seen = _seen_events(s, lasts)

    def apply(self) -> None:
        for r in self.reports:
            if r.kind == "state":
                self._state(r)
            else:
                self._event(r.device_id, r.message.body, r.message.ts, r.received)
        if self.records:
            self.s.execute(insert(EventRecord), self.records)
        if self.reopen:
            # a device of a halted or aborted rollout reported the new version late: the
            # rollout has something to put back again, so its engine must visit it again
            self.s.execute(
                update(Rollout)
                .where(col(Rollout.id).in_(self.reopen), col(Rollout.settled_at).is_not(None))
                .values(settled_at=None)
            )

    def _state(self, r: Report) -> None:
        body = r.message.body
        dev = self.devices.get(r.device_id)
        if dev is None:
            dev = Device(id=r.device_id, first_seen=r.received, last_seen=r.received)
            self.devices[r.device_id] = dev
            self.s.add(dev)
        dev.status = str(body["status"])
        # the hub's clock, not the device's: rollouts compare it with when they sent a
        # command (a retained state replayed at the hub's resubscribe counts too: it is
        # how the hub learns of a reconnect it was not subscribed to see)
        dev.last_seen = max(dev.last_seen, r.received) if dev.last_seen else r.received
        for name in ("device_class", "runtime", "agent_version", "root_version"):
            if name in body:
                setattr(dev, name, body[name])
        models: Mapping[str, Any] | None = body.get("models")
        if models is not None:
            # every model it runs; model/version/sha256 keep naming the first, as before
            dev.models = {
                name: {"version": info["version"], "sha256": info.get("sha256")}
                for name, info in models.items()
            }
            model, info = next(iter(models.items()), (None, None))
            dev.model = model
            dev.version = info["version"] if info else None
            dev.sha256 = info.get("sha256") if info else None
        last = body.get("last")
        if last is not None and _event_key(r.device_id, last) not in self.seen:
            self._event(r.device_id, {**last, "detail": READ_BACK}, float(last["ts"]), r.received)
        if last is not None:
            row = self.rollout_rows.get((last["deployment"], r.device_id))
            if row is not None and row.state in IN_FLIGHT:
                # a state whose latest event is about this rollout is a word about it: the
                # device has the command (it publishes its state on activation, then
                # serves its probation), so it is not "back and silent" (reconciliation)
                row.updated_at = max(row.updated_at, r.received)

    def _event(self, device_id: str, b: Mapping[str, Any], ts: float, received: float) -> None:
        ts = min(ts, received)  # no event happened after the hub had it (nor escapes retention)
        key = (b["deployment"], device_id)
        rollout_row = self.rollout_rows.get(key)
        row = self.deployment_rows.get(key)
        if rollout_row is None and row is None:
            self.not_addressed += 1  # no deployment of this hub's was sent to this device
            return
        self.seen.add(_event_key(device_id, b))
        self.records.append(
            {
                "device_id": device_id,
                "deployment_id": b["deployment"],
                "model": b["model"],
                "version": b["version"],
                "stage": b["stage"],
                "reason": b.get("reason"),
                "detail": b.get("detail"),
                "ts": ts,
            }
        )
        if rollout_row is not None:
            moved = apply_event(rollout_row, b["stage"], b.get("reason"), b.get("detail"), received)
            if moved:
                probation.note(rollout_row, b["stage"], b, received)
            if moved and rollout_row.state in CHANGED:
                self.reopen.add(rollout_row.rollout_id)
            return
        if row is None or not accepts(row.stage, b["stage"]):
            return  # late progress after the outcome, or a stale copy's refusal (states.py)
        row.stage = b["stage"]
        row.reason = b.get("reason")
        row.detail = b.get("detail")
        row.updated_at = ts


def _last(message: Message) -> bool:
    return message.type == "state" and message.body.get("last") is not None


def _event_key(device_id: str, b: Mapping[str, Any]) -> EventKey:
    return (device_id, str(b["deployment"]), str(b["stage"]), int(b["version"]))


def _in(s: Session, table: type[Any], column: Any, values: Iterable[str]) -> list[Any]:
    """Rows of ``table`` whose ``column`` is one of ``values`` (in IN lists of bounded size)."""
    values = sorted(set(values))
    out: list[Any] = []
    for i in range(0, len(values), IN_LIST_MAX):
        out += s.exec(select(table).where(column.in_(values[i : i + IN_LIST_MAX]))).all()
    return out


def _pairs(s: Session, table: type[R], deployment_column: Any, keys: set[Key]) -> dict[Key, R]:
    """The rows of ``table`` for these (deployment, device) keys."""
    out: dict[Key, R] = {}
    by_deployment: dict[str, set[str]] = {}
    for deployment, device_id in keys:
        by_deployment.setdefault(deployment, set()).add(device_id)
    device_column = col(table.device_id)
    for deployment, device_ids in by_deployment.items():
        ids = sorted(device_ids)
        for i in range(0, len(ids), IN_LIST_MAX):
            q = select(table).where(
                deployment_column == deployment, device_column.in_(ids[i : i + IN_LIST_MAX])
            )
            for row in s.exec(q):
                out[(deployment, row.device_id)] = row
    return out


def _seen_events(s: Session, lasts: list[tuple[str, Mapping[str, Any]]]) -> set[EventKey]:
    """Events already recorded that some state's ``last`` names."""
    wanted = {_event_key(device_id, last) for device_id, last in lasts}
    if not wanted:
        return set()
    seen: set[EventKey] = set()
    ids = sorted({k[0] for k in wanted})
    deployments = sorted({k[1] for k in wanted})
    for i in range(0, len(ids), IN_LIST_MAX):
        q = select(
            EventRecord.device_id, EventRecord.deployment_id, EventRecord.stage, EventRecord.version
        ).where(
            col(EventRecord.device_id).in_(ids[i : i + IN_LIST_MAX]),
            col(EventRecord.deployment_id).in_(deployments),
        )
        seen.update(k for k in map(tuple, s.exec(q)) if k in wanted)
    return seen


def forget_presence(engine: Engine, before: float) -> int:
    """Mark ``unknown`` every device the hub has not heard from since ``before``.

    For a hub whose broker changed (another URL, or a private broker started afresh): a
    device's ``online`` rested on its Last Will, which went with the old broker, and its
    ``offline`` may have been undone there. Its next ``state`` (the agent sends one on each
    connect) sets it again. Returns how many devices it marked.
    """
    with Session(engine) as s:
        result = s.execute(
            update(Device)
            .where(col(Device.status) != UNKNOWN, col(Device.last_seen) < before)
            .values(status=UNKNOWN)
        )
        s.commit()
        return int(getattr(result, "rowcount", 0) or 0)
