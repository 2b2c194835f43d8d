"""Fixtures shared by every test: a real Mosquitto on a free port, temp dirs."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from hub.transport.broker import Mosquitto


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
