"""Reading operators' dataset files (hub/ml/data/files.py): real files in tmp_path.

Each refusal is asserted as the user reads it: the sentence, the column and the row.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hub.ml.data.files import (
    FORMATS,
    TASKS,
    DatasetFileError,
    ParsedDataset,
    guess_format,
    read_dataset,
)
from hub.ml.data.tabular import CSV_BLOCK_BYTES

ROWS = 20  # rows of the small files: over the default min_rows of 10


def csv_file(tmp_path: Path, text: str, name: str = "data.csv") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def numbered_rows(n: int = ROWS, label: Any = None) -> list[str]:
    """Rows "i,2i,label" with labels alternating "a"/"b" unless ``label(i)`` says."""
    return [f"{i},{2 * i},{'ab'[i % 2] if label is None else label(i)}" for i in range(n)]


def with_row(rows: list[str], number: int, line: str) -> str:
    """The CSV text of ``rows`` under header "temp,load,y", data row ``number`` (1-based)
    replaced by ``line``."""
    rows = list(rows)
    rows[number - 1] = line
    return "temp,load,y\n" + "\n".join(rows) + "\n"


def refusal(path: Path, fmt: str = "csv", **kwargs: Any) -> DatasetFileError:
    with pytest.raises(DatasetFileError) as caught:
        read_dataset(path, fmt, **kwargs)
    return caught.value


def npz_file(tmp_path: Path, **arrays: Any) -> Path:
    path = tmp_path / "data.npz"
    np.savez(path, **arrays)
    return path


# ---------------------------------------------------------------------------- formats


@pytest.mark.parametrize(
    ("filename", "head", "fmt"),
    [
        ("anything.csv", b"PK\x03\x04rest", "npz"),  # magic bytes before the name
        ("data.bin", b"PAR1\x15\x04", "parquet"),
        ("data.npz", b"not a zip", "npz"),  # no magic: the extension
        ("data.PARQUET", b"x", "parquet"),
        ("Data.CSV", b"a,b\n", "csv"),
        ("export", b"a,b,y\n1,2,3\n", "csv"),  # text without an extension
        ("readings.dat", b"a;b\n", "csv"),
    ],
)
def test_guess_format_by_magic_then_extension_then_text(
    filename: str, head: bytes, fmt: str
) -> None:
    assert guess_format(filename, head) == fmt


@pytest.mark.parametrize(
    ("filename", "head", "detail"),
    [
        ("data.xls", b"\xd0\xcf\x11\xe0\x00\x00", "the format of 'data.xls' is unknown"),
        ("data.csv.gz", b"\x1f\x8b\x08\x00", "the file is gzip-compressed"),
        ("x.npy", b"\x93NUMPY\x01\x00", "the file is a single .npy array"),
    ],
)
def test_guess_format_refuses_what_it_cannot_read(filename: str, head: bytes, detail: str) -> None:
    with pytest.raises(DatasetFileError, match=detail):
        guess_format(filename, head)


def test_an_unknown_format_or_task_is_refused(tmp_path: Path) -> None:
    path = csv_file(tmp_path, "a,y\n1,2\n")
    assert refusal(path, "xlsx", label="y").detail == (
        "unknown format 'xlsx': expected one of csv, parquet, npz"
    )
    assert refusal(path, "csv", label="y", task="ranking").detail == (
        "unknown task 'ranking': expected one of classification, regression"
    )
    assert FORMATS == ("csv", "parquet", "npz")
    assert TASKS == ("classification", "regression")


# ------------------------------------------------------------------------- CSV refusals


@pytest.mark.parametrize(
    ("text", "label", "detail", "column", "row"),
    [
        (
            with_row(numbered_rows(), 1, "0,0,a"),
            None,
            "name the label column: the columns are 'temp', 'load', 'y'",
            None,
            None,
        ),
        (
            with_row(numbered_rows(), 1, "0,0,a"),
            "label",
            "there is no column 'label'; the columns are 'temp', 'load', 'y'",
            "label",
            None,
        ),
        (
            with_row(numbered_rows(), 17, "n/a,32,a"),
            "y",
            "column 'temp' row 17: 'n/a' is not a number",
            "temp",
            17,
        ),
        (
            with_row(numbered_rows(), 5, "4,,b"),
            "y",
            "column 'load' row 5: the value is missing",
            "load",
            5,
        ),
        (
            with_row(numbered_rows(), 6, "5,nan,a"),
            "y",
            "column 'load' row 6: the value is missing (NaN)",
            "load",
            6,
        ),
        (
            with_row(numbered_rows(), 7, "6,-inf,b"),
            "y",
            "column 'load' row 7: -inf is not a finite number",
            "load",
            7,
        ),
        (
            with_row(numbered_rows(), 8, "7,1e300,b"),
            "y",
            "column 'load' row 8: 1e+300 is too large for float32",
            "load",
            8,
        ),
        (
            with_row(numbered_rows(), 9, "8,16,"),
            "y",
            "column 'y' row 9: the label is missing",
            "y",
            9,
        ),
        (
            with_row(numbered_rows(), 12, "11,22"),
            "y",
            "row 12 has 2 fields where the header has 3: '11,22'",
            None,
            12,
        ),
        (
            "day,load,y\n" + "\n".join(f"2024-01-{i + 1:02d},{i},a{i % 2}" for i in range(ROWS)),
            "y",
            "column 'day' row 1: '2024-01-01' is not a number",
            "day",
            1,
        ),
        ("", "y", "the file is empty: a CSV file needs a header row and data rows", None, None),
        ("temp,load,y\n", "y", "the CSV file has a header but no data rows", None, None),
        (
            "temp,load,y\n" + "\n".join(numbered_rows(4)) + "\n",
            "y",
            "the file has 4 rows: a dataset needs at least 10",
            None,
            None,
        ),
        (
            "temp,load,y\n" + "\n".join(numbered_rows(label=lambda i: "a")),
            "y",
            "the label column 'y' has only one class: 'a'",
            "y",
            None,
        ),
        (
            "temp,temp,y\n" + "\n".join(numbered_rows()),
            "y",
            "the column name 'temp' is used twice",
            "temp",
            None,
        ),
        (
            ",temp,y\n" + "\n".join(numbered_rows()),
            "y",
            "column 1 has no name in the header; name every column"
            " (a pandas index written by to_csv has none: write with index=False)",
            None,
            None,
        ),
        (
            "y\n" + "\n".join("ab"[i % 2] for i in range(ROWS)),
            "y",
            "the file has no feature columns besides the label 'y'",
            "y",
            None,
        ),
    ],
)
def test_csv_refusals_name_the_column_and_the_row(
    tmp_path: Path, text: str, label: str | None, detail: str, column: str | None, row: int | None
) -> None:
    error = refusal(csv_file(tmp_path, text), label=label)
    assert (error.detail, error.column, error.row) == (detail, column, row)
    assert str(error) == detail


def test_a_ragged_line_keeps_the_row_pyarrow_named(tmp_path: Path) -> None:
    error = refusal(csv_file(tmp_path, with_row(numbered_rows(), 3, "2,4,a,extra")), label="y")
    assert error.detail == "row 3 has 4 fields where the header has 3: '2,4,a,extra'"
    assert isinstance(error.__cause__, pa.ArrowInvalid)  # translated, and chained


def test_a_regression_label_must_be_numbers(tmp_path: Path) -> None:
    path = csv_file(tmp_path, with_row(numbered_rows(label=lambda i: i * 1.5), 4, "3,6,high"))
    error = refusal(path, label="y", task="regression")
    assert error.detail == (
        "the label column 'y' holds text, and a regression label must be numeric:"
        " column 'y' row 4: 'high' is not a number"
    )
    assert (error.column, error.row) == ("y", 4)


def test_too_many_classes_are_refused_and_a_stray_token_pointed_at(tmp_path: Path) -> None:
    rows = numbered_rows(150, label=lambda i: i)
    error = refusal(
        csv_file(tmp_path, with_row(rows, 1, "0,0,0")), label="y", task="classification"
    )
    assert error.detail == (
        "the label column 'y' has 150 distinct values, more than the 100 classes allowed"
    )
    path = csv_file(tmp_path, with_row(rows, 120, "119,238,?"))  # numbers, and one "?"
    assert refusal(path, label="y").detail == (
        "the label column 'y' has 150 distinct values, more than the 100 classes allowed;"
        " were they meant as numbers? column 'y' row 120: '?' is not a number"
    )


def test_a_constant_regression_label_is_refused(tmp_path: Path) -> None:
    path = csv_file(tmp_path, "temp,load,y\n" + "\n".join(numbered_rows(label=lambda i: 2.5)))
    assert refusal(path, label="y").detail == (
        "the label column 'y' holds the same value (2.5) in every row: there is nothing to learn"
    )


def test_a_non_finite_regression_label_is_refused(tmp_path: Path) -> None:
    path = csv_file(tmp_path, with_row(numbered_rows(label=lambda i: i / 3), 2, "1,2,inf"))
    error = refusal(path, label="y")
    assert (error.detail, error.column, error.row) == (
        "column 'y' row 2: inf is not a finite number",
        "y",
        2,
    )


# ------------------------------------------------------------------- CSV: what it reads


def test_csv_features_and_string_labels(tmp_path: Path) -> None:
    text = "temp,load,on,y\n" + "\n".join(
        f"{i / 4},{i},{'true' if i % 3 else 'false'},{['cat', 'ant', 'bee'][i % 3]}"
        for i in range(ROWS)
    )
    parsed = read_dataset(csv_file(tmp_path, text), "csv", label="y")
    assert parsed.schema == {
        "kind": "tabular",
        "task": "classification",
        "label": "y",
        "features": [
            {"name": "temp", "dtype": "float64"},
            {"name": "load", "dtype": "int64"},
            {"name": "on", "dtype": "bool"},
        ],
        "classes": ["ant", "bee", "cat"],
        "row_shape": [3],
        "rows": ROWS,
        "task_inferred": True,
    }
    assert parsed.x.dtype == np.float32 and parsed.x.flags.c_contiguous
    assert parsed.x[5].tolist() == [1.25, 5.0, 1.0]
    assert parsed.y.dtype == np.int64
    assert parsed.y[:3].tolist() == [2, 0, 1]  # cat, ant, bee


def test_a_quoted_header_names_the_columns(tmp_path: Path) -> None:
    text = '"temp, °C","load ""raw""",class\n' + "\n".join(numbered_rows())
    parsed = read_dataset(csv_file(tmp_path, text), "csv", label="class")
    assert [f["name"] for f in parsed.schema["features"]] == ["temp, °C", 'load "raw"']
    error = refusal(csv_file(tmp_path, text), label="temp")
    assert (
        error.detail
        == "there is no column 'temp'; the columns are 'temp, °C', 'load \"raw\"', 'class'"
    )


@pytest.mark.parametrize(
    ("label", "task", "expected", "inferred", "classes"),
    [
        (lambda i: "ab"[i % 2], None, "classification", True, ["a", "b"]),
        (lambda i: i % 3, None, "classification", True, ["0", "1", "2"]),
        (lambda i: float(i % 3), None, "classification", True, ["0", "1", "2"]),  # 1.0 is 1
        (lambda i: i * 0.5, None, "regression", True, None),
        (lambda i: i, None, "regression", True, None),  # as many values as rows
        (lambda i: i % 3, "regression", "regression", False, None),
        (lambda i: i * 0.5, "classification", "classification", False, None),
    ],
)
def test_the_task_is_inferred_from_the_label_unless_given(
    tmp_path: Path,
    label: Any,
    task: str | None,
    expected: str,
    inferred: bool,
    classes: list[str] | None,
) -> None:
    path = csv_file(tmp_path, "temp,load,y\n" + "\n".join(numbered_rows(label=label)))
    parsed = read_dataset(path, "csv", label="y", task=task)
    assert (parsed.schema["task"], parsed.schema["task_inferred"]) == (expected, inferred)
    if expected == "regression":
        assert parsed.y.dtype == np.float32
        assert parsed.y.tolist() == [float(label(i)) for i in range(ROWS)]
        assert parsed.schema["classes"] is None
    else:
        assert parsed.y.dtype == np.int64
        if classes is not None:
            assert parsed.schema["classes"] == classes


def test_numeric_classes_sort_as_numbers(tmp_path: Path) -> None:
    labels = [10, 9, 2, -1]
    path = csv_file(
        tmp_path, "temp,load,y\n" + "\n".join(numbered_rows(label=lambda i: labels[i % 4]))
    )
    parsed = read_dataset(path, "csv", label="y")
    assert parsed.schema["classes"] == ["-1", "2", "9", "10"]
    assert parsed.y[:4].tolist() == [3, 2, 1, 0]


def test_a_big_csv_is_read_in_blocks_and_matches_numpy(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    n = 200_000
    x = rng.normal(size=(n, 4)).round(4)
    y = rng.integers(0, 5, size=n)
    path = tmp_path / "big.csv"
    with path.open("w") as out:
        out.write("a,b,c,d,label\n")
        np.savetxt(out, np.column_stack([x, y]), fmt=["%.4f"] * 4 + ["%d"], delimiter=",")
    assert path.stat().st_size > 5 * CSV_BLOCK_BYTES  # several blocks
    parsed = read_dataset(path, "csv", label="label")
    assert parsed.x.shape == (n, 4) and parsed.x.flags.c_contiguous
    np.testing.assert_array_equal(parsed.x, x.astype(np.float32))
    np.testing.assert_array_equal(parsed.y, y)
    assert parsed.schema["classes"] == ["0", "1", "2", "3", "4"]


def test_rows_past_what_the_first_block_promised_are_kept(tmp_path: Path) -> None:
    # Long rows first, short ones after: the array reserved from the first block's rows
    # per byte is too small, and grows with the rows read so far copied over.
    n_long, n = 40_000, 300_000
    long = [f"{i}.000001,{i}.123456789,{i % 3}" for i in range(n_long)]
    short = [f"{i % 10},{i % 7},{i % 3}" for i in range(n_long, n)]
    path = csv_file(tmp_path, "a,b,y\n" + "\n".join(long + short) + "\n")
    parsed = read_dataset(path, "csv", label="y")
    assert parsed.x.shape == (n, 2) and parsed.x.flags.c_contiguous
    assert parsed.x[0].tolist() == [np.float32(0.000001), np.float32(0.123456789)]
    assert parsed.x[n_long - 1].tolist() == [
        np.float32(39_999.000001),
        np.float32(39_999.123456789),
    ]
    assert parsed.x[-1].tolist() == [(n - 1) % 10, (n - 1) % 7]
    np.testing.assert_array_equal(parsed.y, np.arange(n) % 3)


def test_a_float_after_the_first_block_widens_an_integer_column(tmp_path: Path) -> None:
    n = 150_000  # about 2 MiB: the 1.5 is past the first block pyarrow infers types from
    rows = numbered_rows(n, label=lambda i: i % 2)
    rows[-1] = f"{n - 1},2.5,1"
    path = csv_file(tmp_path, "temp,load,y\n" + "\n".join(rows))
    assert path.stat().st_size > CSV_BLOCK_BYTES
    parsed = read_dataset(path, "csv", label="y")
    assert parsed.schema["features"] == [
        {"name": "temp", "dtype": "int64"},
        {"name": "load", "dtype": "float64"},
    ]
    assert parsed.x[-1].tolist() == [n - 1, 2.5]
    assert parsed.x[-2].tolist() == [n - 2, 2 * (n - 2)]


def test_text_after_the_first_block_is_refused_with_its_row(tmp_path: Path) -> None:
    n = 150_000
    rows = numbered_rows(n)
    rows[n - 10] = f"{n - 10},high,a"
    path = csv_file(tmp_path, "temp,load,y\n" + "\n".join(rows))
    error = refusal(path, label="y")
    assert (error.detail, error.column, error.row) == (
        f"column 'load' row {n - 9}: 'high' is not a number",
        "load",
        n - 9,
    )


# ------------------------------------------------------------------------------ Parquet


def test_parquet_round_trip(tmp_path: Path) -> None:
    n = 1000
    table = pa.table(
        {
            "temp": pa.array(np.linspace(0, 1, n)),
            "count": pa.array(np.arange(n, dtype=np.int32)),
            "on": pa.array(np.arange(n) % 2 == 0),
            "label": pa.array([["low", "high"][i % 2] for i in range(n)]),
        }
    )
    path = tmp_path / "data.parquet"
    pq.write_table(table, path, row_group_size=128)  # several row groups, in order
    parsed = read_dataset(path, guess_format(path.name, path.read_bytes()[:4]), label="label")
    assert parsed.schema["features"] == [
        {"name": "temp", "dtype": "float64"},
        {"name": "count", "dtype": "int32"},
        {"name": "on", "dtype": "bool"},
    ]
    assert parsed.schema["classes"] == ["high", "low"]
    expected = np.column_stack([np.linspace(0, 1, n), np.arange(n), np.arange(n) % 2 == 0])
    np.testing.assert_array_equal(parsed.x, expected.astype(np.float32))
    assert parsed.y.tolist() == [1, 0] * (n // 2)


def test_parquet_refuses_text_and_missing_values_with_the_row(tmp_path: Path) -> None:
    temp = [str(i) for i in range(ROWS)]
    temp[16] = "n/a"
    path = tmp_path / "text.parquet"
    pq.write_table(pa.table({"temp": temp, "y": [i % 2 for i in range(ROWS)]}), path)
    error = refusal(path, "parquet", label="y")
    assert (error.detail, error.column, error.row) == (
        "column 'temp' row 17: 'n/a' is not a number",
        "temp",
        17,
    )
    load = [float(i) for i in range(ROWS)]
    path = tmp_path / "null.parquet"
    load_with_null: list[float | None] = [*load[:3], None, *load[4:]]
    pq.write_table(pa.table({"load": load_with_null, "y": [i % 2 for i in range(ROWS)]}), path)
    error = refusal(path, "parquet", label="y")
    assert (error.detail, error.row) == ("column 'load' row 4: the value is missing", 4)
    assert refusal(path, "parquet", label="nope").detail == (
        "there is no column 'nope'; the columns are 'load', 'y'"
    )


def test_parquet_leaves_out_a_pandas_index(tmp_path: Path) -> None:
    metadata = {b"pandas": json.dumps({"index_columns": ["__index_level_0__"]}).encode()}
    table = pa.table(
        {
            "load": np.arange(ROWS, dtype=np.float64),
            "y": np.arange(ROWS) % 2,
            "__index_level_0__": np.arange(ROWS) + 1000,
        }
    ).replace_schema_metadata(metadata)
    path = tmp_path / "pandas.parquet"
    pq.write_table(table, path)
    parsed = read_dataset(path, "parquet", label="y")
    assert parsed.schema["features"] == [{"name": "load", "dtype": "float64"}]


def test_a_corrupt_parquet_file_is_refused_not_raised(tmp_path: Path) -> None:
    path = tmp_path / "bad.parquet"
    path.write_bytes(b"PAR1" + b"\x00" * 100)
    error = refusal(path, "parquet", label="y")
    assert error.detail.startswith("the Parquet file could not be read: ")
    assert error.__cause__ is not None


# ---------------------------------------------------------------------------------- NPZ


def test_npz_tabular(tmp_path: Path) -> None:
    x = np.arange(ROWS * 3, dtype=np.float64).reshape(ROWS, 3)
    path = npz_file(tmp_path, x=x, y=np.arange(ROWS) % 2)
    parsed = read_dataset(path, "npz")
    assert parsed.schema == {
        "kind": "tabular",
        "task": "classification",
        "label": "y",
        "features": [{"name": f"x{j}", "dtype": "float64"} for j in range(3)],
        "classes": ["0", "1"],
        "row_shape": [3],
        "rows": ROWS,
        "task_inferred": True,
    }
    np.testing.assert_array_equal(parsed.x, x.astype(np.float32))


@pytest.mark.parametrize(
    ("shape", "kind", "expected_kind", "channels"),
    [
        ((ROWS, 8, 8), None, "image", 1),
        ((ROWS, 8, 8, 1), None, "image", 1),
        ((ROWS, 8, 8, 3), None, "image", 3),
        ((ROWS, 50, 3), "window", "window", 3),
        ((ROWS, 8, 8), "image", "image", 1),
    ],
)
def test_npz_images_and_windows(
    tmp_path: Path, shape: tuple[int, ...], kind: str | None, expected_kind: str, channels: int
) -> None:
    x = np.random.default_rng(0).integers(0, 255, size=shape).astype(np.uint8)
    arrays: dict[str, Any] = {"x": x, "y": np.array(["cat", "dog"] * (ROWS // 2))}
    if kind is not None:
        arrays["kind"] = np.array(kind)
    parsed = read_dataset(npz_file(tmp_path, **arrays), "npz")
    assert parsed.schema["kind"] == expected_kind
    assert parsed.schema["row_shape"] == list(shape[1:])
    assert parsed.schema["features"] == [
        {"name": f"c{j}", "dtype": "uint8"} for j in range(channels)
    ]
    assert parsed.schema["classes"] == ["cat", "dog"]
    assert parsed.x.shape == shape and parsed.x.dtype == np.float32
    np.testing.assert_array_equal(parsed.x, x)


def test_npz_label_array_can_be_named(tmp_path: Path) -> None:
    path = npz_file(tmp_path, x=np.ones((ROWS, 2)), target=np.arange(ROWS) * 0.5)
    parsed = read_dataset(path, "npz", label="target")
    assert (parsed.schema["label"], parsed.schema["task"]) == ("target", "regression")


@pytest.mark.parametrize(
    ("arrays", "detail", "column", "row"),
    [
        (
            {"x": np.ones((ROWS, 2)), "labels": np.zeros(ROWS)},
            "the npz has no array 'y': it holds 'x', 'labels'",
            "y",
            None,
        ),
        (
            {"y": np.zeros(ROWS)},
            "the npz has no array 'x': it holds 'y'",
            "x",
            None,
        ),
        (
            {"x": np.ones((ROWS, 2)), "y": np.array([{"a": 1}] * ROWS, dtype=object)},
            "the array 'y' holds Python objects, which are never loaded:"
            " save numbers (or text labels) with numpy.savez",
            "y",
            None,
        ),
        (
            {"x": np.ones(ROWS), "y": np.arange(ROWS) % 2},
            "x has shape [20]: expected [N, features], [N, H, W], [N, H, W, C] or [N, T, C]",
            "x",
            None,
        ),
        (
            {"x": np.ones((ROWS, 2)), "y": np.arange(ROWS - 1) % 2},
            "y has shape [19] where x has 20 rows: expected [20] (one label per row)",
            "y",
            None,
        ),
        (
            {"x": np.ones((ROWS, 4, 4, 1)), "y": np.arange(ROWS) % 2, "kind": np.array("window")},
            "the array 'kind' says 'window' where x of shape [20, 4, 4, 1] can be 'image'",
            "kind",
            None,
        ),
        (
            {
                "x": np.where(np.arange(ROWS * 3).reshape(ROWS, 3) == 40, np.nan, 1.0),
                "y": np.arange(ROWS) % 2,
            },
            "x[13]: the value is missing (NaN): every value of x must be a finite number",
            "x1",
            13,
        ),
        (
            {
                "x": np.ones((ROWS, 2)),
                "y": np.where(np.arange(ROWS) == 7, np.inf, np.arange(ROWS) / 3),
            },
            "y[7]: inf is not a finite number",
            "y",
            7,
        ),
        (
            {"x": np.ones((5, 2)), "y": np.arange(5) % 2},
            "the file has 5 rows: a dataset needs at least 10",
            None,
            None,
        ),
        (
            {"x": np.array([["a", "b"]] * ROWS), "y": np.arange(ROWS) % 2},
            "x holds <U1 values: x must hold numbers",
            "x",
            None,
        ),
    ],
)
def test_npz_refusals(
    tmp_path: Path, arrays: dict[str, Any], detail: str, column: str | None, row: int | None
) -> None:
    error = refusal(npz_file(tmp_path, **arrays), "npz")
    assert (error.detail, error.column, error.row) == (detail, column, row)


def test_a_file_that_is_not_an_npz_is_refused_not_raised(tmp_path: Path) -> None:
    broken = tmp_path / "broken.npz"
    broken.write_bytes(b"PK\x03\x04" + b"\x00" * 64)
    assert refusal(broken, "npz").detail.startswith("the npz file could not be read: ")
    single = tmp_path / "single.npy"
    np.save(single, np.ones(3))
    assert refusal(single, "npz").detail == (
        "the file is a single array, not an npz holding x and y"
    )
    archive = tmp_path / "archive.npz"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("readme.txt", "hello")
    assert refusal(archive, "npz").detail == "the npz has no array 'x': it holds 'readme.txt'"


def test_parsed_dataset_holds_its_rows() -> None:
    with pytest.raises(ValueError, match="do not hold 3 rows"):
        ParsedDataset(x=np.zeros((2, 1), np.float32), y=np.zeros(2), schema={"rows": 3})
