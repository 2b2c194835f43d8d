"""Model builds on the operator's datasets: train (or import) → judge → sign, as runs.

``Builds.train(spec)`` and ``Builds.upload(...)`` check what they can at once (the dataset
exists, the settings fit it), then run in a background job with progress
(hub/ml/jobs.py). Each build, published or refused, is a ``TrainingRun`` (ADR 0014) with
its dataset versions, split, config, tuner trials, metrics and gates; a published one is
also a ``ModelVersion``. Lineage reads them back (hub/ml/lineage.py).

Exceptions::

    BuildError(detail, status)   a request refused before any job runs
"""

from __future__ import annotations

import dataclasses
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sqlalchemy import Engine
from sqlmodel import col, select

from hub.ml.build_specs import (
    MAX_TRIALS,
    ONNX_RUNTIME,
    TFLITE_RUNTIME,
    BuildError,
    HealthFor,
    RuntimesFor,
    TrainSpec,
    UploadSpec,
    no_budgets,
    onnx_only,
)
from hub.ml.data.store import DatasetStore, DatasetStoreError
from hub.ml.errors import ModelRefused, PipelineError
from hub.ml.jobs import Jobs, Progress
from hub.ml.manifest import BuiltModel
from hub.ml.pipeline import Dataset, PipelineConfig, import_model, split_arrays, train
from hub.ml.publishing import extra_runtimes, publish_version
from hub.ml.registry import Registry, RegistryError
from hub.ml.retrain import record_training
from hub.ml.runs import record_run
from hub.ml.tflite import is_tflite
from hub.ml.training_data import BUILTIN
from hub.ml.tuning import TUNE_SHARE, TuneError, tune
from hub.ml.unevaluated import import_unevaluated
from hub.store.running import most_run
from hub.store.tables import DataVersion, Job, TrainingRun, session

__all__ = ["BuildError", "Builds", "TrainSpec", "UploadSpec"]

log = logging.getLogger(__name__)


@dataclass
class _Run:
    """A run being built, written as a TrainingRun when it ends."""

    spec_config: dict[str, Any]
    source: str
    datasets: list[str]
    job_id: str | None = None
    trials: list[dict[str, Any]] = field(default_factory=list)
    split: dict[str, Any] = field(default_factory=dict)


class Builds:
    def __init__(
        self,
        engine: Engine,
        registry: Registry,
        datasets: DatasetStore,
        jobs: Jobs,
        runtimes_for: RuntimesFor | None = None,
        health_for: HealthFor | None = None,
    ) -> None:
        self.engine = engine
        self.registry = registry
        self.datasets = datasets
        self.jobs = jobs
        # device classes -> the runtimes they run models with (hub/fleet/classes.py)
        self.runtimes_for = runtimes_for or onnx_only
        # device classes -> the health budgets of their profiles
        self.health_for = health_for or no_budgets

    def extra_runtimes(self, device_classes: tuple[str, ...]) -> tuple[str, ...]:
        """The runtimes beyond onnxruntime that ``device_classes`` need, in order.

        Raises:
            BuildError: an unknown device class (the known ones named).
        """
        try:
            return extra_runtimes(self.runtimes_for, device_classes)
        except ValueError as e:
            raise BuildError(str(e)) from e

    # ------------------------------------------------------------------ submitting

    def train(self, spec: TrainSpec) -> Job:
        """Check the dataset and settings now; train, judge and publish in a job.

        Raises:
            BuildError: an unknown dataset, or settings that do not fit it.
        """
        version = self._dataset(spec.dataset)
        task = _task(version, spec.task)
        if spec.config.kind == "cnn" and version.kind == "tabular":
            raise BuildError(
                f"dataset {version.id} holds rows of features: a conv net needs images or"
                " windows (train --kind mlp)"
            )
        if not 0 <= spec.tune_trials <= MAX_TRIALS:
            raise BuildError(f"tune trials must be within 0..{MAX_TRIALS}")
        runtimes = self.extra_runtimes(spec.device_classes)
        return self.jobs.submit(
            "train", lambda progress: self._train(spec, version, task, runtimes, progress)
        )

    def upload(self, spec: UploadSpec) -> Job:
        """Check the dataset now; judge (and quantise) the model in a job.

        Raises:
            BuildError: no dataset named without ``unevaluated``, or an unknown dataset.
        """
        if spec.dataset is None and not spec.unevaluated:
            raise BuildError(
                "name the dataset to judge the model on (--dataset NAME[:VERSION]), or accept"
                " it unevaluated (--unevaluated)"
            )
        runtime = TFLITE_RUNTIME if is_tflite(spec.model_bytes) else ONNX_RUNTIME
        needed = self.runtimes_for(spec.device_classes) if spec.device_classes else {runtime}
        others = set(needed) - {runtime}
        if others:
            raise BuildError(
                f"an uploaded {runtime} file runs on {runtime} classes only, and"
                f" {', '.join(spec.device_classes)} need {', '.join(sorted(others))}:"
                " upload a file for each runtime as its own model, or train it here"
            )
        version = self._dataset(spec.dataset) if spec.dataset is not None else None
        return self.jobs.submit("upload", lambda progress: self._upload(spec, version, progress))

    def builtin(
        self,
        config: PipelineConfig,
        progress: Progress | None = None,
        *,
        device_classes: tuple[str, ...] = (),
        onnx_bytes: bytes | None = None,
    ) -> dict[str, Any]:
        """Train on (or judge a model file on) the built-in generator's rows, here and now.

        Raises:
            ModelRefused / PipelineError: refused or unusable (recorded as a run).
        """
        split = {"generator": BUILTIN, "seed": config.seed, "train_rows": config.n_train}
        split["holdout_rows"] = config.n_holdout
        run = _Run(_config_json(config), "trained", [BUILTIN], split=split)
        report = progress or _ignore
        if onnx_bytes is None:
            runtimes = self.extra_runtimes(device_classes)
            return self._build(
                run,
                config,
                device_classes,
                None,
                lambda: train(config, progress, runtimes=runtimes),
                report,
            )
        run.source = "uploaded"
        return self._build(
            run,
            config,
            device_classes,
            None,
            lambda: import_model(onnx_bytes, config, progress),
            report,
        )

    # ------------------------------------------------------------------ reading

    def runs(self, model: str | None = None) -> list[TrainingRun]:
        with session(self.engine) as s:
            q = select(TrainingRun).order_by(col(TrainingRun.created_at))
            if model is not None:
                q = q.where(TrainingRun.model == model)
            return list(s.exec(q))

    def run_for(self, model: str, version: int) -> TrainingRun | None:
        with session(self.engine) as s:
            q = select(TrainingRun).where(
                TrainingRun.model == model, TrainingRun.version == version
            )
            return s.exec(q).first()

    # ------------------------------------------------------------------ in the job

    def _train(
        self,
        spec: TrainSpec,
        version: DataVersion,
        task: str,
        runtimes: tuple[str, ...],
        progress: Progress,
    ) -> dict[str, Any]:
        data = self._split(version, task, spec.config)
        run = _Run(_config_json(spec.config), "trained", [version.id], split=dict(data.split))
        champion = self._champion(spec.config.name) if spec.champion else None

        def build() -> BuiltModel:  # the tuner first when asked: its failure is the run's
            params, steps = None, progress
            if spec.tune_trials:
                params = self._tune(spec, data, run, progress)

                def steps(stage: str, fraction: float) -> None:  # the build after the tuner
                    progress(stage, TUNE_SHARE[1] + fraction * (0.95 - TUNE_SHARE[1]))

            return train(
                spec.config,
                steps,
                dataset=data,
                champion=champion,
                params=params,
                runtimes=runtimes,
            )

        return self._build(run, spec.config, spec.device_classes, spec.created_by, build, progress)

    def _tune(
        self, spec: TrainSpec, data: Dataset, run: _Run, progress: Progress
    ) -> dict[str, Any]:
        try:
            result = tune(
                data,
                spec.config,
                spec.tune_trials,
                spec.tune_timeout_s,
                progress,
                max_size_bytes=spec.tune_max_bytes,
            )
        except TuneError as e:
            run.trials = e.trials
            raise
        run.trials = result.trials
        run.split["tuner_default_value"] = result.default_value
        return result.best_params

    def _upload(
        self, spec: UploadSpec, version: DataVersion | None, progress: Progress
    ) -> dict[str, Any]:
        cfg = _config_json(spec.config) | {"quantize": spec.quantize, "file": spec.filename}
        if version is None:
            run = _Run(cfg | {"unevaluated": True}, "uploaded", [])
            return self._build(
                run,
                spec.config,
                spec.device_classes,
                spec.created_by,
                lambda: _unevaluated(spec, progress),
                progress,
            )
        data = self._split(version, version.task, spec.config)
        run = _Run(cfg, "uploaded", [version.id], split=dict(data.split))
        champion = self._champion(spec.config.name) if spec.champion else None
        return self._build(
            run,
            spec.config,
            spec.device_classes,
            spec.created_by,
            lambda: import_model(
                spec.model_bytes,
                spec.config,
                progress,
                dataset=data,
                quantize=spec.quantize,
                champion=champion,
            ),
            progress,
        )

    def _build(
        self,
        run: _Run,
        config: PipelineConfig,
        device_classes: tuple[str, ...],
        created_by: str | None,
        build: Callable[[], BuiltModel],
        progress: Progress,
    ) -> dict[str, Any]:
        run_id = uuid.uuid4().hex[:16]
        try:
            built = build()
        except ModelRefused as e:
            self._record(run_id, run, config, "refused", created_by, e.metrics, e.gates, str(e))
            raise
        except Exception as e:  # a failed build is a run too, whatever failed
            detail = str(e) if isinstance(e, PipelineError) else f"{type(e).__name__}: {e}"
            self._record(run_id, run, config, "failed", created_by, {}, [], detail)
            raise
        progress("sign", 0.95)
        published = publish_version(
            self.registry,
            built,
            config=config,
            source=run.source,
            device_classes=device_classes,
            health_for=self.health_for,
            dataset=run.datasets[0] if run.datasets else None,
        )
        row = published.row
        record_training(self.engine, row.name, row.version, config, run.datasets)
        self._record(
            run_id,
            run,
            config,
            "published",
            created_by,
            built.metrics,
            list(built.gates),
            None,
            version=row.version,
        )
        return {
            "run": run_id,
            "name": row.name,
            "version": row.version,
            "task": built.task,
            "sha256": row.sha256,
            "format": row.format,
            "runtime": row.runtime,
            "notes": list(built.notes),
            "size_bytes": row.size_bytes,
            "size_fp32": row.size_fp32,
            "accuracy_fp32": row.accuracy_fp32,
            "accuracy_int8": row.accuracy_int8,
            "metrics": built.metrics,
            "gates": list(built.gates),
            "datasets": run.datasets,
            "trials": len(run.trials),
            "target": row.target,
            "artefacts": published.artefacts,
        }

    def _record(
        self,
        run_id: str,
        run: _Run,
        config: PipelineConfig,
        status: str,
        created_by: str | None,
        metrics: dict[str, Any],
        gates: list[dict[str, Any]],
        refusal: str | None,
        *,
        version: int | None = None,
    ) -> None:
        record_run(
            self.engine,
            id=run_id,
            model=config.name,
            version=version,
            status=status,
            source=run.source,
            job_id=run.job_id,
            datasets=run.datasets,
            split=run.split,
            config=run.spec_config,
            metrics=metrics,
            gates=gates,
            trials=run.trials,
            refusal=refusal,
            created_by=created_by,
        )

    def _dataset(self, ref: str) -> DataVersion:
        try:
            return self.datasets.get(ref)
        except DatasetStoreError as e:
            raise BuildError(e.detail, e.status) from e

    def base_rows(self, ref: str, config: PipelineConfig) -> Dataset:
        """A dataset version's rows split as a build with ``config`` splits them."""
        version = self.datasets.get(ref)
        return self._split(version, version.task, config)

    def _split(self, version: DataVersion, task: str, config: PipelineConfig) -> Dataset:
        x, y = self.datasets.arrays(version)
        schema = version.data_schema
        classes = tuple(schema.get("classes") or ())
        if task == "regression" and version.task == "classification":
            y = _class_values(classes, y, version.id)
            classes = ()
        names = [f["name"] for f in schema.get("features", [])]
        features = names if len(names) == int(x[0].size) else None
        return split_arrays(
            x,
            y,
            task=task,
            classes=classes,
            features=features,
            holdout_fraction=config.holdout_fraction,
            seed=config.seed,
            kind=version.kind,
        )

    def _champion(self, name: str) -> tuple[int, bytes] | None:
        """The version most devices run now (else the latest published), and its file."""
        with session(self.engine) as s:
            running = most_run(s, name)
        try:
            row = self.registry.get(name, running)
        except RegistryError:
            return None
        return row.version, self.registry.store.get(row.sha256)


def _ignore(stage: str, fraction: float) -> None:
    """No one follows this build's progress."""


def _task(version: DataVersion, asked: str | None) -> str:
    if asked is None or asked == version.task:
        return version.task
    if asked == "regression" and _numeric_classes(version.data_schema.get("classes") or ()):
        return asked
    raise BuildError(
        f"dataset {version.id} is a {version.task} dataset (label {version.label!r});"
        f" it cannot train a {asked} model"
    )


def _numeric_classes(classes: Any) -> bool:
    try:
        [float(c) for c in classes]
    except (TypeError, ValueError):
        return False
    return True


def _class_values(classes: tuple[str, ...], y: Any, ref: str) -> Any:
    values = np.asarray([float(c) for c in classes], dtype=np.float32)
    return values[y]


def _unevaluated(spec: UploadSpec, progress: Progress) -> BuiltModel:
    progress("evaluate", 0.5)
    return import_unevaluated(spec.model_bytes, spec.config)


def _config_json(config: PipelineConfig) -> dict[str, Any]:
    return {
        k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(config).items()
    }
