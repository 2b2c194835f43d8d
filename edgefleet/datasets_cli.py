"""``edgefleet datasets``: upload, list, show and download dataset versions (ADR 0014)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def register(sub: Any, api: argparse.ArgumentParser) -> None:
    """Add the commands; ``api``: the parent parser with --hub/--api-key."""
    ds = sub.add_parser("datasets", help="your datasets, kept as versions").add_subparsers(
        metavar="ACTION"
    )
    up = ds.add_parser(
        "upload",
        parents=[api],
        help="upload a CSV, Parquet or NPZ file as a new dataset version",
        description="Upload a file; the hub infers and checks its schema. Uploading the"
        " same bytes again gives the same version back.",
    )
    up.add_argument("file", type=Path, help="the CSV, Parquet or NPZ (arrays x, y) file")
    up.add_argument("--name", required=True, help="the dataset's name (lower case)")
    up.add_argument("--label", help="the label column (CSV, Parquet); NPZ uses y")
    up.add_argument(
        "--task",
        choices=("classification", "regression"),
        help="what the label is (default: inferred from it, and stated back)",
    )
    up.add_argument("--format", choices=("csv", "parquet", "npz"), help="default: by content")
    up.add_argument("--json", action="store_true", help="print the version as JSON")
    up.set_defaults(func=_upload)

    ls = ds.add_parser("list", parents=[api], help="list dataset versions")
    ls.add_argument("--name", help="only this dataset's versions")
    ls.add_argument("--json", action="store_true", help="print JSON")
    ls.set_defaults(func=_list)

    show = ds.add_parser("show", parents=[api], help="one version and its schema")
    show.add_argument("ref", help="NAME (the latest), NAME:SEQ or NAME:SHA256-PREFIX")
    show.add_argument("--json", action="store_true", help="print JSON")
    show.set_defaults(func=_show)

    dl = ds.add_parser("download", parents=[api], help="the version's file, byte for byte")
    dl.add_argument("ref", help="NAME, NAME:SEQ or NAME:SHA256-PREFIX")
    dl.add_argument("-o", "--output", type=Path, help="where to write it (default: NAME-SEQ.EXT)")
    dl.set_defaults(func=_download)


def _client(args: argparse.Namespace) -> Any:
    from edgefleet.client import HubClient

    return HubClient(args.hub, api_key=args.api_key, timeout=600.0)


def _upload(args: argparse.Namespace) -> int:
    if not args.file.is_file():
        print(f"error: no file {args.file}", file=sys.stderr)
        return 2
    with _client(args) as c:
        v = c.upload_dataset(
            args.name, args.file, label=args.label, task=args.task, fmt=args.format
        )
    if args.json:
        print(json.dumps(v, indent=2))
        return 0
    print(describe(v))
    if not v["created"]:
        print(f"  (these bytes were already {v['id']}: nothing new was stored)")
    return 0


def describe(v: dict[str, Any]) -> str:
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


def _list(args: argparse.Namespace) -> int:
    with _client(args) as c:
        rows = c.datasets(args.name)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'version':<28}{'rows':>9}  {'task':<15}{'kind':<9}{'format':<8}sha256")
    for r in rows:
        print(
            f"{r['id']:<28}{r['rows']:>9}  {r['task']:<15}{r['kind']:<9}{r['format']:<8}"
            f"{r['sha256'][:16]}"
        )
    return 0


def _show(args: argparse.Namespace) -> int:
    with _client(args) as c:
        v = c.dataset(args.ref)
    if args.json:
        print(json.dumps(v, indent=2))
        return 0
    print(describe(v))
    features = v["data_schema"].get("features", [])
    if v["kind"] == "tabular":
        for f in features[:50]:
            print(f"    {f['name']:<32}{f['dtype']}")
        if len(features) > 50:
            print(f"    ... {len(features) - 50} more")
    return 0


def _download(args: argparse.Namespace) -> int:
    with _client(args) as c:
        v = c.dataset(args.ref)
        dest = args.output or Path(f"{v['name']}-{v['seq']}.{v['format']}")
        c.download_dataset(v["id"], dest)
    print(f"{dest}: {v['id']}, sha256 {v['sha256']}")
    return 0
