"""Rows of a dataset file for virtual devices to infer on: the operator's own data.

:func:`load_rows` reads a labelled file, a CSV with a header row (``label`` names the
label column; every other column is a feature and must be a number) or an NPZ with arrays
``x`` ``[N, *row_shape]`` and ``y`` ``[N]`` (the format ``edgefleet datasets upload``
takes, and what ``GET /datasets/{ref}/file`` gives back for an NPZ upload), into a
:class:`RowSource`. Rows stay in file order, so row ``i`` here is row ``i`` at the hub.

Labels are kept as the hub names them (hub/ml/data/checks.py), so they can be matched
with a model's classes (its manifest's ``classes``, which the hub sorts) whatever the
order: text as it is; numbers as numbers, named ``"3"`` for 3 or 3.0 and ``"2.5"`` for
2.5 when they are classes. A classifier's label is then looked up by name, a regressor's
is the value itself.

Each device plays the rows through a :class:`RowDeck` of its own: a seeded shuffle of
every row, dealt a batch at a time and shuffled again for the next pass, so over whole
passes every row counts equally (the device's live accuracy is then the rows' accuracy
exactly), and devices with different seeds see different orders.

This module reads files with numpy and the standard library only: the simulator imports
neither the hub nor its dependencies (pyproject's import contracts).

Exceptions::

    ValueError
    └── RowsError     the file cannot be rows for the simulator (one line: file, column, row)
"""

from __future__ import annotations

import csv
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["RowDeck", "RowSource", "RowsError", "load_rows"]

MAX_LISTED = 20  # columns named in an error before "..."
FLOAT32_MAX = float(np.finfo(np.float32).max)  # a feature value beyond it is refused

FloatRows = npt.NDArray[np.float32]


class RowsError(ValueError):
    """A rows file the simulator cannot play; the message names the file and the fault."""


@dataclass(frozen=True)
class RowSource:
    """Labelled rows from a file.

    Attributes:
        x: float32 ``[N, *row_shape]``, every value finite.
        labels: ``[N]``: class names (a unicode array) when the label is text, else the
            numbers as float64 (a regressor's targets, or classes named by their value).
        name: the file's name, for messages.
        label: the label column (CSV) or array (NPZ).
    """

    x: FloatRows
    labels: npt.NDArray[Any]
    name: str
    label: str

    def __post_init__(self) -> None:
        if len(self.x) == 0 or self.labels.shape != (len(self.x),):
            raise RowsError(f"{self.name}: x {self.x.shape} and labels {self.labels.shape} differ")

    def __len__(self) -> int:
        return len(self.x)

    @property
    def row_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.x.shape[1:])

    @property
    def text_labels(self) -> bool:
        return self.labels.dtype.kind == "U"

    def subset(self, indices: npt.ArrayLike) -> RowSource:
        """The rows at ``indices`` (e.g. a model's hold-out), in that order.

        Raises:
            RowsError: an index outside the rows, or none at all.
        """
        idx = np.asarray(indices, dtype=np.int64)
        if idx.ndim != 1 or len(idx) == 0 or idx.min() < 0 or idx.max() >= len(self):
            raise RowsError(f"{self.name}: row indices must be within 0..{len(self) - 1}")
        return RowSource(self.x[idx], self.labels[idx], self.name, self.label)

    def class_names(self) -> npt.NDArray[np.str_]:
        """Each row's label as the hub names a class: text as is, 3.0 as ``"3"``."""
        if self.text_labels:
            return self.labels
        return np.array([_class_name(v) for v in self.labels.tolist()], dtype=np.str_)

    def describe(self) -> str:
        """One line: rows, row shape and the labels, as an operator reads it."""
        shape = "x".join(map(str, self.row_shape))
        if self.text_labels or _integral(self.labels):
            kinds = f"{len(np.unique(self.class_names()))} distinct labels"
        else:
            kinds = f"values {self.labels.min():.4g}..{self.labels.max():.4g}"
        return f"{len(self)} rows [{shape}] of {self.name}, label {self.label!r}: {kinds}"


class RowDeck:
    """One device's order of play: seeded shuffles of every row, pass after pass.

    Args:
        rows: how many rows there are.
        seed: this device's seed.
        passes: stop after this many passes over the rows (None: never stop).
    """

    def __init__(self, rows: int, seed: int, passes: int | None = None) -> None:
        if rows < 1 or (passes is not None and passes < 1):
            raise ValueError(f"need rows >= 1 and passes >= 1 or None, got {rows}, {passes}")
        self._rng = np.random.default_rng(seed)
        self._rows = rows
        self.passes = passes
        self.passes_done = 0
        self._order = self._rng.permutation(rows)
        self._pos = 0

    @property
    def finished(self) -> bool:
        return self.passes is not None and self.passes_done >= self.passes

    def peek(self, n: int) -> npt.NDArray[np.int64]:
        """The next up to ``n`` row indices of this pass (empty once finished)."""
        if self.finished:
            return np.zeros(0, dtype=np.int64)
        return self._order[self._pos : self._pos + n]

    def advance(self, n: int) -> None:
        """Those rows were played: move on (a new shuffle at the end of a pass)."""
        self._pos += n
        if self._pos >= self._rows:
            self.passes_done += 1
            self._order = self._rng.permutation(self._rows)
            self._pos = 0


def load_rows(path: Path, label: str | None = None) -> RowSource:
    """Read a CSV or NPZ file of labelled rows (module docstring).

    Args:
        path: the file; ``.npz`` (or a zip's first bytes) is an NPZ, anything else a CSV.
        label: the label column of a CSV (required); for an NPZ the label array, ``y`` by
            default.

    Raises:
        RowsError: unreadable, no such label, a feature that is not a number, a missing
            or non-finite value, no rows; the message names the file, column and row.
    """
    path = Path(path)
    try:
        with path.open("rb") as f:
            head = f.read(4)
    except OSError as e:
        raise RowsError(f"{path}: cannot read: {e.strerror or e}") from e
    if head.startswith(b"PK\x03\x04") or path.suffix.lower() == ".npz":
        return _load_npz(path, label or "y")
    if label is None:
        raise RowsError(f"{path.name}: name the label column of a CSV (--label COL)")
    return _load_csv(path, label)


def _load_csv(path: Path, label: str) -> RowSource:
    name = path.name
    try:
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None:
                raise RowsError(f"{name}: the file is empty")
            lines = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise RowsError(f"{name}: not a readable CSV file: {e}") from e
    if label not in header:
        raise RowsError(f"{name}: there is no column {label!r}; the columns are {_list(header)}")
    if len(header) < 2:
        raise RowsError(f"{name}: no feature columns besides the label {label!r}")
    lines = [line for line in lines if line]  # a blank line is no row
    if not lines:
        raise RowsError(f"{name}: the file has no rows")
    for i, line in enumerate(lines):
        if len(line) != len(header):
            raise RowsError(
                f"{name}: row {i + 1} has {len(line)} values where the header has {len(header)}"
            )
    columns = list(zip(*lines, strict=True))
    at = header.index(label)
    features = [j for j in range(len(header)) if j != at]
    x = np.empty((len(lines), len(features)), dtype=np.float32)
    for k, j in enumerate(features):
        x[:, k] = _numbers(columns[j], name, header[j])
    return RowSource(x, _csv_labels(columns[at], name, label), name, label)


def _numbers(texts: tuple[str, ...], name: str, column: str) -> npt.NDArray[np.float64]:
    """A feature column as finite numbers; the first value that is not one is named."""
    try:
        values = np.array(texts, dtype=np.float64)
    except ValueError:
        values = None
    if values is not None and np.isfinite(values).all() and np.abs(values).max() <= FLOAT32_MAX:
        return values
    for i, text in enumerate(texts):
        try:
            v = float(text)
        except ValueError:
            what = "is empty (a missing value)" if not text.strip() else "is not a number"
            raise RowsError(f"{name}: column {column!r} row {i + 1}: {text!r} {what}") from None
        if not abs(v) <= FLOAT32_MAX:
            raise RowsError(f"{name}: column {column!r} row {i + 1}: {text!r} is not finite")
    raise AssertionError("unreachable: a value failed as a column but not alone")


def _csv_labels(texts: tuple[str, ...], name: str, column: str) -> npt.NDArray[Any]:
    """Numbers when every value reads as one (as the hub reads a CSV label), else text."""
    for i, text in enumerate(texts):
        if text == "":
            raise RowsError(f"{name}: column {column!r} row {i + 1}: the label is missing")
    try:
        values = np.array(texts, dtype=np.float64)
    except ValueError:
        return np.array(texts, dtype=np.str_)
    if not np.isfinite(values).all():
        i = int(np.argmin(np.isfinite(values)))
        raise RowsError(f"{name}: column {column!r} row {i + 1}: {texts[i]!r} is not finite")
    return values


def _load_npz(path: Path, label: str) -> RowSource:
    name = path.name
    try:
        with path.open("rb") as f, np.load(f, allow_pickle=False) as npz:
            if not hasattr(npz, "files"):
                raise RowsError(f"{name}: a single array, not an npz holding x and {label}")
            missing = [a for a in ("x", label) if a not in npz.files]
            if missing:
                raise RowsError(
                    f"{name}: no array {missing[0]!r} (it holds {_list(npz.files) or 'none'})"
                )
            x, y = np.asarray(npz["x"]), np.asarray(npz[label])
    except RowsError:
        raise
    except ValueError as e:
        if "allow_pickle" in str(e):
            raise RowsError(f"{name}: holds Python objects, which are never loaded") from e
        raise RowsError(f"{name}: not a readable npz file: {e}") from e
    except (OSError, EOFError, zipfile.BadZipFile) as e:
        raise RowsError(f"{name}: not a readable npz file: {e}") from e
    if x.ndim < 2 or x.dtype.kind not in "biuf" or len(x) == 0:
        raise RowsError(f"{name}: x must hold numbers [N, *row_shape], got {x.dtype} {x.shape}")
    if y.shape != (len(x),):
        raise RowsError(f"{name}: {label} has shape {list(y.shape)}; x has {len(x)} rows")
    with np.errstate(over="ignore"):
        x32 = np.ascontiguousarray(x, dtype=np.float32)
    finite = np.isfinite(x32.reshape(len(x32), -1)).all(axis=1)
    if not finite.all():
        raise RowsError(f"{name}: x[{int(np.argmin(finite))}] holds a value that is not finite")
    return RowSource(x32, _npz_labels(y, name, label), name, label)


def _npz_labels(y: npt.NDArray[Any], name: str, label: str) -> npt.NDArray[Any]:
    if y.dtype.kind in "US":
        return y.astype(np.str_)
    if y.dtype.kind == "b":  # the hub names bool classes False and True
        return np.where(y, "True", "False").astype(np.str_)
    if y.dtype.kind not in "iuf":
        raise RowsError(f"{name}: {label} holds {y.dtype} values: labels are numbers or text")
    values = y.astype(np.float64)
    if not np.isfinite(values).all():
        raise RowsError(f"{name}: {label}[{int(np.argmin(np.isfinite(values)))}] is not finite")
    return values


def _class_name(value: float) -> str:
    """A number as the hub names the class it stands for: 3.0 is ``"3"``."""
    return str(int(value)) if float(value).is_integer() else str(value)


def _integral(values: npt.NDArray[np.float64]) -> bool:
    return bool(np.all(np.floor(values) == values)) and len(np.unique(values)) <= 100


def _list(names: list[str]) -> str:
    shown = ", ".join(repr(n) for n in names[:MAX_LISTED])
    return shown + (f", ... ({len(names)} in all)" if len(names) > MAX_LISTED else "")
