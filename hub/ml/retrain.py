"""Retrain a model on its baseline data plus rows captured from devices (docs/capture.md).

``retrain(registry, datasets, name, dataset_ids)`` takes the model's current version,
its recorded training config (``TrainingRecord``: the generator rows it was trained on,
and any datasets an earlier retrain added), adds the labelled rows of the given dataset
versions, and runs the pipeline's own steps (hub/ml/pipeline.py ``train``: fit → ONNX →
int8 → evaluate → gate → baseline → golden rows), then signs and publishes the result as
the next version. Captured rows are split seeded into training and held-out rows; the
gate sees the original held-out rows and the captured ones, and the result reports the
accuracy of the new version (and of the one it replaces) on each part apart.

The new version keeps the base version's device classes and, like a build (ADR 0020),
carries an artefact per runtime they run: a ``.tflite`` for LiteRT classes next to the
int8 ONNX file, each judged and gated on the same rows (a sibling refused by its gate
refuses the whole version, unsigned) and signed with the classes' health budgets through
hub/ml/publishing.py, as hub/ml/builds.py publishes. Each retrain is a training run:
published, refused or failed.

``Retrainer.submit(...)`` runs it as a background job with progress (hub/ml/jobs.py).

Exceptions::

    RetrainError(detail)   no such model, no labelled captured rows, rows of another shape
    (and the pipeline's PipelineError / GateError, and DatasetError)
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from typing import Any, Final, NamedTuple

import numpy as np
import numpy.typing as npt
from sqlalchemy import Engine

from hub.ml.build_specs import HealthFor, RuntimesFor, no_budgets, onnx_only
from hub.ml.data.captures import Datasets
from hub.ml.jobs import Jobs, Progress
from hub.ml.manifest import BuiltModel
from hub.ml.pipeline import (
    Dataset,
    ModelRefused,
    PipelineConfig,
    PipelineError,
    builtin_dataset,
    evaluate,
    train,
)
from hub.ml.publishing import extra_runtimes, publish_version
from hub.ml.registry import Registry
from hub.ml.runs import record_run
from hub.ml.training_data import BUILTIN
from hub.store.tables import Job, ModelVersion, TrainingRecord, session

log = logging.getLogger(__name__)

BaseRows = Callable[[str, PipelineConfig], Dataset]  # (dataset version id, config) -> rows

HOLDOUT_FRACTION: Final = 0.25  # of the captured labelled rows, kept apart to evaluate
MAX_CAPTURED_WEIGHT: Final = 100  # times a captured training row may be repeated


class RetrainError(PipelineError):
    """A retrain that cannot start: nothing to add, or rows that do not fit the model."""


def record_training(
    engine: Engine,
    name: str,
    version: int,
    config: PipelineConfig,
    datasets: Sequence[str] = (),
) -> None:
    """Remember how ``name`` v``version`` was trained, so a retrain can start from it."""
    with session(engine) as s:
        s.merge(
            TrainingRecord(
                name=name,
                version=version,
                config=_config_dict(config),
                datasets=list(datasets),
            )
        )
        s.commit()


def training_record(engine: Engine, name: str, version: int) -> TrainingRecord | None:
    with session(engine) as s:
        return s.get(TrainingRecord, (name, version))


def retrain(
    registry: Registry,
    datasets: Datasets,
    name: str,
    dataset_ids: Sequence[str],
    progress: Progress | None = None,
    *,
    holdout_fraction: float = HOLDOUT_FRACTION,
    captured_weight: int = 1,
    seed: int | None = None,
    base_rows: BaseRows | None = None,
    runtimes_for: RuntimesFor = onnx_only,
    health_for: HealthFor = no_budgets,
) -> dict[str, Any]:
    """Train the next version of ``name`` on its baseline plus captured rows; publish it.

    Args:
        dataset_ids: dataset versions (hub/ml/data/captures.py) of this model; their labelled rows
            are used, unlabelled ones are not.
        holdout_fraction: share of the captured labelled rows kept apart to evaluate.
        captured_weight: how many times each captured training row counts (1..100).
        seed: for the split of captured rows; the base config's seed by default.
        base_rows: the rows of a dataset version (``NAME:SEQ``) split as for training; a
            model trained on one retrains on it, never on the built-in generator.
        runtimes_for, health_for: as a build's: the version's device classes get an
            artefact per runtime they run (ADR 0020) with their health budgets.

    Raises:
        RetrainError, DatasetError, RegistryError, PipelineError, ModelRefused (GateError).
    """
    _check_options(holdout_fraction, captured_weight, dataset_ids)
    if progress:
        progress("datasets", 0.0)
    base = registry.get(name)
    classes, runtimes = _class_runtimes(base, runtimes_for)
    record = training_record(registry.engine, name, base.version)
    config = _base_config(name, record)
    origin, all_ids = _dataset_ids(record, dataset_ids)
    base_data = _origin_rows(name, origin, config, base_rows)
    mixed = _mix(
        base_data,
        *_captured_rows(datasets, name, all_ids),
        holdout_fraction=holdout_fraction,
        captured_weight=captured_weight,
        seed=config.seed if seed is None else seed,
    )
    run = _RetrainRun(registry.engine, config, [*origin, *all_ids], mixed, captured_weight)
    built = run.build(lambda: train(config, progress, dataset=mixed.data, runtimes=runtimes))
    scores = _compare(built.model_bytes, registry.store.get(base.sha256), base_data, mixed)
    if progress:
        progress("sign", 0.95)
    published = publish_version(
        registry,
        built,
        config=config,
        source="retrained",
        device_classes=classes,
        health_for=health_for,
    )
    row = published.row
    record_training(registry.engine, name, row.version, config, run.datasets)
    run.record("published", built.metrics, list(built.gates), version=row.version)
    log.info("%s v%d retrained from v%d on %s", name, row.version, base.version, all_ids)
    return {
        "name": row.name,
        "version": row.version,
        "from_version": base.version,
        "sha256": row.sha256,
        "target": row.target,
        "accuracy_fp32": row.accuracy_fp32,
        "accuracy_int8": row.accuracy_int8,
        **{k: round(v, 4) for k, v in scores.items()},
        "datasets": all_ids,
        "rows_original": len(base_data.x_train),
        "rows_captured_train": mixed.n_captured_train,
        "rows_captured_holdout": len(mixed.x_captured_holdout),
        "base_config": "recorded" if record else "default",
        "artefacts": published.artefacts,
    }


class Retrainer:
    """Runs :func:`retrain` as background jobs (poll them with ``Jobs.get``)."""

    def __init__(
        self,
        registry: Registry,
        datasets: Datasets,
        jobs: Jobs,
        base_rows: BaseRows | None = None,
        runtimes_for: RuntimesFor | None = None,
        health_for: HealthFor | None = None,
    ) -> None:
        self.registry = registry
        self.datasets = datasets
        self.jobs = jobs
        self.base_rows = base_rows
        # device classes -> the runtimes they run, their health budgets (as Builds has them)
        self.runtimes_for = runtimes_for or onnx_only
        self.health_for = health_for or no_budgets

    def submit(self, name: str, dataset_ids: Sequence[str], **options: Any) -> Job:
        """Check the model and datasets now, then retrain in a job.

        Raises:
            RegistryError / DatasetError: an unknown model or dataset (before any job).
        """
        ids = list(dataset_ids)
        self.registry.get(name)  # RegistryError now, not in the job
        for dataset_id in ids:
            self.datasets.dataset_row(dataset_id)  # DatasetError now, not in the job
        return self.jobs.submit(
            "retrain",
            lambda progress: retrain(
                self.registry,
                self.datasets,
                name,
                ids,
                progress,
                base_rows=self.base_rows,
                runtimes_for=self.runtimes_for,
                health_for=self.health_for,
                **options,
            ),
        )


# ------------------------------------------------------------------ helpers


def _check_options(
    holdout_fraction: float, captured_weight: int, dataset_ids: Sequence[str]
) -> None:
    if not 0 < holdout_fraction < 1:
        raise RetrainError("holdout_fraction must be within (0, 1)")
    if not 1 <= captured_weight <= MAX_CAPTURED_WEIGHT:
        raise RetrainError(f"captured_weight must be within 1..{MAX_CAPTURED_WEIGHT}")
    if not dataset_ids:
        raise RetrainError("name at least one dataset")


def _class_runtimes(
    base: ModelVersion, runtimes_for: RuntimesFor
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The base version's device classes, and the runtimes beyond onnxruntime they run."""
    classes = tuple(c for c in base.device_classes.split(",") if c)
    try:
        return classes, extra_runtimes(runtimes_for, classes)
    except ValueError as e:  # a class the hub no longer knows
        raise RetrainError(f"{base.name} v{base.version}: {e}") from e


def _dataset_ids(
    record: TrainingRecord | None, dataset_ids: Sequence[str]
) -> tuple[list[str], list[str]]:
    """The dataset version the model was trained on (or the generator), and every captured
    dataset it learns from: those an earlier retrain added, then ``dataset_ids``."""
    recorded = record.datasets if record else []
    origin = [d for d in recorded if ":" in d][:1]  # a dataset version, or the generator
    captured = [d for d in recorded if ":" not in d]
    return origin, list(dict.fromkeys([*captured, *dataset_ids]))


class _RetrainRun:
    """The retrain as a training run (ADR 0014), so its lineage answers like any build's:
    published, or refused by a gate (of the ONNX file or of a sibling) before signing, or
    failed."""

    def __init__(
        self,
        engine: Engine,
        config: PipelineConfig,
        datasets: list[str],
        mixed: _Mixed,
        captured_weight: int,
    ) -> None:
        self.engine = engine
        self.config = config
        self.datasets = datasets
        self.split = dict(mixed.data.split)
        self.captured_weight = captured_weight

    def build(self, build: Callable[[], BuiltModel]) -> BuiltModel:
        """``build()``; a refusal or a failure is recorded as this run, then raised."""
        try:
            built = build()
        except ModelRefused as e:
            self.record("refused", e.metrics, e.gates, refusal=str(e))
            raise
        except Exception as e:  # a failed retrain is a run too, whatever failed
            detail = str(e) if isinstance(e, PipelineError) else f"{type(e).__name__}: {e}"
            self.record("failed", {}, [], refusal=detail)
            raise
        return built

    def record(
        self,
        status: str,
        metrics: dict[str, Any],
        gates: list[dict[str, Any]],
        *,
        version: int | None = None,
        refusal: str | None = None,
    ) -> None:
        record_run(
            self.engine,
            model=self.config.name,
            version=version,
            status=status,
            source="retrained",
            datasets=self.datasets,
            split=self.split,
            config=_config_dict(self.config) | {"captured_weight": self.captured_weight},
            metrics=metrics,
            gates=gates,
            refusal=refusal,
        )


def _origin_rows(
    name: str, origin: list[str], config: PipelineConfig, base_rows: BaseRows | None
) -> Dataset:
    """The rows the model was trained on: its dataset version's, or the generator's."""
    if origin and origin[0] != BUILTIN:
        if base_rows is None:
            raise RetrainError(f"{name} was trained on {origin[0]}, which this hub cannot read")
        data = base_rows(origin[0], config)
    else:  # trained on the built-in generator: its rows are the base
        data = builtin_dataset(config)
    if not data.is_classifier:
        raise RetrainError(
            f"{name} is a regressor; captured rows carry class labels, so it cannot be"
            " retrained on them (upload a new dataset version and train on it)"
        )
    return data


def _base_config(name: str, record: TrainingRecord | None) -> PipelineConfig:
    """The recorded config of the current version, else the defaults (named ``name``)."""
    if record is None:
        log.warning("%s: no training record; retraining from the default config", name)
        return PipelineConfig(name=name)
    known = {f.name for f in dataclasses.fields(PipelineConfig)}
    fields = {k: v for k, v in record.config.items() if k in known}
    if "hidden" in fields:
        fields["hidden"] = tuple(fields["hidden"])
    return PipelineConfig(**{**fields, "name": name})


def _config_dict(config: PipelineConfig) -> dict[str, Any]:
    out = dataclasses.asdict(config)
    out["hidden"] = list(config.hidden)
    return out


class _Mixed(NamedTuple):
    """Baseline rows plus captured rows, and the captured held-out rows on their own."""

    data: Dataset
    x_captured_holdout: npt.NDArray[np.float32]
    y_captured_holdout: npt.NDArray[np.int64]
    n_captured_train: int  # captured training rows, before weighting


def _mix(
    base: Dataset,
    x_cap: npt.NDArray[np.float32],
    y_cap: npt.NDArray[np.int64],
    *,
    holdout_fraction: float,
    captured_weight: int,
    seed: int,
) -> _Mixed:
    """Split the captured rows seeded; add them to the baseline's training and held-out rows.

    Each captured training row is repeated ``captured_weight`` times. Captured rows take
    the model's row shape (a conv net's image or window; ``x_cap`` holds them flat).

    Raises:
        RetrainError: the captured rows have another width, or are too few to split.
    """
    if x_cap.shape[1] != len(base.features):
        raise RetrainError(
            f"captured rows have {x_cap.shape[1]} features, the model {len(base.features)}"
        )
    x_cap = x_cap.reshape(len(x_cap), *base.row_shape)
    order = np.random.default_rng(seed).permutation(len(x_cap))
    n_hold = max(1, round(len(x_cap) * holdout_fraction))
    if len(x_cap) - n_hold < 1:
        raise RetrainError(f"{len(x_cap)} labelled captured row(s): too few to split")
    hold, tr = np.sort(order[:n_hold]), np.sort(order[n_hold:])
    x_tr, y_tr = np.repeat(x_cap[tr], captured_weight, 0), np.repeat(y_cap[tr], captured_weight)
    data = Dataset(
        np.concatenate([base.x_train, x_tr]),
        np.concatenate([base.y_train, y_tr]),
        np.concatenate([base.x_holdout, x_cap[hold]]),
        np.concatenate([base.y_holdout, y_cap[hold]]),
        base.features,
        base.classes,
        base.task,
        dict(base.split),
    )
    return _Mixed(data, x_cap[hold], y_cap[hold], len(tr))


def _compare(new: bytes, before: bytes, base: Dataset, mixed: _Mixed) -> dict[str, float]:
    """Accuracy of the new and the previous model file on each held-out part apart."""
    x_hold, y_hold = mixed.x_captured_holdout, mixed.y_captured_holdout
    return {
        "accuracy_original_holdout": evaluate(new, base.x_holdout, base.y_holdout),
        "accuracy_captured_holdout": evaluate(new, x_hold, y_hold),
        "previous_accuracy_captured_holdout": evaluate(before, x_hold, y_hold),
        "previous_accuracy_original_holdout": evaluate(before, base.x_holdout, base.y_holdout),
    }


def _captured_rows(
    datasets: Datasets, name: str, dataset_ids: Sequence[str]
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
    """The labelled rows of the datasets (all of this model and of the model's width)."""
    xs, ys = [], []
    for dataset_id in dataset_ids:
        row = datasets.dataset_row(dataset_id)
        if row.model != name:
            raise RetrainError(f"dataset {dataset_id} was captured from {row.model}, not {name}")
        data = datasets.dataset(dataset_id)
        x = data.x[data.labelled].astype(np.float32)
        xs.append(x.reshape(len(x), -1))  # flat: a conv net's rows take their shape in _mix
        ys.append(data.labels[data.labelled].astype(np.int64))
    x = np.concatenate(xs) if xs else np.zeros((0, 0), dtype=np.float32)
    y = np.concatenate(ys) if ys else np.zeros(0, dtype=np.int64)
    if len(x) == 0:
        raise RetrainError("the datasets hold no labelled rows to train on")
    return x, y
