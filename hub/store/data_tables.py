"""The hub's tables for data and builds: captures, dataset versions, training runs.

Importable from hub/store/tables.py too, which creates the whole schema.
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import JSON, Column, UniqueConstraint
from sqlmodel import Field, SQLModel


def now() -> float:
    return time.time()


# ------------------------------------------------------- data capture (hub/ml/data/captures.py)


class Capture(SQLModel, table=True):
    """A capture the hub asked devices for (docs/capture.md)."""

    id: str = Field(primary_key=True, max_length=64)
    model: str = Field(index=True, max_length=64)
    max_rows: int  # per device
    duration_s: float | None = None
    windows: int | None = None
    seed: int = 0
    state: str = "running"  # running | done | failed
    reason: str | None = None  # why it failed (no device uploaded anything)
    dataset_id: str | None = None  # the dataset version it produced
    created_by: str | None = None
    created_at: float = Field(default_factory=now)
    deadline: float  # devices whose upload is not verified by then have failed
    ended_at: float | None = None


class CaptureDevice(SQLModel, table=True):
    capture_id: str = Field(primary_key=True, foreign_key="capture.id")
    device_id: str = Field(primary_key=True, max_length=64)
    # sent | started | uploading | verified | failed | refused
    status: str = "sent"
    reason: str | None = None
    detail: str | None = None
    version: int | None = None  # the model version its rows came from
    rows: int | None = None
    labelled: int | None = None
    updated_at: float = Field(default_factory=now)


class DatasetVersion(SQLModel, table=True):
    """Captured rows, stored as an npz artifact (content-addressed by ``sha256``)."""

    id: str = Field(primary_key=True, max_length=64)
    model: str = Field(index=True, max_length=64)
    version: int  # the model version the rows were captured from
    capture_id: str | None = Field(default=None, index=True)
    devices: list[str] = Field(default_factory=list, sa_column=Column(JSON))
    rows: int
    labelled: int
    features: int
    sha256: str  # of the npz artifact
    created_at: float = Field(default_factory=now)


class DataVersionBase(SQLModel):
    """A dataset version: an operator's file (or a capture), addressed by its content."""

    id: str = Field(primary_key=True, max_length=80)  # "NAME:SEQ"
    name: str = Field(index=True, max_length=64)
    seq: int  # 1, 2, ... per name
    sha256: str = Field(index=True, max_length=64)  # of the file as uploaded
    format: str  # csv | parquet | npz | capture
    task: str  # classification | regression
    kind: str  # tabular | image | window
    label: str
    rows: int
    size_bytes: int
    source: str = "upload"  # upload | capture
    capture_id: str | None = None
    model: str | None = None  # for a capture: the model whose input it holds
    created_by: str | None = None
    created_at: float = Field(default_factory=now)


class DataVersion(DataVersionBase, table=True):
    """ADR 0014. ``arrays_sha256`` names the canonical npz (x float32, y) in the store."""

    __tablename__ = "data_version"
    __table_args__ = (UniqueConstraint("name", "seq"), UniqueConstraint("name", "sha256"))
    data_schema: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON))
    arrays_sha256: str = Field(max_length=64)


class TrainingRun(SQLModel, table=True):
    """One build of a model (ADR 0014): trained, uploaded or retrained; published or not."""

    __tablename__ = "training_run"
    id: str = Field(primary_key=True, max_length=32)
    model: str = Field(index=True, max_length=64)
    version: int | None = None  # the model version it published; None when refused
    status: str = "running"  # running | published | refused | failed
    source: str = "trained"  # trained | uploaded | retrained
    job_id: str | None = None
    datasets: list[str] = Field(default_factory=list, sa_column=Column(JSON))
    split: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON))
    config: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON))
    metrics: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON))
    gates: list[dict[str, Any]] = Field(default_factory=list, sa_column=Column(JSON))
    trials: list[dict[str, Any]] = Field(default_factory=list, sa_column=Column(JSON))
    refusal: str | None = None
    package_version: str | None = None
    source_revision: str | None = None
    created_by: str | None = None
    created_at: float = Field(default_factory=now)


class TrainingRecord(SQLModel, table=True):
    """How a model version was trained: the pipeline config and the datasets it used."""

    name: str = Field(primary_key=True, max_length=64)
    version: int = Field(primary_key=True)
    config: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON))
    datasets: list[str] = Field(default_factory=list, sa_column=Column(JSON))
    created_at: float = Field(default_factory=now)
