"""The hub's SQL schema (SQLModel) and engine set-up.

SQLite (WAL) by default, PostgreSQL by URL. Rows are the hub's memory: devices as last
reported, model versions in the registry, deployments and each device's progress in
them, the event log, telemetry windows (unique per device and sequence, so a replay is
never counted twice) and background jobs.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, UniqueConstraint, event
from sqlmodel import Field, Session, SQLModel, create_engine


def now() -> float:
    return time.time()


# ---------------------------------------------------------------- devices


class DeviceBase(SQLModel):
    id: str = Field(primary_key=True, max_length=64)
    device_class: str | None = None
    runtime: str | None = None
    agent_version: str | None = None
    status: str = "unknown"  # online | offline | unknown
    root_version: int | None = None
    model: str | None = None  # the active model (one per device in this version)
    version: int | None = None
    sha256: str | None = None


class Device(DeviceBase, table=True):
    first_seen: float = Field(default_factory=now)
    last_seen: float = Field(default_factory=now)


class DevicePublic(DeviceBase):
    first_seen: float
    last_seen: float


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


class ModelVersion(ModelVersionBase, table=True):
    __table_args__ = (UniqueConstraint("name", "version"),)
    id: int | None = Field(default=None, primary_key=True)
    created_at: float = Field(default_factory=now)


class ModelVersionPublic(ModelVersionBase):
    created_at: float


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
    labelled: int = 0
    correct: int = 0
    cpu_pct: float | None = None
    rss_bytes: int | None = None


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


# ---------------------------------------------------------------- engine


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"


def make_engine(url: str) -> Engine:
    """Create the engine and the tables. SQLite gets WAL and a busy timeout."""
    connect_args: dict[str, Any] = {}
    if url.startswith("sqlite"):
        connect_args = {"check_same_thread": False, "timeout": 30}
    engine = create_engine(url, connect_args=connect_args, pool_pre_ping=True)
    if url.startswith("sqlite"):

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

    SQLModel.metadata.create_all(engine)
    return engine


@contextmanager
def session(engine: Engine) -> Iterator[Session]:
    with Session(engine, expire_on_commit=False) as s:
        yield s
