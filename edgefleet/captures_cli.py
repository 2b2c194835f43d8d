"""``edgefleet captures``: ask devices for a sample of their model's rows, follow the
capture, list the captured datasets, and label their rows (docs/capture.md). Retraining
on them is ``edgefleet models retrain``."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Annotated, Any

import typer

from edgefleet.options import DEFAULT_HUB, ApiKey, HubUrl, Json, client
from edgefleet.output import emit, stamp, table
from edgefleet.rollout_cli import split_ids

captures = typer.Typer(
    no_args_is_help=True, help="Data capture from devices: start, show, datasets, labels."
)

DatasetId = Annotated[
    str, typer.Argument(metavar="DATASET", help="The captured dataset's id (captures datasets).")
]


def register(app: typer.Typer) -> None:
    """``edgefleet captures ...``."""
    captures.command("start", help="Ask devices (a list or a group) for rows of a model.")(start)
    captures.command("show", help="A capture: each device's status, the dataset it made.")(show)
    captures.command("datasets", help="The datasets captures produced.")(datasets)
    captures.command("dataset", help="One captured dataset.")(dataset)
    captures.command(
        "label", help="Label captured rows (ROW=CLASS, or a CSV of row,label): a new version."
    )(label)
    app.add_typer(captures, name="captures")


def start(
    model: Annotated[str, typer.Option("--model", help="The model whose rows are captured.")],
    devices: Annotated[
        list[str] | None,
        typer.Option("--devices", metavar="ID[,ID...]", help="These devices; repeatable."),
    ] = None,
    group: Annotated[
        str | None, typer.Option("--group", help="Every device with this tag.")
    ] = None,
    rows: Annotated[int, typer.Option("--rows", help="Rows per device, at most.")] = 1000,
    duration: Annotated[
        float | None, typer.Option("--duration", help="Seconds devices capture for.")
    ] = None,
    windows: Annotated[
        int | None, typer.Option("--windows", help="Or this many telemetry windows.")
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="For the devices' sampling.")] = 0,
    hub: HubUrl = DEFAULT_HUB,
    api_key: ApiKey = None,
    json: Json = False,
) -> int:
    spec = {
        "devices": split_ids(devices),
        "group": group,
        "rows": rows,
        "duration_s": duration,
        "windows": windows,
        "seed": seed,
    }
    with client(hub, api_key) as c:
        found = c.start_capture(model, **{k: v for k, v in spec.items() if v is not None})
    emit(found, json, render_capture)
    return 0


def show(
    capture_id: Annotated[str, typer.Argument(metavar="CAPTURE", help="The capture's id.")],
    hub: HubUrl = DEFAULT_HUB,
    api_key: ApiKey = None,
    json: Json = False,
) -> int:
    with client(hub, api_key) as c:
        found = c.capture(capture_id)
    emit(found, json, render_capture)
    return 0


def render_capture(cap: dict[str, Any]) -> Any:
    """The capture's state and each device's."""
    made = f", dataset {cap['dataset_id']}" if cap.get("dataset_id") else ""
    why = f" ({cap['reason']})" if cap.get("reason") else ""
    title = f"capture {cap['id']} of {cap['model']}: {cap['state']}{why}{made}"
    rows = [
        (d["device_id"], d["status"], d.get("version"), d.get("rows"), d.get("labelled"),
         d.get("reason") or d.get("detail"))
        for d in cap.get("devices") or []
    ]  # fmt: skip
    return table(["device", "status", "version>", "rows>", "labelled>", "why"], rows, title=title)


def datasets(
    model: Annotated[str | None, typer.Option("--model", help="Only this model's.")] = None,
    hub: HubUrl = DEFAULT_HUB,
    api_key: ApiKey = None,
    json: Json = False,
) -> int:
    with client(hub, api_key) as c:
        found = c.capture_datasets(model)
    emit(found, json, render_datasets)
    return 0


def dataset(
    dataset_id: DatasetId, hub: HubUrl = DEFAULT_HUB, api_key: ApiKey = None, json: Json = False
) -> int:
    with client(hub, api_key) as c:
        found = c.capture_dataset(dataset_id)
    emit(found, json, lambda d: render_datasets([d]))
    return 0


def render_datasets(rows: list[dict[str, Any]]) -> Any:
    return table(
        ["id", "model", "version>", "rows>", "labelled>", "devices>", "capture", "created"],
        [
            (d["id"], d["model"], d["version"], d["rows"], d["labelled"], len(d["devices"]),
             d.get("capture_id"), stamp(d["created_at"]))
            for d in rows
        ],
    )  # fmt: skip


def label(
    dataset_id: DatasetId,
    pairs: Annotated[
        list[str] | None,
        typer.Argument(metavar="ROW=CLASS...", help="A row's index and its class (index or name)."),
    ] = None,
    from_file: Annotated[
        Path | None, typer.Option("--from-file", help="A CSV of row,label lines (no header).")
    ] = None,
    hub: HubUrl = DEFAULT_HUB,
    api_key: ApiKey = None,
    json: Json = False,
) -> int:
    labels = [_pair(p) for p in pairs or []]
    if from_file is not None:
        with from_file.open(newline="") as f:
            labels += [_pair("=".join(r[:2])) for r in csv.reader(f) if r]
    if not labels:
        raise typer.BadParameter("give ROW=CLASS pairs or --from-file", param_hint="ROW=CLASS")
    with client(hub, api_key) as c:
        found = c.label_capture(dataset_id, labels)
    emit(found, json, lambda d: render_datasets([d]))
    return 0


def _pair(text: str) -> tuple[int, int | str]:
    row, sep, value = text.partition("=")
    if not sep or not row.strip().isdigit() or not value.strip():
        raise typer.BadParameter(f"{text!r}: give ROW=CLASS, e.g. 12=3 or 12=faulty")
    value = value.strip()
    return int(row), int(value) if value.isdigit() else value
