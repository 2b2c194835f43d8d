"""What a rollout is asked to do (:class:`RolloutSpec`), how it reports
(:class:`RolloutStatus`), and how its devices are split into waves.

Errors::

    RolloutError            a request that cannot be met (bad spec, unknown devices,
                            a state change the rollout's state does not allow)
"""

from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass, field
from typing import Any

KINDS = ("rollout", "deployment")


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
    # "deployment": a plain `deploy`, one ungated wave (hub/fleet/deployments.py)
    kind: str = "rollout"
    # a device offline for device_timeout_s after its send times out instead of waiting
    # for its return (a plain deployment ends; a rollout's late comers get it when back)
    offline_timeout: bool = False
    # the devices' probation, instead of the model manifest's (sent in the deploy command)
    probation_s: float | None = None  # seconds
    probation_min_inferences: int | None = None  # live inferences needed to judge it

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
                (
                    self.probation_s is not None and not 0 <= self.probation_s <= 86400,
                    "probation_s must be 0..86400",
                ),
                (
                    self.probation_min_inferences is not None and self.probation_min_inferences < 0,
                    "probation_min_inferences must be >= 0",
                ),
                (self.kind not in KINDS, f"kind must be one of {', '.join(KINDS)}"),
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
    in_probation: int = 0  # devices activated, on probation now
    # the first of them (hub/fleet/probation.py): device, left_s, max_left_s, inferences,
    # min_inferences
    probation: list[dict[str, Any]] = field(default_factory=list)
    healthy_without_traffic: int = 0  # healthy, but their probation saw no inference
    # per device class: its runtime, the artefact it was sent and its devices' states
    by_class: dict[str, dict[str, Any]] = field(default_factory=dict)


def split_waves(devices: list[str], spec: RolloutSpec, seed: str) -> list[list[str]]:
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


def spec_dict(spec: RolloutSpec) -> dict[str, Any]:
    d = asdict(spec)
    d["devices"] = list(spec.devices) if spec.devices is not None else None
    d["tags"] = list(spec.tags)
    return d


def stored_spec(stored: dict[str, Any]) -> RolloutSpec:
    known = RolloutSpec.__dataclass_fields__
    fields = {k: v for k, v in stored.items() if k in known}
    if fields.get("devices") is not None:
        fields["devices"] = tuple(fields["devices"])
    fields["tags"] = tuple(fields.get("tags", ()))
    return RolloutSpec(**fields)


def few(ids: list[str]) -> str:
    return ", ".join(ids[:5]) + (" …" if len(ids) > 5 else "")
