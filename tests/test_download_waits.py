"""How long a device waits: on a fan-out before it fetches chunks one by one, and
between asking a silent hub again.

The real device core and a real hub's fetch answers back to back (tests/update_rig.py),
on a clock the test moves: a deploy command names a fan-out topic, and the hub sends no
round until the test says so.
"""

from __future__ import annotations

import itertools
from pathlib import Path

from update_rig import UpdateRig

from agent.core import CoreConfig
from agent.core.download import MAX_BACKOFF
from hub.ml.pipeline import BuiltModel
from shared import protocol

FIRST = CoreConfig("d", "c").fan_first_wait_s
BETWEEN = CoreConfig("d", "c").fan_wait_s


def fanned(rig: UpdateRig, target: str, index: int) -> bytes:
    """Chunk ``index`` of ``target`` as a fan-out round publishes it."""
    data = rig.registry.chunk(target, index)
    assert data is not None
    header = {"kind": "chunk", "req": protocol.FANOUT_REQ, "target": target, "index": index}
    return protocol.encode_blob(header, data)


def deploy_fanned(rig: UpdateRig) -> str:
    """Deploy version 1 with a fan-out topic; the metadata is fetched and verified."""
    version = rig.publish()
    rig.send(rig.command("deploy", version, fanout=protocol.fanout_topic("ab" * 16)))
    assert rig.fetches == 1  # the metadata only: the chunks are to come from the fan-out
    return f"{rig.built.name}/{version}/model.onnx"


def test_a_device_waits_for_its_first_round_longer_than_between_chunks(
    tmp_path: Path, built: BuiltModel
) -> None:
    assert FIRST > BETWEEN
    rig = UpdateRig(tmp_path, built)
    deploy_fanned(rig)

    rig.advance(BETWEEN + 5)  # a busy hub starts the round late: the device still waits
    assert rig.fetches == 1

    events = rig.advance(FIRST - BETWEEN)  # no round at all: it fetches every chunk
    assert rig.fetches > 1
    assert events[-1]["stage"] == "healthy"
    assert rig.device.core.counts["fan_waited_out"] == 1


def test_once_a_round_brought_a_chunk_a_pause_of_fan_wait_s_ends_the_fan_out(
    tmp_path: Path, built: BuiltModel
) -> None:
    rig = UpdateRig(tmp_path, built)
    target = deploy_fanned(rig)
    rig.device.message("blob", fanned(rig, target, 0))

    rig.advance(BETWEEN - 1)
    assert rig.fetches == 1
    events = rig.advance(2)  # the round stopped after chunk 0: fetch the rest
    assert rig.fetches > 1
    assert events[-1]["stage"] == "healthy"
    assert rig.device.core.counts["fetched_chunks"] == rig.device.core.counts["chunks_asked"]
    assert rig.device.core.counts["fan_chunks"] == 1


def test_a_device_that_learnt_a_slow_hub_asks_again_at_most_every_eight_time_outs(
    tmp_path: Path, built: BuiltModel
) -> None:
    rig = UpdateRig(tmp_path, built, fetch_timeout_s=5.0)
    rtt = rig.device.core._updater.download.rtt  # what the device learnt of its hub
    for i in range(20):  # the hub answered in 30 s: the adapted time-out is 6x the set one
        rtt.asked(f"s{i}", 0.0)
        rtt.answered(f"s{i}", 30.0)
    assert rtt.timeout() >= 30.0
    rig.hub_silent = True
    rig.deploy(rig.publish())

    asked_at = [rig.clock.now]
    while rig.fetches < 5:
        rig.advance(1.0)
        if rig.fetches > len(asked_at):
            asked_at.append(rig.clock.now)
    gaps = [b - a for a, b in itertools.pairwise(asked_at)]
    assert max(gaps) <= MAX_BACKOFF * 5.0 + 1.0, gaps  # never 8 x the adapted time-out
