"""An operator's dataset file (CSV, Parquet or NPZ) read into canonical arrays and a schema.

``read_dataset(path, fmt, label=..., task=...)`` reads a file on disk, never one bytes
object: CSV through pyarrow's streaming reader block by block, Parquet batch by batch
(hub/ml/data/tabular.py), NPZ member by member. It returns a ``ParsedDataset``: ``x``
float32 ``[N, *row_shape]``, ``y`` (int64 indices into ``schema["classes"]`` or float32
values) and the schema of docs/adr/0014. ``guess_format`` names a file's format from its
first bytes and its name. No DB, no HTTP: the caller stores what this returns.

Every refusal is a ``DatasetFileError`` whose detail is a sentence for the user, with the
column and row at fault where there is one; pyarrow, numpy and zip errors are translated
here and chained. Rows are 1-based data rows (header excluded) for CSV and Parquet
("column 'temp' row 17") and 0-based indices for NPZ ("x[16]").

Exceptions::

    ValueError
    └── DatasetFileError(detail, column, row)   the file cannot be a dataset, and where
"""

from __future__ import annotations

import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from hub.ml.data.checks import (
    NPZ_BASE,
    TABLE_BASE,
    TASKS,
    DatasetFileError,
    encode_label,
    nonfinite_detail,
)
from hub.ml.data.tabular import read_csv, read_parquet

__all__ = [
    "FORMATS",
    "KINDS",
    "TASKS",
    "DatasetFileError",
    "ParsedDataset",
    "guess_format",
    "read_dataset",
]

FORMATS = ("csv", "parquet", "npz")
_NAMES = {"csv": "CSV", "parquet": "Parquet", "npz": "npz"}  # as messages name them
KINDS = ("tabular", "image", "window")
NPZ_CHECK_ROWS = 4096  # rows of x checked for non-finite values at a time (bounds the mask)

_MAGIC = ((b"PK\x03\x04", "npz"), (b"PAR1", "parquet"))
_REFUSED_MAGIC = (
    (b"\x1f\x8b", "the file is gzip-compressed: upload it uncompressed"),
    (b"\x93NUMPY", "the file is a single .npy array: save x and y together with numpy.savez"),
)
_EXTENSIONS = {".csv": "csv", ".txt": "csv", ".parquet": "parquet", ".pq": "parquet", ".npz": "npz"}
# The kinds x of each rank may be; the first is the default.
_NPZ_KINDS = {2: ("tabular",), 3: ("image", "window"), 4: ("image",)}


@dataclass(frozen=True)
class ParsedDataset:
    """A dataset file's canonical arrays and schema.

    Attributes:
        x: float32 ``[N, *row_shape]``, C-contiguous.
        y: int64 indices into ``schema["classes"]`` (classification) or float32 values
            (regression), shape ``[N]``.
        schema: {"kind", "task", "label", "features": [{"name", "dtype"}], "classes",
            "row_shape", "rows", "task_inferred"} (docs/adr/0014).
    """

    x: npt.NDArray[np.float32]
    y: npt.NDArray[Any]
    schema: dict[str, Any]

    def __post_init__(self) -> None:
        rows = self.schema["rows"]
        if self.x.shape[0] != rows or self.y.shape != (rows,):
            raise ValueError(f"x {self.x.shape} and y {self.y.shape} do not hold {rows} rows")


def guess_format(filename: str, head: bytes) -> str:
    """A file's format: by its first bytes, else by its name's extension, else CSV.

    Args:
        filename: the name the file was uploaded under.
        head: the file's first bytes (a few KiB is plenty).

    Returns:
        One of FORMATS.

    Raises:
        DatasetFileError: a compressed or single-array file, or binary data of no known
            format.
    """
    for magic, fmt in _MAGIC:
        if head.startswith(magic):
            return fmt
    for magic, detail in _REFUSED_MAGIC:
        if head.startswith(magic):
            raise DatasetFileError(detail)
    extension = PurePath(filename).suffix.lower()
    if extension in _EXTENSIONS:
        return _EXTENSIONS[extension]
    if b"\x00" in head:
        raise DatasetFileError(
            f"the format of {filename!r} is unknown: upload a CSV, Parquet or NPZ file"
        )
    return "csv"


def read_dataset(
    path: Path,
    fmt: str,
    *,
    label: str | None = None,
    task: str | None = None,
    min_rows: int = 10,
    max_classes: int = 100,
) -> ParsedDataset:
    """Read a dataset file into float32 features, encoded labels and a schema.

    Args:
        path: the file on disk.
        fmt: one of FORMATS (see ``guess_format``).
        label: the label column (required for CSV and Parquet); for NPZ the array holding
            the labels, "y" by default.
        task: "classification" or "regression"; None infers it from the label.
        min_rows: the fewest rows a dataset may have.
        max_classes: the most classes a classification label may have.

    Returns:
        The canonical arrays and their schema.

    Raises:
        DatasetFileError: the file cannot be a dataset; the detail says why and where.
    """
    if fmt not in FORMATS:
        raise DatasetFileError(f"unknown format {fmt!r}: expected one of {', '.join(FORMATS)}")
    if task is not None and task not in TASKS:
        raise DatasetFileError(f"unknown task {task!r}: expected one of {', '.join(TASKS)}")
    try:
        if fmt == "npz":
            return _read_npz(path, label or "y", task, min_rows, max_classes)
        return _read_table(path, fmt, label, task, min_rows, max_classes)
    except DatasetFileError:
        raise
    except (pa.ArrowException, OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        raise DatasetFileError(f"the {_NAMES[fmt]} file could not be read: {e}") from e


def _check_rows(rows: int, min_rows: int) -> None:
    if rows == 0:
        raise DatasetFileError("the file has no rows")
    if rows < min_rows:
        noun = "row" if rows == 1 else "rows"
        raise DatasetFileError(f"the file has {rows} {noun}: a dataset needs at least {min_rows}")


def _read_table(
    path: Path, fmt: str, label: str | None, task: str | None, min_rows: int, max_classes: int
) -> ParsedDataset:
    table = read_csv(path, label) if fmt == "csv" else read_parquet(path, label)
    name = table.label_name
    _check_rows(len(table.x), min_rows)
    encoded = encode_label(table.label, name, task=task, max_classes=max_classes, base=TABLE_BASE)
    schema = {
        "kind": "tabular",
        "task": encoded.task,
        "label": name,
        "features": table.features,
        "classes": encoded.classes,
        "row_shape": [table.x.shape[1]],
        "rows": len(table.x),
        "task_inferred": encoded.inferred,
    }
    return ParsedDataset(x=table.x, y=encoded.y, schema=schema)


def _npz_member(npz: Any, name: str) -> npt.NDArray[Any]:
    try:
        return np.asarray(npz[name])
    except ValueError as e:
        if "allow_pickle" in str(e):
            raise DatasetFileError(
                f"the array {name!r} holds Python objects, which are never loaded:"
                " save numbers (or text labels) with numpy.savez",
                column=name,
            ) from e
        raise


def _npz_kind(npz: Any, x: npt.NDArray[Any]) -> str:
    kinds = _NPZ_KINDS.get(x.ndim)
    if kinds is None:
        raise DatasetFileError(
            f"x has shape {list(x.shape)}: expected [N, features], [N, H, W], [N, H, W, C]"
            " or [N, T, C]",
            column="x",
        )
    if "kind" not in npz.files:
        return kinds[0]
    member = _npz_member(npz, "kind")
    kind = member.item() if member.ndim == 0 else None
    kind = kind.decode() if isinstance(kind, bytes) else kind
    if kind not in kinds:
        raise DatasetFileError(
            f"the array 'kind' says {kind!r} where x of shape {list(x.shape)} can be"
            f" {' or '.join(repr(k) for k in kinds)}",
            column="kind",
        )
    return str(kind)


def _npz_arrays(path: Path, label: str) -> tuple[npt.NDArray[Any], npt.NDArray[Any], str]:
    """x, the label array and the kind, from an npz file; pickles are never loaded."""
    # Opened here, not by np.load, which leaves the file open when the zip is broken.
    with path.open("rb") as source:
        npz = np.load(source, allow_pickle=False)
        if not isinstance(npz, np.lib.npyio.NpzFile):
            raise DatasetFileError("the file is a single array, not an npz holding x and y")
        with npz:
            missing = [name for name in ("x", label) if name not in npz.files]
            if missing:
                held = ", ".join(repr(f) for f in npz.files) or "no arrays"
                raise DatasetFileError(
                    f"the npz has no array {missing[0]!r}: it holds {held}", column=missing[0]
                )
            x, y = _npz_member(npz, "x"), _npz_member(npz, label)
            return x, y, _npz_kind(npz, x)


def _npz_x(x: npt.NDArray[Any]) -> npt.NDArray[np.float32]:
    """x as float32, C-contiguous, refused if it is not numbers or not finite."""
    if x.dtype.kind not in "biuf":
        raise DatasetFileError(f"x holds {x.dtype} values: x must hold numbers", column="x")
    with np.errstate(over="ignore"):
        x32 = np.ascontiguousarray(x, dtype=np.float32)
    if x.dtype.kind != "f":
        return x32
    for start in range(0, len(x32), NPZ_CHECK_ROWS):
        rows = x32[start : start + NPZ_CHECK_ROWS].reshape(-1, int(np.prod(x.shape[1:])))
        finite = np.isfinite(rows)
        if finite.all():
            continue
        flat = int(np.argmin(finite))
        i, j = divmod(flat, rows.shape[1])
        row = start + i
        value = x[row].reshape(-1)[j]
        column = f"x{j}" if x.ndim == 2 else "x"
        raise DatasetFileError(
            f"x[{row}]: {nonfinite_detail(value)}: every value of x must be a finite number",
            column=column,
            row=row,
        )
    return x32


def _npz_label_values(y: npt.NDArray[Any], name: str, rows: int) -> Any:
    if y.shape != (rows,):
        raise DatasetFileError(
            f"{name} has shape {list(y.shape)} where x has {rows} rows: expected [{rows}]"
            " (one label per row)",
            column=name,
        )
    if y.dtype.kind == "U":
        return pa.array(y)
    if y.dtype.kind == "S":
        return pa.array(y).cast(pa.string())
    return y


def _features(x: npt.NDArray[Any], kind: str, dtype: str) -> list[dict[str, str]]:
    """Feature names: x0.. per tabular column, c0.. per channel of an image or a window."""
    if kind == "tabular":
        return [{"name": f"x{j}", "dtype": dtype} for j in range(x.shape[1])]
    channels = x.shape[-1] if (kind == "window" or x.ndim == 4) else 1
    return [{"name": f"c{j}", "dtype": dtype} for j in range(channels)]


def _read_npz(
    path: Path, label: str, task: str | None, min_rows: int, max_classes: int
) -> ParsedDataset:
    x_source, y_source, kind = _npz_arrays(path, label)
    _check_rows(len(x_source), min_rows)
    values = _npz_label_values(y_source, label, len(x_source))
    x = _npz_x(x_source)
    encoded = encode_label(values, label, task=task, max_classes=max_classes, base=NPZ_BASE)
    schema = {
        "kind": kind,
        "task": encoded.task,
        "label": label,
        "features": _features(x_source, kind, x_source.dtype.name),
        "classes": encoded.classes,
        "row_shape": list(x.shape[1:]),
        "rows": len(x),
        "task_inferred": encoded.inferred,
    }
    return ParsedDataset(x=x, y=encoded.y, schema=schema)
