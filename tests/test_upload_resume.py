"""Capture uploads kept on the device until the hub has them all: the sans-I/O core, and
the files the device keeps them in (docs/capture.md "Resuming an upload", ADR 0039)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from securesystemslib.signer import CryptoSigner
from trust_refresh import handle_trusting

from agent.capture import upload_chunks
from agent.config import AgentConfig, ConfigError
from agent.core import AgentCore, CoreConfig, encode_state
from agent.events import (
    CaptureEnded,
    Connected,
    DropUpload,
    KeepUpload,
    MessageArrived,
    Publish,
    SendUploadChunks,
    Tick,
    UploadLost,
)
from agent.store import DeviceStore
from shared import protocol
from shared.director import DirectorKeys, sign_command
from shared.reasons import Reason

DEV = "dev-1"
DIRECTOR = CryptoSigner.generate_ed25519()
KEYS = DirectorKeys({DIRECTOR.public_key.keyid: DIRECTOR.public_key})
CHUNK = protocol.MAX_CHUNK_BYTES
DATA = bytes(range(256)) * (CHUNK * 3 // 256 + 10)  # three whole chunks and a short one


def core(**config: Any) -> AgentCore:
    return AgentCore(CoreConfig(DEV, "gw", **config), director_keys=KEYS)


def capture_cmd(capture: str) -> MessageArrived:
    body = {"capture": capture, "model": "m", "max_rows": 50_000, "duration_s": 1.0}
    payload = sign_command(
        [DIRECTOR], "capture", body, device_id=DEV, now=0.0, ttl_s=3600, root_version=1
    )
    return MessageArrived("cmd", payload, 0.0)


def captured(c: AgentCore, capture: str, data: bytes = DATA, now: float = 2.0) -> list[Any]:
    """Run a capture to its end and hand the core the sample's bytes."""
    handle_trusting(c, capture_cmd(capture), KEYS)
    c.handle(Tick(now - 0.5))
    rows = len(data) // 4 // 8
    schema = ({"name": "x", "dtype": "float32", "shape": [rows, 8]},)
    return c.handle(CaptureEnded(capture, now, data, schema, 1, rows, 0))


def request(msg_type: str, **body: Any) -> MessageArrived:
    """A plain request from the hub on ``cmd`` (upload_ask, upload_done)."""
    return MessageArrived("cmd", protocol.encode(msg_type, body, ts=5.0), 5.0)


def published(actions: list[Any], kind: str) -> list[protocol.Message]:
    return [
        protocol.decode(a.payload)
        for a in actions
        if isinstance(a, Publish) and a.topic.endswith(f"/{kind}")
    ]


def sends(actions: list[Any]) -> list[tuple[int, ...]]:
    return [a.indices for a in actions if isinstance(a, SendUploadChunks)]


def test_an_upload_is_kept_until_the_hub_says_it_has_it_and_asks_get_exactly_their_chunks() -> None:
    c = core()
    actions = captured(c, "c1")
    keep = [a for a in actions if isinstance(a, KeepUpload)]
    assert keep == [KeepUpload("c1", DATA)]
    # kept on disk before the manifest goes out, then every chunk
    kinds = [type(a).__name__ for a in actions if not isinstance(a, Publish) or "upload" in a.topic]
    assert kinds.index("KeepUpload") < kinds.index("SendUploadChunks")
    [manifest] = [m for m in published(actions, "capture") if m.type == "upload_manifest"]
    assert sends(actions) == [(0, 1, 2, 3)] and len(manifest.body["chunks"]) == 4
    assert set(c.uploads) == {"c1"}

    # the hub asks for what it lacks: exactly those chunks, read from the kept file
    actions = c.handle(request("upload_ask", capture="c1", chunks=[3, 1]))
    assert sends(actions) == [(3, 1)] and c.counts["upload_chunks_resent"] == 2
    # reconnecting announces the kept upload again: the hub learns the device is back
    actions = c.handle(Connected(6.0))
    again = [m for m in published(actions, "capture") if m.type == "upload_manifest"]
    assert [m.body for m in again] == [manifest.body]
    # and a hub that lost the manifest asks for it
    actions = c.handle(request("upload_ask", capture="c1"))
    assert [m.body for m in published(actions, "capture")] == [manifest.body]
    assert sends(actions) == []

    actions = c.handle(request("upload_done", capture="c1", status="verified"))
    assert DropUpload("c1") in actions and c.uploads == {}
    assert not [m for m in published(c.handle(Connected(7.0)), "capture")]


def test_a_restarted_device_announces_its_kept_upload_and_answers_asks() -> None:
    c = core()
    captured(c, "c1")
    again = AgentCore(CoreConfig(DEV, "gw"), json.loads(encode_state(c.state)), director_keys=KEYS)
    actions = again.handle(Connected(10.0))
    [manifest] = published(actions, "capture")
    assert manifest.type == "upload_manifest" and manifest.body["capture"] == "c1"
    assert sends(again.handle(request("upload_ask", capture="c1", chunks=[2]))) == [(2,)]


def test_uploads_that_do_not_fit_the_disk_bound_are_refused_with_a_reason() -> None:
    c = core(upload_disk_bytes=len(DATA) + 100)
    captured(c, "c1")
    actions = captured(c, "c2", now=4.0)  # c1 is still kept: no room for c2
    assert not any(isinstance(a, (KeepUpload, SendUploadChunks)) for a in actions)
    [status] = [m.body for m in published(actions, "capture")]
    assert (status["capture"], status["status"]) == ("c2", "failed")
    assert status["reason"] == Reason.UPLOAD_NO_ROOM.value and "disk bound" in status["detail"]
    assert c.counts["uploads_no_room"] == 1 and set(c.uploads) == {"c1"}
    c.handle(request("upload_done", capture="c1", status="failed", reason="upload_incomplete"))
    assert any(isinstance(a, KeepUpload) for a in captured(c, "c3", now=6.0))  # room again


def test_a_kept_upload_expires_without_the_hubs_word() -> None:
    c = core(upload_keep_s=100.0)
    captured(c, "c1")
    assert not any(isinstance(a, DropUpload) for a in c.handle(Tick(50.0)))
    assert DropUpload("c1") in c.handle(Tick(103.0))
    assert c.uploads == {} and c.counts["uploads_expired"] == 1


@pytest.mark.parametrize(
    ("message", "dropped"),
    [
        (lambda: request("upload_ask", capture="never", chunks=[0]), "unknown_upload"),
        (lambda: request("upload_done", capture="never", status="verified"), "unknown_upload"),
        (lambda: request("upload_ask", capture="c1", chunks=[4, 99]), "bad_upload_ask"),
        (lambda: MessageArrived("cmd", b'{"v":1,"type":"upload_ask"}', 5.0), "bad_envelope"),
    ],
    ids=["ask for a capture it never had", "done for one", "chunks out of range", "malformed"],
)
def test_bad_asks_are_counted_and_dropped_and_send_nothing(message: Any, dropped: str) -> None:
    c = core()
    captured(c, "c1")
    actions = c.handle(message())
    assert sends(actions) == [] and c.dropped[dropped] == 1
    assert set(c.uploads) == {"c1"}  # still kept: a bad ask changes nothing


def test_asks_beyond_the_bound_are_dropped_and_a_mixed_ask_sends_only_its_own_chunks() -> None:
    c = core(max_upload_asks=3)
    captured(c, "c1")
    assert sends(c.handle(request("upload_ask", capture="c1", chunks=[1, 7, 1]))) == [(1,)]
    assert c.dropped["bad_upload_ask"] == 1
    assert sends(c.handle(request("upload_ask", capture="c1", chunks=[0]))) == [(0,)]
    assert published(c.handle(request("upload_ask", capture="c1")), "capture")  # manifest
    assert sends(c.handle(request("upload_ask", capture="c1", chunks=[0]))) == []
    assert c.dropped["upload_asks_exceeded"] == 1


def test_an_upload_whose_file_is_lost_is_forgotten() -> None:
    c = core()
    captured(c, "c1")
    actions = c.handle(UploadLost("c1", "no such file", 5.0))
    assert DropUpload("c1") in actions and c.uploads == {} and c.dropped["upload_lost"] == 1


def test_the_device_keeps_uploads_under_hashed_names_and_checks_their_length(
    tmp_path: Path,
) -> None:
    store = DeviceStore(tmp_path)
    store.keep_upload("../../etc/passwd", DATA)  # an id is the hub's word: never a path
    [kept] = list((tmp_path / "uploads").iterdir())
    assert kept.parent == tmp_path / "uploads" and kept.stat().st_mode & 0o777 == 0o600
    assert store.read_upload("../../etc/passwd", len(DATA)) == DATA
    with pytest.raises(OSError, match="bytes"):
        store.read_upload("../../etc/passwd", len(DATA) + 1)
    chunks = upload_chunks("x", DATA, CHUNK, [3])
    assert protocol.decode_upload_chunk(chunks[0]).data == DATA[3 * CHUNK :]
    store.drop_upload("../../etc/passwd")
    assert not any((tmp_path / "uploads").iterdir())


def test_the_agent_config_sets_the_upload_disk_bound() -> None:
    base = {"device_id": "d", "device_class": "gw", "broker": "mqtt://h:1883", "state_dir": "/x"}
    assert AgentConfig.from_dict(base).upload_disk_bytes == CoreConfig.upload_disk_bytes
    assert AgentConfig.from_dict({**base, "upload_disk_bytes": 4096}).upload_disk_bytes == 4096
    for bad in (-1, "lots", True, 1.5):
        with pytest.raises(ConfigError, match="upload_disk_bytes must be an integer >= 0"):
            AgentConfig.from_dict({**base, "upload_disk_bytes": bad})
