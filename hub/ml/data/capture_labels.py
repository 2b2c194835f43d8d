"""Labels that arrive at the hub later, for rows a capture brought in (docs/capture.md).

``label_captured(datasets, dataset_id, labels, classes)`` gives the captured rows of
``dataset_id`` the labels an operator (or a labelling tool) posts, by row index, as a new
dataset version: versions are immutable, so the labelled rows are a new
``DatasetVersion`` of the same capture (and, through the capture keeper's hook, a new
``captured-<model>`` dataset version the closed loop and ``models train`` can use).

Exceptions::

    DatasetError("invalid", detail)   a row out of range or twice, an unknown class
"""

from __future__ import annotations

import io
import uuid
from collections.abc import Sequence
from typing import Any, Final

import numpy as np

from hub.ml.data.captured_rows import NO_LABEL
from hub.ml.data.captures import DatasetError, Datasets
from hub.store.tables import DatasetVersion, session

__all__ = ["MAX_LABELS", "label_captured"]

MAX_LABELS: Final = 100_000  # labels one request may post


def label_captured(
    datasets: Datasets,
    dataset_id: str,
    labels: Sequence[tuple[int, int | str]],
    classes: Sequence[str] = (),
) -> DatasetVersion:
    """A new version of captured rows with ``labels`` ((row, class index or name)) set.

    Raises:
        DatasetError: ``not_found``, or ``invalid`` labels (the first few named).
    """
    row = datasets.dataset_row(dataset_id)
    with np.load(io.BytesIO(datasets.store.get(row.sha256)), allow_pickle=False) as z:
        arrays: dict[str, Any] = {name: z[name] for name in z.files}
    new = arrays["labels"].copy()
    problems, seen = [], set()
    for i, (r, label) in enumerate(labels):
        index = _class_index(label, classes)
        if not 0 <= r < len(new):
            problems.append(f"item {i}: row {r} is not within 0..{len(new) - 1}")
        elif r in seen:
            problems.append(f"item {i}: row {r} labelled twice")
        elif index is None:
            known = f" (classes: {', '.join(classes[:10])})" if classes else ""
            problems.append(f"item {i}: {label!r} is not a class of the model{known}")
        else:
            seen.add(r)
            new[r] = index
    if problems:
        raise DatasetError("invalid", "; ".join(problems[:5]) + _more(len(problems)))
    arrays["labels"] = new
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    version = DatasetVersion(
        id=uuid.uuid4().hex[:16],
        model=row.model,
        version=row.version,
        capture_id=row.capture_id,
        devices=list(row.devices),
        rows=row.rows,
        labelled=int(np.count_nonzero(new != NO_LABEL)),
        features=row.features,
        sha256=datasets.store.put(buf.getvalue()),
    )
    with session(datasets.engine) as s:
        s.add(version)
        s.commit()
        s.refresh(version)
    if datasets.on_dataset is not None:
        datasets.on_dataset(version, arrays)
    return version


def _class_index(label: int | str, classes: Sequence[str]) -> int | None:
    if isinstance(label, str):
        return list(classes).index(label) if label in classes else None
    if isinstance(label, bool):
        return None
    return label if label >= 0 and (not classes or label < len(classes)) else None


def _more(n: int) -> str:
    return f" (and {n - 5} more)" if n > 5 else ""
