"""``--tune N``: a bounded hyperparameter search (Optuna's TPE, N trials, a time budget).

Each trial builds a model with its settings on the training rows minus a validation
part (carved out of the training rows with the build's seed, so the hold-out that
gates the final model never steers the search; three such splits, averaged, when the
data is small), quantises it to int8 and scores the int8 file on the validation rows:
accuracy for a classifier, minus the MAE for a regressor. A trial whose int8 file is
over the size budget or whose per-row latency is over the health check's budget scores
nothing. Trial 0 is the default settings, so the
gain over defaults is in the record. The best settings then go through the normal build
and its gates.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import optuna

from hub.ml.config import PipelineConfig
from hub.ml.errors import PipelineError
from hub.ml.metrics import headline, score
from hub.ml.pipeline import fit_model, to_int8
from hub.ml.training_data import Dataset, split_arrays

__all__ = ["TUNE_SHARE", "TuneError", "TuneResult", "tune"]

log = logging.getLogger(__name__)

Progress = Callable[[str, float], None]
VALIDATION_FRACTION: Final = 0.2  # of the training rows, to score trials on
# Below SMALL_ROWS training rows one validation split is too noisy to choose by (wine:
# 28 rows, where the tuned pick lost 2.8 points on the hold-out): the trial's score is
# the mean over REPEATS_SMALL splits with successive seeds.
SMALL_ROWS: Final = 5000
REPEATS_SMALL: Final = 3
TUNE_SHARE: Final = (0.05, 0.55)  # the overall job fraction the tuner reports within
MLP_WIDTHS: Final = (16, 32, 64, 128)


class TuneError(PipelineError):
    """No trial produced a model within the budgets; ``trials`` says what each did."""

    def __init__(self, detail: str, trials: list[dict[str, Any]]) -> None:
        super().__init__(detail)
        self.trials = trials


@dataclass(frozen=True)
class TuneResult:
    best_params: dict[str, Any]
    trials: list[dict[str, Any]]  # every trial: number, params, value, figures, state
    default_value: float | None  # trial 0's (the default settings) objective


def tune(
    data: Dataset,
    config: PipelineConfig,
    n_trials: int,
    timeout_s: float,
    progress: Progress | None = None,
    *,
    max_size_bytes: int | None = None,
) -> TuneResult:
    """Search settings for ``config.kind`` on ``data``; the best trial's settings.

    Raises:
        TuneError: no trial produced a model within the budgets.
    """
    splits = REPEATS_SMALL if len(data.x_train) < SMALL_ROWS else 1
    inner = [
        split_arrays(
            data.x_train,
            data.y_train,
            task=data.task,
            classes=data.classes,
            features=data.features,
            holdout_fraction=VALIDATION_FRACTION,
            seed=config.seed + i,
            kind=data.kind,
        )
        for i in range(splits)
    ]
    records: list[dict[str, Any]] = []
    started = time.monotonic()

    def objective(trial: optuna.Trial) -> float:
        params = _suggest(trial, config)
        record: dict[str, Any] = {"number": trial.number, "params": params}
        records.append(record)
        t0 = time.perf_counter()
        try:
            value = _build_and_score(inner, config, params, max_size_bytes, record)
        finally:
            record["seconds"] = round(time.perf_counter() - t0, 3)
            if progress is not None:
                done = min(
                    1.0, max(len(records) / n_trials, (time.monotonic() - started) / timeout_s)
                )
                progress("tune", TUNE_SHARE[0] + done * (TUNE_SHARE[1] - TUNE_SHARE[0]))
        return value

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        direction="maximize", sampler=optuna.samplers.TPESampler(seed=config.seed)
    )
    study.enqueue_trial(_defaults(config))
    study.optimize(objective, n_trials=n_trials, timeout=timeout_s, catch=(PipelineError,))
    for r in records:
        r.setdefault("state", "failed")
    good = [r for r in records if r["state"] == "complete"]
    if not good:
        raise TuneError(
            f"the tuner found no model within the budgets in {len(records)} trial(s): "
            + "; ".join(str(r.get("detail", r["state"])) for r in records[:3]),
            records,
        )
    best = max(good, key=lambda r: float(r["value"]))
    log.info("tuner: %d trials, best %s = %.4f", len(records), best["params"], best["value"])
    default = records[0].get("value") if records and records[0]["state"] == "complete" else None
    return TuneResult(dict(best["params"]), records, default)


def _build_and_score(
    inner: list[Dataset],
    config: PipelineConfig,
    params: dict[str, Any],
    max_size_bytes: int | None,
    record: dict[str, Any],
) -> float:
    """The trial's mean int8 metric over the validation splits (-inf over a budget)."""
    metrics, figures = [], {}
    for part in inner:
        figures = score(to_int8(fit_model(part, config, params), part, config), part)
        metrics.append(headline(part.task, figures))
    metric = sum(metrics) / len(metrics)
    value = metric if inner[0].is_classifier else -metric
    record |= {
        "metric": metric,
        "size_bytes": figures["size_bytes"],
        "latency_us_per_row": figures["latency_us_per_row"],
    }
    over = []
    if max_size_bytes is not None and figures["size_bytes"] > max_size_bytes:
        over.append(f"size {figures['size_bytes']} > {max_size_bytes} bytes")
    if figures["latency_us_per_row"] > config.latency_budget_us:
        over.append(
            f"latency {figures['latency_us_per_row']:.0f} > {config.latency_budget_us:.0f} µs"
        )
    if over:
        record |= {"state": "over_budget", "detail": "; ".join(over), "value": None}
        return float("-inf")
    record |= {"state": "complete", "value": value}
    return value


def _suggest(trial: optuna.Trial, config: PipelineConfig) -> dict[str, Any]:
    if config.kind == "cnn":
        from hub.ml.convnet import conv_search_space

        return {
            name: (
                trial.suggest_categorical(name, choices)
                if isinstance(choices, list)
                else trial.suggest_float(name, *choices, log=True)
            )
            for name, choices in conv_search_space().items()
        }
    layers = trial.suggest_int("layers", 1, 3)
    width = trial.suggest_categorical("width", list(MLP_WIDTHS))
    return {
        "hidden": [width] * layers,
        "alpha": trial.suggest_float("alpha", 1e-6, 1e-2, log=True),
        "learning_rate_init": trial.suggest_float("learning_rate_init", 1e-4, 1e-2, log=True),
    }


def _defaults(config: PipelineConfig) -> dict[str, Any]:
    """Trial 0: the build's own settings, in the search space's terms."""
    if config.kind == "cnn":
        from hub.ml.convnet import ConvConfig

        d = ConvConfig()
        return {
            "width": d.channels[0],
            "dense": d.dense,
            "epochs": d.epochs,
            "learning_rate": d.learning_rate,
            "weight_decay": d.weight_decay,
        }
    widths = set(config.hidden)
    width = config.hidden[0] if len(widths) == 1 and config.hidden[0] in MLP_WIDTHS else 64
    return {
        "layers": min(3, len(config.hidden)),
        "width": width,
        "alpha": 1e-4,
        "learning_rate_init": 1e-3,
    }
