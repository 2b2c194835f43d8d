r"""Device progress: the one transition table for a device's row of a deployment.

Both kinds of row go through :func:`accepts`: a rollout's (``RolloutDevice.state``,
hub/fleet/rollouts.py) and a plain deployment's (``DeploymentDevice.stage``,
hub/fleet/deployments.py); the ingest writer moves them on the device's events
(hub/fleet/progress.py). The two columns keep their names (the schema), not their rules.

::

    pending -> sent -> received ... activated -> healthy          success
                   \-> failed | refused | timed_out                 failure
                   \-> rolled_back (by its own probation)           failure
    after a halt: activated | healthy -> (rollback sent) -> rolled_back
    never sent (halted, aborted, revoked): skipped
"""

from __future__ import annotations

from hub.store.tables import RolloutDevice
from shared.protocol import STAGES

FAILURE = frozenset({"failed", "refused", "timed_out"})  # and rolled_back by probation
IN_FLIGHT = frozenset({"sent", "received", "downloading", "verified", "staged", "activated"})
CHANGED = frozenset({"activated", "healthy"})  # the device now runs the rollout's version
DONE = frozenset({"healthy", "failed", "refused", "timed_out", "rolled_back", "skipped"})


NOT_STARTED = ("pending", "sent")  # the hub's own states before the device answers
STATES = (*NOT_STARTED, *STAGES, "timed_out", "skipped")
ROLLBACK_OUTCOMES = frozenset({"rolled_back", "failed"})  # after the hub sent a rollback


def _accepted(state: str) -> frozenset[str]:
    if state in NOT_STARTED:
        return frozenset(STAGES)  # anything, a refusal included
    if state in DONE:
        return DONE & frozenset(STAGES) - {"refused"}  # outcomes only: late progress is not
    return frozenset(STAGES) - {"refused"}  # in flight: a refusal now is a stale copy's


# The transition table: the event stages a device may move a row on, by the row's state.
# A "refused" after the device acted is a redelivered copy of a command it carried out.
ACCEPTS: dict[str, frozenset[str]] = {state: _accepted(state) for state in STATES}


def accepts(state: str, stage: str, *, rollback_sent: bool = False) -> bool:
    """Whether a device's event ``stage`` moves a row that stands at ``state``.

    Once the hub sent a rollback, only the rollback's outcome lands.
    """
    if rollback_sent and stage not in ROLLBACK_OUTCOMES:
        return False
    return stage in ACCEPTS.get(state, frozenset())


def apply_event(
    row: RolloutDevice, stage: str, reason: str | None, detail: str | None, ts: float
) -> bool:
    """Move a rollout device row on an event from the device; whether it changed.

    Late progress after an outcome is ignored; a rollback's outcome always lands, and an
    outcome after a rollback was sent is kept only if it is the rollback's.
    """
    if not accepts(row.state, stage, rollback_sent=row.rollback_at is not None):
        return False
    move(row, stage, ts, reason, detail)
    return True


def move(
    row: RolloutDevice, state: str, t: float, reason: str | None = None, detail: str | None = None
) -> None:
    row.state, row.reason, row.detail, row.updated_at = state, reason, detail, t


def failed(row: RolloutDevice) -> bool:
    if row.state in FAILURE:
        return True
    # rolled back by the device itself (probation), not by a rollback we sent
    return row.state == "rolled_back" and row.rollback_at is None
