"""A finished capture's labelled rows, kept as a dataset version (ADR 0014).

The rows a capture produced (hub/ml/data/captures.py) stay a ``DatasetVersion`` for the
closed loop; their labelled rows also become a ``DataVersion`` named
``captured-<model>``, of the same kind as an upload, checked against the model's input:
the row width of the dataset the model was trained on, and labels within its classes.
A capture that fails the check (or has no labelled rows) is logged and kept as rows
only.
"""

from __future__ import annotations

import io
import logging
from typing import Any

import numpy as np
import numpy.typing as npt
from sqlalchemy import Engine
from sqlmodel import col, select

from hub.ml.data.captured_rows import NO_LABEL
from hub.ml.data.files import DatasetFileError, ParsedDataset
from hub.ml.data.store import DatasetStore
from hub.store.tables import DatasetVersion, DataVersion, TrainingRun, session

__all__ = ["CaptureVersions"]

log = logging.getLogger(__name__)


class CaptureVersions:
    """Called by the capture keeper with each new capture's rows."""

    def __init__(self, engine: Engine, store: DatasetStore) -> None:
        self.engine = engine
        self.store = store

    def __call__(self, row: DatasetVersion, arrays: dict[str, npt.NDArray[Any]]) -> None:
        try:
            self._keep(row, arrays)
        except DatasetFileError as e:
            log.warning("capture %s: rows not kept as a dataset version: %s", row.capture_id, e)

    def _keep(self, row: DatasetVersion, arrays: dict[str, npt.NDArray[Any]]) -> None:
        labelled = arrays["labels"] != NO_LABEL
        if not labelled.any():
            return
        x = np.ascontiguousarray(arrays["x"][labelled], dtype=np.float32)
        y = arrays["labels"][labelled].astype(np.int64)
        origin = self._origin(row.model)
        classes = list(origin.data_schema.get("classes") or []) if origin else []
        features = list(origin.data_schema.get("features") or []) if origin else []
        if features and len(features) != x.shape[1]:
            raise DatasetFileError(
                f"captured rows have {x.shape[1]} values, the model's input {len(features)}"
            )
        if not classes:
            classes = [str(i) for i in range(int(y.max()) + 1)]
        if int(y.max()) >= len(classes):
            raise DatasetFileError(
                f"a captured label {int(y.max())} is beyond the model's {len(classes)} classes"
            )
        schema = {
            "kind": "tabular",
            "task": "classification",
            "label": "labels",
            "features": features
            or [{"name": f"x{i}", "dtype": "float32"} for i in range(x.shape[1])],
            "classes": classes,
            "row_shape": [int(x.shape[1])],
            "rows": len(x),
            "task_inferred": False,
        }
        buf = io.BytesIO()
        np.savez(buf, x=x, y=y)
        added = self.store.add_arrays(
            f"captured-{row.model}",
            ParsedDataset(x=x, y=y, schema=schema),
            source_file=buf.getvalue(),
            fmt="capture",
            source="capture",
            capture_id=row.capture_id,
            model=row.model,
        )
        log.info(
            "capture %s: %d labelled rows kept as %s", row.capture_id, len(x), added.version.id
        )

    def classes(self, model: str) -> list[str]:
        """The class names of the dataset the model was trained on (empty if unknown)."""
        origin = self._origin(model)
        return list(origin.data_schema.get("classes") or []) if origin else []

    def _origin(self, model: str) -> DataVersion | None:
        """The dataset version the model's latest build was trained on, if any."""
        with session(self.engine) as s:
            run = s.exec(
                select(TrainingRun)
                .where(TrainingRun.model == model, TrainingRun.status == "published")
                .order_by(col(TrainingRun.created_at).desc())
            ).first()
            if run is None or not run.datasets:
                return None
            return s.get(DataVersion, run.datasets[0])
