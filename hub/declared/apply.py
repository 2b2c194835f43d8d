"""Make a fleet file's changes (:func:`apply`): the plan of hub/declared/plan.py, made in
its order, under one lock so two applies never interleave.

Tags and groups change in one transaction with the declared groups and rollout policies;
drift and loop policies and the rollouts follow, each committed as it is made. When one
fails, the error says which changes were made before it (a second apply makes the rest).
"""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from typing import Any

from sqlmodel import Session, col, delete

from hub.app import Hub
from hub.declared.document import FleetDocument, RolloutPolicySpec
from hub.declared.plan import Change, Plan, plan, receiver_spec
from hub.fleet.rollout_spec import RolloutSpec
from hub.loop import PolicySettings
from hub.store.tables import DeclaredGroup, DeviceTag, RolloutPolicy, session
from hub.telemetry.drift_policy import Policy

_LOCK = threading.Lock()
# What _store writes in its one transaction; the other kinds are made one by one.
STORED = frozenset({"rollout_policy", "members", "group"})


class ApplyError(Exception):
    """A change failed; ``made`` are the changes made before it."""

    def __init__(self, change: Change, error: Exception, made: list[Change]) -> None:
        done = f" after {len(made)} change(s) were made" if made else ""
        super().__init__(f"{change.detail}: {error}{done}")
        self.made = made


def apply(hub: Hub, doc: FleetDocument, by: str | None = None) -> Plan:
    """Plan ``doc`` against the hub and make the changes; the plan, with each rollout's id.

    Raises:
        DeclarationError: the file names what does not exist (nothing changed).
        ApplyError: a change failed (those before it were made).
    """
    with _LOCK:
        todo = plan(hub, doc)
        _store(hub, doc, todo.changes, by)
        made = [c for c in todo.changes if c.kind in STORED]
        for change in todo.changes:
            if change.kind in STORED:
                continue
            try:
                made.append(_make(hub, doc, change, by))
            except Exception as e:  # reported with what was made before it
                raise ApplyError(change, e, made) from e
        return Plan(made, todo.notes)


def _store(hub: Hub, doc: FleetDocument, changes: list[Change], by: str | None) -> None:
    """Rollout policies, tags, groups (the kinds in STORED): one transaction."""
    t = time.time()
    with session(hub.engine) as s:
        for c in changes:
            if c.kind == "rollout_policy":
                policy = s.get(RolloutPolicy, c.name) or RolloutPolicy(name=c.name)
                policy.spec, policy.updated_at, policy.updated_by = c.after, t, by
                s.add(policy)
            elif c.kind == "members":
                _retag(s, c.name, c.after.get("add", []), c.before.get("remove", []))
            elif c.kind == "group":
                spec = doc.groups[c.name]
                row = s.get(DeclaredGroup, c.name) or DeclaredGroup(tag=c.name)
                row.model, row.version, row.policy = spec.model, spec.version, spec.policy
                row.updated_at, row.updated_by = t, by
                s.add(row)
        s.commit()


def _retag(s: Session, tag: str, gain: list[str], lose: list[str]) -> None:
    if lose:
        s.exec(
            delete(DeviceTag).where(col(DeviceTag.tag) == tag, col(DeviceTag.device_id).in_(lose))
        )
    s.add_all(DeviceTag(device_id=d, tag=tag) for d in gain)


def _make(hub: Hub, doc: FleetDocument, change: Change, by: str | None) -> Change:
    if change.kind == "drift_policy":
        hub.drift.set_policy(change.name, Policy(**change.after), by=by)
    elif change.kind == "loop_policy":
        hub.loop.set_policy(change.name, PolicySettings(**change.after), by=by)
    elif change.kind == "receiver":
        hub.alerts.receivers.put(receiver_spec(change.name, doc.receivers[change.name]), by=by)
    elif change.kind == "rollout":
        rollout = hub.rollouts.create(_rollout_spec(hub, doc, change), created_by=by)
        return replace(change, after={**change.after, "rollout": rollout.id})
    return change


def _rollout_spec(hub: Hub, doc: FleetDocument, change: Change) -> RolloutSpec:
    name = change.after["policy"]
    policy: dict[str, Any] = RolloutPolicySpec.model_validate({}).model_dump()
    if name is not None:
        if name in doc.rollout_policies:
            policy = doc.rollout_policies[name].model_dump()
        else:
            with session(hub.engine) as s:
                row = s.get(RolloutPolicy, name)
            assert row is not None  # plan() checked it exists
            policy = RolloutPolicySpec.model_validate(row.spec).model_dump()
    return RolloutSpec(
        model=change.after["model"],
        version=change.after["version"],
        group=change.name,
        **policy,
    )
