"""``edgefleet datasets``: upload, list, show and download dataset versions (ADR 0014)."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import typer

from edgefleet.options import DEFAULT_HUB, ApiKey, HubUrl, Json, client
from edgefleet.output import emit, print_json, table
from edgefleet.progress import UploadProgress

__all__ = ["describe", "register"]

datasets = typer.Typer(no_args_is_help=True, help="Your datasets, kept as versions.")

Ref = Annotated[
    str, typer.Argument(metavar="REF", help="NAME (the latest), NAME:SEQ or NAME:SHA256-PREFIX.")
]
TIMEOUT_S = 600.0  # seconds: a large upload or download


def register(app: typer.Typer) -> None:
    """``edgefleet datasets ...``."""
    datasets.command(
        "upload",
        help="Upload a CSV, Parquet or NPZ file as a new dataset version; the hub infers and"
        " checks its schema. The same bytes again give the same version back.",
    )(upload)
    datasets.command("list", help="List dataset versions.")(dataset_list)
    datasets.command("show", help="One version and its schema.")(show)
    datasets.command("download", help="The version's file, byte for byte.")(download)
    app.add_typer(datasets, name="datasets")


def upload(
    file: Annotated[
        Path, typer.Argument(metavar="FILE", help="The CSV, Parquet or NPZ (arrays x, y) file.")
    ],
    name: Annotated[str, typer.Option("--name", help="The dataset's name (lower case).")],
    label: Annotated[
        str | None, typer.Option("--label", help="The label column (CSV, Parquet); NPZ uses y.")
    ] = None,
    task: Annotated[
        Literal["classification", "regression"] | None,
        typer.Option("--task", help="What the label is (default: inferred, and stated back)."),
    ] = None,
    fmt: Annotated[
        Literal["csv", "parquet", "npz"] | None,
        typer.Option("--format", help="The file's format (default: by content)."),
    ] = None,
    hub: HubUrl = DEFAULT_HUB,
    api_key: ApiKey = None,
    json: Json = False,
) -> int:
    if not file.is_file():
        raise typer.BadParameter(f"no file {file}", param_hint="FILE")
    with client(hub, api_key, timeout=TIMEOUT_S) as c:
        v = c.upload_dataset(
            name,
            file,
            label=label,
            task=task,
            fmt=fmt,
            on_bytes=UploadProgress(file.name, file.stat().st_size),
        )
    if json:
        print_json(v)
        return 0
    print(describe(v))
    if not v["created"]:
        print(f"  (these bytes were already {v['id']}: nothing new was stored)")
    return 0


def describe(v: Mapping[str, Any]) -> str:
    """What an operator reads about a version: rows, task, label, shape, classes."""
    schema = v["data_schema"]
    inferred = " (inferred)" if schema.get("task_inferred") else ""
    shape = "x".join(str(d) for d in schema.get("row_shape", []))
    lines = [
        f"dataset {v['id']}  sha256 {v['sha256'][:16]}  {v['size_bytes']} bytes {v['format']}",
        f"  {v['rows']} rows, {v['kind']} [{shape}], task {v['task']}{inferred},"
        f" label {v['label']!r}",
    ]
    classes = schema.get("classes")
    if classes:
        shown = ", ".join(map(str, classes[:10])) + (" ..." if len(classes) > 10 else "")
        lines.append(f"  {len(classes)} classes: {shown}")
    return "\n".join(lines)


def dataset_list(
    name: Annotated[
        str | None, typer.Option("--name", help="Only this dataset's versions.")
    ] = None,
    hub: HubUrl = DEFAULT_HUB,
    api_key: ApiKey = None,
    json: Json = False,
) -> int:
    with client(hub, api_key) as c:
        rows = c.datasets(name)
    emit(rows, json, render_datasets)
    return 0


def render_datasets(rows: list[dict[str, Any]]) -> Any:
    """Dataset versions as a table."""
    return table(
        ["version", "rows>", "task", "kind", "format", "sha256"],
        [(r["id"], r["rows"], r["task"], r["kind"], r["format"], r["sha256"][:16]) for r in rows],
    )


def show(ref: Ref, hub: HubUrl = DEFAULT_HUB, api_key: ApiKey = None, json: Json = False) -> int:
    with client(hub, api_key) as c:
        v = c.dataset(ref)
    emit(v, json, render_dataset)
    return 0


def render_dataset(v: dict[str, Any]) -> str:
    """A version in words, then its features (tabular: the first 50)."""
    lines = [describe(v)]
    features = v["data_schema"].get("features", [])
    if v["kind"] == "tabular":
        lines += [f"    {f['name']:<32}{f['dtype']}" for f in features[:50]]
        if len(features) > 50:
            lines.append(f"    ... {len(features) - 50} more")
    return "\n".join(lines)


def download(
    ref: Ref,
    output: Annotated[
        Path | None,
        typer.Option("-o", "--output", help="Where to write it (default: NAME-SEQ.EXT)."),
    ] = None,
    hub: HubUrl = DEFAULT_HUB,
    api_key: ApiKey = None,
) -> int:
    with client(hub, api_key, timeout=TIMEOUT_S) as c:
        v = c.dataset(ref)
        dest = output or Path(f"{v['name']}-{v['seq']}.{v['format']}")
        c.download_dataset(v["id"], dest)
    print(f"{dest}: {v['id']}, sha256 {v['sha256']}")
    sys.stdout.flush()
    return 0
