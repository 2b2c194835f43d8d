"""Data capture on the device: the reservoir sample, and the capture command in the core."""

from __future__ import annotations

import hashlib
import json
import threading
from typing import Any

import numpy as np
import pytest
from securesystemslib.signer import CryptoSigner
from trust_refresh import handle_trusting

from agent.capture import (
    NO_LABEL,
    CaptureError,
    Reservoir,
    decode_sample,
    encode_sample,
    upload_chunks,
)
from agent.core import AgentCore, CoreConfig, encode_state
from agent.events import (
    CaptureEnded,
    FinishCapture,
    KeepUpload,
    MessageArrived,
    Publish,
    SendUploadChunks,
    StartCapture,
    Tick,
)
from shared import protocol
from shared.director import DirectorKeys, sign_command
from shared.reasons import Reason

DEV = "dev-1"
DIRECTOR = CryptoSigner.generate_ed25519()
KEYS = DirectorKeys({DIRECTOR.public_key.keyid: DIRECTOR.public_key})
FEATURES = 3
CHI2_19_P001 = 43.82  # chi-square, 19 degrees of freedom, p = 0.001


def stream(reservoir: Reservoir, n: int, batch: int, *, labels: bool = False) -> None:
    """Feed rows numbered 0..n-1 (column 0 holds the number; label = number % 4)."""
    for start in range(0, n, batch):
        num = np.arange(start, min(n, start + batch))
        x = np.repeat(num[:, None], FEATURES, axis=1).astype(np.float32)
        predicted = num % 4
        out = {"label": predicted.astype(np.int64), "probabilities": x[:, :2] / n}
        reservoir.observe("m", 1, x, out)
        if labels:
            reservoir.observe_labels(predicted, (num + 1) % 4)  # true label: number+1 mod 4


# ------------------------------------------------------------------------ reservoir


def test_the_sample_is_bounded_by_rows_and_by_bytes() -> None:
    r = Reservoir("m", 100, seed=1)
    stream(r, 10_000, 7)
    s = r.sample()
    assert s is not None and s.rows == 100 and s.seen == 10_000
    assert len(np.unique(s.x[:, 0])) == 100  # distinct rows, no slot counted twice
    # a row here is 3*4 (x) + 8 (label out) + 2*4 (probabilities) + 16 = 44 bytes
    small = Reservoir("m", 100, seed=1, max_bytes=44 * 10)
    stream(small, 1000, 7)
    assert small.sample() is not None and small.sample().rows == 10  # type: ignore[union-attr]


def test_every_row_is_equally_likely_to_be_kept() -> None:
    n, k, runs, buckets = 2000, 100, 150, 20
    counts = np.zeros(buckets)
    for seed in range(runs):
        r = Reservoir("m", k, seed=seed)
        stream(r, n, 13)
        s = r.sample()
        assert s is not None
        counts += np.bincount((s.x[:, 0] // (n // buckets)).astype(int), minlength=buckets)
    expected = runs * k / buckets
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < CHI2_19_P001, (chi2, counts)
    # the same check refuses a biased sample (keep the first k rows)
    biased = np.bincount(np.arange(k) // (n // buckets), minlength=buckets) * runs
    assert float(((biased - expected) ** 2 / expected).sum()) > CHI2_19_P001


def test_the_same_seed_gives_the_same_sample() -> None:
    a, b, c = Reservoir("m", 50, seed=3), Reservoir("m", 50, seed=3), Reservoir("m", 50, seed=4)
    for r in (a, b, c):
        stream(r, 3000, 9)
    sa, sb, sc = a.sample(), b.sample(), c.sample()
    assert sa is not None and sb is not None and sc is not None
    assert np.array_equal(sa.x, sb.x) and not np.array_equal(sa.x, sc.x)


def test_labels_join_the_rows_they_were_reported_for() -> None:
    r = Reservoir("m", 64, seed=2)
    stream(r, 5000, 5, labels=True)
    s = r.sample()
    assert s is not None and s.labelled == 64
    number = s.x[:, 0].astype(np.int64)
    assert np.array_equal(s.labels, (number + 1) % 4)
    assert np.array_equal(s.outputs["label"], number % 4)


def test_labels_that_match_no_call_are_dropped_not_guessed() -> None:
    r = Reservoir("m", 10, seed=0)
    x = np.zeros((3, FEATURES), dtype=np.float32)
    r.observe("m", 1, x, {"label": np.array([0, 1, 2])})
    r.observe_labels(np.array([0, 1, 3]), np.array([1, 1, 1]))  # not what was predicted
    r.observe_labels(np.array([0, 1, 2]), np.array([1, 1, 1]))  # the call was already tried
    r.observe("m", 1, x, {"label": np.array([0, 1, 2])})
    r.observe_labels(np.array([0, 1]), np.array([1, 1]))  # another shape
    # another thread's labels never join this thread's call
    r.observe("m", 1, x, {"label": np.array([0, 1, 2])})
    other = threading.Thread(target=r.observe_labels, args=(np.array([0, 1, 2]),) * 2)
    other.start()
    other.join()
    s = r.sample()
    assert s is not None and s.rows == 9 and s.labelled == 0
    assert (s.labels == NO_LABEL).all() and r.labels_unmatched == 4


def test_rows_of_other_models_and_versions_are_skipped() -> None:
    r = Reservoir("m", 10, seed=0)
    x = np.ones((4, FEATURES), dtype=np.float32)
    r.observe("other", 1, x, {"label": np.zeros(4, dtype=np.int64)})
    assert r.sample() is None
    r.observe("m", 2, x, {"label": np.zeros(4, dtype=np.int64)})
    r.observe("m", 3, x, {"label": np.zeros(4, dtype=np.int64)})
    s = r.sample()
    assert s is not None and s.version == 2 and s.rows == 4 and r.skipped == 4


def test_concurrent_predicts_keep_the_sample_consistent() -> None:
    r = Reservoir("m", 200, seed=5)

    def worker(offset: int) -> None:
        for i in range(200):
            num = np.arange(offset + i * 5, offset + i * 5 + 5)
            x = np.repeat(num[:, None], FEATURES, axis=1).astype(np.float32)
            r.observe("m", 1, x, {"label": num % 4})
            r.observe_labels(num % 4, (num + 1) % 4)

    threads = [threading.Thread(target=worker, args=(t * 10_000,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    s = r.sample()
    assert s is not None and s.seen == 4000 and s.rows == 200
    number = s.x[:, 0].astype(np.int64)
    assert (s.x == s.x[:, :1]).all()  # no row torn between two writers
    labelled = s.labels != NO_LABEL
    assert labelled.sum() > 150 and np.array_equal(s.labels[labelled], (number[labelled] + 1) % 4)


def test_encoded_sample_decodes_to_the_same_arrays() -> None:
    r = Reservoir("m", 20, seed=0)
    stream(r, 100, 10, labels=True)
    s = r.sample()
    assert s is not None
    data, schema = encode_sample(s)
    arrays = decode_sample(data, schema)
    assert [a["name"] for a in schema] == ["x", "out.label", "out.probabilities", "labels"]
    assert np.array_equal(arrays["x"], s.x) and np.array_equal(arrays["labels"], s.labels)
    with pytest.raises(CaptureError, match="bytes"):
        decode_sample(data[:-1], schema)


# ------------------------------------------------------------------------ the core


def core() -> AgentCore:
    return AgentCore(CoreConfig(DEV, "gw", window_s=10.0), director_keys=KEYS)


def capture_cmd(
    signers: list[Any] | None = None, device: str = DEV, signed_at: float = 0.0, **body: Any
) -> MessageArrived:
    fields = {"capture": "c1", "model": "m", "max_rows": 50, "duration_s": 30.0, **body}
    fields = {k: v for k, v in fields.items() if v is not None}  # None: leave the field out
    payload = sign_command(
        [DIRECTOR] if signers is None else signers,
        "capture",
        fields,
        device_id=device,
        now=signed_at,
        ttl_s=3600,
        root_version=1,
    )
    return MessageArrived("cmd", payload, 0.0)


def send(c: AgentCore, message: MessageArrived) -> list[Any]:
    """Hand the core a command, answering the trust refresh it waits for."""
    return handle_trusting(c, message, KEYS)


def on_topic(actions: list[Any], kind: str) -> list[Publish]:
    return [a for a in actions if isinstance(a, Publish) and a.topic.endswith(f"/{kind}")]


def statuses(actions: list[Any]) -> list[dict[str, Any]]:
    bodies = [json.loads(p.payload) for p in on_topic(actions, "capture")]
    return [b["body"] for b in bodies if b["type"] == "capture_status"]


def test_a_signed_capture_command_samples_then_uploads_verifiable_chunks() -> None:
    c = core()
    actions = send(c, capture_cmd(max_rows=50, duration_s=30.0, seed=9))
    assert StartCapture("c1", "m", 50, 9) in actions
    assert [s["status"] for s in statuses(actions)] == ["started"]
    assert not any(isinstance(a, FinishCapture) for a in c.handle(Tick(29.0)))
    assert FinishCapture("c1") in c.handle(Tick(30.0))
    assert not any(isinstance(a, FinishCapture) for a in c.handle(Tick(31.0)))  # asked once

    r = Reservoir("m", 50, seed=9)
    stream(r, 20_000, 50, labels=True)  # ~150 KB of rows: three chunks
    sample = r.sample()
    assert sample is not None
    data, schema = encode_sample(sample)
    ended = CaptureEnded("c1", 32.0, data, tuple(schema), 1, sample.rows, sample.labelled)
    actions = c.handle(ended)

    manifest = json.loads(on_topic(actions, "capture")[0].payload)
    assert manifest["type"] == "upload_manifest"
    body = manifest["body"]
    assert (body["capture"], body["model"], body["version"], body["rows"]) == ("c1", "m", 1, 50)
    assert body["sha256"] == hashlib.sha256(data).hexdigest() and body["length"] == len(data)
    # the bytes are kept on disk first, and the chunks read back from there
    assert KeepUpload("c1", data) in actions
    [send_all] = [a for a in actions if isinstance(a, SendUploadChunks)]
    assert send_all.indices == tuple(range(len(body["chunks"])))
    assert send_all.topic.endswith("/upload") and send_all.length == len(data)
    payloads = upload_chunks("c1", data, send_all.chunk_size, send_all.indices)
    chunks = [protocol.decode_upload_chunk(p) for p in payloads]
    assert all(hashlib.sha256(ch.data).hexdigest() == body["chunks"][ch.index] for ch in chunks)
    assert b"".join(ch.data for ch in chunks) == data
    assert [s["status"] for s in statuses(actions)] == ["uploaded"]
    assert c.capture is None


def test_a_capture_in_windows_ends_after_that_many_telemetry_windows() -> None:
    c = core()
    send(c, capture_cmd(windows=2, duration_s=None))
    c.handle(Tick(0.0))
    assert not any(isinstance(a, FinishCapture) for a in c.handle(Tick(10.0)))  # one window
    assert FinishCapture("c1") in c.handle(Tick(20.0))  # two windows


def test_an_empty_capture_is_reported_failed_and_uploads_nothing() -> None:
    c = core()
    send(c, capture_cmd())
    c.handle(Tick(30.0))
    actions = c.handle(CaptureEnded("c1", 30.0))
    assert not on_topic(actions, "upload")
    assert [(s["status"], s["reason"]) for s in statuses(actions)] == [
        ("failed", Reason.CAPTURE_EMPTY.value)
    ]


def test_a_second_capture_while_one_runs_is_refused_busy() -> None:
    c = core()
    send(c, capture_cmd())
    actions = send(c, capture_cmd(capture="c2"))
    assert not any(isinstance(a, StartCapture) for a in actions)
    assert [(s["capture"], s["status"], s["reason"]) for s in statuses(actions)] == [
        ("c2", "failed", Reason.BUSY.value)
    ]


def unsigned() -> MessageArrived:
    body = {"capture": "c1", "model": "m", "max_rows": 5, "duration_s": 1.0, "device": DEV}
    return MessageArrived("cmd", protocol.encode("capture", {**body, "expires": 99.0}, ts=0), 0.0)


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("unsigned", Reason.UNSIGNED_COMMAND),
        ("forged", Reason.UNKNOWN_KEY),
        ("other_device", Reason.WRONG_DEVICE),
        ("expired", Reason.COMMAND_EXPIRED),
        ("replayed", Reason.COMMAND_REPLAYED),
        ("no_length", Reason.COMMAND_INVALID),
    ],
)
def test_a_capture_command_it_cannot_trust_is_refused(case: str, reason: Reason) -> None:
    c = core()
    message = {
        "unsigned": unsigned,
        "forged": lambda: capture_cmd([CryptoSigner.generate_ed25519()]),
        "other_device": lambda: capture_cmd(device="dev-2"),
        "expired": lambda: capture_cmd(signed_at=-7200.0),
        "replayed": capture_cmd,
        "no_length": lambda: capture_cmd(duration_s=None),
    }[case]()
    if case == "replayed":
        send(c, message)
        c.handle(CaptureEnded("c1", 1.0))  # the first one ended
    actions = send(c, message)
    assert not any(isinstance(a, StartCapture) for a in actions)
    assert [(s["status"], s["reason"]) for s in statuses(actions)] == [("refused", reason.value)]


def test_a_device_restarted_mid_capture_still_ends_it() -> None:
    c = core()
    send(c, capture_cmd(duration_s=30.0))
    assert FinishCapture("c1") in c.handle(Tick(30.0))
    # the process dies before the adapter answers; the saved state outlives it
    again = AgentCore(CoreConfig(DEV, "gw"), json.loads(encode_state(c.state)), director_keys=KEYS)
    assert again.capture is not None and again.capture["id"] == "c1"
    assert FinishCapture("c1") in again.handle(Tick(31.0))
