"""Fixtures shared by every test: a real Mosquitto on a free port, temp dirs."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from hub.transport.broker import Mosquitto

if TYPE_CHECKING:
    from hub.ml.pipeline import BuiltModel

# The test files that take longest, longest first (seconds measured with --durations=0 on
# the 2-core CI machine). scripts/test runs files in parallel (pytest-xdist, one file per
# worker at a time): started first, the long ones run beside the many short ones instead
# of after them. Every other file keeps its place after these.
LONGEST_FIRST = (
    "test_telemetry_outage.py",  # the broker is down for EF_OUTAGE_S (180 s)
    "test_bench_drift.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: keeps the rest


@pytest.fixture(scope="session")
def mosquitto() -> Iterator[Mosquitto]:
    """A real Mosquitto process for the whole session, on a free loopback port.

    Tests isolate themselves by device ids / topic prefixes of their own; a test that
    restarts or stops the broker uses ``private_mosquitto`` instead.
    """
    if not Mosquitto.available():
        pytest.fail(
            "the mosquitto binary is missing: .ci/run installs it (apt-get install mosquitto)"
        )
    with Mosquitto() as broker:
        yield broker


@pytest.fixture
def private_mosquitto() -> Iterator[Mosquitto]:
    """A Mosquitto of this test's own (for tests that restart or stop it)."""
    if not Mosquitto.available():
        pytest.fail("the mosquitto binary is missing")
    with Mosquitto() as broker:
        yield broker


@pytest.fixture(scope="session")
def built() -> BuiltModel:
    """A small model trained and quantised by the hub's pipeline, once per session.

    Frozen: the update rigs sign and serve it, none changes it.
    """
    from hub import pipeline_config
    from hub.ml.pipeline import train

    return train(pipeline_config(n_train=2000, n_holdout=500, hidden=(16,)))
