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

import builtins
import logging
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple

from sqlalchemy import Engine
from sqlmodel import Session, col, select

from hub.fleet import probation
from hub.fleet.commands import CommandSender, FanOutTopics, RevokedDevices, no_revocations
from hub.fleet.progress import IN_LIST_MAX
from hub.fleet.rollout_engine import RolloutEngine, gone_long, is_settled, presence_of
from hub.fleet.rollout_spec import (
    RolloutError,
    RolloutSpec,
    RolloutStatus,
    spec_dict,
    split_waves,
    stored_spec,
)
from hub.fleet.states import DONE, IN_FLIGHT, failed
from hub.ml.registry import Registry
from hub.store.tables import Device, DeviceTag, Rollout, RolloutDevice, session
from shared.memory_budget import no_room

log = logging.getLogger(__name__)

TICK_S = 0.5  # seconds between passes over active rollouts
# A wave's sends read every device row at once, and reuse what they read this long (one
# read per device was 2.3 ms of the hub's ~5 ms per device at 1,000 devices)
PLAN_CACHE_S = 1.0


class _DeviceFacts(NamedTuple):
    runtime: str | None
    device_class: str | None
    models: Mapping[str, Any] | None


class Rollouts:
    def __init__(
        self,
        engine: Engine,
        registry: Registry,
        commands: CommandSender,
        *,
        revoked: RevokedDevices = no_revocations,
        class_budget: Callable[[str | None], float | None] = lambda c: None,
        tick_s: float = TICK_S,
        clock: Callable[[], float] = time.time,
        leading: Callable[[], bool] = lambda: True,
        fanout: FanOutTopics | None = None,
    ) -> None:
        self.engine = engine
        # whether this process is the hub's leader (ADR 0032): only the leader sends
        self.leading = leading
        self.registry = registry
        self.commands = commands
        self.revoked = revoked  # read when devices are chosen
        self.tick_s = tick_s
        self.clock = clock
        self.class_budget = class_budget  # a device class's memory_budget_mb, or None
        self.decide = RolloutEngine(engine, commands, revoked, clock, self.plan_deploy, fanout)
        self._lock = threading.Lock()  # one tick or one state change at a time
        self._facts: dict[str, _DeviceFacts] = {}  # read for plan_deploy, at _facts_at
        self._facts_at = float("-inf")
        self._facts_misses = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def plan_deploy(
        self, device_id: str, model: str, version: int, primary: str
    ) -> tuple[str, str | None]:
        """What to send ``device_id`` (one read of its row): the target for its runtime
        when the version has several (ADR 0020; else the version's own, which a device
        of another runtime refuses as ``wrong_runtime``), and why the version would not
        fit its memory beside the other models it reported (shared/memory_budget.py, the
        rule the device applies; None: it fits, or its class's budget is unknown)."""
        registry: Registry | None = self.registry  # None in rigs that sign nothing
        if registry is None:
            return primary, None
        device = self._device_facts(device_id)
        if device is None:
            return primary, None
        runtime = device.runtime or "onnxruntime"
        target = registry.artefacts(model, version).get(runtime, primary)
        budget = self.class_budget(device.device_class)
        length = registry.size_of(model, version, runtime)
        if budget is None or length is None:
            return target, None
        others = {
            name: size
            for name, info in (device.models or {}).items()
            if name != model
            and isinstance(info, dict)
            and (size := registry.size_of(name, int(info.get("version") or 0), runtime))
        }
        return target, no_room(model, length, others, budget)

    def _device_facts(self, device_id: str) -> _DeviceFacts | None:
        """A device's runtime, class and reported models: one row read for a lone send;
        from the second within ``PLAN_CACHE_S``, every device's at once (a wave)."""
        now = time.monotonic()
        if now - self._facts_at > PLAN_CACHE_S:
            self._facts, self._facts_at, self._facts_misses = {}, now, 0
        if device_id in self._facts or self._facts_misses > 1:  # (all read: unknown)
            return self._facts.get(device_id)
        self._facts_misses += 1
        q = select(col(Device.id), col(Device.runtime), col(Device.device_class), Device.models)
        with session(self.engine) as s:
            if self._facts_misses == 1:
                rows = list(s.exec(q.where(Device.id == device_id)))
            else:
                rows = list(s.exec(q))
                self._facts_at = now
        self._facts.update((r[0], _DeviceFacts(r[1], r[2], r[3])) for r in rows)
        return self._facts.get(device_id)

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
            if not self.leading():  # lost the lead: the process is on its way out
                continue
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
            targets = self.decide.targets(s, spec)
            waves = split_waves(sorted(targets), spec, seed=spec.seed or rollout_id)
            rollout = Rollout(
                id=rollout_id,
                model=mv.name,
                version=mv.version,
                target=mv.target,
                spec=spec_dict(spec),
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
        if self.leading():  # else the leader's next tick sends it
            with self._lock:
                self.decide.tick_one(rollout_id, self.clock())  # the first wave goes out now
        return self.get(rollout_id)

    def get(self, rollout_id: str) -> Rollout:
        with session(self.engine) as s:
            rollout = s.get(Rollout, rollout_id)
        if rollout is None:
            raise RolloutError(f"no rollout {rollout_id!r}")
        return rollout

    def list(self) -> builtins.list[Rollout]:
        with session(self.engine) as s:
            return list(s.exec(select(Rollout).order_by(col(Rollout.created_at).desc())))

    def devices(self, rollout_id: str) -> builtins.list[RolloutDevice]:
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
        spec = stored_spec(rollout.spec)
        settled = is_settled(rollout, spec, rows)
        t = self.clock()
        with session(self.engine) as s:
            busy = presence_of(s, [r.device_id for r in rows if r.state in IN_FLIGHT])
            on_probation = probation.on_probation(s, rows, rollout.model, rollout.version, t)
            by_class = self._by_class(s, rollout, rows)
        away = {d.id for d in busy.values() if d.status != "online"}
        if (
            not spec.offline_timeout
            and rollout.state == "completed"
            and all(gone_long(busy.get(r.device_id), spec, t) for r in rows if r.state not in DONE)
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
            in_probation=sum(1 for r in rows if r.state == "activated"),
            probation=on_probation,
            healthy_without_traffic=sum(1 for r in rows if probation.without_traffic(r)),
            by_class=by_class,
        )

    def _by_class(
        self, s: Session, rollout: Rollout, rows: builtins.list[RolloutDevice]
    ) -> dict[str, dict[str, Any]]:
        """Per device class: the runtime its devices report, the artefact they are sent
        (ADR 0020) and how many are in each state."""
        ids = [r.device_id for r in rows]
        kinds: dict[str, tuple[str, str]] = {}
        for i in range(0, len(ids), IN_LIST_MAX):
            q = select(Device.id, Device.device_class, Device.runtime).where(
                col(Device.id).in_(ids[i : i + IN_LIST_MAX])
            )
            kinds.update((d, (c or "unknown", rt or "onnxruntime")) for d, c, rt in s.exec(q))
        registry: Registry | None = self.registry
        artefacts = registry.artefacts(rollout.model, rollout.version) if registry else {}
        out: dict[str, dict[str, Any]] = {}
        for r in rows:
            cls, runtime = kinds.get(r.device_id, ("unknown", "onnxruntime"))
            entry = out.setdefault(
                cls,
                {
                    "runtime": runtime,
                    "target": artefacts.get(runtime, rollout.target),
                    "devices": 0,
                    "counts": {},
                },
            )
            entry["devices"] += 1
            entry["counts"][r.state] = entry["counts"].get(r.state, 0) + 1
        return dict(sorted(out.items()))

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

    def set_tags(self, device_id: str, tags: Iterable[str]) -> builtins.list[str]:
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

    def tags(self, device_id: str) -> builtins.list[str]:
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
                q = select(Rollout.id).where((col(Rollout.state) == "running") | unwinding)
                ids = list(s.exec(q))
            for rollout_id in ids:
                self.decide.tick_one(rollout_id, t)
            self.decide.follow_groups(t)

    # ----------------------------------------------------------------- commands

    # ----------------------------------------------------------------- choosing devices

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
            rollout = s.get(Rollout, rollout_id, with_for_update=True)  # not mid-tick
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
