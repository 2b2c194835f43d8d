"""One device: the sans-I/O core wired to its files, its verifier and its runtime.

``Device`` carries out the actions the core returns (write a chunk, verify metadata,
run the health check, swap the active model, publish) and feeds their results back to
the core. The transport is a ``publish`` callable: the daemon passes paho's, the fleet
simulator passes its selector loop's. So the simulator runs exactly this code.

Thread safety: every entry point takes one lock (the daemon calls from paho's thread
and its timer; the simulator from one loop thread, where the lock is uncontended).
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from agent.core import AgentCore, CoreConfig
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
from agent.health import load_and_check
from agent.runtime import ModelSession, Predictor, SessionCache
from agent.store import DeviceStore
from shared.manifest import Manifest
from shared.reasons import Reason
from shared.trust import DeviceVerifier, TrustError

log = logging.getLogger(__name__)

PublishFn = Callable[[str, bytes, int, bool], None]


class Device:
    def __init__(
        self,
        config: CoreConfig,
        store: DeviceStore,
        *,
        publish: PublishFn,
        sessions: SessionCache,
        pinned_root: bytes | None = None,
        check_memory: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.store = store
        self.sessions = sessions
        self.check_memory = check_memory
        self.clock = clock
        self._publish = publish
        self._lock = threading.RLock()
        self.verifier = DeviceVerifier(store.trust_dir, pinned_root)
        self.core = AgentCore(config, store.load_state(), root_version=self.verifier.root_version)
        self.predictor = Predictor()
        self.outcomes: Counter[str] = Counter()  # stage[:reason] of every event published
        self._staged: ModelSession | None = None
        self._load_active()

    # ------------------------------------------------------------- entry points

    def connected(self) -> None:
        self.feed(Connected(self.clock()))

    def message(self, kind: str, payload: bytes) -> None:
        self.feed(MessageArrived(kind, payload, self.clock()))

    def tick(self, cpu_pct: float | None = None, rss_bytes: int | None = None) -> None:
        stats = self.predictor.recorder.drain()
        self.feed(Tick(self.clock(), stats, cpu_pct, rss_bytes))

    def offline_state(self) -> bytes:
        """The retained ``offline`` state message, used as the Last Will."""
        return self.core.state_message(self.clock(), status="offline")

    def feed(self, event: Event) -> None:
        with self._lock:
            pending: list[Event] = [event]
            while pending:
                for action in self.core.handle(pending.pop(0)):
                    result = self._run(action)
                    if result is not None:
                        pending.append(result)

    # ------------------------------------------------------------- actions

    def _run(self, action: Action) -> Event | None:
        try:
            return self._execute(action)
        except OSError as e:
            log.error("%s: %s failed: %s", self.config.device_id, type(action).__name__, e)
            if isinstance(action, (Publish, PersistState, Prune)):
                return None
            return Refused(_step(action), Reason.STORAGE_ERROR, str(e), self.clock())

    def _execute(self, action: Action) -> Event | None:
        if isinstance(action, Publish):
            self._publish(action.topic, action.payload, action.qos, action.retain)
            if action.topic.endswith("/events"):
                self._count_outcome(action.payload)
            return None
        if isinstance(action, PersistState):
            self.store.save_state(dict(action.state), action.durable)
            return None
        if isinstance(action, WriteChunk):
            self.store.write_chunk(action.target, action.offset, action.data)
            return None
        if isinstance(action, VerifyMetadata):
            try:
                target = self.verifier.verify_metadata(action.files, action.target_name)
            except TrustError as e:
                return Refused("metadata", e.reason, e.detail, self.clock())
            return MetadataVerified(action.req, target, self.verifier.root_version, self.clock())
        if isinstance(action, CheckStagedChunks):
            valid = self.store.valid_chunks(
                action.target, action.chunk_size, action.chunk_hashes, action.claimed
            )
            return StagedChunks(valid, self.clock())
        if isinstance(action, VerifyAndStage):
            return self._verify_and_stage(action)
        if isinstance(action, RunHealthCheck):
            return self._health_check(action)
        if isinstance(action, Activate):
            if self._staged is None:  # restarted between the check and activation
                return self._health_check(
                    RunHealthCheck(action.model, action.version, action.target)
                )
            self.predictor.swap(self._staged, action.model, action.version)
            self._staged = None
            return Done("activate", self.clock())
        if isinstance(action, RollBack):
            return self._roll_back(action)
        if isinstance(action, Discard):
            self._staged = None
            self.store.discard_staging(action.target)
            entry = self.core.installed(action.model)
            if action.version is not None and (
                entry is None or action.version not in entry["versions"]
            ):
                self.store.remove_version(action.model, action.version)
            return None
        if isinstance(action, Prune):
            self.store.prune(action.model, action.keep)
            return None
        raise TypeError(f"unknown action {action!r}")

    def _verify_and_stage(self, action: VerifyAndStage) -> Event:
        staged = self.store.staging_path(action.target)
        try:
            self.verifier.verify_file(action.target, staged)
        except TrustError as e:
            self.store.discard_staging(action.target)
            return Refused("file", e.reason, e.detail, self.clock())
        fmt = str(action.target.custom.get("format", "onnx"))
        self.store.install(action.target, action.model, action.version, fmt)
        return Done("file", self.clock())

    def _health_check(self, action: RunHealthCheck) -> Event:
        manifest = Manifest.from_custom(action.target.custom)
        path = self.store.model_path(action.model, action.version, manifest.format)
        session, result = load_and_check(
            self.sessions,
            path,
            manifest,
            sha256=action.target.sha256,
            check_memory=self.check_memory,
        )
        if session is None or not result.ok:
            return Refused(
                "health", Reason.HEALTH_CHECK_FAILED, "; ".join(result.failures), self.clock()
            )
        self._staged = session
        return Done("health", self.clock(), detail=f"p95 {result.p95_us:.0f} us")

    def _roll_back(self, action: RollBack) -> Event:
        entry = self.core.installed(action.model)
        info = entry["files"].get(str(action.to_version)) if entry else None
        if info is None:
            return Refused(
                "rollback", Reason.STORAGE_ERROR, "no file for that version", self.clock()
            )
        fmt = str(info["target"]).rsplit(".", 1)[-1]
        path = self.store.model_path(action.model, action.to_version, fmt)
        session = self.sessions.get(info["sha256"], path)
        self.predictor.swap(session, action.model, action.to_version)
        return Done("rollback", self.clock())

    # ------------------------------------------------------------- start-up

    def _load_active(self) -> None:
        """Serve the active model from disk, after checking it is still the signed file."""
        for model, entry in self.core.state["models"].items():
            info = entry["files"][str(entry["version"])]
            fmt = str(info["target"]).rsplit(".", 1)[-1]
            path = self.store.model_path(model, entry["version"], fmt)
            if not _sha256_ok(path, info["sha256"]):
                log.error(
                    "%s: %s on disk does not match its signed sha256", self.config.device_id, path
                )
                continue
            self.predictor.swap(self.sessions.get(info["sha256"], path), model, entry["version"])

    def _count_outcome(self, payload: bytes) -> None:
        body = json.loads(payload)["body"]
        key = body["stage"] + (f":{body['reason']}" if body.get("reason") else "")
        self.outcomes[key] += 1


def _sha256_ok(path: Path, expected: str) -> bool:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest() == expected
    except OSError:
        return False


def _step(action: Action) -> str:
    return {
        VerifyMetadata: "metadata",
        VerifyAndStage: "file",
        RunHealthCheck: "health",
        Activate: "activate",
        RollBack: "rollback",
    }.get(type(action), "io")
