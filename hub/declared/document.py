"""A fleet file's shape: what may be declared, with the bounds the API has. Unknown keys
are refused (``extra="forbid"``), so a typo is named rather than ignored; the CLI turns
the error's place into a line of the file (edgefleet/fleetfile.py)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from hub.alerts.messages import KINDS
from hub.alerts.receivers import MAX_MODELS, MAX_SECRET, MAX_URL, MIN_SECRET
from hub.loop import MAX_CAPTURE_ROWS, MAX_CAPTURE_S, MAX_GATHER_S
from hub.store.names import DEVICE, MAX_INT, MODEL, TAG

Model = Annotated[str, Field(pattern=MODEL)]
Tag = Annotated[str, Field(pattern=TAG)]
DeviceId = Annotated[str, Field(pattern=DEVICE)]
Name = Annotated[str, Field(pattern=MODEL)]  # a rollout policy's name

Kind = Literal["drift", "rollout", "loop"]  # what alerts a receiver takes (hub/alerts/)

DEVICES_MAX = 100_000  # devices listed for one tag or group
ENTRIES_MAX = 1000  # tags, groups, policies of one kind in one file
Devices = Annotated[list[DeviceId], Field(max_length=DEVICES_MAX)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RolloutPolicySpec(Strict):
    """How a rollout goes: the canary, the waves, the pace and the gate that halts it."""

    canary: int = Field(0, ge=0, le=100_000)
    canary_percent: float = Field(0.0, ge=0, le=100)
    waves: int = Field(1, ge=1, le=1000)
    rate_per_min: float | None = Field(None, gt=0, le=1e6)
    max_failure_ratio: float = Field(0.2, ge=0, le=1)
    min_sample: int = Field(5, ge=1, le=100_000)
    device_timeout_s: float = Field(600.0, gt=0, le=7 * 86400)
    retries: int = Field(2, ge=0, le=100)
    rollback_on_halt: bool = True
    # the devices' probation instead of the model manifest's (seconds; live inferences)
    probation_s: float | None = Field(None, ge=0, le=86400)
    probation_min_inferences: int | None = Field(None, ge=0, le=MAX_INT)


class DriftPolicySpec(Strict):
    """When a model's drift window exceeds, and when its alert opens (k of n windows)."""

    psi_threshold: float = Field(0.2, gt=0, le=100)
    js_threshold: float = Field(0.1, gt=0, le=1)
    k: int = Field(2, ge=1, le=100)
    n: int = Field(3, ge=1, le=100)
    min_rows: int = Field(500, ge=1, le=10**9)
    scope_window_s: float = Field(60.0, gt=0, le=7 * 86400)
    # seconds without a window from a device before its alerts go stale
    silence_s: float = Field(900.0, gt=0, le=7 * 86400)

    @model_validator(mode="after")
    def _k_of_n(self) -> DriftPolicySpec:
        if self.k > self.n:
            raise ValueError(f"k ({self.k}) must be at most n ({self.n})")
        return self


class LoopPolicySpec(Strict):
    """Whether the closed loop runs for a model, and how it captures and deploys."""

    enabled: bool = False
    capture_rows: int = Field(2000, ge=1, le=MAX_CAPTURE_ROWS)
    capture_s: float = Field(60.0, gt=0, le=MAX_CAPTURE_S)
    canary_percent: float = Field(50.0, ge=0, le=100)
    waves: int = Field(1, ge=1, le=1000)
    max_failure_ratio: float = Field(0.2, ge=0, le=1)
    min_sample: int = Field(1, ge=1, le=100_000)
    cooldown_s: float = Field(600.0, ge=0, le=30 * 86400)
    gather_s: float = Field(10.0, ge=0, le=MAX_GATHER_S)


class GroupSpec(Strict):
    """A group: a tag its devices carry, the model version they should run, and the
    rollout policy a new version goes out under."""

    devices: Devices | None = None  # exactly these devices carry the group's tag
    model: Model | None = None
    version: int | None = Field(None, ge=1, le=MAX_INT)
    policy: Name | None = None

    @model_validator(mode="after")
    def _model_and_version(self) -> GroupSpec:
        if (self.model is None) != (self.version is None):
            raise ValueError("a group's desired version needs both model and version")
        if self.policy is not None and self.model is None:
            raise ValueError("policy is how a group's model version goes out: give model too")
        return self


def _every_kind() -> list[Kind]:
    return ["drift", "rollout", "loop"]


class ReceiverDecl(Strict):
    """A webhook that alerts go to (docs/alerts.md). The secret signs what it is sent; a
    fleet file names an environment variable or a file that holds it (``secret_env``,
    ``secret_file``) and the CLI sends its value, never kept in the file."""

    url: str = Field(max_length=MAX_URL)
    secret: str = Field(min_length=MIN_SECRET, max_length=MAX_SECRET, repr=False)
    kinds: list[Kind] = Field(default_factory=_every_kind, min_length=1, max_length=len(KINDS))
    models: list[Model] = Field(default_factory=list, max_length=MAX_MODELS)  # empty: all


class FleetDocument(Strict):
    """A whole fleet file. What it does not name, apply leaves alone."""

    format: Literal[1] = 1
    tags: dict[Tag, Devices] = Field(default_factory=dict, max_length=ENTRIES_MAX)
    groups: dict[Tag, GroupSpec] = Field(default_factory=dict, max_length=ENTRIES_MAX)
    rollout_policies: dict[Name, RolloutPolicySpec] = Field(
        default_factory=dict, max_length=ENTRIES_MAX
    )
    drift: dict[Model, DriftPolicySpec] = Field(default_factory=dict, max_length=ENTRIES_MAX)
    loop: dict[Model, LoopPolicySpec] = Field(default_factory=dict, max_length=ENTRIES_MAX)
    receivers: dict[Name, ReceiverDecl] = Field(default_factory=dict, max_length=100)

    @model_validator(mode="after")
    def _tag_or_group(self) -> FleetDocument:
        both = sorted(set(self.tags) & set(self.groups))
        if both:
            raise ValueError(f"declared both as a tag and as a group: {', '.join(both)}")
        return self
