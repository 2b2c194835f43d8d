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
from typing import Any

from agent.capture import Reservoir, encode_sample, upload_chunks
from agent.core import AgentCore, CoreConfig
from agent.drift import DriftRecorder, load_baseline, save_baseline
from agent.events import (
    Action,
    Activate,
    CaptureEnded,
    CheckStagedChunks,
    Connected,
    Discard,
    Done,
    DropUpload,
    Event,
    FinishCapture,
    KeepUpload,
    MessageArrived,
    MetadataVerified,
    PersistState,
    Prune,
    Publish,
    Refused,
    RollBack,
    RunHealthCheck,
    SendUploadChunks,
    StagedChunks,
    StartCapture,
    Subscribe,
    Tick,
    TrustRefreshed,
    Unsubscribe,
    UploadLost,
    VerifyAndStage,
    VerifyMetadata,
    WriteChunk,
)
from agent.health import load_and_check
from agent.predictor import Predictor
from agent.runtime import ModelSession, SessionCache
from agent.spool import SPOOLED_KINDS, SpoolSender
from agent.store import DeviceStore
from agent.update_log import UpdateLog
from shared.manifest import Manifest
from shared.reasons import Reason
from shared.trust import DeviceVerifier, TrustError

log = logging.getLogger(__name__)

PublishFn = Callable[[str, bytes, int, bool], None]
SubscribeFn = Callable[[str, int], None]  # (topic, qos); qos < 0: unsubscribe


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
        spool: SpoolSender | None = None,
        on_spooled: Callable[[str, bytes], None] | None = None,
        update_log: UpdateLog | None = None,
        subscribe: SubscribeFn | None = None,
    ) -> None:
        self.config = config
        # telemetry and drift go through the spool (written before they are sent, removed
        # when the broker acknowledged them); everything else straight to ``publish``
        self.spool = spool
        self._on_spooled = on_spooled
        self.store = store
        self.sessions = sessions
        self.check_memory = check_memory
        self.clock = clock
        self._publish = publish
        # reads a fan-out topic a deploy names; None: such a deploy is fetched chunk by chunk
        self._subscribe = subscribe
        self._lock = threading.RLock()
        self.verifier = DeviceVerifier(store.trust_dir, pinned_root)
        self.core = AgentCore(
            config,
            store.load_state(),
            root_version=self.verifier.root_version,
            director_keys=self.verifier.director_keys(),
        )
        if spool is not None:
            self.core.spool_dropped = spool.dropped
        self.predictor = Predictor()
        # model -> the recorder sketching its active version's rows on its baseline
        self.drifts: dict[str, DriftRecorder] = {}
        self.outcomes: Counter[str] = Counter()  # stage[:reason] of every event published
        # each update step once, at INFO: the daemon's one device logs them; the
        # simulator's thousands do not
        self.update_log = update_log
        self._staged: ModelSession | None = None
        self._capture: tuple[str, Reservoir] | None = None  # (capture id, its sample)
        if (capture := self.core.capture) is not None:  # restarted mid-capture: sample anew
            self._start_capture(
                StartCapture(capture["id"], capture["model"], capture["max_rows"], capture["seed"])
            )
        self._load_active()

    # ------------------------------------------------------------- entry points

    def connected(self) -> None:
        self.feed(Connected(self.clock()))

    def message(self, kind: str, payload: bytes) -> None:
        self.feed(MessageArrived(kind, payload, self.clock()))

    def tick(self, cpu_pct: float | None = None, rss_bytes: int | None = None) -> None:
        stats = self.predictor.drain()  # each model's inferences apart
        sketches = tuple(s for d in self.drifts.values() if (s := d.drain()) is not None)
        self.feed(Tick(self.clock(), None, cpu_pct, rss_bytes, model_stats=stats, drifts=sketches))

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
            if isinstance(action, (Publish, PersistState, Prune, DropUpload)):
                return None
            if isinstance(action, KeepUpload):  # a full or broken disk: the upload is lost
                return UploadLost(action.capture, str(e), self.clock())
            return Refused(_step(action), Reason.STORAGE_ERROR, str(e), self.clock())

    def _execute(self, action: Action) -> Event | None:
        if isinstance(action, Publish):
            if self.spool is not None and action.topic.rsplit("/", 1)[-1] in SPOOLED_KINDS:
                try:
                    self.spool.submit(action.topic, action.payload)
                except OSError as e:  # a full or broken disk: send it unspooled, best effort
                    log.error("%s: spool write failed: %s", self.config.device_id, e)
                    self._publish(action.topic, action.payload, action.qos, action.retain)
                self.core.spool_dropped = self.spool.dropped  # reported in the next window
                if self._on_spooled is not None:
                    self._on_spooled(action.topic, action.payload)
                return None
            self._publish(action.topic, action.payload, action.qos, action.retain)
            if action.topic.endswith("/events"):
                self._count_outcome(action.payload)
            return None
        if isinstance(action, (Subscribe, Unsubscribe)):
            if self._subscribe is not None:
                self._subscribe(action.topic, action.qos if isinstance(action, Subscribe) else -1)
            return None
        if isinstance(action, PersistState):
            self.store.write_state(action.data, action.durable)
            return None
        if isinstance(action, WriteChunk):
            self.store.write_chunk(action.target, action.offset, action.data)
            return None
        if isinstance(action, VerifyMetadata):
            return self._verify_metadata(action)
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
            custom = action.target.custom
            self.predictor.swap(
                self._staged,
                action.model,
                action.version,
                _names(custom.get("classes")),
                _feature_names(custom.get("baseline")),
                _scored_output(custom.get("baseline")),
            )
            self._drift_of(action.model).activate(
                action.model, action.version, custom.get("baseline")
            )
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
        if isinstance(action, StartCapture):
            self._start_capture(action)
            return None
        if isinstance(action, FinishCapture):
            return self._finish_capture(action)
        if isinstance(action, (KeepUpload, SendUploadChunks, DropUpload)):
            return self._upload_io(action)
        raise TypeError(f"unknown action {action!r}")

    def _verify_metadata(self, action: VerifyMetadata) -> Event:
        step = "metadata" if action.target_name else "trust"
        try:
            if action.target_name is None:
                self.verifier.refresh(action.files)
                return TrustRefreshed(
                    action.req,
                    self.verifier.root_version,
                    self.verifier.director_keys(),
                    self.clock(),
                )
            target = self.verifier.verify_metadata(action.files, action.target_name)
            keys = self.verifier.director_keys()
        except TrustError as e:
            return Refused(step, e.reason, e.detail, self.clock())
        return MetadataVerified(
            action.req,
            target,
            self.verifier.root_version,
            self.clock(),
            director_keys=keys,
            trusted_targets=self.verifier.trusted_targets(),
        )

    def _verify_and_stage(self, action: VerifyAndStage) -> Event:
        staged = self.store.staging_path(action.target)
        try:
            self.verifier.verify_file(action.target, staged)
        except TrustError as e:
            self.store.discard_staging(action.target)
            return Refused("file", e.reason, e.detail, self.clock())
        fmt = str(action.target.custom.get("format", "onnx"))
        path = self.store.install(action.target, action.model, action.version, fmt)
        try:
            save_baseline(path.parent, action.target.custom.get("baseline") or {})
        except OSError as e:  # drift of this version after a restart or rollback is lost
            log.error("%s: cannot keep the drift baseline: %s", self.config.device_id, e)
        return Done("file", self.clock())

    def _health_check(self, action: RunHealthCheck) -> Event:
        # the budgets of this device's class, when the hub set some (its profile's)
        manifest = Manifest.from_custom(action.target.custom).for_class(self.config.device_class)
        path = self.store.model_path(action.model, action.version, manifest.format)
        session, result = load_and_check(
            self.sessions,
            path,
            manifest,
            sha256=action.target.sha256,
            check_memory=self.check_memory,
        )
        job = self.core.job or {"model": action.model, "version": action.version}
        if session is None or not result.ok:
            if self.update_log is not None:
                self.update_log.health(job, False, "; ".join(result.failures))
            return Refused(
                "health", Reason.HEALTH_CHECK_FAILED, "; ".join(result.failures), self.clock()
            )
        self._staged = session
        h = manifest.health
        if self.update_log is not None:
            self.update_log.health(
                job,
                True,
                f"p95 {result.p95_us:.0f} us",
                f"for {h.probation_s:g} s (at least {h.probation_min_inferences} inferences)",
            )
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
        baseline = load_baseline(path.parent)
        self.predictor.swap(
            session,
            action.model,
            action.to_version,
            _baseline_classes(baseline),
            _feature_names(baseline),
            _scored_output(baseline),
        )
        self._drift_of(action.model).activate(action.model, action.to_version, baseline)
        return Done("rollback", self.clock())

    # ------------------------------------------------------------- data capture

    def _start_capture(self, action: StartCapture) -> None:
        """Sample the model's rows from now on (agent/capture.py)."""
        if self._capture is not None:
            self.predictor.remove_observer(self._capture[1])
        reservoir = Reservoir(action.model, action.max_rows, seed=action.seed)
        self._capture = (action.capture, reservoir)
        self.predictor.add_observer(reservoir)

    def _finish_capture(self, action: FinishCapture) -> CaptureEnded:
        now = self.clock()
        if self._capture is None or self._capture[0] != action.capture:
            return CaptureEnded(action.capture, now)  # nothing sampled in this process
        reservoir = self._capture[1]
        self.predictor.remove_observer(reservoir)
        self._capture = None
        sample = reservoir.sample()
        if sample is None or sample.rows == 0:
            return CaptureEnded(action.capture, now)
        data, schema = encode_sample(sample)
        return CaptureEnded(
            action.capture,
            now,
            data,
            tuple(schema),
            sample.version,
            sample.rows,
            sample.labelled,
        )

    def _upload_io(self, action: KeepUpload | SendUploadChunks | DropUpload) -> Event | None:
        """Keep, send from, or delete a capture's upload on disk (agent/core/uploads.py)."""
        if isinstance(action, KeepUpload):
            self.store.keep_upload(action.capture, action.data)
        elif isinstance(action, DropUpload):
            self.store.drop_upload(action.capture)
        else:
            try:
                data = self.store.read_upload(action.capture, action.length)
            except OSError as e:
                return UploadLost(action.capture, str(e), self.clock())
            for chunk in upload_chunks(action.capture, data, action.chunk_size, action.indices):
                self._publish(action.topic, chunk, 1, False)
        return None

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
            session = self.sessions.get(info["sha256"], path)
            baseline = load_baseline(path.parent)
            self.predictor.swap(
                session,
                model,
                entry["version"],
                _baseline_classes(baseline),
                _feature_names(baseline),
                _scored_output(baseline),
            )
            self._drift_of(model).activate(model, entry["version"], baseline)

    def _drift_of(self, model: str) -> DriftRecorder:
        """The drift recorder of ``model`` (made, and shown its rows, the first time)."""
        drift = self.drifts.get(model)
        if drift is None:
            drift = self.drifts[model] = DriftRecorder()
            self.predictor.add_observer(drift)
        return drift

    def status(self) -> dict[str, Any]:
        """What this device runs and its latest update, for ``GET /v1/status``."""
        with self._lock:
            state, job, waiting = self.core.state, self.core.job, self.core.waiting
        active = self.predictor.active
        return {
            "models": {
                name: {"version": m["version"], "versions": m["versions"]}
                for name, m in state["models"].items()
            },
            "serving": None if active is None else {"model": active[0], "version": active[1]},
            # every model served and its version (several: /v1/models/{name}/predict)
            "serving_models": self.predictor.models,
            "update": {
                "in_progress": None
                if job is None
                else {k: job[k] for k in ("deployment", "model", "version", "phase")},
                "waiting": waiting,  # deploys of other models, started after this one
                "last": state.get("last"),
            },
        }

    def _count_outcome(self, payload: bytes) -> None:
        body = json.loads(payload)["body"]
        if self.update_log is not None:
            self.update_log.event(body)
        key = body["stage"] + (f":{body['reason']}" if body.get("reason") else "")
        self.outcomes[key] += 1


def _names(raw: Any) -> tuple[str, ...]:
    """Class names from a verified manifest field (anything else: none)."""
    if isinstance(raw, list | tuple) and all(isinstance(c, str) for c in raw):
        return tuple(raw)
    return ()


def _baseline_classes(baseline: dict[str, Any] | None) -> tuple[str, ...]:
    """A classifier's class names after a restart or a rollback: the saved drift
    baseline lists them (the manifest's ``classes``, in the same order)."""
    outputs = (baseline or {}).get("outputs")
    return _names(outputs.get("classes")) if isinstance(outputs, dict) else ()


def _scored_output(baseline: Any) -> str | None:
    """The output the hub scored the model on, as its drift baseline names it."""
    outputs = baseline.get("outputs") if isinstance(baseline, dict) else None
    name = outputs.get("output") if isinstance(outputs, dict) else None
    return name if isinstance(name, str) else None


def _feature_names(baseline: Any) -> tuple[str, ...]:
    """Input feature names from a drift baseline (``features[i].name``); none if any
    is missing."""
    feats = baseline.get("features") if isinstance(baseline, dict) else None
    if not isinstance(feats, list):
        return ()
    names = [f.get("name") for f in feats if isinstance(f, dict)]
    if len(names) != len(feats) or not all(isinstance(n, str) for n in names):
        return ()
    return tuple(str(n) for n in names)


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
