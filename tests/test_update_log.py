"""An update's steps in the agent's log: each once, in order, failures and rollbacks
as warnings with their reason (the real Device, TUF verifier and onnxruntime of
tests/update_rig.py; tests/test_daemon.py checks the same lines over a real hub)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from update_rig import UpdateRig  # tests/update_rig.py

from hub.ml.pipeline import BuiltModel
from shared import protocol

STEPS = [
    "deploy received",
    "downloading",
    "verified against its signed metadata",
    "installed (staged beside the active model)",
    "health check passed (p95 ",
    "activated",
    "healthy (",
]


def lines(caplog: pytest.LogCaptureFixture, deployment: str) -> list[tuple[int, str]]:
    return [
        (r.levelno, r.getMessage())
        for r in caplog.records
        if r.name == "agent.update"
        and r.levelno >= logging.INFO
        and f"(deployment {deployment})" in r.getMessage()
    ]


def test_each_step_is_logged_once_even_when_the_deploy_comes_again(
    tmp_path: Path, built: BuiltModel, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="agent.update")
    rig = UpdateRig(tmp_path, built, log_updates=True)
    rig.publish()
    rig.install(1)
    rig.deploy(1)  # the hub re-sends a deploy it saw no answer to
    got = lines(caplog, "deploy-1")
    assert len(got) == len(STEPS), got
    for (level, text), step in zip(got, STEPS, strict=True):
        assert level == logging.INFO and f"update {built.name} v1" in text and step in text
    assert "activated; on probation for 0 s (at least 0 inferences)" in got[5][1]


def test_a_rollback_and_a_failure_are_warnings_with_their_reason(
    tmp_path: Path, built: BuiltModel, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="agent.update")
    rig = UpdateRig(tmp_path, built, log_updates=True)
    rig.publish()
    rig.install(1)
    rig.publish()
    rig.install(2)
    rig.send(rig.command("rollback", 1, deployment="back"))
    [(level, text)] = lines(caplog, "back")
    assert level == logging.WARNING
    assert f"update {built.name} v1" in text and "rolled back from v2: rollback_requested" in text

    rig.publish()

    def bad_chunk(blob: bytes) -> bytes:
        parsed = protocol.decode_blob(blob)
        if parsed.kind != "chunk":
            return blob
        data = bytes([parsed.data[0] ^ 0xFF]) + parsed.data[1:]
        return protocol.encode_blob(parsed.header, data)

    rig.tamper = bad_chunk
    events = rig.deploy(3)
    assert events[-1]["stage"] == "failed"
    got = lines(caplog, "deploy-3")
    assert [t for _, t in got][:2] == [
        f"dev-1: update {built.name} v3 (deployment deploy-3): deploy received",
        f"dev-1: update {built.name} v3 (deployment deploy-3): downloading",
    ]
    failed = [(lv, t) for lv, t in got if ": failed: " in t]
    assert len(failed) == 1 and failed[0][0] == logging.WARNING, got
    assert events[-1]["reason"] in failed[0][1]
