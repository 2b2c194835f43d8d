"""Write the state files a device saves at interesting moments, by driving the agent core.

These files were written by the agent core as it stood before it became the
``agent/core/`` package (the job a plain dict): tests/test_state_files.py loads them
into today's core, so a device upgraded mid-download resumes where it was. Do not
regenerate them to make a test pass: they are the old format, frozen.

Each file is the last ``PersistState`` the core asked its adapter to write (what is on
disk), byte for byte. The chunks of every download are :func:`model_data` split in
``CHUNK`` bytes, so a test can send the rest of a download.

Usage: python tests/data/agent_state_v1/generate.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))  # tests/, for manifests.py

from manifests import make_target  # noqa: E402
from securesystemslib.signer import CryptoSigner  # noqa: E402

from agent.core import AgentCore, CoreConfig  # noqa: E402
from agent.events import (  # noqa: E402
    CaptureEnded,
    CheckStagedChunks,
    Connected,
    Done,
    Event,
    MessageArrived,
    MetadataVerified,
    PersistState,
    Publish,
    StagedChunks,
    Tick,
    TrustRefreshed,
)
from agent.telemetry import InferenceStats  # noqa: E402
from shared import protocol  # noqa: E402
from shared.director import DirectorKeys, sign_command  # noqa: E402

DEV = "dev-1"
CHUNK = 1024  # bytes: the manifests' chunk size (tests/manifests.py)
DIRECTOR = CryptoSigner.generate_ed25519()
KEYS = DirectorKeys({DIRECTOR.public_key.keyid: DIRECTOR.public_key})


def model_data(version: int) -> bytes:
    """Model v``version``'s bytes: 2600 bytes, three chunks."""
    return bytes((version * 7 + i) % 251 for i in range(2600))


def config() -> CoreConfig:
    return CoreConfig(DEV, "gw", chunk_window=4)


class Recorder:
    """A core and the last state it asked to persist."""

    def __init__(self) -> None:
        self.core = AgentCore(config(), director_keys=KEYS)
        self.saved: bytes | None = None

    def feed(self, event: Event) -> list[Any]:
        actions = self.core.handle(event)
        for a in actions:
            if isinstance(a, PersistState):
                self.saved = a.data
            if isinstance(a, Publish) and a.topic.endswith("/fetch"):
                msg = json.loads(a.payload)
                if msg["type"] == "fetch_meta" and self.core.job is None:  # a held command
                    now = float(msg["ts"])
                    actions += self.feed(TrustRefreshed(msg["body"]["req"], 1, KEYS, now))
        return actions

    def command(self, msg_type: str, now: float, **body: Any) -> list[Any]:
        payload = sign_command(
            [DIRECTOR], msg_type, body, device_id=DEV, now=now, ttl_s=3600, root_version=1
        )
        return self.feed(MessageArrived("cmd", payload, now))

    def to_chunks(self, version: int, now: float) -> str:
        """Deploy v``version`` and verify its metadata; returns the fetch request."""
        acts = self.command(
            "deploy",
            now,
            deployment=f"d{version}",
            model="m",
            version=version,
            target=f"m/{version}/model.onnx",
        )
        fetch = next(a for a in acts if isinstance(a, Publish) and a.topic.endswith("/fetch"))
        req: str = json.loads(fetch.payload)["body"]["req"]
        meta = protocol.encode_meta_blob(req, [("timestamp.json", b"{}")])
        self.feed(MessageArrived("blob", meta, now + 0.5))
        target = make_target(version, model_data(version))
        self.feed(MetadataVerified(req, target, 1, now + 1.0))
        return req

    def chunk(self, version: int, index: int, now: float, data: bytes | None = None) -> None:
        piece = model_data(version)[index * CHUNK : (index + 1) * CHUNK]
        header = {"kind": "chunk", "req": "r", "target": f"m/{version}/model.onnx", "index": index}
        blob = protocol.encode_blob(header, piece if data is None else data)
        self.feed(MessageArrived("blob", blob, now))

    def install(self, version: int, now: float) -> None:
        self.to_chunks(version, now)
        for index in range(3):
            self.chunk(version, index, now + 2)
        for step in ("file", "health", "activate"):
            self.feed(Done(step, now + 3))
        stats = InferenceStats()
        stats.count = 100
        self.feed(Tick(now + 20, stats))
        assert self.core.job is None

    def write(self, name: str) -> None:
        assert self.saved is not None
        (HERE / f"{name}.json").write_bytes(self.saved)


def main() -> None:
    # v1 installed; v2 received, its metadata not yet verified
    r = Recorder()
    r.feed(Connected(0.0))
    r.feed(Tick(0.0))
    r.install(1, 1.0)
    acts = r.command("deploy", 30.0, deployment="d2", model="m", version=2, target="m/2/model.onnx")
    r.write("meta")
    fetch = next(a for a in acts if isinstance(a, Publish) and a.topic.endswith("/fetch"))
    req = json.loads(fetch.payload)["body"]["req"]

    # v2 mid-download: chunk 0 arrived, chunk 1 failed its hash once, then a restart:
    # the staging file held chunk 0, so the saved job has it and asks for the rest
    meta = protocol.encode_meta_blob(req, [("timestamp.json", b"{}")])
    r.feed(MessageArrived("blob", meta, 30.5))
    r.feed(MetadataVerified(req, make_target(2, model_data(2)), 1, 31.0))
    r.chunk(2, 0, 32.0)
    r.chunk(2, 1, 32.5, data=b"\x00" * CHUNK)
    acts = r.feed(Connected(40.0))
    assert any(isinstance(a, CheckStagedChunks) for a in acts)
    r.feed(StagedChunks(frozenset({0}), 40.5))
    r.write("chunks")

    # every chunk in: verifying the whole file
    r.chunk(2, 1, 41.0)
    r.chunk(2, 2, 41.0)
    r.write("verify")

    # verified and staged: the health check runs
    r.feed(Done("file", 42.0))
    r.write("health")

    # checked, activation under way, when a telemetry window closes (and saves the state)
    r.feed(Done("health", 43.0))
    r.feed(Tick(45.0))
    r.write("activating")

    # activated: on probation, some traffic counted when the next window closed
    r.feed(Done("activate", 46.0))
    stats = InferenceStats()
    stats.count, stats.errors = 4, 1
    r.feed(Tick(49.0, stats))
    r.feed(Tick(55.0))
    r.write("probation")

    # the probation failed: rolled back to v1
    stats = InferenceStats()
    stats.count, stats.errors = 20, 10
    r.feed(Tick(56.0, stats))
    assert r.core.job is None and r.core.installed("m")["version"] == 1  # type: ignore[index]
    r.write("rolled_back")

    # a capture measured in windows is running (and no deployment)
    r.command("capture", 60.0, capture="c1", model="m", max_rows=50, windows=3, seed=4)
    r.feed(Tick(65.0))
    r.write("capture")

    # a first install on probation (nothing to roll back to), a capture ended before
    f = Recorder()
    f.command("capture", 0.0, capture="c0", model="m", max_rows=10, duration_s=5.0)
    f.feed(Tick(0.0))
    f.feed(Tick(5.0))
    f.feed(CaptureEnded("c0", 6.0))
    f.to_chunks(1, 10.0)
    for index in range(3):
        f.chunk(1, index, 12.0)
    for step in ("file", "health", "activate"):
        f.feed(Done(step, 13.0))
    assert f.core.job is not None and f.core.job["phase"] == "probation"
    f.write("probation_first")


if __name__ == "__main__":
    main()
