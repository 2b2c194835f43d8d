"""Rollouts: canary, waves, a rate limit, a success gate, and auto-halt with fleet rollback.

A rollout sends one model version to a chosen set of devices (an explicit list, a device
class, tags, or a group) in waves: an optional canary first, then ``waves`` more. A
device succeeds when it reports ``healthy`` after its probation; it fails when it reports
``failed``, refuses the command, rolls itself back (probation), or does not finish within
``device_timeout_s`` of silence while online after ``retries`` re-sends. Once ``min_sample``
devices have finished,
a failure ratio above ``max_failure_ratio`` halts the rollout, and every device it changed
is sent a signed rollback to the version it ran before, so the fleet returns to it.

Everything lives in SQL (``Rollout``, ``RolloutDevice``); :meth:`Rollouts.tick` derives
what to do from the rows and the devices' reported state, so a hub killed at any point
resumes where it was. A device that is offline (its Last Will) does not time out, and
once it has been away longer than ``device_timeout_s`` it no longer holds up the next
wave: it is sent the command again when its retained state shows it back and it says
nothing of the deployment within ``RECONCILE_GRACE_S`` (reconciliation), not by hoping a
queued message survived. An outcome it reported while the hub could not hear it is read
back from the ``last`` field of that retained state (hub/fleet/progress.py). A device tagged
into a group later is sent the group's current version.

Errors::

    RolloutError            a request that cannot be met (bad spec, unknown devices,
                            a state change the rollout's state does not allow)
"""

from __future__ import annotations

import logging
import math
import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, NamedTuple

from sqlalchemy import Engine
from sqlmodel import Session, col, select

from hub.fleet.commands import CommandSender, RevokedDevices, no_revocations
from hub.fleet.progress import IN_LIST_MAX
from hub.fleet.states import CHANGED, DONE, IN_FLIGHT, failed, move
from hub.ml.registry import Registry
from hub.store.tables import Device, DeviceTag, Rollout, RolloutDevice, session

log = logging.getLogger(__name__)

TICK_S = 0.5  # seconds between passes over active rollouts
RECONCILE_GRACE_S = 5.0  # seconds a device back online may stay silent: then send again


class RolloutError(Exception):
    """A rollout request that cannot be met."""


@dataclass(frozen=True)
class RolloutSpec:
    """What to roll out, to whom, and how carefully."""

    model: str
    version: int | None = None  # default: the latest
    devices: tuple[str, ...] | None = None  # an explicit list
    device_class: str | None = None
    tags: tuple[str, ...] = ()  # devices carrying every one of these tags
    group: str | None = None  # devices tagged with it; later members follow
    canary: int = 0  # devices in the first wave
    canary_percent: float = 0.0  # or this share of the targets (rounded up)
    waves: int = 1  # waves after the canary
    rate_per_min: float | None = None  # devices sent a command per minute, at most
    max_failure_ratio: float = 0.2  # halt above this share of finished devices
    min_sample: int = 5  # finished devices before the ratio is judged
    device_timeout_s: float = 600.0  # from a send to the device's outcome
    retries: int = 2  # re-sends after a timeout before the device counts as failed
    rollback_on_halt: bool = True
    seed: str | None = None  # shuffles the waves (default: the rollout id)

    def __post_init__(self) -> None:
        problems = [
            msg
            for bad, msg in (
                (self.canary < 0, "canary must be >= 0"),
                (not 0 <= self.canary_percent <= 100, "canary_percent must be 0..100"),
                (self.waves < 1, "waves must be >= 1"),
                (self.rate_per_min is not None and self.rate_per_min <= 0, "rate must be > 0"),
                (not 0 <= self.max_failure_ratio <= 1, "max_failure_ratio must be 0..1"),
                (self.min_sample < 1, "min_sample must be >= 1"),
                (self.device_timeout_s <= 0, "device_timeout_s must be > 0"),
                (self.retries < 0, "retries must be >= 0"),
            )
            if bad
        ]
        if problems:
            raise RolloutError("; ".join(problems))


@dataclass
class RolloutStatus:
    id: str
    model: str
    version: int
    state: str
    wave: int  # 1-based, for people
    waves: int
    devices: int
    counts: dict[str, int]
    converged: int
    failures: int
    failure_ratio: float
    rolled_back: int
    offline: int  # devices without an outcome that are offline: reconciled when back
    finished: bool
    halted_reason: str | None
    created_at: float
    ended_at: float | None
    spec: dict[str, Any] = field(default_factory=dict)


class Rollouts:
    def __init__(
        self,
        engine: Engine,
        registry: Registry,
        commands: CommandSender,
        *,
        revoked: RevokedDevices = no_revocations,
        tick_s: float = TICK_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.engine = engine
        self.registry = registry
        self.commands = commands
        self.revoked = revoked  # read when devices are chosen
        self.tick_s = tick_s
        self.clock = clock
        self._lock = threading.Lock()  # one tick or one state change at a time
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ----------------------------------------------------------------- lifecycle

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="rollouts", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.tick_s):
            try:
                self.tick()
            except Exception:  # the next tick may succeed; never stop driving rollouts
                log.exception("rollouts: tick failed")

    # ----------------------------------------------------------------- requests

    def create(self, spec: RolloutSpec, created_by: str | None = None) -> Rollout:
        """Choose the devices, split them into waves, and start (the first sends go out
        on the next tick).

        Raises:
            RegistryError: unknown model or version.
            RolloutError: no devices, or unknown or revoked device ids.
        """
        mv = self.registry.get(spec.model, spec.version)
        rollout_id = uuid.uuid4().hex[:12]
        with session(self.engine) as s:
            targets = self._targets(s, spec)
            waves = _waves(sorted(targets), spec, seed=spec.seed or rollout_id)
            rollout = Rollout(
                id=rollout_id,
                model=mv.name,
                version=mv.version,
                target=mv.target,
                spec=_spec_dict(spec),
                waves=len(waves),
                group=spec.group,
                created_by=created_by,
                started_at=self.clock(),
            )
            s.add(rollout)
            s.flush()
            for wave, members in enumerate(waves):
                for device_id in members:
                    previous = targets[device_id]
                    s.add(
                        RolloutDevice(
                            rollout_id=rollout_id,
                            device_id=device_id,
                            wave=wave,
                            previous_version=previous,
                        )
                    )
            s.commit()
        log.info("rollout %s: %s v%d to %d devices", rollout_id, mv.name, mv.version, len(targets))
        with self._lock:
            self._tick_one(rollout_id, self.clock())  # the first wave goes out now
        return self.get(rollout_id)

    def get(self, rollout_id: str) -> Rollout:
        with session(self.engine) as s:
            rollout = s.get(Rollout, rollout_id)
        if rollout is None:
            raise RolloutError(f"no rollout {rollout_id!r}")
        return rollout

    def list(self) -> list[Rollout]:
        with session(self.engine) as s:
            return list(s.exec(select(Rollout).order_by(col(Rollout.created_at).desc())))

    def devices(self, rollout_id: str) -> list[RolloutDevice]:
        self.get(rollout_id)
        with session(self.engine) as s:
            q = select(RolloutDevice).where(RolloutDevice.rollout_id == rollout_id)
            return list(s.exec(q.order_by(col(RolloutDevice.device_id))))

    def status(self, rollout_id: str) -> RolloutStatus:
        rollout = self.get(rollout_id)
        rows = self.devices(rollout_id)
        counts = Counter(r.state for r in rows)
        finished = [r for r in rows if r.state in DONE and r.state != "skipped"]
        failures = sum(1 for r in finished if failed(r))
        spec = _spec(rollout.spec)
        settled = _settled(rollout, spec, rows)
        with session(self.engine) as s:
            busy = _presence(s, [r.device_id for r in rows if r.state in IN_FLIGHT])
        t = self.clock()
        away = {d.id for d in busy.values() if d.status != "online"}
        if rollout.state == "completed" and all(
            _gone(busy.get(r.device_id), spec, t) for r in rows if r.state not in DONE
        ):
            settled = True  # every wave done; the long-gone get it when they are back
        return RolloutStatus(
            id=rollout.id,
            model=rollout.model,
            version=rollout.version,
            state=rollout.state,
            wave=min(rollout.wave + 1, rollout.waves),
            waves=rollout.waves,
            devices=len(rows),
            counts=dict(counts),
            converged=counts.get("healthy", 0),
            failures=failures,
            failure_ratio=failures / len(finished) if finished else 0.0,
            rolled_back=counts.get("rolled_back", 0),
            offline=len(away),
            finished=rollout.state in ("completed", "halted", "aborted") and settled,
            halted_reason=rollout.halted_reason,
            created_at=rollout.created_at,
            ended_at=rollout.ended_at,
            spec=dict(rollout.spec),
        )

    def pause(self, rollout_id: str) -> Rollout:
        """Stop sending (devices already sent a command carry on)."""
        return self._set_state(rollout_id, "paused", allowed={"running"})

    def resume(self, rollout_id: str) -> Rollout:
        """Send again; the rate limit does not count the paused time."""
        return self._set_state(rollout_id, "running", allowed={"paused"})

    def abort(self, rollout_id: str, *, rollback: bool = False) -> Rollout:
        """Stop sending; with ``rollback``, also put back every device it changed."""
        reason = "aborted by the operator" + (", rolling back" if rollback else "")
        return self._set_state(
            rollout_id, "aborted", allowed={"running", "paused"}, reason=reason, undo=rollback
        )

    def set_tags(self, device_id: str, tags: Iterable[str]) -> list[str]:
        """Replace a device's tags; a group it joins sends it the group's version."""
        wanted = sorted(set(tags))
        with session(self.engine) as s:
            if s.get(Device, device_id) is None:
                raise RolloutError(f"no device {device_id!r}")
            for row in s.exec(select(DeviceTag).where(DeviceTag.device_id == device_id)):
                s.delete(row)
            s.add_all(DeviceTag(device_id=device_id, tag=t) for t in wanted)
            s.commit()
        return wanted

    def tags(self, device_id: str) -> list[str]:
        with session(self.engine) as s:
            q = select(DeviceTag.tag).where(DeviceTag.device_id == device_id)
            return sorted(s.exec(q))

    # ----------------------------------------------------------------- the engine

    def tick(self) -> None:
        """One pass over every rollout with work left (the thread calls it every tick_s)."""
        with self._lock:
            t = self.clock()
            with session(self.engine) as s:
                unwinding = col(Rollout.state).in_(("halted", "aborted")) & col(
                    Rollout.settled_at
                ).is_(None)
                q = select(Rollout.id).where((Rollout.state == "running") | unwinding)
                ids = list(s.exec(q))
            for rollout_id in ids:
                self._tick_one(rollout_id, t)
            self._follow_groups(t)

    def _tick_one(self, rollout_id: str, t: float) -> None:
        with session(self.engine) as s:
            rollout = s.get(Rollout, rollout_id)
            if rollout is None:
                return
            spec = _spec(rollout.spec)
            rows = list(s.exec(select(RolloutDevice).where(RolloutDevice.rollout_id == rollout_id)))
            # only a device still without an outcome needs a look at its reported state
            devices = _presence(s, [r.device_id for r in rows if r.state in IN_FLIGHT])
            if rollout.state == "running":
                self._watch(rollout, spec, rows, devices, t)
                self._judge(rollout, spec, rows, t)
            if rollout.state == "running":
                self._advance(rollout, spec, rows, devices, t)
                self._send(rollout, spec, rows, t)
            elif rollout.state in ("halted", "aborted"):
                # devices still busy with it: no new sends, but they time out and settle
                self._watch(rollout, spec, rows, devices, t, resend=False)
                self._unwind(rollout, spec, rows, t)
                if _settled(rollout, spec, rows):
                    rollout.settled_at = t  # nothing left to put back: stop visiting it
            s.commit()  # (the rows and the rollout were loaded in s: their changes flush)

    def _watch(
        self,
        rollout: Rollout,
        spec: RolloutSpec,
        rows: list[RolloutDevice],
        devices: Mapping[str, Presence],
        t: float,
        *,
        resend: bool = True,
    ) -> None:
        """Per-device timeouts and retries, and reconciliation of devices that came back.

        The timeout counts silence while the device is online: from the later of the
        last send, the last word about this rollout, and the device's return. An
        offline device waits. With ``resend`` False (halted, aborted) nothing is sent:
        a silent device times out, and one back but silent never got the command.
        """
        for row in rows:
            if row.state not in IN_FLIGHT or row.sent_at is None:
                continue
            quiet_since = max(row.sent_at, row.updated_at)
            dev = devices.get(row.device_id)
            if dev is not None:
                if dev.status != "online":
                    continue  # its Last Will: reconciled when it is back
                if dev.last_seen > quiet_since:  # back (or the hub is) since: silent?
                    quiet_since = dev.last_seen
                    if t - dev.last_seen > RECONCILE_GRACE_S:
                        if resend:
                            self._deploy(rollout, row, t, "reconciled: back, and silent")
                            continue
                        if row.state == "sent":
                            move(row, "skipped", t, detail=f"not received before {rollout.state}")
                            continue
            if t - quiet_since <= spec.device_timeout_s:
                continue
            row.timeouts += 1
            row.updated_at = t
            if not resend or row.timeouts > spec.retries:
                move(row, "timed_out", t, detail=f"no outcome after {row.attempts} sends")
            else:
                self._deploy(rollout, row, t, "timed out")

    def _judge(
        self, rollout: Rollout, spec: RolloutSpec, rows: list[RolloutDevice], t: float
    ) -> None:
        finished = [r for r in rows if r.state in DONE and r.state != "skipped"]
        failures = sum(1 for r in finished if failed(r))
        if len(finished) >= spec.min_sample and failures / len(finished) > spec.max_failure_ratio:
            ratio = failures / len(finished)
            reason = (
                f"{failures} of {len(finished)} devices failed ({ratio:.0%} >"
                f" {spec.max_failure_ratio:.0%})"
            )
            self._halt(rollout, spec, reason, t)

    def _halt(self, rollout: Rollout, spec: RolloutSpec, reason: str, t: float) -> None:
        rollout.state, rollout.halted_reason, rollout.ended_at = "halted", reason, t
        log.warning("rollout %s halted: %s", rollout.id, reason)

    def _advance(
        self,
        rollout: Rollout,
        spec: RolloutSpec,
        rows: list[RolloutDevice],
        devices: Mapping[str, Presence],
        t: float,
    ) -> None:
        """Open the next wave once every device of the open ones has an outcome or has
        been offline longer than ``device_timeout_s`` (it gets the command when it is
        back; it does not hold the fleet up, but a broker restart, which takes every
        device offline for a moment, does not end a wave either)."""

        def settled(r: RolloutDevice) -> bool:
            if r.state in DONE:
                return True
            return r.state in IN_FLIGHT and _gone(devices.get(r.device_id), spec, t)

        while all(settled(r) for r in rows if r.wave <= rollout.wave):
            if rollout.wave + 1 < rollout.waves:
                rollout.wave += 1
                log.info("rollout %s: wave %d of %d", rollout.id, rollout.wave + 1, rollout.waves)
                continue
            rollout.state, rollout.ended_at = "completed", t
            log.info("rollout %s completed", rollout.id)
            return

    def _send(
        self, rollout: Rollout, spec: RolloutSpec, rows: list[RolloutDevice], t: float
    ) -> None:
        pending = [r for r in rows if r.state == "pending" and r.wave <= rollout.wave]
        if spec.rate_per_min is not None:
            sent = sum(1 for r in rows if r.attempts > 0)
            active_s = t - rollout.started_at - rollout.paused_s
            allowed = int(spec.rate_per_min * active_s / 60.0) + 1 - sent
            pending = pending[: max(allowed, 0)]
        revoked = self.revoked()
        for row in pending:
            if row.device_id in revoked:
                move(row, "skipped", t, detail="revoked")
                continue
            self._deploy(rollout, row, t, "wave")

    def _unwind(
        self, rollout: Rollout, spec: RolloutSpec, rows: list[RolloutDevice], t: float
    ) -> None:
        """After a halt (or an abort with rollback): put back what this rollout changed."""
        undo = _undoing(rollout, spec)
        for row in rows:
            if row.state == "pending":
                move(row, "skipped", t, detail=f"rollout {rollout.state}")
            # (a device that ran no earlier version of the model keeps this one)
            elif undo and row.state in CHANGED and row.previous_version is not None:
                due = row.rollback_at is None or t - row.rollback_at > spec.device_timeout_s
                if due:
                    self._rollback(rollout, row, t)

    # ----------------------------------------------------------------- commands

    def _deploy(self, rollout: Rollout, row: RolloutDevice, t: float, why: str) -> None:
        body = {
            "deployment": rollout.id,
            "model": rollout.model,
            "version": rollout.version,
            "target": rollout.target,
        }
        self.commands.send_command(row.device_id, "deploy", body)
        row.attempts += 1
        row.sent_at = row.updated_at = t
        if row.state in ("pending", "sent"):
            move(row, "sent", t, detail=f"{why} (send {row.attempts})")
        else:
            row.detail = f"{why} (send {row.attempts}) while {row.state}"

    def _rollback(self, rollout: Rollout, row: RolloutDevice, t: float) -> None:
        assert row.previous_version is not None
        body = {"deployment": rollout.id, "model": rollout.model, "version": row.previous_version}
        self.commands.send_command(row.device_id, "rollback", body)
        row.rollback_at = t
        row.detail = f"rollback to v{row.previous_version} sent"
        row.updated_at = t

    # ----------------------------------------------------------------- choosing devices

    def _targets(self, s: Session, spec: RolloutSpec) -> dict[str, int | None]:
        """Device id -> the version of the model it runs now (None: not this model)."""
        q = select(Device)
        if spec.device_class is not None:
            q = q.where(Device.device_class == spec.device_class)
        known = {d.id: d for d in s.exec(q)}
        chosen = set(known)
        if spec.devices is not None:
            unknown = sorted(set(spec.devices) - set(known))
            if unknown:
                raise RolloutError(f"{len(unknown)} unknown device id(s): {_few(unknown)}")
            chosen = set(spec.devices)
        for tag in (*spec.tags, *([spec.group] if spec.group else [])):
            chosen &= set(s.exec(select(DeviceTag.device_id).where(DeviceTag.tag == tag)))
        revoked = sorted(chosen & self.revoked())
        if spec.devices is not None and revoked:
            raise RolloutError(f"{len(revoked)} revoked device id(s): {_few(revoked)}")
        chosen -= self.revoked()
        if not chosen:
            raise RolloutError("no devices match (none known, or none with those tags/class)")
        return {
            d: known[d].version if known[d].model == spec.model else None for d in sorted(chosen)
        }

    def _follow_groups(self, t: float) -> None:
        """A device tagged into a group gets the version of its latest completed rollout."""
        with session(self.engine) as s:
            latest: dict[str, Rollout] = {}
            q = select(Rollout).where(Rollout.state == "completed", col(Rollout.group).is_not(None))
            for r in s.exec(q.order_by(col(Rollout.ended_at))):
                assert r.group is not None
                latest[r.group] = r
            for group, rollout in latest.items():
                members = set(s.exec(select(DeviceTag.device_id).where(DeviceTag.tag == group)))
                have = set(
                    s.exec(
                        select(RolloutDevice.device_id).where(
                            RolloutDevice.rollout_id == rollout.id
                        )
                    )
                )
                joiners = sorted(members - have - self.revoked())
                devices = _devices(s, joiners)
                for device_id in joiners:
                    dev = devices.get(device_id)
                    previous = dev.version if dev and dev.model == rollout.model else None
                    row = RolloutDevice(
                        rollout_id=rollout.id,
                        device_id=device_id,
                        wave=rollout.waves - 1,
                        previous_version=previous,
                    )
                    self._deploy(rollout, row, t, f"joined group {group}")
                    s.add(row)
            s.commit()
        # A late joiner's timeouts and retries are watched like any other device's:
        # completed rollouts with rows in flight get a watch pass.
        with session(self.engine) as s:
            q = (
                select(RolloutDevice.rollout_id)
                .join(Rollout, col(Rollout.id) == col(RolloutDevice.rollout_id))
                .where(Rollout.state == "completed", col(RolloutDevice.state).in_(IN_FLIGHT))
                .distinct()
            )
            busy = list(s.exec(q))
        for rollout_id in busy:
            with session(self.engine) as s:
                rollout = s.get(Rollout, rollout_id)
                assert rollout is not None
                rows = list(
                    s.exec(select(RolloutDevice).where(RolloutDevice.rollout_id == rollout_id))
                )
                self._watch(
                    rollout, _spec(rollout.spec), rows, _presence(s, [r.device_id for r in rows]), t
                )
                s.commit()

    def _set_state(
        self,
        rollout_id: str,
        state: str,
        *,
        allowed: set[str],
        reason: str | None = None,
        undo: bool = False,
    ) -> Rollout:
        with self._lock, session(self.engine) as s:
            rollout = s.get(Rollout, rollout_id)
            if rollout is None:
                raise RolloutError(f"no rollout {rollout_id!r}")
            if rollout.state not in allowed:
                raise RolloutError(
                    f"rollout {rollout_id} is {rollout.state}: cannot make it {state}"
                )
            t = self.clock()
            if state == "paused":
                rollout.paused_at = t
            elif rollout.paused_at is not None:  # resumed, or aborted while paused
                rollout.paused_s += t - rollout.paused_at
                rollout.paused_at = None
            rollout.state = state
            if state == "aborted":
                rollout.ended_at = t
                rollout.halted_reason = reason
                rollout.spec = {**rollout.spec, "undo": undo}
            s.add(rollout)
            s.commit()
            s.refresh(rollout)
        log.info("rollout %s: %s", rollout_id, state)
        return rollout


# --------------------------------------------------------------------------- helpers


def _waves(devices: list[str], spec: RolloutSpec, seed: str) -> list[list[str]]:
    """The canary (a seeded sample, spread over the fleet), then ``waves`` even waves."""
    order = list(devices)
    random.Random(seed).shuffle(order)
    canary = min(max(spec.canary, math.ceil(len(order) * spec.canary_percent / 100)), len(order))
    out = [sorted(order[:canary])] if canary else []
    rest = order[canary:]
    n = min(spec.waves, len(rest))
    for i in range(n):
        out.append(sorted(rest[i::n]))
    return [w for w in out if w]


def _settled(rollout: Rollout, spec: RolloutSpec, rows: list[RolloutDevice]) -> bool:
    """Every device has an outcome, and none this rollout must put back is left."""
    undoing = _undoing(rollout, spec)
    return all(
        r.state in DONE and not (undoing and r.state in CHANGED and r.previous_version is not None)
        for r in rows
    )


def _undoing(rollout: Rollout, spec: RolloutSpec) -> bool:
    """Whether the devices this rollout changed are to be put back."""
    if rollout.state == "halted":
        return spec.rollback_on_halt
    return rollout.state == "aborted" and bool(rollout.spec.get("undo", False))


class Presence(NamedTuple):
    """What the engine needs of a device on every tick: is it there, since when."""

    id: str
    status: str
    last_seen: float


def _gone(dev: Presence | None, spec: RolloutSpec, t: float) -> bool:
    """Offline (its Last Will) for longer than the device timeout: the fleet moves on."""
    return dev is not None and dev.status != "online" and t - dev.last_seen > spec.device_timeout_s


def _presence(s: Session, ids: list[str]) -> dict[str, Presence]:
    """Presence of ``ids``: three columns, not whole rows (this runs every tick)."""
    out: dict[str, Presence] = {}
    for i in range(0, len(ids), IN_LIST_MAX):
        q = select(Device.id, Device.status, Device.last_seen).where(
            col(Device.id).in_(ids[i : i + IN_LIST_MAX])
        )
        out.update((row[0], Presence(*row)) for row in s.exec(q))
    return out


def _devices(s: Session, ids: list[str]) -> dict[str, Device]:
    if not ids:
        return {}
    return {d.id: d for d in s.exec(select(Device).where(col(Device.id).in_(ids)))}


def _spec_dict(spec: RolloutSpec) -> dict[str, Any]:
    d = asdict(spec)
    d["devices"] = list(spec.devices) if spec.devices is not None else None
    d["tags"] = list(spec.tags)
    return d


def _spec(stored: dict[str, Any]) -> RolloutSpec:
    known = RolloutSpec.__dataclass_fields__
    fields = {k: v for k, v in stored.items() if k in known}
    if fields.get("devices") is not None:
        fields["devices"] = tuple(fields["devices"])
    fields["tags"] = tuple(fields.get("tags", ()))
    return RolloutSpec(**fields)


def _few(ids: list[str]) -> str:
    return ", ".join(ids[:5]) + (" …" if len(ids) > 5 else "")
