"""The checks every dataset file passes, whatever its format, and the error they raise.

hub/ml/data/files.py reads a file; this module says whether a column holds numbers, where
the first value that is not one is, and turns the label column into ``y`` and its task
(classification or regression, given or inferred from the values).

Rows in messages and in ``DatasetFileError.row``: for CSV and Parquet the 1-based data row,
the header excluded ("column 'temp' row 17"); for NPZ the 0-based index ("y[16]").

Exceptions::

    ValueError
    └── DatasetFileError(detail, column, row)   the file cannot be a dataset, and where
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeAlias

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

__all__ = [
    "TASKS",
    "DatasetFileError",
    "Label",
    "encode_label",
    "first_non_number",
    "nonfinite_detail",
    "where",
]

TASKS = ("classification", "regression")
TABLE_BASE = 1  # rows of a CSV or Parquet file count from 1 (data rows, header excluded)
NPZ_BASE = 0  # rows of an NPZ array are indices from 0

ArrowValues: TypeAlias = pa.Array | pa.ChunkedArray  # one column, in one piece or several


class DatasetFileError(ValueError):
    """A file that cannot be read as a dataset, with where the problem is.

    Attributes:
        detail: a whole sentence for the user, naming the column and row when known.
        column: the column (CSV, Parquet) or array (NPZ) at fault, if one is.
        row: the row at fault, if one is: 1-based data row (header excluded) for CSV and
            Parquet, 0-based index for NPZ.
    """

    def __init__(self, detail: str, *, column: str | None = None, row: int | None = None):
        self.detail = detail
        self.column = column
        self.row = row
        super().__init__(detail)


@dataclass(frozen=True)
class Label:
    """The label column as training wants it.

    Attributes:
        y: int64 indices into ``classes`` (classification) or float32 values (regression).
        classes: the class names, sorted (numbers numerically); None for regression.
        task: "classification" or "regression".
        inferred: True when the task was inferred from the values, not given.
    """

    y: npt.NDArray[Any]
    classes: list[str] | None
    task: str
    inferred: bool


def where(column: str, row: int, base: int) -> str:
    """Where a value is, as the user reads it.

    Args:
        column: the column (tables) or array (NPZ).
        row: the row, already counted from ``base``.
        base: TABLE_BASE (rows from 1) or NPZ_BASE (indices from 0).

    Returns:
        "column 'temp' row 17" for tables, "y[16]" for NPZ.
    """
    return f"column {column!r} row {row}" if base == TABLE_BASE else f"{column}[{row}]"


def nonfinite_detail(value: float) -> str:
    """Why ``value`` (from the file) cannot be a float32 value: missing, infinite or too big."""
    if np.isnan(value):
        return "the value is missing (NaN)"
    if np.isinf(value):
        return f"{float(value)} is not a finite number"
    return f"{float(value)!r} is too large for float32"


def _parses_as_numbers(values: ArrowValues) -> bool:
    try:
        pc.cast(values, pa.float64())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return False
    return True


def _display(values: ArrowValues, index: int) -> str:
    scalar = values[index]
    try:
        return str(pc.cast(scalar, pa.string()).as_py())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return str(scalar.as_py())


def first_non_number(values: ArrowValues) -> tuple[int, str] | None:
    """The first value that is not a number, and its text; nulls are skipped.

    Text is searched by bisection with arrow's own number parser: a column of a million
    rows costs some twenty casts of its prefixes, not a million Python calls.

    Args:
        values: one column (any arrow type).

    Returns:
        (0-based index, the value as text), or None when every non-null value is a number.
    """
    kind = values.type
    if pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind):
        return None
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        valid = pc.is_valid(values)
        first = pc.index(valid, True).as_py()
        return None if first < 0 else (first, _display(values, first))
    if _parses_as_numbers(values):
        return None
    lo, hi = 0, len(values) - 1  # values[: hi + 1] fails to parse; values[:lo] parses
    while lo < hi:
        mid = (lo + hi) // 2
        if _parses_as_numbers(values.slice(0, mid + 1)):
            lo = mid + 1
        else:
            hi = mid
    return lo, str(values[lo].as_py())


def _first_null(values: ArrowValues) -> int | None:
    if values.null_count == 0:
        return None
    return int(pc.index(pc.is_null(values), True).as_py())


def _check_finite(values: npt.NDArray[Any], name: str, base: int) -> None:
    if values.dtype.kind != "f":
        return
    finite = np.isfinite(values)
    if not finite.all():
        i = int(np.argmin(finite))
        row = base + i
        raise DatasetFileError(
            f"{where(name, row, base)}: {nonfinite_detail(values[i])}", column=name, row=row
        )


def encode_label(
    values: npt.NDArray[Any] | ArrowValues,
    name: str,
    *,
    task: str | None,
    max_classes: int,
    base: int,
) -> Label:
    """Check the label column and encode it for ``task`` (inferred when None).

    Inference: text, or integers (bools, integral floats) with at most ``max_classes``
    distinct values and fewer distinct values than half the rows, is classification;
    anything else is regression.

    Args:
        values: numbers as a numpy array, or text as an arrow array.
        name: the label column's name, for messages.
        task: "classification", "regression" or None to infer it.
        max_classes: the most classes a classification label may have.
        base: TABLE_BASE or NPZ_BASE, how rows are counted in messages.

    Returns:
        The encoded label, its classes and task.

    Raises:
        DatasetFileError: a missing or non-finite value, text for regression, too many
            classes, one class only, or a constant regression label.
    """
    if task is not None and task not in TASKS:
        raise DatasetFileError(f"unknown task {task!r}: expected one of {', '.join(TASKS)}")
    if isinstance(values, pa.Array | pa.ChunkedArray):
        return _encode_text(values, name, task, max_classes, base)
    if values.dtype.kind not in "biuf":
        raise DatasetFileError(
            f"the label {name!r} holds {values.dtype} values: a label must be numbers or text",
            column=name,
        )
    _check_finite(values, name, base)
    if task is None:
        task = _infer_numeric_task(values, max_classes)
        inferred = True
    else:
        inferred = False
    if task == "classification":
        return _encode_numeric_classes(values, name, max_classes, inferred)
    return _encode_regression(values, name, base, inferred)


def _distinct_sorted(values: npt.NDArray[Any]) -> npt.NDArray[Any]:
    # Arrow hashes in one pass; np.unique would sort every row.
    return np.sort(pc.unique(pa.array(values)).to_numpy(zero_copy_only=False))


def _is_integral(values: npt.NDArray[Any]) -> bool:
    return values.dtype.kind in "biu" or bool(np.all(np.floor(values) == values))


def _infer_numeric_task(values: npt.NDArray[Any], max_classes: int) -> str:
    if not _is_integral(values):
        return "regression"
    distinct = len(_distinct_sorted(values))
    few = distinct <= max_classes and 2 * distinct < len(values)
    return "classification" if few else "regression"


def _class_name(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _check_class_count(name: str, classes: list[str], max_classes: int, hint: str = "") -> None:
    if len(classes) > max_classes:
        raise DatasetFileError(
            f"the label column {name!r} has {len(classes)} distinct values, more than the"
            f" {max_classes} classes allowed{hint}",
            column=name,
        )
    if len(classes) == 1:
        raise DatasetFileError(
            f"the label column {name!r} has only one class: {classes[0]!r}", column=name
        )


def _encode_numeric_classes(
    values: npt.NDArray[Any], name: str, max_classes: int, inferred: bool
) -> Label:
    distinct = _distinct_sorted(values)
    classes = [_class_name(v) for v in distinct.tolist()]
    _check_class_count(name, classes, max_classes)
    y = np.searchsorted(distinct, values).astype(np.int64, copy=False)
    return Label(y=y, classes=classes, task="classification", inferred=inferred)


def _encode_regression(values: npt.NDArray[Any], name: str, base: int, inferred: bool) -> Label:
    with np.errstate(over="ignore"):
        y = values.astype(np.float32)
    finite = np.isfinite(y)
    if not finite.all():
        i = int(np.argmin(finite))
        detail = nonfinite_detail(values[i])
        raise DatasetFileError(
            f"{where(name, base + i, base)}: {detail}", column=name, row=base + i
        )
    if y.min() == y.max():
        raise DatasetFileError(
            f"the label column {name!r} holds the same value ({_class_name(y[0].item())}) in"
            " every row: there is nothing to learn",
            column=name,
        )
    return Label(y=y, classes=None, task="regression", inferred=inferred)


def _encode_text(
    values: ArrowValues, name: str, task: str | None, max_classes: int, base: int
) -> Label:
    null = _first_null(values)
    if null is not None:
        raise DatasetFileError(
            f"{where(name, base + null, base)}: the label is missing", column=name, row=base + null
        )
    if task == "regression":
        bad = first_non_number(values)
        at = f": {where(name, base + bad[0], base)}: {bad[1]!r} is not a number" if bad else ""
        raise DatasetFileError(
            f"the label column {name!r} holds text, and a regression label must be numeric{at}",
            column=name,
            row=None if bad is None else base + bad[0],
        )
    classes = sorted(pc.unique(values).to_pylist())
    hint = ""
    if task is None and len(classes) > max_classes:
        bad = first_non_number(values)
        if bad is not None and bad[0] > 0:  # numbers first, then text: a stray token?
            at = where(name, base + bad[0], base)
            hint = f"; were they meant as numbers? {at}: {bad[1]!r} is not a number"
    _check_class_count(name, classes, max_classes, hint)
    indices = pc.index_in(values, value_set=pa.array(classes, type=values.type))
    y = np.asarray(indices.to_numpy(zero_copy_only=False), dtype=np.int64)
    return Label(y=y, classes=classes, task="classification", inferred=task is None)
