"""What applying a fleet file would change: each difference between the file and the hub,
as a :class:`Change`, in the order :func:`~hub.declared.apply.apply` makes them.

A reference the hub cannot resolve (a device, a model or version, a rollout policy that
does not exist) is a :class:`DeclarationError` naming its place in the file. What the
file does not name is left alone: a tag it does not list keeps its devices, a model it
does not list keeps its policies.

A group whose ``model``/``version`` differ from what it runs gets a rollout: what it
runs is the version of its latest rollout of that model that was not aborted, else the
version every member runs. A group already on the way to the version (a running, paused
or halted rollout of it) starts nothing; a halted one is shown as a note, to resume or
abort by hand.
"""

from __future__ import annotations

import hmac
from dataclasses import asdict, dataclass, field
from typing import Any

from sqlmodel import Session, col, select

from hub.alerts.errors import ReceiverError
from hub.alerts.receivers import ReceiverSpec
from hub.app import Hub
from hub.declared.document import FleetDocument, GroupSpec, ReceiverDecl, RolloutPolicySpec
from hub.ml.registry import RegistryError
from hub.store.tables import (
    DeclaredGroup,
    Device,
    DeviceTag,
    Rollout,
    RolloutPolicy,
    session,
)

Loc = tuple[str | int, ...]
SHOWN = 5  # device ids named in one change's line


@dataclass(frozen=True)
class Change:
    """One difference: what kind of thing, its name, what happens, and a line for a person."""

    kind: str  # rollout_policy | members | group | drift_policy | loop_policy | receiver | rollout
    name: str
    action: str  # add | set | start
    detail: str
    loc: Loc
    before: Any = None
    after: Any = None


@dataclass
class Plan:
    changes: list[Change] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what apply leaves for a person

    def as_dict(self) -> dict[str, Any]:
        return {"changes": [asdict(c) for c in self.changes], "notes": self.notes}


class DeclarationError(Exception):
    """References in the file the hub cannot resolve: (place in the file, what is wrong)."""

    def __init__(self, problems: list[tuple[Loc, str]]) -> None:
        super().__init__("; ".join(f"{'.'.join(map(str, loc))}: {msg}" for loc, msg in problems))
        self.problems = problems


def plan(hub: Hub, doc: FleetDocument) -> Plan:
    """The changes applying ``doc`` would make, in order.

    Raises:
        DeclarationError: every unresolvable reference, each with its place.
    """
    out, problems = Plan(), []
    with session(hub.engine) as s:
        known = set(s.exec(select(Device.id)))
        policies = {p.name: p for p in s.exec(select(RolloutPolicy))}
        out.changes += _rollout_policies(doc, policies)
        members = {**doc.tags, **{g: spec.devices for g, spec in doc.groups.items()}}
        for kind, section in (("tag", "tags"), ("group", "groups")):
            for tag, listed in getattr(doc, section).items():
                devices = listed if kind == "tag" else listed.devices
                if devices is None:
                    continue
                loc: Loc = (section, tag) if kind == "tag" else (section, tag, "devices")
                problems += [
                    ((*loc, i), f"no device {d!r}") for i, d in enumerate(devices) if d not in known
                ]
                out.changes += _membership(s, kind, tag, devices, loc)
        for tag, spec in doc.groups.items():
            problems += _group_refs(hub, tag, spec, set(policies) | set(doc.rollout_policies))
            out.changes += _group_row(s, tag, spec)
        for section in ("drift", "loop"):
            for model in getattr(doc, section):
                if not hub.registry.versions(model):
                    problems.append(((section, model), f"no model {model!r} in the registry"))
        receivers, refused = _receivers(hub, doc)
        problems += refused
        if problems:
            raise DeclarationError(problems)
        out.changes += _policies(hub, doc) + receivers
        for tag, spec in doc.groups.items():
            if spec.model is not None and spec.version is not None:
                listed = members.get(tag)
                _group_rollout(s, out, tag, spec, set(listed) if listed is not None else None)
    return out


def _rollout_policies(doc: FleetDocument, stored: dict[str, RolloutPolicy]) -> list[Change]:
    changes = []
    for name, spec in doc.rollout_policies.items():
        want = spec.model_dump()
        row = stored.get(name)
        if row is not None and RolloutPolicySpec.model_validate(row.spec).model_dump() == want:
            continue
        before = row.spec if row is not None else None
        shown = (
            _differences(before, want)
            if before
            else _differences(None, spec.model_dump(exclude_unset=True))
        )
        changes.append(
            Change(
                "rollout_policy",
                name,
                "set" if row is not None else "add",
                f"rollout policy {name}: {shown}",
                ("rollout_policies", name),
                before,
                want,
            )
        )
    return changes


def _membership(s: Session, kind: str, tag: str, devices: list[str], loc: Loc) -> list[Change]:
    """The tag on exactly ``devices``: who gains it, who loses it."""
    have = set(s.exec(select(DeviceTag.device_id).where(DeviceTag.tag == tag)))
    want = set(devices)
    gain, lose = sorted(want - have), sorted(have - want)
    if not gain and not lose:
        return []
    parts = [f"+{len(gain)} ({_few(gain)})"] if gain else []
    parts += [f"-{len(lose)} ({_few(lose)})"] if lose else []
    what = "group" if kind == "group" else "tag"
    detail = f"{what} {tag} devices: {', '.join(parts)}"
    return [Change("members", tag, "set", detail, loc, {"remove": lose}, {"add": gain})]


def _group_refs(hub: Hub, tag: str, spec: GroupSpec, policies: set[str]) -> list[tuple[Loc, str]]:
    problems: list[tuple[Loc, str]] = []
    if spec.model is not None:
        try:
            hub.registry.get(spec.model, spec.version)
        except RegistryError as e:
            place = "version" if hub.registry.versions(spec.model) else "model"
            problems.append((("groups", tag, place), str(e)))
    if spec.policy is not None and spec.policy not in policies:
        problems.append((("groups", tag, "policy"), f"no rollout policy {spec.policy!r}"))
    return problems


def _group_row(s: Session, tag: str, spec: GroupSpec) -> list[Change]:
    row = s.get(DeclaredGroup, tag)
    want = {"model": spec.model, "version": spec.version, "policy": spec.policy}
    before = None if row is None else {k: getattr(row, k) for k in want}
    if before == want:
        return []
    detail = f"group {tag}: {_differences(before, want)}"
    return [Change("group", tag, "add" if row is None else "set", detail, ("groups", tag))]


def _policies(hub: Hub, doc: FleetDocument) -> list[Change]:
    changes = []
    for model, drift in doc.drift.items():
        before = asdict(hub.drift.policy(model))
        if before != drift.model_dump():
            detail = f"drift policy {model}: {_differences(before, drift.model_dump())}"
            changes.append(
                Change(
                    "drift_policy",
                    model,
                    "set",
                    detail,
                    ("drift", model),
                    before,
                    drift.model_dump(),
                )
            )
    for model, loop in doc.loop.items():
        current = hub.loop.policy(model).model_dump(exclude={"model", "updated_at", "updated_by"})
        if current != loop.model_dump():
            detail = f"loop policy {model}: {_differences(current, loop.model_dump())}"
            changes.append(
                Change(
                    "loop_policy", model, "set", detail, ("loop", model), current, loop.model_dump()
                )
            )
    return changes


def _receivers(hub: Hub, doc: FleetDocument) -> tuple[list[Change], list[tuple[Loc, str]]]:
    """Receivers that differ from the hub's; URLs and secrets are never shown (a URL may
    carry a token): only which fields change."""
    changes: list[Change] = []
    problems: list[tuple[Loc, str]] = []
    for name, decl in doc.receivers.items():
        try:
            spec = receiver_spec(name, decl)
        except ReceiverError as e:
            problems.append((("receivers", name), str(e)))
            continue
        row = hub.alerts.receivers.find(name)
        if row is None:
            detail = f"receiver {name}: kinds {', '.join(spec.kinds)}"
            detail += f", models {', '.join(spec.models)}" if spec.models else ", every model"
            changes.append(Change("receiver", name, "add", detail, ("receivers", name)))
            continue
        differ = [
            what
            for what, same in (
                ("url", row.url == spec.url),
                ("secret", hmac.compare_digest(row.secret.encode(), spec.secret.encode())),
                ("kinds", tuple(row.kinds) == spec.kinds),
                ("models", tuple(row.models) == spec.models),
            )
            if not same
        ]
        if differ:
            detail = f"receiver {name}: {', '.join(differ)} changed"
            changes.append(Change("receiver", name, "set", detail, ("receivers", name)))
    return changes, problems


def receiver_spec(name: str, decl: ReceiverDecl) -> ReceiverSpec:
    """The receiver a fleet file declares (ReceiverError ``invalid`` when it is not one)."""
    return ReceiverSpec(name, decl.url, decl.secret, tuple(decl.kinds), tuple(decl.models))


def _group_rollout(
    s: Session, out: Plan, tag: str, spec: GroupSpec, listed: set[str] | None
) -> None:
    """A rollout of the group's desired version when it runs another (module docstring)."""
    assert spec.model is not None and spec.version is not None
    q = select(Rollout).where(
        Rollout.group == tag, Rollout.model == spec.model, col(Rollout.state) != "aborted"
    )
    latest = s.exec(q.order_by(col(Rollout.created_at).desc())).first()
    want = f"{spec.model} v{spec.version}"
    if latest is not None and latest.version == spec.version:
        if latest.state == "halted":
            out.notes.append(
                f"group {tag}: the rollout of {want} ({latest.id}) halted: "
                f"{latest.halted_reason or 'see its events'}; resume or abort it"
            )
        return
    if listed is None:
        listed = set(s.exec(select(DeviceTag.device_id).where(DeviceTag.tag == tag)))
    if not listed:
        out.notes.append(f"group {tag} has no devices: {want} waits for its first")
        return
    devices = list(s.exec(select(Device).where(col(Device.id).in_(sorted(listed)))))
    if latest is None and all(d.version_of(spec.model) == spec.version for d in devices):
        return  # every member runs it already
    runs = f"v{latest.version}" if latest is not None else "no rollout yet"
    how = f"policy {spec.policy}" if spec.policy else "the default policy"
    out.changes.append(
        Change(
            "rollout",
            tag,
            "start",
            f"roll out {want} to group {tag} ({len(listed)} devices; {runs}) under {how}",
            ("groups", tag, "version"),
            None,
            {"model": spec.model, "version": spec.version, "policy": spec.policy},
        )
    )


def _differences(before: dict[str, Any] | None, after: dict[str, Any]) -> str:
    if before is None:
        return ", ".join(f"{k}={v}" for k, v in after.items() if v is not None) or "defaults"
    return ", ".join(f"{k} {before.get(k)} -> {v}" for k, v in after.items() if before.get(k) != v)


def _few(ids: list[str]) -> str:
    return ", ".join(ids[:SHOWN]) + (f", … {len(ids) - SHOWN} more" if len(ids) > SHOWN else "")
