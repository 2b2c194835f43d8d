"""The agent core: a sans-I/O state machine for one device (DESIGN §5).

``AgentCore.handle(event) -> list[Action]``. It follows deploy and rollback commands
along the firm update path::

    receive deploy -> fetch metadata -> verify (TUF) -> download chunks, each checked
    against its signed sha256, bitmap persisted -> verify whole file -> stage ->
    health check -> atomic activate -> probation -> healthy | rolled back

reports each step on ``events``, keeps a retained ``state``, closes telemetry windows,
and never trusts what arrives: bad messages are counted and dropped.

Its whole state is a JSON-able dict (``state``) that the adapter persists, so a device
that restarts mid-download resumes where it was.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass
from typing import Any

from agent import capture as capture_msgs
from agent.drift import ModelSketch
from agent.events import (
    Action,
    Activate,
    CaptureEnded,
    CheckStagedChunks,
    Connected,
    Discard,
    Done,
    Event,
    FinishCapture,
    MessageArrived,
    MetadataVerified,
    Outbox,
    PersistState,
    Prune,
    Publish,
    Refused,
    RollBack,
    RunHealthCheck,
    StagedChunks,
    StartCapture,
    Tick,
    TrustRefreshed,
    VerifyAndStage,
    VerifyMetadata,
    WriteChunk,
)
from agent.telemetry import InferenceStats
from shared import protocol
from shared.chunks import chunk_ok, chunk_span
from shared.director import CommandError, DirectorKeys, verify_command
from shared.drift import DriftError
from shared.manifest import Manifest, ManifestError
from shared.protocol import ProtocolError
from shared.reasons import Reason
from shared.trust import VerifiedTarget

log = logging.getLogger(__name__)

AGENT_VERSION = "0.1.0"
KEEP_VERSIONS = 2  # active + previous, kept on disk for rollback
MAX_HELD_COMMANDS = 16  # commands waiting for one trust refresh, at most


@dataclass(frozen=True)
class CoreConfig:
    device_id: str
    device_class: str
    runtime: str = "onnxruntime"
    agent_version: str = AGENT_VERSION
    window_s: float = 10.0  # telemetry window
    chunk_window: int = 8  # chunks requested and not yet received, at most
    fetch_timeout_s: float = 10.0  # no answer for this long: ask again
    max_fetch_retries: int = 6  # then give up with fetch_timeout
    max_chunk_failures: int = 3  # one chunk failing its hash this often: give up
    max_probation_wait: float = 10.0  # probation_s multiples to wait for enough traffic
    max_remembered_commands: int = 4096  # live command ids kept for replay detection


class AgentCore:
    """One device's update, rollback and telemetry logic. Not thread-safe: one caller."""

    def __init__(
        self,
        config: CoreConfig,
        state: dict[str, Any] | None = None,
        *,
        root_version: int = 1,
        director_keys: DirectorKeys | None = None,
    ):
        self.config = config
        self.state: dict[str, Any] = state or {"models": {}, "seq": 0, "job": None, "req": 0}
        self.state.setdefault("commands", {})  # command id -> expiry: replay memory
        if self.capture is not None:  # restarted mid-capture: its end must be asked again
            self.capture["ending"] = False
        self.root_version = root_version
        self.director_keys = director_keys or DirectorKeys({})
        # Commands waiting for a trust refresh (the hub's newest roots, so the director
        # keys are current): rollback and capture always (they fetch no metadata of
        # their own, so a key rotated out would otherwise still be trusted), any command
        # signed by a key this device does not know yet. One fetch serves them all.
        self._held: list[bytes] = []
        self._held_req: str | None = None  # the fetch_meta request they wait for
        self._held_since = 0.0
        self.dropped: Counter[str] = Counter()  # bad input, by reason
        self._window: InferenceStats | None = None
        self._window_start: float | None = None
        self._drift: ModelSketch | None = None  # the open window's drift sketch
        # windows the adapter's spool dropped for space, ever (agent/spool.py); reported
        # as ``spool_dropped`` in each telemetry body when the adapter sets it
        self.spool_dropped: int | None = None
        self._job_cache: tuple[int, Manifest] | None = None
        self._base = f"{protocol.ROOT}/{config.device_id}/"

    # ----------------------------------------------------------------- public

    def handle(self, event: Event) -> list[Action]:
        out = Outbox()
        if isinstance(event, MessageArrived):
            self._on_message(event, out)
        elif isinstance(event, Tick):
            self._on_tick(event, out)
        elif isinstance(event, Connected):
            self._on_connected(event, out)
        elif isinstance(event, MetadataVerified):
            self._on_metadata(event, out)
        elif isinstance(event, TrustRefreshed):
            self._on_trust_refreshed(event, out)
        elif isinstance(event, StagedChunks):
            self._on_staged_chunks(event, out)
        elif isinstance(event, Done):
            self._on_done(event, out)
        elif isinstance(event, Refused):
            self._on_refused(event, out)
        elif isinstance(event, CaptureEnded):
            self._on_capture_ended(event, out)
        return out.actions

    def state_message(self, now: float, status: str = "online") -> bytes:
        models = {
            name: {"version": m["version"], "sha256": m["files"][str(m["version"])]["sha256"]}
            for name, m in self.state["models"].items()
        }
        body: dict[str, Any] = {
            "status": status,
            "device_class": self.config.device_class,
            "runtime": self.config.runtime,
            "agent_version": self.config.agent_version,
            "root_version": self.root_version,
        }
        if status == "online":
            # The offline message is the Last Will, fixed at connect time: it must not
            # name models, or a crash after an update would report the old version.
            body["models"] = models
            if self.state.get("last") is not None:
                # the latest deployment event: the hub reads an outcome it missed (its
                # subscription was gone while the broker restarted) back from here
                body["last"] = self.state["last"]
        return protocol.encode("state", body, ts=now)

    def installed(self, model: str) -> dict[str, Any] | None:
        """The installed entry of ``model``: active ``version``, ``versions`` kept on disk
        (oldest first) and ``files`` {version: {target, sha256, length}}."""
        entry: dict[str, Any] | None = self.state["models"].get(model)
        return entry

    @property
    def job(self) -> dict[str, Any] | None:
        job: dict[str, Any] | None = self.state["job"]
        return job

    # ----------------------------------------------------------------- helpers

    def _topic(self, kind: str) -> str:
        return self._base + kind

    def _drop(self, reason: str, detail: str) -> None:
        if self.dropped[reason] == 0:
            log.warning("%s: dropped a message (%s): %s", self.config.device_id, reason, detail)
        self.dropped[reason] += 1

    def _event(
        self,
        out: Outbox,
        job: dict[str, Any],
        stage: str,
        now: float,
        reason: Reason | None = None,
        detail: str | None = None,
        from_version: int | None = None,
        remember: bool = True,
    ) -> None:
        """Publish a deployment event; ``remember`` it as the retained state's ``last``
        (not a refused command: that changed nothing, and is not persisted)."""
        body: dict[str, Any] = {
            "deployment": job["deployment"],
            "model": job["model"],
            "version": job["version"],
            "stage": stage,
        }
        if reason is not None:
            body["reason"] = reason.value
        if detail:
            body["detail"] = detail[:1000]
        if from_version is not None:
            body["from_version"] = from_version
        out.add(Publish(self._topic("events"), protocol.encode("event", body, ts=now)))
        if remember:
            last = {k: body[k] for k in ("deployment", "model", "version", "stage")}
            self.state["last"] = {**last, "reason": body.get("reason"), "ts": now}

    def _persist(self, out: Outbox, durable: bool = False) -> None:
        out.add(PersistState(encode_state(self.state), durable))

    def _next_req(self) -> str:
        self.state["req"] += 1
        return f"{self.config.device_id}:{self.state['req']}"

    def _target(self, job: dict[str, Any]) -> VerifiedTarget:
        t = job["target_info"]
        return VerifiedTarget(t["name"], t["length"], t["sha256"], t["custom"])

    def _manifest(self, job: dict[str, Any]) -> Manifest:
        key = id(job["target_info"])
        if self._job_cache is None or self._job_cache[0] != key:
            self._job_cache = (key, Manifest.from_custom(job["target_info"]["custom"]))
        return self._job_cache[1]

    def _finish(self, out: Outbox, now: float, durable: bool = True) -> None:
        """The job has its outcome: forget it, and say so in the retained state too."""
        self.state["job"] = None
        self._job_cache = None
        self._persist(out, durable)
        out.add(Publish(self._topic("state"), self.state_message(now), retain=True))

    def _fail(
        self, out: Outbox, job: dict[str, Any], reason: Reason, detail: str, now: float
    ) -> None:
        """Abandon the job; the active model (if any) never stopped serving."""
        self._event(out, job, "failed", now, reason, detail)
        target = self._target(job) if job.get("target_info") else None
        staged_version = job["version"] if job["phase"] in ("health", "activating") else None
        out.add(Discard(job["model"], staged_version, target))
        self._finish(out, now)

    # ----------------------------------------------------------------- connect / tick

    def _on_connected(self, ev: Connected, out: Outbox) -> None:
        out.add(Publish(self._topic("state"), self.state_message(ev.now), retain=True))
        job = self.job
        if job is None:
            return
        # Resume whatever was in flight before the restart or the disconnect.
        job["last_progress"] = ev.now
        job["retries"] = 0
        if job["phase"] == "meta":
            self._request_meta(out, job, ev.now)
        elif job["phase"] == "chunks":
            # The staging file, not the saved state, records what arrived (the state is
            # not saved per chunk): re-hash every chunk slot and keep what matches.
            manifest = self._manifest(job)
            out.add(
                CheckStagedChunks(
                    self._target(job),
                    manifest.chunk_size,
                    manifest.chunks,
                    frozenset(range(len(manifest.chunks))),
                )
            )
        elif job["phase"] == "verify":
            out.add(VerifyAndStage(job["model"], job["version"], self._target(job)))
        elif job["phase"] in ("health", "activating"):
            # The checked session did not survive the restart: check again, then activate.
            job["phase"] = "health"
            out.add(RunHealthCheck(job["model"], job["version"], self._target(job)))

    def _on_tick(self, ev: Tick, out: Outbox) -> None:
        if ev.stats is not None:
            if self._window is None:
                self._window = InferenceStats()
            self._window.merge(ev.stats)
        if ev.drift is not None:
            self._merge_drift(ev.drift)
        if self._window_start is None:
            self._window_start = ev.now
        elif ev.now - self._window_start >= self.config.window_s:
            self._close_window(ev, out)
        if (
            self._held_req is not None
            and ev.now - self._held_since > self.config.fetch_timeout_s * 4
        ):
            self._fail_held(out, Reason.FETCH_TIMEOUT, "no answer to the trust refresh", ev.now)
        self._check_capture(ev.now, out)
        job = self.job
        if job is None:
            return
        if job["phase"] == "probation":
            if ev.stats is not None:
                job["p_count"] += ev.stats.count
                job["p_errors"] += ev.stats.errors + ev.stats.nonfinite
            self._judge_probation(out, job, ev.now)
        elif job["phase"] in ("meta", "chunks"):
            self._check_timeout(out, job, ev.now)

    def _close_window(self, ev: Tick, out: Outbox) -> None:
        assert self._window_start is not None
        window = self._window or InferenceStats()
        active = next(iter(self.state["models"].items()), None)
        body: dict[str, Any] = {
            "seq": self.state["seq"],
            "start": self._window_start,
            "end": ev.now,
            "model": active[0] if active else None,
            "version": active[1]["version"] if active else None,
            **window.summary(),
            "cpu_pct": ev.cpu_pct,
            "rss_bytes": ev.rss_bytes,
        }
        if self.spool_dropped is not None:
            body["spool_dropped"] = self.spool_dropped
        self.state["seq"] += 1
        if (capture := self.capture) is not None and capture.get("windows"):
            capture["windows"] -= 1  # a capture measured in windows (docs/capture.md)
        # persist the next seq first: a crash between the two loses this window at worst,
        # never reuses its seq for the next one (which the hub would drop as a duplicate)
        self._persist(out)
        out.add(Publish(self._topic("telemetry"), protocol.encode("telemetry", body, ts=ev.now)))
        self._publish_drift(out, body["seq"], ev.now)
        self._window = None
        self._window_start = ev.now

    def _merge_drift(self, part: ModelSketch) -> None:
        """Add a tick's sketch to the window's; another model version starts it afresh."""
        d = self._drift
        if d is None or (d.model, d.version) != (part.model, part.version):
            self._drift = part
            return
        try:
            self._drift = ModelSketch(d.model, d.version, d.sketch.merge(part.sketch))
        except DriftError as e:  # same version, other layout: cannot happen, never crash
            self._drop("bad_drift_sketch", str(e))
            self._drift = part

    def _publish_drift(self, out: Outbox, seq: int, now: float) -> None:
        """One ``drift`` message per window that saw rows, with its telemetry's seq."""
        d, self._drift = self._drift, None
        if d is None or d.sketch.rows == 0:
            return
        body = {"seq": seq, "model": d.model, "version": d.version, "sketch": d.sketch.to_dict()}
        try:
            payload = protocol.encode("drift", body, ts=now)
        except ProtocolError as e:  # too large for one message: the window goes unsketched
            self._drop("drift_not_sent", e.detail)
            return
        out.add(Publish(self._topic("drift"), payload))

    def _check_timeout(self, out: Outbox, job: dict[str, Any], now: float) -> None:
        backoff = self.config.fetch_timeout_s * min(2 ** job["retries"], 8)
        if now - job["last_progress"] < backoff:
            return
        job["retries"] += 1
        if job["retries"] > self.config.max_fetch_retries:
            self._fail(
                out, job, Reason.FETCH_TIMEOUT, f"no answer after {job['retries']} tries", now
            )
            return
        job["last_progress"] = now
        if job["phase"] == "meta":
            self._request_meta(out, job, now)
        else:
            job["pending"] = []
            self._request_chunks(out, job)

    # ----------------------------------------------------------------- messages

    def _on_message(self, ev: MessageArrived, out: Outbox) -> None:
        if ev.kind == "blob":
            try:
                blob = protocol.decode_blob(ev.payload)
            except ProtocolError as e:
                self._drop(e.reason, e.detail)
                return
            self._on_blob(blob, ev.now, out)
            return
        if ev.kind != "cmd":
            self._drop("unexpected_topic", ev.kind)
            return
        self._on_command(ev.payload, ev.now, out)

    def _on_command(self, payload: bytes, now: float, out: Outbox, *, held: bool = False) -> None:
        try:
            msg = protocol.decode(payload, expect=protocol.TOPIC_TYPES["cmd"])
        except ProtocolError as e:
            self._drop(e.reason, e.detail)
            return
        try:
            cmd = verify_command(
                msg, payload, self.director_keys, device_id=self.config.device_id, now=now
            )
        except CommandError as e:
            newer_root = e.reason == Reason.UNKNOWN_KEY and e.root_version > self.root_version
            # The hub may have rotated the director key: walk its newer roots first.
            if not (newer_root and not held and self._hold(payload, now, out)):
                self._refuse_command(out, msg, e.reason, e.detail, now)
            return
        commands: dict[str, float] = self.state["commands"]
        if cmd.id in commands:
            self._refuse_command(out, msg, Reason.COMMAND_REPLAYED, f"command {cmd.id}", now)
            return
        if cmd.type != "deploy" and not held:
            # A deploy walks to the newest root before it downloads anything; a rollback
            # or a capture must too, or a director key rotated out (stolen) still works.
            if not self._hold(payload, now, out):
                self._refuse_command(out, msg, Reason.BUSY, "too many commands waiting", now)
            return
        for cmd_id in [c for c, expires in commands.items() if expires < now]:
            del commands[cmd_id]
        if len(commands) >= self.config.max_remembered_commands:
            self._refuse_command(
                out, msg, Reason.COMMAND_INVALID, "too many unexpired commands", now
            )
            return
        commands[cmd.id] = cmd.expires
        before = len(out.actions)
        if cmd.type == "deploy":
            self._on_deploy({**cmd.body, "keyids": sorted(cmd.keyids)}, now, out)
        elif cmd.type == "capture":
            self._on_capture_cmd(dict(cmd.body), now, out)
        else:
            self._on_rollback_cmd(dict(cmd.body), now, out)
        if not any(isinstance(a, PersistState) for a in out.actions[before:]):
            self._persist(out)  # the command id must outlive a restart (replays)

    def _refuse_command(
        self, out: Outbox, msg: protocol.Message, reason: Reason, detail: str, now: float
    ) -> None:
        """Report a command this device will not act on. Nothing else changes."""
        body = msg.body
        if msg.type == "capture":
            detail = f"{msg.type} {msg.id}: {detail}"
            self._capture_status(out, dict(body), "refused", now, reason, detail)
            return
        info = {
            "deployment": body["deployment"],
            "model": body["model"],
            "version": body["version"],
        }
        detail = f"{msg.type} {msg.id}: {detail}"
        self._event(out, info, "refused", now, reason, detail, remember=False)

    def _hold(self, payload: bytes, now: float, out: Outbox) -> bool:
        """Keep a command until the trust refresh it waits for; False if too many wait."""
        if len(self._held) >= MAX_HELD_COMMANDS:
            return False
        self._held.append(payload)
        if self._held_req is None:
            self._held_req, self._held_since = self._next_req(), now
            body = {"req": self._held_req, "root_version": self.root_version}
            out.add(Publish(self._topic("fetch"), protocol.encode("fetch_meta", body, ts=now)))
        return True

    def _on_trust_refreshed(self, ev: TrustRefreshed, out: Outbox) -> None:
        self.root_version = ev.root_version
        self.director_keys = ev.director_keys
        if self._held_req is None or self._held_req != ev.req:
            return
        held, self._held, self._held_req = self._held, [], None
        for payload in held:  # checked again, against the keys of the newest root
            self._on_command(payload, ev.now, out, held=True)

    def _on_deploy(self, body: dict[str, Any], now: float, out: Outbox) -> None:
        job = self.job
        if job is not None and job["deployment"] == body["deployment"]:
            # A re-sent command for the job in progress (the hub lost track, e.g. across
            # a broker restart): report where it stands instead of starting again.
            stage = _PHASE_STAGE[job["phase"]]
            self._event(out, job, stage, now, detail=f"in progress ({job['phase']})")
            return
        new = {
            "deployment": body["deployment"],
            "model": body["model"],
            "version": body["version"],
            "target": body["target"],
        }
        installed = self.state["models"].get(body["model"])
        if installed is not None and installed["version"] == body["version"]:
            # Already running it (a re-sent command, or reconciliation): say so.
            self._event(out, new, "healthy", now, detail="already active")
            return
        if installed is not None and body["version"] < installed["version"]:
            self._event(
                out,
                new,
                "failed",
                now,
                Reason.VERSION_ROLLBACK,
                f"installed version {installed['version']} is newer than {body['version']}",
            )
            return
        if job is not None:
            if job["phase"] == "probation":
                self._settle_probation(out, job, now, superseded=True)
            else:
                self._fail(out, job, Reason.BUSY, f"superseded by {body['deployment']}", now)
        job = {
            **new,
            "keyids": body.get("keyids", []),  # director keys that signed the command
            "phase": "meta",
            "req": None,
            "target_info": None,
            "have": [],
            "pending": [],
            "chunk_failures": {},
            "retries": 0,
            "last_progress": now,
        }
        self.state["job"] = job
        self._event(out, job, "received", now)
        self._request_meta(out, job, now)
        self._persist(out)

    def _on_rollback_cmd(self, body: dict[str, Any], now: float, out: Outbox) -> None:
        info = {
            "deployment": body["deployment"],
            "model": body["model"],
            "version": body["version"],
        }
        installed = self.state["models"].get(body["model"])
        if installed is None or body["version"] not in installed["versions"]:
            self._event(
                out,
                info,
                "failed",
                now,
                Reason.VERSION_ROLLBACK,
                f"version {body['version']} is not in this device's local history",
            )
            return
        if installed["version"] == body["version"]:
            self._event(out, info, "rolled_back", now, Reason.ROLLBACK_REQUESTED, "already active")
            return
        job = self.job
        if job is not None and job["model"] == body["model"]:
            if job["phase"] == "probation":
                self.state["job"] = None  # the rollback is this job's outcome
            else:
                self._fail(out, job, Reason.BUSY, "a rollback was requested", now)
        self._roll_back(
            out, info, installed["version"], body["version"], Reason.ROLLBACK_REQUESTED, "", now
        )

    def _on_blob(self, blob: protocol.Blob, now: float, out: Outbox) -> None:
        if self._held_req is not None and blob.header["req"] == self._held_req:
            if blob.kind == "meta":
                out.add(VerifyMetadata(self._held_req, protocol.split_meta_blob(blob), None))
            else:
                why = f"the hub answered: {blob.header.get('reason')}"
                self._fail_held(out, Reason.HUB_ERROR, why, now)
            return
        job = self.job
        if job is None:
            self._drop("stale_blob", "no deployment in progress")
            return
        kind = blob.kind
        if kind == "error":
            # In the chunk phase an error may answer any earlier request of this download.
            stale = job["phase"] not in ("meta", "chunks") or (
                job["phase"] == "meta" and blob.header["req"] != job["req"]
            )
            if stale:
                self._drop("stale_blob", "error for an old request")
                return
            self._fail(
                out,
                job,
                Reason.HUB_ERROR,
                f"{blob.header['reason']}: {blob.header.get('detail', '')}",
                now,
            )
        elif kind == "meta":
            if job["phase"] != "meta" or blob.header["req"] != job["req"]:
                self._drop("stale_blob", "metadata for an old request")
                return
            job["last_progress"] = now
            out.add(VerifyMetadata(job["req"], protocol.split_meta_blob(blob), job["target"]))
        else:
            self._on_chunk(blob, job, now, out)

    def _on_chunk(self, blob: protocol.Blob, job: dict[str, Any], now: float, out: Outbox) -> None:
        if job["phase"] != "chunks" or blob.header["target"] != job["target"]:
            self._drop("stale_blob", "chunk for no download in progress")
            return
        manifest = self._manifest(job)
        index = int(blob.header["index"])
        if index >= len(manifest.chunks):
            self._drop("bad_blob", f"chunk index {index} out of range")
            return
        if index in job["have"]:
            return  # a duplicate
        job["last_progress"] = now
        job["retries"] = 0
        if index in job["pending"]:
            job["pending"].remove(index)
        offset, size = chunk_span(index, job["target_info"]["length"], manifest.chunk_size)
        if len(blob.data) != size or not chunk_ok(blob.data, manifest.chunks[index]):
            fails = job["chunk_failures"].get(str(index), 0) + 1
            job["chunk_failures"][str(index)] = fails
            log.warning("%s: chunk %d refused (%d)", self.config.device_id, index, fails)
            if fails >= self.config.max_chunk_failures:
                if len(blob.data) != size:  # endless data, or a short read
                    reason, what = Reason.LENGTH_MISMATCH, f"{len(blob.data)} bytes, not {size}"
                else:
                    reason, what = Reason.CHUNK_HASH_MISMATCH, "its signed sha256"
                self._fail(out, job, reason, f"chunk {index} failed {what} {fails} times", now)
                return
        else:
            out.add(WriteChunk(self._target(job), offset, blob.data))
            job["have"].append(index)
        if len(job["have"]) == len(manifest.chunks):
            job["phase"] = "verify"
            self._persist(out)
            out.add(VerifyAndStage(job["model"], job["version"], self._target(job)))
            return
        # No state save per chunk: a restart re-hashes the staging file instead
        # (_on_connected), which costs ~1 ms per MiB once, not a save per chunk.
        self._request_chunks(out, job)

    # ----------------------------------------------------------------- data capture

    @property
    def capture(self) -> dict[str, Any] | None:
        """The capture in progress (docs/capture.md), or None."""
        capture: dict[str, Any] | None = self.state.get("capture")
        return capture

    def _capture_status(
        self,
        out: Outbox,
        info: dict[str, Any],
        status: str,
        now: float,
        reason: Reason | None = None,
        detail: str = "",
        rows: int | None = None,
    ) -> None:
        code = reason.value if reason else None
        payload = capture_msgs.status_message(
            info["capture"], info["model"], status, now, reason=code, detail=detail, rows=rows
        )
        out.add(Publish(self._topic("capture"), payload))

    def _on_capture_cmd(self, body: dict[str, Any], now: float, out: Outbox) -> None:
        if "duration_s" not in body and "windows" not in body:
            why = "a capture needs duration_s or windows"
            self._capture_status(out, body, "refused", now, Reason.COMMAND_INVALID, why)
            return
        if (running := self.capture) is not None:
            why = f"capture {running['id']} is in progress"
            self._capture_status(out, body, "failed", now, Reason.BUSY, why)
            return
        duration = body.get("duration_s")
        capture = {
            "id": body["capture"],
            "model": body["model"],
            "max_rows": int(body["max_rows"]),
            "seed": int(body.get("seed", 0)),
            "ends_at": now + float(duration) if duration is not None else None,
            "windows": body.get("windows"),
            "ending": False,
        }
        self.state["capture"] = capture
        out.add(StartCapture(capture["id"], capture["model"], capture["max_rows"], capture["seed"]))
        self._capture_status(out, body, "started", now)
        self._persist(out)

    def _check_capture(self, now: float, out: Outbox) -> None:
        capture = self.capture
        if capture is None or capture["ending"]:
            return
        by_time = capture["ends_at"] is not None and now >= capture["ends_at"]
        by_windows = capture["windows"] is not None and capture["windows"] <= 0
        if by_time or by_windows:
            capture["ending"] = True
            out.add(FinishCapture(capture["id"]))

    def _on_capture_ended(self, ev: CaptureEnded, out: Outbox) -> None:
        capture = self.capture
        if capture is None or capture["id"] != ev.capture:
            return
        self.state["capture"] = None
        self._persist(out)
        info = {"capture": capture["id"], "model": capture["model"]}
        if ev.data is None or ev.rows == 0:
            why = f"no row of {capture['model']} was predicted"
            self._capture_status(out, info, "failed", ev.now, Reason.CAPTURE_EMPTY, why, rows=0)
            return
        try:
            manifest, chunks = capture_msgs.upload_messages(capture["id"], capture["model"], ev)
        except (ProtocolError, ValueError) as e:
            self._capture_status(out, info, "failed", ev.now, Reason.UPLOAD_INVALID, str(e))
            return
        # The manifest first, then the chunks: the hub checks each chunk against it.
        out.add(Publish(self._topic("capture"), manifest))
        for chunk in chunks:
            out.add(Publish(self._topic("upload"), chunk))
        self._capture_status(out, info, "uploaded", ev.now, rows=ev.rows)

    # ----------------------------------------------------------------- requests

    def _request_meta(self, out: Outbox, job: dict[str, Any], now: float) -> None:
        job["req"] = self._next_req()
        body = {"req": job["req"], "root_version": self.root_version}
        out.add(Publish(self._topic("fetch"), protocol.encode("fetch_meta", body, ts=now)))

    def _request_chunks(self, out: Outbox, job: dict[str, Any]) -> None:
        """Keep up to ``chunk_window`` chunks requested; ask in batches at half-window."""
        window = self.config.chunk_window
        pending: list[int] = job["pending"]
        if len(pending) > window // 2:
            return
        manifest = self._manifest(job)
        have = set(job["have"])
        wanted = [i for i in range(len(manifest.chunks)) if i not in have and i not in pending][
            : window - len(pending)
        ]
        if not wanted:
            return
        pending.extend(wanted)
        job["req"] = self._next_req()
        body = {"req": job["req"], "target": job["target"], "chunks": wanted}
        out.add(
            Publish(
                self._topic("fetch"),
                protocol.encode("fetch_chunks", body, ts=job["last_progress"]),
            )
        )

    # ----------------------------------------------------------------- results

    def _on_metadata(self, ev: MetadataVerified, out: Outbox) -> None:
        job = self.job
        if job is None or job["phase"] != "meta" or ev.req != job["req"]:
            return
        self.root_version = ev.root_version
        if ev.director_keys is not None:
            self.director_keys = ev.director_keys
            signed_by = job.get("keyids")  # None in a job saved before commands were signed
            if signed_by is not None and not set(signed_by) & set(ev.director_keys.keys):
                # The newer root this fetch walked to no longer lists the command's key.
                detail = "the command's director key is not in the newer root"
                self._fail(out, job, Reason.UNKNOWN_KEY, detail, ev.now)
                return
        target = ev.target
        try:
            manifest = Manifest.from_custom(target.custom)
            manifest.check_length(target.length)
        except ManifestError as e:
            self._fail(out, job, Reason.METADATA_INVALID, str(e), ev.now)
            return
        refusal = self._check_manifest(job, manifest)
        if refusal is not None:
            self._fail(out, job, refusal[0], refusal[1], ev.now)
            return
        job["target_info"] = {
            "name": target.name,
            "length": target.length,
            "sha256": target.sha256,
            "custom": dict(target.custom),
        }
        job["phase"] = "chunks"
        job["last_progress"] = ev.now
        self._event(out, job, "downloading", ev.now)
        self._request_chunks(out, job)
        self._persist(out)

    def _check_manifest(self, job: dict[str, Any], m: Manifest) -> tuple[Reason, str] | None:
        if m.model != job["model"] or m.version != job["version"]:
            return Reason.MANIFEST_MISMATCH, (
                f"command names {job['model']} v{job['version']}, "
                f"signed manifest says {m.model} v{m.version}"
            )
        if m.device_classes and self.config.device_class not in m.device_classes:
            return Reason.WRONG_DEVICE_CLASS, (
                f"built for {', '.join(m.device_classes)}, this is {self.config.device_class}"
            )
        if m.runtime != self.config.runtime:
            return (
                Reason.WRONG_RUNTIME,
                f"needs {m.runtime}, this device runs {self.config.runtime}",
            )
        installed = self.state["models"].get(m.model)
        if installed is not None and m.version <= installed["version"]:
            return Reason.VERSION_ROLLBACK, (
                f"installed version {installed['version']} >= signed version {m.version}"
            )
        return None

    def _on_staged_chunks(self, ev: StagedChunks, out: Outbox) -> None:
        job = self.job
        if job is None or job["phase"] != "chunks":
            return
        job["have"] = sorted(ev.valid)
        job["pending"] = []
        if len(job["have"]) == len(self._manifest(job).chunks):
            job["phase"] = "verify"
            out.add(VerifyAndStage(job["model"], job["version"], self._target(job)))
        else:
            self._request_chunks(out, job)
        self._persist(out)

    def _on_done(self, ev: Done, out: Outbox) -> None:
        job = self.job
        if ev.step == "rollback" or job is None:
            return
        if ev.step == "file" and job["phase"] == "verify":
            self._event(out, job, "verified", ev.now)
            self._event(out, job, "staged", ev.now)
            job["phase"] = "health"
            self._persist(out)
            out.add(RunHealthCheck(job["model"], job["version"], self._target(job)))
        elif ev.step == "health" and job["phase"] == "health":
            job["phase"] = "activating"
            out.add(Activate(job["model"], job["version"], self._target(job)))
        elif ev.step == "activate" and job["phase"] == "activating":
            self._activated(out, job, ev.now)

    def _activated(self, out: Outbox, job: dict[str, Any], now: float) -> None:
        previous = self.state["models"].get(job["model"])
        versions = [*(previous["versions"] if previous else []), job["version"]][-KEEP_VERSIONS:]
        files = dict(previous["files"]) if previous else {}
        info = job["target_info"]
        files[str(job["version"])] = {
            "target": info["name"],
            "sha256": info["sha256"],
            "length": info["length"],
        }
        self.state["models"][job["model"]] = {
            "version": job["version"],
            "versions": versions,
            "files": {v: f for v, f in files.items() if int(v) in versions},
        }
        job["from_version"] = previous["version"] if previous else None
        job["phase"] = "probation"
        job["activated_at"] = now
        job["p_count"] = 0
        job["p_errors"] = 0
        self._persist(out, durable=True)
        self._event(out, job, "activated", now, from_version=job["from_version"])
        out.add(Publish(self._topic("state"), self.state_message(now), retain=True))
        self._judge_probation(out, job, now)

    def _judge_probation(self, out: Outbox, job: dict[str, Any], now: float) -> None:
        health = self._manifest(job).health
        elapsed = now - job["activated_at"]
        if elapsed < health.probation_s:
            return
        if job["p_count"] < health.probation_min_inferences and elapsed < health.probation_s * (
            self.config.max_probation_wait
        ):
            return  # wait for enough live traffic to judge
        self._settle_probation(out, job, now)

    def _settle_probation(
        self, out: Outbox, job: dict[str, Any], now: float, superseded: bool = False
    ) -> None:
        health = self._manifest(job).health
        count, errors = job["p_count"], job["p_errors"]
        ratio = errors / count if count else 0.0
        if ratio > health.max_error_ratio:
            detail = (
                f"{errors} errors in {count} inferences"
                f" ({ratio:.1%} > {health.max_error_ratio:.1%})"
            )
            if job["from_version"] is None:
                # Nothing to go back to: say so, and keep the only model there is.
                self._event(out, job, "failed", now, Reason.PROBATION_FAILED, detail)
                self._finish(out, now)
                return
            self._roll_back(
                out, job, job["version"], job["from_version"], Reason.PROBATION_FAILED, detail, now
            )
            self.state["job"] = None
            self._persist(out, durable=True)
            return
        detail = f"{count} inferences, {errors} errors in probation"
        if superseded:
            detail += " (cut short by a newer deployment)"
        self._event(out, job, "healthy", now, detail=detail)
        out.add(Prune(job["model"], tuple(self.state["models"][job["model"]]["versions"])))
        self._finish(out, now)

    def _roll_back(
        self,
        out: Outbox,
        info: dict[str, Any],
        from_version: int,
        to_version: int,
        reason: Reason,
        detail: str,
        now: float,
    ) -> None:
        self.state["models"][info["model"]]["version"] = to_version
        out.add(RollBack(info["model"], to_version))
        self._persist(out, durable=True)
        # A rolled_back event names the version now active and the one it replaced.
        restored = {**info, "version": to_version}
        self._event(out, restored, "rolled_back", now, reason, detail, from_version=from_version)
        out.add(Publish(self._topic("state"), self.state_message(now), retain=True))

    def _on_refused(self, ev: Refused, out: Outbox) -> None:
        job = self.job
        if ev.step == "trust":
            self._fail_held(out, ev.reason, ev.detail, ev.now)
            return
        if ev.step == "rollback":
            log.error("%s: rollback failed: %s", self.config.device_id, ev.detail)
            return
        if job is None:
            return
        self._fail(out, job, ev.reason, ev.detail, ev.now)

    def _fail_held(self, out: Outbox, reason: Reason, why: str, now: float) -> None:
        """The trust refresh the held commands wait for failed: refuse them, by its reason."""
        held, self._held, self._held_req = self._held, [], None
        for payload in held:
            try:
                msg = protocol.decode(payload, expect=protocol.TOPIC_TYPES["cmd"])
            except ProtocolError:  # it parsed when it was held
                continue
            self._refuse_command(out, msg, reason, f"trust refresh failed: {why}", now)


# The stage a job in each phase has last reported (answers a re-sent deploy command).
_PHASE_STAGE: dict[str, str] = {
    "meta": "received",
    "chunks": "downloading",
    "verify": "downloading",
    "health": "staged",
    "activating": "staged",
    "probation": "activated",
}


def encode_state(state: dict[str, Any]) -> bytes:
    """The state as compact JSON: the snapshot the adapter writes (one encoding, no copy)."""
    return json.dumps(state, separators=(",", ":")).encode()
