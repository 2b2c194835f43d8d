"""What the model pipeline trains and the health check it ships (``PipelineConfig``)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from hub.ml.errors import ConfigError

__all__ = ["PipelineConfig", "pipeline_config"]


@dataclass(frozen=True)
class PipelineConfig:
    """What to train and the health check to ship with it."""

    name: str = "vibration"
    n_train: int = 12_000  # rows of the built-in dataset to train on
    n_holdout: int = 4_000  # rows kept apart to evaluate and pick golden rows from
    n_calibration: int = 512  # training rows the quantizer calibrates on
    seed: int = 7
    hidden: tuple[int, ...] = (64, 64)  # MLP hidden layer widths
    opset: int = 15  # ONNX opset; the quantizer mishandles some graphs at 21/22
    per_channel: bool = False  # per-channel weight scales (measured: no gain here)
    max_int8_loss_points: float = 1.0  # percentage points of accuracy int8 may lose
    max_int8_mae_increase: float = 0.05  # a regressor's int8 MAE over fp32's, relative
    min_accuracy: float | None = None  # floor gate (classifiers), 0..1
    max_mae: float | None = None  # ceiling gate (regressors), in the target's units
    kind: str = "mlp"  # mlp | cnn
    holdout_fraction: float = 0.2  # of a dataset's rows, kept apart to judge the model
    baseline_bins: int = 10  # quantile bins per feature for drift
    n_golden: int = 8  # rows in the device health check
    # Health check. Probabilities of the int8 file come in steps of 1/255 (~0.0039) and
    # reproduce exactly on this machine; 0.01 allows a rounding step or two on another
    # CPU's integer kernels and still refuses a wrong model (fp32 and int8 of the same
    # model differ by up to ~0.2).
    tolerance: float = 0.01  # max absolute difference per golden value
    latency_budget_us: float = 5000.0  # p95 of single-row inference
    memory_budget_mb: float = 64.0  # RSS growth allowed by loading the model
    probation_s: float = 5.0  # seconds
    probation_min_inferences: int = 20
    max_error_ratio: float = 0.05  # errors / inferences during probation

    def __post_init__(self) -> None:
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))
        problems = [
            msg
            for bad, msg in (
                (not self.name, "name must not be empty"),
                (self.n_train < 10, "n_train must be >= 10"),
                (self.n_holdout < 1, "n_holdout must be >= 1"),
                (self.n_calibration < 1, "n_calibration must be >= 1"),
                (not self.hidden or min(self.hidden) < 1, "hidden layers must be >= 1 wide"),
                (not 13 <= self.opset <= 17, "opset must be within 13..17"),
                (self.kind not in ("mlp", "cnn"), "kind must be mlp or cnn"),
                (not 0 < self.holdout_fraction < 1, "holdout_fraction must be within (0, 1)"),
                (self.max_int8_mae_increase < 0, "max_int8_mae_increase must be >= 0"),
                (
                    self.min_accuracy is not None and not 0 <= self.min_accuracy <= 1,
                    "min_accuracy must be within 0..1",
                ),
                (self.max_mae is not None and self.max_mae < 0, "max_mae must be >= 0"),
                (self.baseline_bins < 1, "baseline_bins must be >= 1"),
                (self.n_golden < 1, "n_golden must be >= 1"),
                (self.tolerance < 0, "tolerance must be >= 0"),
                (self.latency_budget_us <= 0, "latency_budget_us must be > 0"),
                (self.memory_budget_mb <= 0, "memory_budget_mb must be > 0"),
                (self.probation_s < 0, "probation_s must be >= 0"),
                (not 0 <= self.max_error_ratio <= 1, "max_error_ratio must be within 0..1"),
            )
            if bad
        ]
        if problems:
            raise ConfigError("bad pipeline config: " + "; ".join(problems))


def pipeline_config(**overrides: Any) -> PipelineConfig:
    """The default pipeline config with the given fields replaced (unknown ones refused)."""
    base = PipelineConfig()
    unknown = set(overrides) - set(base.__dataclass_fields__)
    if unknown:
        raise ValueError(f"unknown pipeline settings: {', '.join(sorted(unknown))}")
    return replace(base, **overrides)
