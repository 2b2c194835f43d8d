"""What the agent logs about its broker link, told once per change (agent/connection.py).

A frozen clock stands in for the minutes a broker may stay away; the real process is
tests/test_agent_process.py.
"""

from __future__ import annotations

import logging

import pytest

from agent.connection import REPEAT_LOG_S, ConnectionLog

URL = "mqtt://hub.example:1883"


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def told(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]


def test_an_outage_is_told_once_then_once_a_minute_and_its_end_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="agent.connection")
    clock = Clock()
    link = ConnectionLog(URL, 1, 60, clock=clock)
    link.up()
    link.down("the connection dropped or the broker went away")
    waits = []
    for _ in range(9):  # paho's waits: 1 (after the loss), 2, 4, ... 60
        link.attempt_failed("connection refused")
        waits.append(link.status()["next_attempt_in_s"])
        clock.now += waits[-1]
    assert waits == [2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0, 60.0, 60.0]
    assert clock.now - 1_000_000.0 > 3 * REPEAT_LOG_S
    link.up()
    lines = told(caplog)
    assert lines[0] == f"connected to {URL}"
    assert lines[1] == (
        f"lost the connection to {URL} (the connection dropped or the broker went away);"
        " retrying in 1 s"
    )
    assert lines[2] == (
        f"cannot connect to {URL} (connection refused); retrying in 2 s"
        " (attempt 1; backoff 1..60 s)"
    )
    still = [line for line in lines if line.startswith("still cannot connect")]
    assert 2 <= len(still) <= 4 and len(lines) == 3 + len(still) + 1, lines
    assert (
        lines[-1]
        == f"connected to {URL} (after {clock.now - 1_000_000.0:.0f} s down, 9 failed attempts)"
    )
    status = link.status()
    assert status["connected"] and status["retries"] == 0 and status["last_error"] is None


def test_a_new_reason_is_told_at_once_and_a_refusal_as_an_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="agent.connection")
    link = ConnectionLog(URL, 1, 60, clock=Clock())
    link.attempt_failed("connection refused")
    link.attempt_failed("connection refused")
    link.attempt_failed("name or service not known")
    link.refused("Not authorized")
    link.down("the connection dropped or the broker went away")
    link.refused("Not authorized")
    link.down("the connection dropped or the broker went away")
    records = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert [m.split(";")[0] for _, m in records] == [
        f"cannot connect to {URL} (connection refused)",
        f"cannot connect to {URL} (name or service not known)",
        f"cannot connect to {URL} (refused: Not authorized)",
    ]
    assert records[-1][0] == logging.ERROR
    assert link.status()["retries"] == 5
    assert link.status()["last_error"] == "refused: Not authorized"
