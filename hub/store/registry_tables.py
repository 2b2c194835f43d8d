"""The registry's extra artefacts: a model version's file for another runtime.

A :class:`~hub.store.tables.ModelVersion` row is a version and its first artefact (int8
ONNX for onnxruntime when trained here, or the uploaded file). A version trained for
device classes of another runtime gets one :class:`ModelArtefact` per further runtime
(full-int8 .tflite for LiteRT), each judged on the same hold-out, gated on its own and
signed as its own TUF target with its own manifest (ADR 0020, hub/ml/artefacts.py).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, Column, UniqueConstraint
from sqlmodel import Field, SQLModel

from hub.store.data_tables import now

__all__ = ["ModelArtefact"]


class ModelArtefact(SQLModel, table=True):
    __table_args__ = (UniqueConstraint("name", "version", "runtime"),)
    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(index=True, max_length=64)
    version: int
    runtime: str  # what runs it on a device: onnxruntime | tflite
    format: str  # onnx | tflite
    target: str = Field(unique=True)  # its TUF target path
    sha256: str
    size_bytes: int
    chunk_size: int
    accuracy_int8: float | None = None  # a classifier's hold-out accuracy
    mae_int8: float | None = None  # a regressor's hold-out MAE
    metrics: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON))
    gates: list[dict[str, Any]] = Field(default_factory=list, sa_column=Column(JSON))
    created_at: float = Field(default_factory=now)
