"""The deployment job a device works on, as it is persisted.

A :class:`Job` round-trips to the JSON object the device has always saved as the state's
``job`` (tests/data/agent_state_v1 holds files the older core wrote): the same keys, in
the same order, so a device upgraded mid-download resumes where it was. Its phase moves
only through :meth:`Job.advance`, by the table in :mod:`agent.core.phases`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from agent.core.phases import (
    INITIAL,
    CoreStateError,
    Phase,
    TransitionError,
    Trigger,
    next_phase,
)
from shared.manifest import Manifest
from shared.trust import VerifiedTarget

# fields of a deploy command that set the job's probation instead of the manifest
PROBATION_FIELDS = ("probation_s", "probation_min_inferences")


@dataclass(frozen=True)
class DeploymentRef:
    """What a deployment event names: the deployment, and the model version it is about."""

    deployment: str
    model: str
    version: int


@dataclass
class Probation:
    """A job's watch after activation: the live traffic it has seen since ``activated_at``."""

    from_version: int | None  # the version it replaced; None: there was none
    activated_at: float
    count: int = 0  # inferences
    errors: int = 0  # failed or non-finite

    def to_json(self) -> dict[str, Any]:
        return {
            "from_version": self.from_version,
            "activated_at": self.activated_at,
            "p_count": self.count,
            "p_errors": self.errors,
        }


@dataclass
class Job:
    """One deployment in progress on this device."""

    deployment: str
    model: str
    version: int
    target: str  # the target's name in the signed metadata
    keyids: list[str] | None  # director keys that signed the command; None in old files
    phase: Phase = INITIAL
    req: str | None = None  # the latest fetch request
    target_info: VerifiedTarget | None = None  # once the metadata is verified
    have: list[int] = field(default_factory=list)  # chunks stored (saved at phase changes)
    pending: list[int] = field(default_factory=list)  # chunks requested, not yet received
    chunk_failures: dict[str, int] = field(default_factory=dict)  # chunk index -> bad copies
    retries: int = 0  # fetches asked again without an answer
    last_progress: float = 0.0
    probation: Probation | None = None  # from activation on
    # the deploy command's probation terms (probation_s, probation_min_inferences), which
    # override the manifest's; None: the manifest's (and in files saved before them)
    probation_asked: dict[str, float] | None = None
    # the fan-out topic the deploy command named (None: fetch every chunk individually)
    fanout: str | None = None
    # in memory only: waiting on the fan-out (False after a restart: fetch what is missing)
    fan_live: bool = field(default=False, compare=False)
    fan_last: float = field(default=0.0, compare=False)  # the fan-out's latest progress
    fan_whole: bool = field(default=False, compare=False)  # saw a round from chunk 0
    fan_seen: bool = field(default=False, compare=False)  # a fanned chunk of it came
    _manifest: Manifest | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def ref(self) -> DeploymentRef:
        return DeploymentRef(self.deployment, self.model, self.version)

    @property
    def verified_target(self) -> VerifiedTarget:
        """The verified target (from the chunk phase on).

        Raises:
            CoreStateError: asked before the metadata was verified (a bug in the core).
        """
        if self.target_info is None:
            raise CoreStateError(f"job {self.deployment} has no target in phase {self.phase}")
        return self.target_info

    @property
    def manifest(self) -> Manifest:
        """The model manifest signed in the target's custom fields (parsed once)."""
        if self._manifest is None:
            self._manifest = Manifest.from_custom(self.verified_target.custom)
        return self._manifest

    def probation_terms(self) -> tuple[float, int]:
        """Seconds of probation and the live inferences needed to judge it: the deploy
        command's if it set them, else the manifest's."""
        health = self.manifest.health
        asked = self.probation_asked or {}
        seconds = float(asked.get("probation_s", health.probation_s))
        return seconds, int(asked.get("probation_min_inferences", health.probation_min_inferences))

    def advance(self, trigger: Trigger) -> None:
        """Move to the phase ``trigger`` leads to (the job goes on).

        Raises:
            TransitionError: the transition table has no such move, or it ends the job.
        """
        phase = next_phase(self.phase, trigger)
        if phase is None:
            raise TransitionError(self.phase, trigger)  # ending a job: DeviceState.end_job
        self.phase = phase

    def verified(self, target: VerifiedTarget) -> None:
        """The signed metadata names ``target``: download it next."""
        self.advance(Trigger.METADATA_VERIFIED)
        self.target_info = VerifiedTarget(
            target.name, target.length, target.sha256, dict(target.custom)
        )
        self._manifest = None

    def activated(self, from_version: int | None, now: float) -> None:
        """The new version serves: watch it on probation."""
        self.advance(Trigger.ACTIVATED)
        self.probation = Probation(from_version, now)

    # ------------------------------------------------------------- persistence

    def to_json(self) -> dict[str, Any]:
        """The job as the state file holds it (keys in the order the device always wrote)."""
        data: dict[str, Any] = {
            "deployment": self.deployment,
            "model": self.model,
            "version": self.version,
            "target": self.target,
        }
        if self.keyids is not None:
            data["keyids"] = self.keyids
        t = self.target_info
        data |= {
            "phase": self.phase.value,
            "req": self.req,
            "target_info": None
            if t is None
            else {"name": t.name, "length": t.length, "sha256": t.sha256, "custom": t.custom},
            "have": self.have,
            "pending": self.pending,
            "chunk_failures": self.chunk_failures,
            "retries": self.retries,
            "last_progress": self.last_progress,
        }
        if self.probation is not None:
            data |= self.probation.to_json()
        if self.probation_asked is not None:
            data["probation_asked"] = self.probation_asked
        if self.fanout is not None:
            data["fanout"] = self.fanout
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Job:
        """A job from a state file (this version's or an older one's).

        Raises:
            KeyError, ValueError: not a job this device saved.
        """
        t = data["target_info"]
        probation = None
        if "activated_at" in data:
            probation = Probation(
                data["from_version"], data["activated_at"], data["p_count"], data["p_errors"]
            )
        return cls(
            deployment=data["deployment"],
            model=data["model"],
            version=data["version"],
            target=data["target"],
            keyids=data.get("keyids"),  # absent in a job saved before commands were signed
            phase=Phase(data["phase"]),
            req=data["req"],
            target_info=None
            if t is None
            else VerifiedTarget(t["name"], t["length"], t["sha256"], t["custom"]),
            have=data["have"],
            pending=data["pending"],
            chunk_failures=data["chunk_failures"],
            retries=data["retries"],
            last_progress=data["last_progress"],
            probation=probation,
            probation_asked=data.get("probation_asked"),
            fanout=data.get("fanout"),  # absent in a job saved before fan-out
        )
