"""The phases of a deployment job and the one table of the moves between them.

Everything that changes a job's phase lives here (as h11's ``_state.py`` has it): a
:class:`Trigger` names what happened, :data:`TRANSITIONS` says where it leads from each
phase, and :func:`next_phase` is the one function every phase change goes through
(``Job.advance``, ``DeviceState.end_job``). A move the table does not list raises
:class:`TransitionError`: a bug in the core, never a message from outside.

The firm update path (DESIGN §5)::

    meta -> chunks -> verify -> health -> activating -> probation -> (over)
      \\________\\________\\________\\__________\\______________\\---> failed (over)
                                   ^ activating, health: restarted -> health
"""

from __future__ import annotations

from enum import Enum, StrEnum


class Phase(StrEnum):
    """Where a job stands. The value is what the saved state says (``job["phase"]``)."""

    META = "meta"  # fetching and verifying the TUF metadata
    CHUNKS = "chunks"  # downloading chunks, each checked against its signed hash
    VERIFY = "verify"  # the whole file: verified, then staged
    HEALTH = "health"  # the staged model's health check
    ACTIVATING = "activating"  # the atomic switch to the new version
    PROBATION = "probation"  # serving; watched for errors before it is called healthy

    @property
    def fetching(self) -> bool:
        """Waiting for the hub: a timeout asks again, a hub error answers the job."""
        return self in (Phase.META, Phase.CHUNKS)

    @property
    def staged(self) -> bool:
        """The new version is staged beside the active one (discarded if the job fails)."""
        return self in (Phase.HEALTH, Phase.ACTIVATING)

    @property
    def stage(self) -> str:
        """The stage a job in this phase last reported (answers a re-sent deploy)."""
        return _STAGE_REPORTED[self]


INITIAL = Phase.META  # a deploy command starts a job here


class Trigger(Enum):
    """What happened to a job."""

    METADATA_VERIFIED = "metadata_verified"
    CHUNKS_COMPLETE = "chunks_complete"
    FILE_STAGED = "file_staged"
    HEALTH_PASSED = "health_passed"
    ACTIVATED = "activated"
    RESTARTED = "restarted"  # the checked session did not survive a restart: check again
    FAILED = "failed"  # abandoned; the active model never stopped serving
    SETTLED = "settled"  # probation judged: healthy, or rolled back, or kept as the only one
    ROLLED_BACK = "rolled_back"  # a rollback command ended it while on probation


_OVER = None  # the job has its outcome: it is forgotten

TRANSITIONS: dict[tuple[Phase, Trigger], Phase | None] = {
    (Phase.META, Trigger.METADATA_VERIFIED): Phase.CHUNKS,
    (Phase.CHUNKS, Trigger.CHUNKS_COMPLETE): Phase.VERIFY,
    (Phase.VERIFY, Trigger.FILE_STAGED): Phase.HEALTH,
    (Phase.HEALTH, Trigger.HEALTH_PASSED): Phase.ACTIVATING,
    (Phase.HEALTH, Trigger.RESTARTED): Phase.HEALTH,
    (Phase.ACTIVATING, Trigger.RESTARTED): Phase.HEALTH,
    (Phase.ACTIVATING, Trigger.ACTIVATED): Phase.PROBATION,
    (Phase.PROBATION, Trigger.SETTLED): _OVER,
    (Phase.PROBATION, Trigger.ROLLED_BACK): _OVER,
    **{(phase, Trigger.FAILED): _OVER for phase in Phase},
}

_STAGE_REPORTED: dict[Phase, str] = {
    Phase.META: "received",
    Phase.CHUNKS: "downloading",
    Phase.VERIFY: "downloading",
    Phase.HEALTH: "staged",
    Phase.ACTIVATING: "staged",
    Phase.PROBATION: "activated",
}


class CoreStateError(Exception):
    """The core's own state broke a rule it keeps: a bug in the core, never bad input.

    CoreStateError
     └── TransitionError: a phase change the transition table does not list
    """


class TransitionError(CoreStateError):
    """A phase change the table does not allow."""

    def __init__(self, phase: Phase, trigger: Trigger) -> None:
        super().__init__(f"no move from phase {phase.value} on {trigger.value}")
        self.phase = phase
        self.trigger = trigger


def next_phase(phase: Phase, trigger: Trigger) -> Phase | None:
    """The phase ``trigger`` leads to from ``phase``; None: the job is over.

    Raises:
        TransitionError: the table has no such move.
    """
    try:
        return TRANSITIONS[(phase, trigger)]
    except KeyError:
        raise TransitionError(phase, trigger) from None
