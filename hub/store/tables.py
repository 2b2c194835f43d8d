"""The hub's SQL schema (SQLModel), and ``make_engine``, which brings a database to it.

SQLite (WAL) by default, PostgreSQL by URL (hub/store/engine.py connects; its ``session``
and ``sqlite_url`` are importable from here too). Rows are the hub's memory: devices as last
reported, model versions in the registry, deployments and each device's progress in
them, the event log, telemetry windows (unique per device and sequence, so a replay is
never counted twice), background jobs, and who may do what (API keys, one-time
enrolment tokens) with the audit log of what they did (hub/access/keys.py).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, Column, Engine, UniqueConstraint
from sqlmodel import Field, SQLModel

# Data and build tables live in hub/store/data_tables.py, alert delivery's in
# hub/store/alert_tables.py; importable from here too.
from hub.store.alert_tables import (
    AlertAttempt,
    AlertCursor,
    AlertDelivery,
    AlertMessage,
    AlertReceiver,
)
from hub.store.data_tables import (
    Capture,
    CaptureDevice,
    DatasetVersion,
    DataVersion,
    TrainingRecord,
    TrainingRun,
    now,
)
from hub.store.declared_tables import DeclaredGroup, RolloutPolicy
from hub.store.engine import connect
from hub.store.engine import session as session  # re-exported: callers import it from here
from hub.store.engine import sqlite_url as sqlite_url  # re-exported, as session
from hub.store.figure_tables import ModelFigure, SpoolDrop  # created with the rest
from hub.store.migrate import upgrade
from hub.store.registry_tables import ModelArtefact

__all__ = [
    "AlertAttempt",
    "AlertCursor",
    "AlertDelivery",
    "AlertMessage",
    "AlertReceiver",
    "ApiKey",
    "ApiKeyBase",
    "AuditRecord",
    "AuditRecordBase",
    "Capture",
    "CaptureDevice",
    "DataVersion",
    "DatasetVersion",
    "DeclaredGroup",
    "Deployment",
    "DeploymentDevice",
    "Device",
    "DeviceBase",
    "DeviceTag",
    "DriftAlert",
    "DriftEvent",
    "DriftPolicy",
    "DriftWindow",
    "EnrolToken",
    "EnrolTokenBase",
    "EventRecord",
    "Job",
    "LoopPolicy",
    "LoopRun",
    "ModelArtefact",
    "ModelFigure",
    "ModelVersion",
    "ModelVersionBase",
    "Revocation",
    "Rollout",
    "RolloutDevice",
    "RolloutPolicy",
    "SpoolDrop",
    "Telemetry",
    "TrainingRecord",
    "TrainingRun",
    "make_engine",
    "now",
    "session",
    "sqlite_url",
    "upgrade_database",
]

# ---------------------------------------------------------------- devices


class DeviceBase(SQLModel):
    id: str = Field(primary_key=True, max_length=64)
    device_class: str | None = None
    runtime: str | None = None
    agent_version: str | None = None
    status: str = "unknown"  # online | offline | unknown
    root_version: int | None = None
    model: str | None = None  # the first model it runs (all of them: ``models``)
    version: int | None = None
    sha256: str | None = None
    # every model it runs: {name: {"version", "sha256"}}, as its state reports them
    models: dict[str, Any] | None = Field(default=None, sa_type=JSON)


class Device(DeviceBase, table=True):
    first_seen: float = Field(default_factory=now)
    last_seen: float = Field(default_factory=now)

    def version_of(self, model: str) -> int | None:
        """The version of ``model`` it runs (None: not that model), among all its models."""
        info = (self.models or {}).get(model)
        if info is not None:
            return int(info["version"])
        return self.version if self.model == model else None


class Revocation(SQLModel, table=True):
    """A device whose certificates were revoked; re-enrolment (a bound token) lifts it."""

    device_id: str = Field(primary_key=True, max_length=64)
    revoked_at: float = Field(default_factory=now)
    reason: str = "unspecified"  # an x509 CRL reason name
    by: str | None = None  # the API key id that revoked it
    serials: list[str] = Field(default_factory=list, sa_column=Column(JSON))  # hex


# ---------------------------------------------------------------- models


class ModelVersionBase(SQLModel):
    name: str = Field(index=True, max_length=64)
    version: int
    sha256: str
    format: str = "onnx"
    runtime: str = "onnxruntime"
    size_bytes: int
    chunk_size: int
    size_fp32: int | None = None
    accuracy_fp32: float | None = None
    accuracy_int8: float | None = None
    target: str
    source: str = "trained"  # trained | uploaded
    device_classes: str = ""  # comma-separated; empty = any
    task: str = "classification"  # classification | regression | unevaluated
    mae_fp32: float | None = None  # a regressor's held-out MAE
    mae_int8: float | None = None
    dataset: str | None = None  # the dataset version that judged it (NAME:SEQ)


class ModelVersion(ModelVersionBase, table=True):
    __table_args__ = (UniqueConstraint("name", "version"),)
    id: int | None = Field(default=None, primary_key=True)
    created_at: float = Field(default_factory=now)


# ---------------------------------------------------------------- deployments


class Deployment(SQLModel, table=True):
    id: str = Field(primary_key=True)
    model: str
    version: int
    target: str
    created_at: float = Field(default_factory=now)
    devices: int = 0


class DeploymentDevice(SQLModel, table=True):
    deployment_id: str = Field(primary_key=True, foreign_key="deployment.id")
    device_id: str = Field(primary_key=True)
    stage: str = "pending"  # pending | sent | a protocol stage
    reason: str | None = None
    detail: str | None = None
    updated_at: float = Field(default_factory=now)


# ---------------------------------------------------------------- rollouts (hub/fleet/rollouts.py)


class Rollout(SQLModel, table=True):
    id: str = Field(primary_key=True)
    model: str
    version: int
    target: str
    state: str = "running"  # running | paused | completed | halted | aborted
    spec: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON))  # RolloutSpec
    waves: int = 1  # waves in all, the canary included
    wave: int = 0  # the wave being sent (0-based)
    group: str | None = Field(default=None, index=True)  # set: late joiners follow it
    halted_reason: str | None = None
    created_by: str | None = None
    created_at: float = Field(default_factory=now)
    started_at: float = Field(default_factory=now)  # rate limit counts from here…
    paused_s: float = 0.0  # …less the seconds it spent paused
    paused_at: float | None = None
    ended_at: float | None = None
    settled_at: float | None = None  # halted/aborted and nothing left to put back


class RolloutDevice(SQLModel, table=True):
    rollout_id: str = Field(primary_key=True, foreign_key="rollout.id")
    device_id: str = Field(primary_key=True)
    wave: int = 0
    # pending | sent | a protocol stage | timed_out | skipped; rollback: rollback_sent
    state: str = "pending"
    reason: str | None = None
    detail: str | None = None
    previous_version: int | None = None  # what it ran before this rollout
    attempts: int = 0  # deploy commands sent (re-sends on reconciliation included)
    timeouts: int = 0  # device_timeout_s passed with no word from it (retries spent)
    sent_at: float | None = None
    rollback_at: float | None = None  # when a rollback command was sent
    updated_at: float = Field(default_factory=now)
    # its probation, as the device reported it (hub/fleet/probation.py): since, terms, and
    # the inferences and errors it judged
    probation: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))


class DeviceTag(SQLModel, table=True):
    """Groups and tags a rollout can target ("group" is a tag a rollout follows)."""

    device_id: str = Field(primary_key=True)
    tag: str = Field(primary_key=True, index=True, max_length=64)


class EventRecord(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    device_id: str = Field(index=True)
    deployment_id: str = Field(index=True)
    model: str
    version: int
    stage: str
    reason: str | None = None
    detail: str | None = None
    ts: float


# ---------------------------------------------------------------- telemetry


class Telemetry(SQLModel, table=True):
    """One telemetry window, or (``seq < 0``) a downsampled row of several
    (hub/telemetry/retention.py).

    A raw window's key is the device's own ``seq``, so a replay is never stored twice. A
    downsampled row covers ``windows`` windows of one ``resolution_s`` bucket: its seq is
    ``-1 - int(start // resolution_s)``, so downsampling again finds and merges it.
    """

    device_id: str = Field(primary_key=True)
    seq: int = Field(primary_key=True)
    start: float
    end: float = Field(index=True)
    model: str | None = None
    version: int | None = None
    count: int
    errors: int
    p50_us: float
    p95_us: float
    p99_us: float
    labelled: int = 0  # rows of model/version labelled in this window
    correct: int = 0  # of those, predicted right (a classifier)
    abs_err_sum: float | None = None  # a regressor's: sum of |value - label| over labelled
    sq_err_sum: float | None = None  # and of its square
    other_versions: str | None = None  # JSON [{model, version, labelled, ...}]: late labels
    cpu_pct: float | None = None
    rss_bytes: int | None = None
    latency_hist: str | None = None  # JSON {bucket: count} (agent/telemetry.py's layout)
    spool_dropped: int | None = None  # the device's spool drops, ever (agent/spool.py)
    windows: int = 1  # windows this row stands for (> 1 once downsampled)
    resolution_s: float = 0.0  # 0: a raw window; else the downsampling bucket, seconds


# ---------------------------------------------------------------- drift (hub/telemetry/drift.py)


class DriftWindow(SQLModel, table=True):
    """One device's drift sketch of one telemetry window (same seq), and its scores."""

    device_id: str = Field(primary_key=True)
    seq: int = Field(primary_key=True)
    model: str = Field(index=True, max_length=64)
    version: int
    ts: float = Field(index=True)  # the window's end (the message's ts)
    rows: int
    sketch: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON))  # wire form
    # {feature or "__outputs__": {"psi": x, "js": y}}; None: no usable baseline
    scores: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON(none_as_null=True)))


class DriftPolicy(SQLModel, table=True):
    """Per-model drift thresholds and persistence rule (defaults: hub/telemetry/drift.py)."""

    model: str = Field(primary_key=True, max_length=64)
    psi_threshold: float
    js_threshold: float
    k: int  # alert when k ...
    n: int  # ... of the last n windows exceed a threshold
    min_rows: int  # a window with fewer rows never counts as drifting
    scope_window_s: float  # seconds per window of the group and fleet scopes
    # seconds without a window from a device before its alert goes stale
    silence_s: float = Field(default=900.0, sa_column_kwargs={"server_default": "900"})
    updated_at: float = Field(default_factory=now)
    updated_by: str | None = None


class DriftAlert(SQLModel, table=True):
    """A drift alert of one model in one scope: open while k of n windows exceed; stale
    while the devices it names are silent (hub/telemetry/drift_silence.py)."""

    id: int | None = Field(default=None, primary_key=True)
    model: str = Field(index=True, max_length=64)
    version: int | None = None  # of the latest exceeding window
    scope: str  # device | group | fleet
    scope_id: str  # the device id, the group tag, or "*" for the fleet
    state: str = Field(default="open", index=True)  # open | stale | cleared
    opened_at: float = Field(default_factory=now)
    updated_at: float = Field(default_factory=now)
    cleared_at: float | None = None
    stale_reason: str | None = None  # while stale: "stale: device d silent since ..."
    devices: list[str] = Field(default_factory=list, sa_column=Column(JSON))
    features: list[str] = Field(default_factory=list, sa_column=Column(JSON))
    scores: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON))


class DriftEvent(SQLModel, table=True):
    """The drift event stream: an alert raised, cleared, gone stale or resumed."""

    id: int | None = Field(default=None, primary_key=True)
    ts: float = Field(default_factory=now, index=True)
    alert_id: int = Field(index=True)
    kind: str  # raised | cleared | stale | resumed
    model: str = Field(index=True, max_length=64)
    scope: str
    scope_id: str
    features: list[str] = Field(default_factory=list, sa_column=Column(JSON))
    devices: list[str] = Field(default_factory=list, sa_column=Column(JSON))
    detail: str | None = None  # why (a stale alert: which device is silent since when)


# ---------------------------------------------------------------- jobs


class Job(SQLModel, table=True):
    id: str = Field(primary_key=True)
    kind: str  # train | upload
    status: str = "queued"  # queued | running | done | failed
    stage: str = ""
    progress: float = 0.0
    error: str | None = None
    result: str | None = None  # JSON
    created_at: float = Field(default_factory=now)
    updated_at: float = Field(default_factory=now)


# ---------------------------------------------------------------- access and audit
# Secrets are never stored: a key or token is kept as the SHA-256 of its secret part
# (hub/access/keys.py says why a plain hash is enough).


class ApiKeyBase(SQLModel):
    name: str = Field(max_length=64)
    role: str  # viewer | operator | admin (hub.auth.Role)


class ApiKey(ApiKeyBase, table=True):
    keyid: str = Field(primary_key=True, max_length=32)
    secret_sha256: str  # hex
    created_at: float = Field(default_factory=now)
    created_by: str  # the creator's keyid, "dev" or "cli"
    revoked_at: float | None = None


class EnrolTokenBase(SQLModel):
    id: str = Field(primary_key=True, max_length=32)
    device_id: str | None = None  # when set, only this device may use the token
    # issued by an admin for a known device (POST /devices/{id}/reenrol): only such a
    # token may replace an enrolled device's identity or lift its revocation
    reenrol: bool = False
    expires_at: float
    created_at: float = Field(default_factory=now)
    created_by: str
    used_at: float | None = None
    used_by_device: str | None = None
    revoked_at: float | None = None


class EnrolToken(EnrolTokenBase, table=True):
    token_sha256: str = Field(unique=True, index=True)  # hex


class AuditRecordBase(SQLModel):
    ts: float = Field(default_factory=now, index=True)
    # the verified caller: a keyid, "enrol-token:<id>", or "unauthenticated" (no usable key)
    actor_keyid: str | None = Field(default=None, index=True)
    actor_name: str | None = None
    role: str | None = None  # the actor's role when the call was made
    action: str = Field(index=True)  # "deployment.create", ...; "unrouted" for no route
    method: str
    path: str
    target: str | None = None  # the id of the resource acted on
    before: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON(none_as_null=True)))
    after: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON(none_as_null=True)))
    outcome: str  # ok | denied (401, 403) | error (any other 4xx or 5xx)
    status: int  # the HTTP status answered; 0 for a change made with the CLI
    detail: str | None = None  # the refusal or error message, never a secret
    client: str | None = None  # the client's address
    # the keyid a refused key claimed: unverified, never the actor (hub/access/audit.py)
    claimed_keyid: str | None = None
    # requests this record stands for: >1 for a summary of refused unauthenticated calls
    count: int = 1


class AuditRecord(AuditRecordBase, table=True):
    id: int | None = Field(default=None, primary_key=True)


# ---------------------------------------------------------------- the closed loop


class LoopPolicy(SQLModel, table=True):
    """A model's closed-loop policy (hub/loop.py): off unless an operator turns it on."""

    model: str = Field(primary_key=True, max_length=64)
    enabled: bool = False
    capture_rows: int = 2000  # per drifted device
    capture_s: float = 60.0  # seconds the devices sample
    canary_percent: float = 50.0  # of the drifted devices, in the first wave
    waves: int = 1  # after the canary
    max_failure_ratio: float = 0.2
    min_sample: int = 1
    cooldown_s: float = 600.0  # after a run ends, before its devices may start another
    gather_s: float = 10.0  # after the first new alert, wait for the ones arriving with it
    updated_by: str | None = None
    updated_at: float = Field(default_factory=now)


class LoopRun(SQLModel, table=True):
    """One turn of the loop: alert -> capture -> retrain -> canary to the drifted devices."""

    id: str = Field(primary_key=True, max_length=64)
    model: str = Field(index=True, max_length=64)
    from_version: int | None = None
    alerts: list[int] = Field(default_factory=list, sa_column=Column(JSON))
    devices: list[str] = Field(default_factory=list, sa_column=Column(JSON))
    features: list[str] = Field(default_factory=list, sa_column=Column(JSON))
    # capturing | retraining | deploying | done | failed; skipped: an alert the loop did
    # not act on, once per alert and reason (id ``skip-<alert>-<reason>``, ``detail`` why)
    stage: str = Field(default="capturing", index=True)
    capture_id: str | None = None
    dataset_id: str | None = None
    job_id: str | None = None
    version: int | None = None  # the retrained version
    rollout_id: str | None = None
    detail: str | None = None  # why it failed, or how the rollout ended
    steps: list[dict[str, Any]] = Field(default_factory=list, sa_column=Column(JSON))
    created_at: float = Field(default_factory=now)
    updated_at: float = Field(default_factory=now)
    ended_at: float | None = None


# ---------------------------------------------------------------- creating the schema


def make_engine(url: str) -> Engine:
    """The engine, its database brought to the hub's schema (hub/store/migrate.py).

    SQLite gets WAL and a busy timeout. Raises MigrationError when the database cannot be
    brought to the schema.
    """
    engine = connect(url)
    try:
        upgrade_database(engine)
    except BaseException:
        engine.dispose()  # its connections, not left to the garbage collector
        raise
    return engine


def upgrade_database(engine: Engine) -> str:
    """Run the migrations ``engine``'s database lacks (hub/store/migrate.py's ``upgrade``).

    Returns the revision it was at before (``"empty"``, ``"unversioned"`` or a revision).
    """
    return upgrade(engine, SQLModel.metadata)
