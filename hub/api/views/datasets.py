"""Views of dataset versions, captures and the rows they produced
(hub/api/routes/datasets.py, captures.py)."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from hub.api.views.base import Exact, View

__all__ = ["CaptureView", "CapturedRows", "DataVersionView", "DatasetUploaded"]


class DataVersionView(Exact):
    """A dataset version: an operator's file (or a capture), addressed by its content."""

    id: str  # NAME:SEQ
    name: str
    seq: int
    sha256: str
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
    created_at: float
    data_schema: dict[str, Any]  # features, classes, row shape (ADR 0014)


class CapturedRows(View):
    """The rows a capture produced (or a labelled version of them)."""

    id: str
    model: str
    version: int  # the model version the rows came from
    capture_id: str | None = None
    devices: list[str] = Field(default_factory=list)
    rows: int
    labelled: int
    features: int
    sha256: str  # of the npz artifact
    created_at: float


class CaptureView(View):
    """A capture, each device's status (``devices``) and the counts per status."""

    id: str
    model: str
    max_rows: int  # per device
    duration_s: float | None = None
    windows: int | None = None
    state: str  # running | done | failed
    reason: str | None = None
    dataset_id: str | None = None  # the rows it produced, once done
    created_at: float
    deadline: float
    devices: list[dict[str, Any]]
    statuses: dict[str, int]


class DatasetUploaded(DataVersionView):
    """The client's answer to an upload: the version, and ``created`` false when the same
    bytes were already that version (the hub answered 200, not 201)."""

    created: bool
