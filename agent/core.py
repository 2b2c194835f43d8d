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

from agent.events import (
    Action,
    Activate,
    CheckStagedChunks,
    Connected,
    Discard,
    Done,
    Event,
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
    Tick,
    VerifyAndStage,
    VerifyMetadata,
    WriteChunk,
)
from agent.telemetry import InferenceStats
from shared import protocol
from shared.chunks import chunk_ok, chunk_span
from shared.manifest import Manifest, ManifestError
from shared.protocol import ProtocolError
from shared.reasons import Reason
from shared.trust import VerifiedTarget

log = logging.getLogger(__name__)

AGENT_VERSION = "0.1.0"
KEEP_VERSIONS = 2  # active + previous, kept on disk for rollback


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


class AgentCore:
    """One device's update, rollback and telemetry logic. Not thread-safe: one caller."""

    def __init__(
        self, config: CoreConfig, state: dict[str, Any] | None = None, *, root_version: int = 1
    ):
        self.config = config
        self.state: dict[str, Any] = state or {"models": {}, "seq": 0, "job": None, "req": 0}
        self.root_version = root_version
        self.dropped: Counter[str] = Counter()  # bad input, by reason
        self._window: InferenceStats | None = None
        self._window_start: float | None = None
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
        elif isinstance(event, StagedChunks):
            self._on_staged_chunks(event, out)
        elif isinstance(event, Done):
            self._on_done(event, out)
        elif isinstance(event, Refused):
            self._on_refused(event, out)
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
    ) -> None:
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

    def _persist(self, out: Outbox, durable: bool = False) -> None:
        out.add(PersistState(_copy(self.state), durable))

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

    def _finish(self, out: Outbox, durable: bool = True) -> None:
        self.state["job"] = None
        self._job_cache = None
        self._persist(out, durable)

    def _fail(
        self, out: Outbox, job: dict[str, Any], reason: Reason, detail: str, now: float
    ) -> None:
        """Abandon the job; the active model (if any) never stopped serving."""
        self._event(out, job, "failed", now, reason, detail)
        target = self._target(job) if job.get("target_info") else None
        staged_version = job["version"] if job["phase"] in ("health", "activating") else None
        out.add(Discard(job["model"], staged_version, target))
        self._finish(out)

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
            manifest = self._manifest(job)
            out.add(
                CheckStagedChunks(
                    self._target(job),
                    manifest.chunk_size,
                    manifest.chunks,
                    frozenset(job["have"]),
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
        if self._window_start is None:
            self._window_start = ev.now
        elif ev.now - self._window_start >= self.config.window_s:
            self._close_window(ev, out)
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
        self.state["seq"] += 1
        out.add(Publish(self._topic("telemetry"), protocol.encode("telemetry", body, ts=ev.now)))
        self._persist(out)
        self._window = None
        self._window_start = ev.now

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
        try:
            msg = protocol.decode(ev.payload, expect=protocol.TOPIC_TYPES["cmd"])
        except ProtocolError as e:
            self._drop(e.reason, e.detail)
            return
        if msg.type == "deploy":
            self._on_deploy(dict(msg.body), ev.now, out)
        else:
            self._on_rollback_cmd(dict(msg.body), ev.now, out)

    def _on_deploy(self, body: dict[str, Any], now: float, out: Outbox) -> None:
        job = self.job
        if job is not None and job["deployment"] == body["deployment"]:
            return  # a duplicate delivery of the command we are working on
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
            self._fail(out, job, Reason.BUSY, "a rollback was requested", now)
        self._roll_back(
            out, info, installed["version"], body["version"], Reason.ROLLBACK_REQUESTED, "", now
        )

    def _on_blob(self, blob: protocol.Blob, now: float, out: Outbox) -> None:
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
            log.warning("%s: chunk %d failed its hash (%d)", self.config.device_id, index, fails)
            if fails >= self.config.max_chunk_failures:
                self._fail(
                    out,
                    job,
                    Reason.CHUNK_HASH_MISMATCH,
                    f"chunk {index} failed its signed sha256 {fails} times",
                    now,
                )
                return
        else:
            out.add(WriteChunk(self._target(job), offset, blob.data))
            job["have"].append(index)
        if len(job["have"]) == len(manifest.chunks):
            job["phase"] = "verify"
            self._persist(out)
            out.add(VerifyAndStage(job["model"], job["version"], self._target(job)))
            return
        self._request_chunks(out, job)
        self._persist(out)

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
                self._finish(out)
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
        self._finish(out)

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
        if ev.step == "rollback":
            log.error("%s: rollback failed: %s", self.config.device_id, ev.detail)
            return
        if job is None:
            return
        self._fail(out, job, ev.reason, ev.detail, ev.now)


def _copy(state: dict[str, Any]) -> dict[str, Any]:
    """A deep copy of the JSON-able state (the adapter may write it after we change it)."""
    copied: dict[str, Any] = json.loads(json.dumps(state))
    return copied
