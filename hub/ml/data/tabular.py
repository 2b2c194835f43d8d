"""Tabular dataset files read in bounded pieces: CSV block by block, Parquet batch by batch.

Both readers hand arrow record batches to one ``_TableBuilder``: it checks each feature
column (a number type, no missing or non-finite value) and copies it straight into one
float32 array reserved for the rows expected, and keeps the label column. What stays in
memory is that array, the label and pyarrow's read-ahead (up to 32 CSV blocks), whatever
the size of the file (``python -m bench dataset_files`` measures it).

CSV has no types: pyarrow infers them from the first block. When a later block holds a
float in a column inferred as integers (or bools), the file is read again with that
column as float64; any other value that is not a number is refused with its row.

Errors are ``DatasetFileError`` (hub/ml/data/checks.py); rows are 1-based data rows.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from hub.ml.data.checks import (
    TABLE_BASE,
    DatasetFileError,
    first_non_number,
    nonfinite_detail,
    where,
)

__all__ = [
    "CSV_BLOCK_BYTES",
    "PARQUET_BATCH_ROWS",
    "Table",
    "read_csv",
    "read_parquet",
]

CSV_BLOCK_BYTES = 2**20  # bytes parsed at a time; pyarrow reads up to 32 blocks ahead
PARQUET_BATCH_ROWS = 64 * 1024  # rows per batch read from a Parquet row group
ROOM = 1.05  # the rows reserved for a CSV, over those its first block promises
MAX_LISTED_COLUMNS = 20  # columns named in a message before "... (N in all)"

# pyarrow names the row (counting the header as row 1) when it reads with one thread.
_CONVERSION = re.compile(
    r"In CSV column #(\d+): (?:Row #(\d+): )?CSV conversion error to \w+: invalid value '(.*)'",
    re.DOTALL,
)


@dataclass(frozen=True)
class Table:
    """A tabular file's contents: features as float32 rows and the label's values.

    Attributes:
        x: float32 [rows, features], C-contiguous.
        label: the label's values, no nulls: numbers as numpy, text as arrow (what
            ``encode_label`` takes).
        label_name: the label column.
        features: one {"name", "dtype"} per feature column, in file order; dtype as read.
    """

    x: npt.NDArray[np.float32]
    label: npt.NDArray[Any] | pa.ChunkedArray
    label_name: str
    features: list[dict[str, str]]


class _Widen(Exception):
    """Internal: a CSV column inferred as integers or bools holds a float further on."""

    def __init__(self, column: str):
        super().__init__(column)
        self.column = column


def _column_list(names: list[str]) -> str:
    shown = ", ".join(repr(n) for n in names[:MAX_LISTED_COLUMNS])
    more = len(names) - MAX_LISTED_COLUMNS
    return f"{shown}, ... ({len(names)} in all)" if more > 0 else shown


def _check_header(names: list[str], label: str | None) -> str:
    """The label column, once the header is known to have it and usable names.

    Returns:
        ``label``, now known to be a column.

    Raises:
        DatasetFileError: no label given, the label is not a column, a column without a
            name or with a name used twice, or no column besides the label.
    """
    if label is None:
        raise DatasetFileError(
            f"name the label column: the columns are {_column_list(names)}", column=None
        )
    for i, name in enumerate(names):
        if not name:
            raise DatasetFileError(
                f"column {i + 1} has no name in the header; name every column"
                " (a pandas index written by to_csv has none: write with index=False)"
            )
    twice = [n for n, count in Counter(names).items() if count > 1]
    if twice:
        raise DatasetFileError(f"the column name {twice[0]!r} is used twice", column=twice[0])
    if label not in names:
        raise DatasetFileError(
            f"there is no column {label!r}; the columns are {_column_list(names)}", column=label
        )
    if len(names) == 1:
        raise DatasetFileError(
            f"the file has no feature columns besides the label {label!r}", column=label
        )
    return label


def _is_number_type(kind: pa.DataType) -> bool:
    return bool(
        pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind)
    )


def _refuse_non_number(column: pa.Array, name: str, first_row: int) -> None:
    if pa.types.is_null(column.type):
        raise DatasetFileError(
            f"{where(name, first_row, TABLE_BASE)}: the value is missing",
            column=name,
            row=first_row,
        )
    null = int(pc.index(pc.is_null(column), True).as_py()) if column.null_count else None
    bad = first_non_number(column)
    if bad is not None and (null is None or bad[0] < null):
        row = first_row + bad[0]
        raise DatasetFileError(
            f"{where(name, row, TABLE_BASE)}: {bad[1]!r} is not a number", column=name, row=row
        )
    if null is not None:
        row = first_row + null
        raise DatasetFileError(
            f"{where(name, row, TABLE_BASE)}: the value is missing", column=name, row=row
        )
    raise DatasetFileError(
        f"column {name!r} holds {column.type} values, not numbers (int, float or bool)",
        column=name,
    )


def _copy_feature(column: pa.Array, name: str, first_row: int, out: npt.NDArray[Any]) -> None:
    """Copy one feature column of a batch into ``out`` (float32), refused if not numbers."""
    if not _is_number_type(column.type) or column.null_count:
        _refuse_non_number(column, name, first_row)
    source = np.asarray(column.to_numpy(zero_copy_only=False))  # a view when it can be
    with np.errstate(over="ignore"):
        np.copyto(out, source, casting="unsafe")
    if source.dtype.kind == "f":
        finite = np.isfinite(out)
        if not finite.all():
            i = int(np.argmin(finite))
            row = first_row + i
            detail = nonfinite_detail(source[i])
            raise DatasetFileError(
                f"{where(name, row, TABLE_BASE)}: {detail}", column=name, row=row
            )


class _TableBuilder:
    """Checks record batches one by one, copying features straight into one float32 array.

    The array is reserved for the rows expected (Parquet knows them; a CSV reader estimates
    them from its first block) and left uncommitted until written; it is trimmed in place at
    the end (a large block shrinks by remapping its pages, not by copying). Only when more
    rows come than reserved are they copied into a larger array.
    """

    def __init__(self, schema: pa.Schema, label: str, dtypes: dict[str, str]):
        self._label = label
        self._names = [n for n in schema.names if n != label]
        self._features = [{"name": n, "dtype": dtypes[n]} for n in self._names]
        self._label_type = schema.field(label).type
        self._x = np.empty((0, len(self._names)), dtype=np.float32)
        self._labels: list[pa.Array] = []
        self.rows = 0

    def reserve(self, rows: int) -> None:
        """Make room for ``rows`` rows in all (a hint: more may come, or fewer)."""
        if rows > len(self._x):
            # np.empty, not ndarray.resize: resize would write zeros to every new page.
            x = np.empty((rows, len(self._names)), dtype=np.float32)
            x[: self.rows] = self._x[: self.rows]
            self._x = x

    def add(self, batch: pa.RecordBatch) -> None:
        """Check one batch and keep it.

        Raises:
            DatasetFileError: a feature value that is not a finite number, a missing label.
        """
        n = batch.num_rows
        if n == 0:
            return
        if self.rows + n > len(self._x):
            self.reserve(max(self.rows + n, len(self._x) * 3 // 2))
        first_row = self.rows + TABLE_BASE
        rows = self._x[self.rows : self.rows + n]
        for j, name in enumerate(self._names):
            _copy_feature(batch.column(name), name, first_row, rows[:, j])
        del rows
        labels = batch.column(self._label)
        if labels.null_count:
            row = first_row + int(pc.index(pc.is_null(labels), True).as_py())
            raise DatasetFileError(
                f"{where(self._label, row, TABLE_BASE)}: the label is missing",
                column=self._label,
                row=row,
            )
        self._labels.append(labels)
        self.rows += n

    def finish(self, *, parse_text: bool) -> Table:
        """The rows kept: features trimmed to their count, the label as numbers or text.

        Args:
            parse_text: True for CSV, where text that parses as numbers is numbers.
        """
        x, self._x = self._x, np.empty((0, len(self._names)), dtype=np.float32)
        # Shrinking needs no copy and writes nothing; no view of x exists to be left dangling.
        x.resize((self.rows, len(self._names)), refcheck=False)
        column = pa.chunked_array(self._labels, type=self._label_type)
        self._labels = []
        label = _label_values(column, self._label, parse_text=parse_text)
        return Table(x=x, label=label, label_name=self._label, features=self._features)


def _dtype_name(kind: pa.DataType) -> str:
    try:
        return str(np.dtype(kind.to_pandas_dtype()).name)
    except (NotImplementedError, TypeError):
        return str(kind)


def _csv_options(column_types: dict[str, pa.DataType], on_invalid: Any) -> dict[str, Any]:
    return {
        # One thread: rows come in order and pyarrow names the row of a ragged line.
        "read_options": pacsv.ReadOptions(block_size=CSV_BLOCK_BYTES, use_threads=False),
        "parse_options": pacsv.ParseOptions(invalid_row_handler=on_invalid),
        "convert_options": pacsv.ConvertOptions(
            column_types=column_types,
            null_values=[""],  # only an empty cell is missing: "n/a" is text, refused
            strings_can_be_null=True,
            quoted_strings_can_be_null=True,
        ),
    }


class _InvalidRows:
    """pyarrow's ``invalid_row_handler``: remembers the ragged line and stops the read."""

    def __init__(self) -> None:
        self.row: pacsv.InvalidRow | None = None

    def __call__(self, row: pacsv.InvalidRow) -> str:
        self.row = row
        return "error"


def _csv_failure(e: pa.ArrowException, invalid: _InvalidRows) -> DatasetFileError:
    """A pyarrow CSV error as the user should read it (the caller chains ``e``)."""
    bad = invalid.row
    if bad is not None:
        # pyarrow counts the header as row 1.
        row = None if bad.number is None else bad.number - 1
        at = "a row" if row is None else f"row {row}"
        return DatasetFileError(
            f"{at} has {bad.actual_columns} fields where the header has {bad.expected_columns}:"
            f" {bad.text[:80]!r}",
            row=row,
        )
    message = str(e)
    if message == "Empty CSV file":
        return DatasetFileError("the file is empty: a CSV file needs a header row and data rows")
    if "straddling" in message:
        return DatasetFileError(
            f"a CSV row is longer than {CSV_BLOCK_BYTES // 2**20} MiB, or a quoted value holds"
            " a line break: the file cannot be read"
        )
    return DatasetFileError(f"the CSV file could not be read: {message}")


def _read_csv_once(
    path: Path, label: str | None, column_types: dict[str, pa.DataType]
) -> _TableBuilder:
    """Stream the CSV through a builder; raises ``_Widen`` when a column must be re-read."""
    invalid = _InvalidRows()
    with pa.OSFile(str(path)) as source:  # a file object: no decompression by file name
        try:
            reader = pacsv.open_csv(source, **_csv_options(column_types, invalid))
        except pa.ArrowException as e:
            raise _csv_failure(e, invalid) from e
        label = _check_header(reader.schema.names, label)
        dtypes = {f.name: _dtype_name(f.type) for f in reader.schema}
        builder = _TableBuilder(reader.schema, label, dtypes)
        size = path.stat().st_size
        while True:
            try:
                batch = reader.read_next_batch()
            except StopIteration:
                return builder
            except pa.ArrowException as e:
                raise _conversion_failure(e, reader.schema, invalid) from e
            if builder.rows == 0:  # the first block: rows per block, blocks per file
                builder.reserve(int(size / CSV_BLOCK_BYTES * batch.num_rows * ROOM) + 1)
            builder.add(batch)


def _conversion_failure(
    e: pa.ArrowException, schema: pa.Schema, invalid: _InvalidRows
) -> Exception:
    """A value a later block could not convert to its column's type: widen, or say where."""
    found = _CONVERSION.search(str(e))
    if found is None or invalid.row is not None:
        return _csv_failure(e, invalid)
    name, value = schema.names[int(found[1])], found[3]
    kind = schema.field(name).type
    widenable = pa.types.is_integer(kind) or pa.types.is_boolean(kind)
    if widenable and first_non_number(pa.array([value])) is None:
        return _Widen(name)
    if found[2] is None:
        return DatasetFileError(f"column {name!r}: {value!r} is not a number", column=name)
    row = int(found[2]) - 1  # pyarrow counts the header as row 1
    return DatasetFileError(
        f"{where(name, row, TABLE_BASE)}: {value!r} is not a number", column=name, row=row
    )


def read_csv(path: Path, label: str | None) -> Table:
    """Read a CSV file with a header row, block by block.

    Args:
        path: the file.
        label: the label column; every other column is a feature.

    Returns:
        The features as float32; the label as numbers when every value parses as one
        (CSV has no types), else as text.

    Raises:
        DatasetFileError: anything that keeps the file from being a dataset.
    """
    column_types: dict[str, pa.DataType] = {} if label is None else {label: pa.string()}
    while True:  # at most once more per column widened from integers to float64
        try:
            builder = _read_csv_once(path, label, column_types)
        except _Widen as w:
            column_types[w.column] = pa.float64()
            continue
        if builder.rows == 0:
            raise DatasetFileError("the CSV file has a header but no data rows")
        return builder.finish(parse_text=True)


def _pandas_index_columns(schema: pa.Schema) -> set[str]:
    metadata = schema.pandas_metadata or {}
    return {c for c in metadata.get("index_columns", []) if isinstance(c, str)}


def read_parquet(path: Path, label: str | None) -> Table:
    """Read a Parquet file batch by batch, row group after row group.

    A pandas index stored as a column (``__index_level_0__``) is not a feature.

    Args:
        path: the file.
        label: the label column; every other column is a feature.

    Returns:
        The features as float32; the label as numbers or text, by its Parquet type.

    Raises:
        DatasetFileError: anything that keeps the file from being a dataset.
    """
    try:
        with pq.ParquetFile(path) as parquet:
            schema = parquet.schema_arrow
            index = _pandas_index_columns(schema)
            names = [n for n in schema.names if n not in index]
            label = _check_header(names, label)
            schema = pa.schema([schema.field(n) for n in names])
            dtypes = {f.name: _dtype_name(f.type) for f in schema}
            builder = _TableBuilder(schema, label, dtypes)
            builder.reserve(parquet.metadata.num_rows)
            for batch in parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=names):
                builder.add(batch)
    except (pa.ArrowException, OSError) as e:
        raise DatasetFileError(f"the Parquet file could not be read: {e}") from e
    if builder.rows == 0:
        raise DatasetFileError("the Parquet file has no rows")
    return builder.finish(parse_text=False)


def _as_numbers(label: pa.ChunkedArray, number: pa.DataType) -> npt.NDArray[Any]:
    """Cast chunk by chunk into one numpy array: no second whole copy in arrow."""
    out = np.empty(len(label), dtype=number.to_pandas_dtype())
    at = 0
    for chunk in label.chunks:
        out[at : at + len(chunk)] = chunk.cast(number).to_numpy(zero_copy_only=False)
        at += len(chunk)
    return out


def _label_values(
    label: pa.ChunkedArray, name: str, *, parse_text: bool
) -> npt.NDArray[Any] | pa.ChunkedArray:
    """The label column as numbers (numpy) or text (arrow), for ``encode_label``.

    Args:
        label: the label column, without nulls.
        name: its name, for messages.
        parse_text: True for CSV, where text that parses as numbers is numbers.

    Raises:
        DatasetFileError: the column is neither numbers nor text (a date, a list...).
    """
    kind = label.type
    if pa.types.is_dictionary(kind):  # a pandas category
        label, kind = label.cast(kind.value_type), kind.value_type
    if _is_number_type(kind):
        return _as_numbers(label, kind)
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        raise DatasetFileError(
            f"the label column {name!r} holds {kind} values: a label must be numbers or text",
            column=name,
        )
    if parse_text:
        for number in (pa.int64(), pa.float64()):
            try:
                return _as_numbers(label, number)
            except pa.ArrowInvalid:
                continue
    return label
