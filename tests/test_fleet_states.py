"""The one transition table of device progress (hub/fleet/states.py), for both a rollout's
rows and a plain deployment's."""

from __future__ import annotations

from hub.fleet.states import ACCEPTS, STATES, accepts
from shared.protocol import STAGES


def test_every_state_has_a_row_and_only_known_stages() -> None:
    assert set(ACCEPTS) == set(STATES)
    assert all(stages <= set(STAGES) for stages in ACCEPTS.values())


def test_late_progress_after_an_outcome_is_ignored_but_a_later_outcome_lands() -> None:
    assert not accepts("healthy", "downloading")
    assert accepts("healthy", "rolled_back")  # probation failed after all
    assert not accepts("timed_out", "staged")
    assert accepts("timed_out", "healthy")  # the device was slow, not gone


def test_a_refusal_counts_only_before_the_device_acted() -> None:
    assert accepts("sent", "refused") and accepts("pending", "refused")
    assert not accepts("received", "refused")  # a redelivered copy of a carried-out command
    assert not accepts("healthy", "refused")


def test_after_a_rollback_was_sent_only_its_outcome_lands() -> None:
    assert accepts("activated", "rolled_back", rollback_sent=True)
    assert accepts("activated", "failed", rollback_sent=True)
    assert not accepts("activated", "healthy", rollback_sent=True)
