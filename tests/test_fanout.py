"""Fan-out end to end: a real hub, a real Mosquitto and simulated devices running the real
agent code (hub/transport/fanout.py, agent/core/download.py, docs/protocol.md "Fan-out").

The hub publishes each chunk of the target once on the rollout's fan-out topic; each
device checks every chunk against the signed manifest and fetches individually only
what it missed or what failed its check.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fleet_rig import Rig, fleet_rig
from waiting import wait_for

from hub.transport.broker import Mosquitto
from shared import protocol

pytestmark = [pytest.mark.broker, pytest.mark.slow]

DEVICES = 6


@pytest.fixture
def rig(private_mosquitto: Mosquitto, tmp_path: Path) -> Iterator[Rig]:
    with fleet_rig(private_mosquitto, tmp_path, DEVICES, "fan", rows_per_s=0.0) as r:
        yield r


def train(rig: Rig) -> dict[str, Any]:
    """A model of several chunks (the rig's hub cuts 4 KiB chunks)."""
    job = rig.client.train(
        n_train=1000,
        hidden=[256, 64],
        latency_budget_us=50_000.0,
        probation_s=0,
        probation_min_inferences=0,
    )
    result: dict[str, Any] = rig.client.wait_job(job["id"], timeout=180)["result"]
    return result


def roll_out(rig: Rig, model: dict[str, Any]) -> dict[str, Any]:
    r = rig.client.create_rollout(model["name"], version=model["version"])
    wait_for(lambda: rig.client.rollout(r["id"])["finished"], 90, f"rollout {r['id']}")
    return rig.client.rollout(r["id"])


def target_chunks(rig: Rig, model: dict[str, Any]) -> list[bytes]:
    """The chunks of the model's target, as the hub serves them."""
    registry = rig.hub.registry
    target = registry.get(model["name"], model["version"]).target
    out: list[bytes] = []
    while (data := registry.chunk(target, len(out))) is not None:
        out.append(data)
    return out


def chunk_count(rig: Rig, model: dict[str, Any]) -> int:
    return len(target_chunks(rig, model))


def on_fan_out(change: Any) -> Any:
    """An inbound fault that hands each fan-out chunk (header, data) to ``change``, which
    returns the data to deliver, or None to drop the chunk; anything else passes."""

    def fault(topic: str, payload: bytes, deliver: Any) -> None:
        if not protocol.is_fanout_topic(topic):
            deliver(topic, payload)
            return
        blob = protocol.decode_blob(payload)
        data = change(blob.header, blob.data)
        if data is not None:
            deliver(topic, protocol.encode_blob(dict(blob.header), data))

    return fault


def test_a_fanned_out_rollout_converges_with_no_chunk_sent_one_by_one(rig: Rig) -> None:
    model = train(rig)
    chunks = chunk_count(rig, model)

    st = roll_out(rig, model)

    assert st["state"] == "completed" and st["converged"] == DEVICES
    assert {rig.version(d) for d in rig.devices} == {model["version"]}
    assert rig.hub.mqtt.counts["chunks_sent"] == 0  # nothing asked for one by one
    assert rig.hub.fanout is not None
    published = rig.hub.fanout.counts["chunks_fanned"]
    assert published % chunks == 0 and 1 <= published // chunks <= 2  # one round, or two
    for d in rig.devices:
        assert d.device.core.counts["fan_chunks"] == chunks
        assert d.device.core.counts["chunks_asked"] == 0


def test_a_device_that_misses_fan_out_chunks_fetches_only_those(rig: Rig) -> None:
    model = train(rig)
    chunks = chunk_count(rig, model)
    assert chunks >= 4
    lossy = rig.devices[0]
    missed = {1, chunks - 2}
    rig.on_loop(
        lambda: lossy.inbound_faults.append(
            on_fan_out(lambda h, data: None if h["index"] in missed else data)
        )
    )

    st = roll_out(rig, model)

    assert st["converged"] == DEVICES
    assert rig.version(lossy) == model["version"]
    counts = lossy.device.core.counts
    assert counts["fan_chunks"] == chunks - len(missed)
    assert counts["chunks_asked"] == len(missed)
    assert counts["fetched_chunks"] == len(missed)
    assert rig.hub.mqtt.counts["chunks_sent"] == len(missed)  # and no other device asked
    for d in rig.devices[1:]:
        assert d.device.core.counts["chunks_asked"] == 0


def test_a_tampered_fan_out_chunk_is_refused_and_fetched_again(rig: Rig) -> None:
    model = train(rig)
    victim = rig.devices[1]

    def flip(header: dict[str, Any], data: bytes) -> bytes:
        if header["index"] != 2:
            return data
        return bytes([data[0] ^ 0xFF]) + data[1:]  # the same length, another sha256

    rig.on_loop(lambda: victim.inbound_faults.append(on_fan_out(flip)))

    st = roll_out(rig, model)

    assert st["converged"] == DEVICES
    assert rig.version(victim) == model["version"]
    installed = victim.device.core.installed(model["name"])
    assert installed is not None
    sha = installed["files"][str(model["version"])]["sha256"]
    assert sha == hashlib.sha256(b"".join(target_chunks(rig, model))).hexdigest()
    assert victim.device.core.counts["fetched_chunks"] == 1  # chunk 2, from the hub
    assert rig.hub.mqtt.counts["chunks_sent"] == 1


def test_a_device_without_fan_out_fetches_every_chunk_itself(rig: Rig) -> None:
    model = train(rig)
    chunks = chunk_count(rig, model)
    loner = rig.devices[2]
    # it never sees the fan-out (a broker that dropped its subscription, say)
    rig.on_loop(lambda: loner.inbound_faults.append(on_fan_out(lambda h, data: None)))

    st = roll_out(rig, model)

    assert st["converged"] == DEVICES
    assert loner.device.core.counts["fetched_chunks"] == chunks
    assert rig.hub.mqtt.counts["chunks_sent"] == chunks
