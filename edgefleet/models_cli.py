"""``edgefleet models``: train on a dataset, upload your own, retrain on captures, list,
runs, lineage, and live performance per version (what they show: edgefleet/models_view.py).

``train``, ``upload`` and ``retrain`` follow the hub's job: a bar on a terminal, a line per
stage in a log (edgefleet/progress.py), then the build's figures.
"""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path
from typing import Annotated, Any, Literal

import typer

from edgefleet.models_view import (
    figures,
    performance_report,
    render_lineage,
    render_models,
    render_runs,
)
from edgefleet.options import DEFAULT_HUB, ApiKey, HubUrl, Json, client
from edgefleet.output import emit, print_json
from edgefleet.progress import JobProgress, UploadProgress

__all__ = ["figures", "performance_report", "register", "render_lineage"]

models = typer.Typer(
    no_args_is_help=True,
    help="The model registry: train, upload, list, runs, lineage, performance.",
)
GATES = "Gates"
TUNER = "Tuner"

Name = Annotated[str, typer.Argument(metavar="MODEL", help="The model's name.")]
Dataset = Annotated[
    str | None, typer.Option("--dataset", help="NAME or NAME:VERSION of a dataset (datasets list).")
]
MinAccuracy = Annotated[
    float | None,
    typer.Option(
        "--min-accuracy", help="Floor gate for a classifier (0..1).", rich_help_panel=GATES
    ),
]
MaxMae = Annotated[
    float | None,
    typer.Option(
        "--max-mae", help="Ceiling gate for a regressor (its units).", rich_help_panel=GATES
    ),
]
Champion = Annotated[
    bool,
    typer.Option(
        "--champion",
        help="Refuse it unless it beats the deployed version on the same hold-out.",
        rich_help_panel=GATES,
    ),
]
DeviceClasses = Annotated[
    list[str] | None,
    typer.Option("--device-class", metavar="CLASS", help="A device class it is for; repeatable."),
]
BuildJson = Annotated[
    bool, typer.Option("--json", help="Print the build's result as JSON on stdout, nothing else.")
]


def register(app: typer.Typer) -> None:
    """``edgefleet models ...``."""
    models.command("list", help="Model versions with their hold-out figures.")(model_list)
    models.command(
        "train", help="Train, quantise, judge and sign a model on a dataset (a job, followed)."
    )(train)
    models.command("upload", help="Upload your own ONNX or TFLite model, judged on a dataset.")(
        upload
    )
    models.command("retrain", help="Retrain a model on its training data plus captured rows.")(
        retrain
    )
    models.command("runs", help="Every build of a model, refused ones with their figures.")(runs)
    models.command(
        "lineage", help="Datasets, training, gates, signature, rollouts, devices of a version."
    )(lineage)
    models.command(
        "performance", help="Live accuracy or MAE per version, from the labels devices joined."
    )(performance)
    app.add_typer(models, name="models")


def model_list(
    name: Annotated[str | None, typer.Option("--name", help="Only this model's versions.")] = None,
    hub: HubUrl = DEFAULT_HUB,
    api_key: ApiKey = None,
    json: Json = False,
) -> int:
    with client(hub, api_key) as c:
        rows = c.models(name)
    emit(rows, json, render_models)
    return 0


def train(
    name: Annotated[str, typer.Option("--name", help="The model's name.")] = "vibration",
    dataset: Annotated[
        str | None,
        typer.Option(
            "--dataset", help="NAME or NAME:VERSION of a dataset (default: the built-in generator)."
        ),
    ] = None,
    kind: Annotated[
        Literal["mlp", "cnn"], typer.Option("--kind", help="cnn: images and windows.")
    ] = "mlp",
    task: Annotated[
        Literal["classification", "regression"] | None,
        typer.Option("--task", help="Default: the dataset's."),
    ] = None,
    holdout: Annotated[float, typer.Option("--holdout", help="Share of rows held out.")] = 0.2,
    seed: Annotated[int, typer.Option("--seed", help="For the split and the training.")] = 7,
    max_int8_loss: Annotated[
        float,
        typer.Option(
            "--max-int8-loss", help="Points of accuracy int8 may lose.", rich_help_panel=GATES
        ),
    ] = 1.0,
    max_int8_mae_increase: Annotated[
        float,
        typer.Option(
            "--max-int8-mae-increase",
            help="Relative MAE increase, regressors.",
            rich_help_panel=GATES,
        ),
    ] = 0.05,
    min_accuracy: MinAccuracy = None,
    max_mae: MaxMae = None,
    champion: Champion = False,
    tune: Annotated[
        int,
        typer.Option("--tune", metavar="N", help="Tuner trials (Optuna).", rich_help_panel=TUNER),
    ] = 0,
    tune_timeout: Annotated[
        float, typer.Option("--tune-timeout", help="Tuner budget, seconds.", rich_help_panel=TUNER)
    ] = 600,
    tune_max_kb: Annotated[
        float | None,
        typer.Option(
            "--tune-max-kb",
            help="Tuner's size budget for the int8 file, KiB.",
            rich_help_panel=TUNER,
        ),
    ] = None,
    n_train: Annotated[
        int, typer.Option("--n-train", help="Rows of the built-in generator.")
    ] = 12000,
    device_class: DeviceClasses = None,
    hub: HubUrl = DEFAULT_HUB,
    api_key: ApiKey = None,
    json: BuildJson = False,
) -> int:
    settings: dict[str, Any] = {
        "name": name, "dataset": dataset, "kind": kind, "task": task,
        "holdout_fraction": holdout, "seed": seed, "max_int8_loss_points": max_int8_loss,
        "max_int8_mae_increase": max_int8_mae_increase, "min_accuracy": min_accuracy,
        "max_mae": max_mae, "champion": champion, "tune": tune, "tune_timeout_s": tune_timeout,
        "tune_max_bytes": int(tune_max_kb * 1024) if tune_max_kb else None,
        "n_train": n_train, "device_classes": device_class or [],
    }  # fmt: skip
    with client(hub, api_key) as c:
        job = c.train(**{k: v for k, v in settings.items() if v is not None})
        return _follow(c, job["id"], name, json)


def upload(
    file: Annotated[Path, typer.Argument(metavar="FILE", help="The .onnx or .tflite file.")],
    name: Annotated[str, typer.Option("--name", help="The model's name.")],
    dataset: Dataset = None,
    no_quantize: Annotated[
        bool, typer.Option("--no-quantize", help="Ship the file as it is.")
    ] = False,
    unevaluated: Annotated[
        bool, typer.Option("--unevaluated", help="Accept it with no dataset (and say so).")
    ] = False,
    min_accuracy: MinAccuracy = None,
    max_mae: MaxMae = None,
    champion: Champion = False,
    device_class: DeviceClasses = None,
    hub: HubUrl = DEFAULT_HUB,
    api_key: ApiKey = None,
    json: BuildJson = False,
) -> int:
    if not file.is_file():
        raise typer.BadParameter(f"no file {file}", param_hint="FILE")
    with client(hub, api_key) as c:
        job = c.upload(
            name,
            file.read_bytes(),
            device_class or None,
            dataset=dataset,
            quantize=not no_quantize,
            unevaluated=unevaluated,
            champion=champion,
            min_accuracy=min_accuracy,
            max_mae=max_mae,
            filename=file.name,
            on_bytes=UploadProgress(file.name, file.stat().st_size),
        )
        return _follow(c, job["id"], name, json)


def retrain(
    name: Name,
    dataset: Annotated[
        list[str],
        typer.Option(
            "--dataset",
            metavar="ID",
            help="A captured dataset to add (captures datasets); repeatable.",
        ),
    ],
    holdout: Annotated[float, typer.Option("--holdout", help="Share of rows held out.")] = 0.25,
    captured_weight: Annotated[
        int, typer.Option("--captured-weight", help="How many times each captured row counts.")
    ] = 1,
    seed: Annotated[
        int | None, typer.Option("--seed", help="For the split and the training.")
    ] = None,
    hub: HubUrl = DEFAULT_HUB,
    api_key: ApiKey = None,
    json: BuildJson = False,
) -> int:
    options = {"holdout_fraction": holdout, "captured_weight": captured_weight, "seed": seed}
    with client(hub, api_key) as c:
        job = c.retrain(name, dataset, **{k: v for k, v in options.items() if v is not None})
        return _follow(c, job["id"], name, json)


def _follow(c: Any, job_id: str, name: str, as_json: bool) -> int:
    from edgefleet.client import HubClientError

    try:
        done = c.wait_job(job_id, timeout=24 * 3600, on_progress=JobProgress())
    except HubClientError as e:
        print(f"refused: {e.message}", file=sys.stderr)
        built = c.runs(name)
        if built and built[-1]["status"] in ("refused", "failed"):
            print(figures(built[-1]["metrics"], built[-1]["gates"]), file=sys.stderr)
        return 1
    result = done["result"]
    if as_json:
        print_json(result)
        return 0
    print(f"{result['name']} v{result['version']} signed: {result['target']} ({result['task']})")
    print(figures(result.get("metrics") or {}, result.get("gates") or []))
    for note in result.get("notes") or ():
        print(f"  note: {note}")
    return 0


def runs(name: Name, hub: HubUrl = DEFAULT_HUB, api_key: ApiKey = None, json: Json = False) -> int:
    with client(hub, api_key) as c:
        found = c.runs(name)
    emit(found, json, render_runs)
    return 0


def _model_version(ref: str) -> tuple[str, int]:
    name, _, version = ref.partition(":")
    if not version.isdigit():
        raise typer.BadParameter("give NAME:VERSION, e.g. vibration:3", param_hint="REF")
    return name, int(version)


def lineage(
    ref: Annotated[
        str, typer.Argument(metavar="NAME:VERSION", help="NAME:VERSION, e.g. vibration:3.")
    ],
    hub: HubUrl = DEFAULT_HUB,
    api_key: ApiKey = None,
    json: Json = False,
) -> int:
    name, version = _model_version(ref)
    with client(hub, api_key) as c:
        lin = c.lineage(name, version)
    emit(lin, json, render_lineage)
    return 0


def performance(
    name: Name,
    version: Annotated[int | None, typer.Option("--version", help="Only this version.")] = None,
    device: Annotated[
        str | None, typer.Option("--device", help="One device (default: the fleet).")
    ] = None,
    group: Annotated[str | None, typer.Option("--group", help="Devices tagged GROUP.")] = None,
    since: Annotated[
        str,
        typer.Option(
            "--since",
            help="How far back: seconds or 10m, 2h, 1d; or a time such as 2026-12-06T10:00:00Z.",
        ),
    ] = "3600",
    hub: HubUrl = DEFAULT_HUB,
    api_key: ApiKey = None,
    json: Json = False,
) -> int:
    if device and group:
        raise typer.BadParameter("give --device or --group, not both", param_hint="--group")
    with client(hub, api_key) as c:
        perf, text = performance_report(
            c, name, version=version, device=device, group=group, start=since_value(since)
        )
    emit(perf, json, lambda _: text)
    return 0


def since_value(text: str) -> float | str:
    """A bare number is seconds back, ``2h`` (or ``-2h``) two hours back; anything else
    goes to the hub as typed: it reads ISO 8601 and names the forms when it cannot."""
    try:
        return time.time() - float(text)
    except ValueError:
        return f"-{text}" if re.fullmatch(r"\d+(\.\d+)?[smhdw]", text) else text
