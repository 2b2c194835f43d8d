"""``edgefleet demo --dataset FILE``: the whole path on the operator's own data.

The steps an operator takes, each with what it shows, on one machine with real parts:

1. **upload** the file as a dataset version (the schema and task the hub found);
2. **train** a model on it (progress, then fp32 beside int8 and the gates);
3. **roll it out** to simulated devices (the waves) that infer on the file's rows: by
   default the rows the hub held out to judge the model (it never trained on them), each
   row once per device in the device's own order (simulator/rows.py, simulator/player.py);
   a share of the true labels is reported later, by prediction id;
4. **live figures**: accuracy (or MAE and RMSE) per model version from
   ``GET /telemetry/performance``, once every label the devices reported has arrived,
   beside the hold-out figure training gave;
5. the **lineage** of the version.

Playing each hold-out row the same number of times on the same int8 file makes the live
figure the hold-out figure: a difference means the devices do not run what was judged,
or labels were lost on the way.

Exceptions::

    DemoDataError     the file cannot be played (bad rows, or the simulator and the hub
                      read it differently); a refused upload or build is the client's
                      HubClientError
"""

from __future__ import annotations

import hashlib
import math
import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgefleet.client import HubClient
from edgefleet.datasets_cli import describe
from edgefleet.demo import DemoOptions, DemoStage, demo_stage, deploy, wait_online
from edgefleet.models_cli import figures, performance_report, render_lineage
from edgefleet.progress import JobProgress
from hub.ml.data.files import guess_format, read_dataset
from hub.ml.training_data import holdout_indices
from simulator.fleet import Fleet
from simulator.player import Tally
from simulator.rows import RowsError, RowSource, load_rows

__all__ = ["DataOptions", "DemoDataError", "run_dataset_demo"]

JOB_TIMEOUT_S = 600.0  # for a build
LABELS_TIMEOUT_S = 30.0  # after the devices played, for their labels to reach the hub
POLL_S = 0.25  # s
CALLS_PER_S = 2.0  # inference calls a second per device, as in the usual demo
# The health check's p95 single-row latency budget (µs) for models this demo trains. Its
# devices share one process and the GIL with the hub's threads (ingest, drift scoring of
# 256 features for a 16x16 image), which keep it up to a switch interval (5 ms) at a
# time: with 50 devices on digits, 1 to 4 failed the hub's default 5 ms (p95 5.2-10.5 ms)
# on a 45 µs model. As in tests/test_e2e.py, the budget here measures that crowd.
CROWD_LATENCY_BUDGET_US = 50_000.0


class DemoDataError(RuntimeError):
    """The dataset cannot be played on the simulated devices; the message says why."""


@dataclass(frozen=True)
class DataOptions:
    """What ``edgefleet demo --dataset`` adds to :class:`~edgefleet.demo.DemoOptions`."""

    file: Path
    label: str | None = None  # the label column (CSV); NPZ: y
    task: str | None = None  # classification | regression; the hub infers it by default
    kind: str = "mlp"  # mlp | cnn
    name: str | None = None  # the dataset's and the model's name (default: the file's)
    play: str = "holdout"  # holdout: the rows that judged the model; all: every row
    passes: int = 1  # plays of every row on each device
    late_share: float = 0.3  # of the labels, reported later by prediction id
    late_after_s: float = 2.0  # how much later (s)
    window_s: float = 5.0  # the devices' telemetry window (s), as in the usual demo


def run_dataset_demo(
    opts: DemoOptions, data: DataOptions, say: Callable[[str], None] = print
) -> dict[str, Any]:
    """Upload, train, roll out, play the rows, and show the live figures (module docstring).

    Args:
        say: where each step's lines go (the progress of a step goes to stderr).

    Returns:
        the summary: dataset, model (with its hold-out figures), rollout, devices, live
        performance per version from the hub, and the fleet's own counts.

    Raises:
        DemoDataError: the rows cannot be played.
        HubClientError: the hub refused the upload or the build.
    """
    name = data.name or model_name(data.file)
    source = _load(data)  # a bad file fails here, before the hub starts
    with demo_stage(opts, prefix="edgefleet-demo-data-") as stage:
        client = stage.client
        version = client.upload_dataset(name, data.file, label=data.label, task=data.task)
        say(f"upload {describe(version)}")
        model = _train(client, name, version["id"], opts, data, say)
        rows, what = _rows_to_play(client, source, model, data)
        say(f"rows   {what}")
        fleet = _start_fleet(stage, opts, data, rows)
        wait_online(client, opts.devices, stage.progress)
        rollout_id, seconds = deploy(client, model, opts, stage.progress)
        if (refused := _refusals(client, rollout_id)) is not None:
            say(refused)
        played = _play(stage, fleet, data, name)
        perf, live = performance_report(client, name)  # as `edgefleet models performance`
        say(f"live   {live}\n{_labels_line(played)}")
        lineage = client.lineage(name, model["version"])
        say(render_lineage(lineage))
    return {
        "dataset": {k: version[k] for k in ("id", "sha256", "rows", "task", "kind", "label")},
        "model": {k: model[k] for k in ("name", "version", "task", "sha256", "metrics", "gates")},
        "rollout": {"id": rollout_id, "seconds_to_converge": seconds},
        "rows_played": len(rows),
        "devices": opts.devices,
        "versions_running": played["versions"],
        "performance": perf,
        "fleet": played,
        "running": lineage["running"]["devices"],
    }


def model_name(path: Path) -> str:
    """A dataset and model name from a file's name: ``Wine Data.csv`` -> ``wine-data``."""
    stem = re.sub(r"[^a-z0-9_-]+", "-", path.stem.lower()).strip("-_")
    return (stem or "data")[:48]


def _load(data: DataOptions) -> RowSource:
    if data.play not in ("holdout", "all"):
        raise DemoDataError(f"play must be holdout or all, got {data.play!r}")
    if not 0 <= data.late_share <= 1 or data.late_after_s < 0 or data.passes < 1:
        raise DemoDataError("need a late share within 0..1, late_after_s >= 0, passes >= 1")
    try:
        return load_rows(data.file, data.label)
    except RowsError as e:
        raise DemoDataError(str(e)) from e


def _train(
    client: HubClient,
    name: str,
    dataset: str,
    opts: DemoOptions,
    data: DataOptions,
    say: Callable[[str], None],
) -> dict[str, Any]:
    settings = {
        "name": name,
        "dataset": dataset,
        "kind": data.kind,
        "probation_s": opts.probation_s,
        "probation_min_inferences": opts.probation_min_inferences,
        "latency_budget_us": opts.latency_budget_us or CROWD_LATENCY_BUDGET_US,
    }
    if data.task is not None:
        settings["task"] = data.task
    job = client.train(**settings)
    done = client.wait_job(job["id"], timeout=JOB_TIMEOUT_S, on_progress=JobProgress())
    model: dict[str, Any] = done["result"]
    say(
        f"model  {model['name']} v{model['version']} ({model['task']}, {data.kind}) signed:"
        f" {model['target']}, sha256 {model['sha256'][:12]}"
    )
    say(figures(model.get("metrics") or {}, model.get("gates") or []))
    return model


def _rows_to_play(
    client: HubClient, source: RowSource, model: dict[str, Any], data: DataOptions
) -> tuple[RowSource, str]:
    """The rows the devices play, and a line that says which."""
    late = (
        f"; {data.late_share:.0%} of the labels come {data.late_after_s:g} s later, by"
        " prediction id"
    )
    times = "once" if data.passes == 1 else f"{data.passes} times"
    if data.play == "all":
        return source, f"each device plays all {len(source)} rows of {data.file.name} {times}{late}"
    split = client.lineage(model["name"], model["version"])["training"]["split"]
    hold = holdout_rows(data.file, data.label, data.task, split, source)
    return source.subset(hold), (
        f"each device plays the {len(hold)} rows of {data.file.name} held out to judge"
        f" v{model['version']} (never trained on) {times}, in its own order{late}"
    )


def holdout_rows(
    path: Path,
    label: str | None,
    task: str | None,
    split: dict[str, Any],
    source: RowSource,
) -> np.ndarray[Any, np.dtype[np.intp]]:
    """The indices of the rows a build held out, found again from its recorded split.

    The file is read as the hub read it (its own reader) and split with the recorded
    seed and fraction; the indices must hash to the recorded ``holdout_sha256``, and the
    simulator's reading of those rows must give the same labels.

    Raises:
        DemoDataError: the hash or the labels differ.
    """
    fmt = guess_format(path.name, path.read_bytes()[:4096])
    parsed = read_dataset(path, fmt, label=label, task=task)
    hold = holdout_indices(
        parsed.y,
        stratified=bool(split["stratified"]),
        holdout_fraction=float(split["holdout_fraction"]),
        seed=int(split["seed"]),
    )
    digest = hashlib.sha256(hold.astype("<i8").tobytes()).hexdigest()
    if digest != split.get("holdout_sha256"):
        raise DemoDataError(f"{path.name}: the hold-out found again is not the one recorded")
    if len(source) != len(parsed.y):
        raise DemoDataError(
            f"{path.name}: the simulator reads {len(source)} rows where the hub read"
            f" {len(parsed.y)}"
        )
    classes = parsed.schema.get("classes")
    if classes:
        ours = source.subset(hold).class_names()
        theirs = np.asarray(classes, dtype=np.str_)[parsed.y[hold]]
        if not np.array_equal(ours, theirs):
            i = int(np.argmin(ours == theirs))
            raise DemoDataError(
                f"{path.name}: row {int(hold[i]) + 1}: the simulator reads the label"
                f" {ours[i]!r} where the hub read {theirs[i]!r}"
            )
    return hold


def _start_fleet(stage: DemoStage, opts: DemoOptions, data: DataOptions, rows: RowSource) -> Fleet:
    # One pass over the rows in about infer_s seconds (at least the demo's usual rate), in
    # as many calls a second as the usual demo makes: more rows a call, not more calls, so
    # the devices' Python does not crowd the health checks measured beside it.
    rate = max(10.0, len(rows) * data.passes / opts.infer_s)
    return stage.start_fleet(
        stage.fleet_config(
            opts.devices,
            rows=rows,
            row_passes=data.passes,
            late_label_share=data.late_share,
            late_label_after_s=data.late_after_s,
            rows_per_s=rate,
            batch=max(5, math.ceil(rate / CALLS_PER_S)),
            window_s=data.window_s,
        )
    )


def _refusals(client: HubClient, rollout_id: str) -> str | None:
    """A line naming the devices the rollout did not make healthy, by state and reason."""
    rows = client.rollout_devices(rollout_id)
    why = Counter(
        f"{d['state']}" + (f" ({d['reason']})" if d.get("reason") else "")
        for d in rows
        if d["state"] != "healthy"
    )
    if not why:
        return None
    return "rollout not healthy: " + ", ".join(f"{n} {w}" for w, n in sorted(why.items()))


def _play(stage: DemoStage, fleet: Fleet, data: DataOptions, name: str) -> dict[str, Any]:
    """Wait for every device to play its passes and for its labels to reach the hub;
    the fleet's own counts then."""
    progress = stage.progress
    deadline = time.monotonic() + _play_timeout(fleet, data)
    while not _played(fleet) and time.monotonic() < deadline:
        t = Tally.total(d.tally for d in fleet.devices)
        progress.show(f"infer  {t.inferences:,} rows inferred, {t.labelled:,} labelled")
        time.sleep(POLL_S)
    # Labels due later, then the window that carries them: the hub has them all when its
    # count is the devices' own.
    deadline = time.monotonic() + data.late_after_s + LABELS_TIMEOUT_S
    while True:
        t = Tally.total(d.tally for d in fleet.devices)
        stage.hub.ingest.flush()
        at_hub = sum(v["labelled"] for v in stage.client.performance(name)["versions"])
        progress.show(f"labels {at_hub:,}/{t.labelled:,} at the hub, {t.pending} on their way")
        if (t.pending == 0 and at_hub >= t.labelled) or time.monotonic() > deadline:
            break
        time.sleep(POLL_S)
    stage.stop_fleet()
    fs = fleet.summary()
    progress.done(
        f"infer  {fs.inferences:,} rows inferred on {fs.devices} devices; {fs.labelled:,}"
        f" labelled ({fs.late_joined:,} of them later, by prediction id), {at_hub:,} at the hub"
    )
    return {
        "versions": fs.versions,
        "inferences": fs.inferences,
        "labelled": fs.labelled,
        "correct": fs.correct,
        "abs_err_sum": fs.abs_err_sum,
        "late_labels": fs.late_labels,
        "late_joined": fs.late_joined,
        "late_refused": fs.late_refused,
        "unmatched_labels": fs.unmatched_labels,
        "labelled_at_hub": at_hub,
    }


def _played(fleet: Fleet) -> bool:
    """Every device that runs a model played its passes (after the rollout, one without a
    model is one the rollout failed on: it will not play)."""
    return all(
        d.player is None or d.player.finished or d.device.predictor.active is None
        for d in fleet.devices
    )


def _play_timeout(fleet: Fleet, data: DataOptions) -> float:
    """Long enough for the slowest device to play its passes at its rate, and then some."""
    cfg = fleet.config
    rows = len(cfg.rows) if cfg.rows is not None else 0
    return 3 * rows * data.passes / cfg.rows_per_s + 30.0


def _labels_line(played: dict[str, Any]) -> str:
    return (
        f"  devices labelled {played['labelled']:,} rows: {played['late_joined']:,} by a"
        f" late label ({played['late_refused']} refused), the rest with the call"
    )
