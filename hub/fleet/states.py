r"""A rollout device's states, and how a device's events move them (hub/fleet/rollouts.py).

::

    pending -> sent -> received ... activated -> healthy          success
                   \-> failed | refused | timed_out                 failure
                   \-> rolled_back (by its own probation)           failure
    after a halt: activated | healthy -> (rollback sent) -> rolled_back
    never sent (halted, aborted, revoked): skipped
"""

from __future__ import annotations

from hub.store.tables import RolloutDevice

FAILURE = frozenset({"failed", "refused", "timed_out"})  # and rolled_back by probation
IN_FLIGHT = frozenset({"sent", "received", "downloading", "verified", "staged", "activated"})
CHANGED = frozenset({"activated", "healthy"})  # the device now runs the rollout's version
DONE = frozenset({"healthy", "failed", "refused", "timed_out", "rolled_back", "skipped"})


def apply_event(
    row: RolloutDevice, stage: str, reason: str | None, detail: str | None, ts: float
) -> bool:
    """Move a rollout device row on an event from the device; whether it changed.

    Late progress after an outcome is ignored; a rollback's outcome always lands, and an
    outcome after a rollback was sent is kept only if it is the rollback's.
    """
    if row.rollback_at is not None and stage not in ("rolled_back", "failed"):
        return False
    if row.state in DONE and stage not in DONE:
        return False
    if stage == "refused" and row.state not in ("pending", "sent"):
        return False  # e.g. a redelivered copy of a command it already carried out
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
