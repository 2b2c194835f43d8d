"""The rollout engine: one pass over a rollout derives what to do from its rows.

:meth:`RolloutEngine.tick_one` watches the devices a rollout has sent commands to (time
outs, re-sends, reconciliation of devices back online), judges the failure ratio
(halting if it is too high), advances waves within the rate limit, sends, and after a
halt or an abort puts back every device the rollout changed. Device rows move only
through hub/fleet/states.py. :class:`hub.fleet.rollouts.Rollouts` owns the thread and
the requests; this module owns the decisions.

Commands go out only after the pass has committed what it decided (:meth:`_flush`): a
hub killed in between sent nothing the database does not know of, so the leader that
takes over (ADR 0032) never sends a device a second deploy for what it was sent; a
command lost with a killed hub is the one case of a device silent after a send, which
the timeout and retry already cover. The pass holds the rollout's row locked
(``FOR UPDATE`` on PostgreSQL), so an old leader still finishing a pass and the new one
never decide over the same rows at once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from sqlalchemy import Engine
from sqlmodel import Session, col, select

from hub.fleet.commands import CommandSender, FanOutTopics, RevokedDevices
from hub.fleet.progress import IN_LIST_MAX
from hub.fleet.rollout_spec import RolloutError, RolloutSpec, few, stored_spec
from hub.fleet.states import CHANGED, DONE, IN_FLIGHT, failed, move
from hub.store.tables import Device, DeviceTag, Rollout, RolloutDevice, session
from shared.reasons import Reason

log = logging.getLogger(__name__)

# (device id, model, version, the version's first target) -> the target that device
# installs, and why the version would not fit its memory (None: it fits)
DeployPlan = Callable[[str, str, int, str], "tuple[str, str | None]"]

RECONCILE_GRACE_S = 5.0  # seconds a device back online may stay silent: then send again


class RolloutEngine:
    def __init__(
        self,
        engine: Engine,
        commands: CommandSender,
        revoked: RevokedDevices,
        clock: Callable[[], float],
        plan: DeployPlan | None = None,
        fanout: FanOutTopics | None = None,
    ) -> None:
        self.engine = engine
        self.commands = commands
        self.revoked = revoked  # read when devices are chosen
        self.clock = clock
        # the artefact a device installs (its runtime's, when the version has several),
        # and why the version would not fit its memory (None: it fits)
        self.plan = plan or _as_is
        self.fanout = fanout  # names the topic a deploy's chunks are fanned out on
        # (device, type, body) decided in this pass: sent once it is committed
        self._held: list[tuple[str, str, dict[str, Any]]] = []

    def _flush(self) -> None:
        """Send what the committed pass decided (the caller holds the rollouts' lock)."""
        held, self._held = self._held, []
        for device_id, msg_type, body in held:
            self.commands.send_command(device_id, msg_type, body)

    def tick_one(self, rollout_id: str, t: float) -> None:
        self._held = []  # a pass that failed before its commit sent nothing
        with session(self.engine) as s:
            rollout = s.get(Rollout, rollout_id, with_for_update=True)
            if rollout is None:
                return
            spec = stored_spec(rollout.spec)
            rows = list(s.exec(select(RolloutDevice).where(RolloutDevice.rollout_id == rollout_id)))
            # only a device still without an outcome needs a look at its reported state
            devices = presence_of(s, [r.device_id for r in rows if r.state in IN_FLIGHT])
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
                if is_settled(rollout, spec, rows):
                    rollout.settled_at = t  # nothing left to put back: stop visiting it
            s.commit()  # (the rows and the rollout were loaded in s: their changes flush)
        self._flush()

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
                if dev.status != "online":  # its Last Will: reconciled when it is back…
                    away_s = t - max(quiet_since, dev.last_seen)
                    if spec.offline_timeout and away_s > spec.device_timeout_s:
                        detail = (
                            f"offline {away_s:.0f} s after {row.attempts} send(s): never came back"
                        )
                        move(row, "timed_out", t, detail=detail)  # …unless it is given up
                    continue
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
            return r.state in IN_FLIGHT and gone_long(devices.get(r.device_id), spec, t)

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

    def _deploy(self, rollout: Rollout, row: RolloutDevice, t: float, why: str) -> None:
        target, refusal = self.plan(row.device_id, rollout.model, rollout.version, rollout.target)
        if refusal is not None:  # the device would refuse it too, after a round trip
            move(row, "failed", t, reason=Reason.NO_ROOM.value, detail=f"at the hub: {refusal}")
            return
        body = {
            "deployment": rollout.id,
            "model": rollout.model,
            "version": rollout.version,
            "target": target,
        }
        for name in ("probation_s", "probation_min_inferences"):  # else the manifest's
            if rollout.spec.get(name) is not None:
                body[name] = rollout.spec[name]
        fanout = self.fanout and self.fanout.join(rollout.id, target, row.device_id)
        if fanout:
            body["fanout"] = fanout
        self._held.append((row.device_id, "deploy", body))
        row.attempts += 1
        row.sent_at = row.updated_at = t
        if row.state in ("pending", "sent"):
            move(row, "sent", t, detail=f"{why} (send {row.attempts})")
        else:
            row.detail = f"{why} (send {row.attempts}) while {row.state}"

    def _rollback(self, rollout: Rollout, row: RolloutDevice, t: float) -> None:
        assert row.previous_version is not None
        body = {"deployment": rollout.id, "model": rollout.model, "version": row.previous_version}
        self._held.append((row.device_id, "rollback", body))
        row.rollback_at = t
        row.detail = f"rollback to v{row.previous_version} sent"
        row.updated_at = t

    def targets(self, s: Session, spec: RolloutSpec) -> dict[str, int | None]:
        """Device id -> the version of the model it runs now (None: not this model)."""
        q = select(Device)
        if spec.device_class is not None:
            q = q.where(Device.device_class == spec.device_class)
        known = {d.id: d for d in s.exec(q)}
        chosen = set(known)
        if spec.devices is not None:
            unknown = sorted(set(spec.devices) - set(known))
            if unknown:
                raise RolloutError(f"{len(unknown)} unknown device id(s): {few(unknown)}")
            chosen = set(spec.devices)
        for tag in (*spec.tags, *([spec.group] if spec.group else [])):
            tagged = select(DeviceTag.device_id).where(DeviceTag.tag == tag)
            tagged_ids: set[str] = set(s.exec(tagged))
            chosen &= tagged_ids
        barred = self.revoked()
        revoked = sorted(chosen & barred)
        if spec.devices is not None and revoked:
            raise RolloutError(f"{len(revoked)} revoked device id(s): {few(revoked)}")
        chosen -= barred
        if not chosen:
            raise RolloutError(no_match(spec, revoked))
        return {d: known[d].version_of(spec.model) for d in sorted(chosen)}

    def follow_groups(self, t: float) -> None:
        """A device tagged into a group gets the version of its latest completed rollout."""
        self._held = []
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
                    previous = dev.version_of(rollout.model) if dev else None
                    row = RolloutDevice(
                        rollout_id=rollout.id,
                        device_id=device_id,
                        wave=rollout.waves - 1,
                        previous_version=previous,
                    )
                    self._deploy(rollout, row, t, f"joined group {group}")
                    s.add(row)
            s.commit()
        self._flush()
        # A late joiner's timeouts and retries are watched like any other device's:
        # completed rollouts with rows in flight get a watch pass.
        with session(self.engine) as s:
            in_flight = (
                select(RolloutDevice.rollout_id)
                .join(Rollout, col(Rollout.id) == col(RolloutDevice.rollout_id))
                .where(Rollout.state == "completed", col(RolloutDevice.state).in_(IN_FLIGHT))
                .distinct()
            )
            busy = list(s.exec(in_flight))
        for rollout_id in busy:
            with session(self.engine) as s:
                completed = s.get(Rollout, rollout_id)
                assert completed is not None
                rollout = completed
                rows = list(
                    s.exec(select(RolloutDevice).where(RolloutDevice.rollout_id == rollout_id))
                )
                self._watch(
                    rollout,
                    stored_spec(rollout.spec),
                    rows,
                    presence_of(s, [r.device_id for r in rows]),
                    t,
                )
                s.commit()
            self._flush()


def no_match(spec: RolloutSpec, revoked: list[str]) -> str:
    """Why no device is chosen, in the operator's words: the revoked ones it left out by
    name, else what nothing matched."""
    if revoked:
        verb = "is" if len(revoked) == 1 else "are"
        return f"no devices match: {few(revoked)} {verb} revoked"
    wanted = [f"class {spec.device_class}"] if spec.device_class is not None else []
    tags = (*spec.tags, *([spec.group] if spec.group else []))
    if tags:
        wanted.append(f"tag{'s' if len(tags) > 1 else ''} {', '.join(tags)}")
    if not wanted:
        return "no devices match: none has reported to this hub yet"
    return f"no devices match: none known with {' and '.join(wanted)}"


def is_settled(rollout: Rollout, spec: RolloutSpec, rows: list[RolloutDevice]) -> bool:
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


def gone_long(dev: Presence | None, spec: RolloutSpec, t: float) -> bool:
    """Offline (its Last Will) for longer than the device timeout: the fleet moves on."""
    return dev is not None and dev.status != "online" and t - dev.last_seen > spec.device_timeout_s


def presence_of(s: Session, ids: list[str]) -> dict[str, Presence]:
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


def _as_is(device_id: str, model: str, version: int, target: str) -> tuple[str, str | None]:
    return target, None
