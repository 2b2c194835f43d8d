"""What a build is asked for: a model trained here (:class:`TrainSpec`) or a file brought
(:class:`UploadSpec`), and :class:`BuildError`, a build refused before it starts.

hub/ml/builds.py runs them; these are the seam the admin API and the CLI fill.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from hub.ml.config import PipelineConfig

__all__ = [
    "MAX_TRIALS",
    "ONNX_RUNTIME",
    "TFLITE_RUNTIME",
    "BuildError",
    "HealthFor",
    "RuntimesFor",
    "TrainSpec",
    "UploadSpec",
    "class_health",
    "no_budgets",
    "onnx_only",
]

ONNX_RUNTIME: Final = "onnxruntime"
TFLITE_RUNTIME: Final = "tflite"
# device classes -> the runtimes they run (ValueError: an unknown class)
RuntimesFor = Callable[[tuple[str, ...]], frozenset[str]]
# device classes -> per class, the health budgets of its profile (hub/fleet/classes.py)
HealthFor = Callable[[tuple[str, ...]], dict[str, dict[str, float]]]

MAX_TRIALS: Final = 200  # tuner trials one build may ask for


class BuildError(Exception):
    """A build refused before it starts; ``status`` is the HTTP status it maps to."""

    def __init__(self, detail: str, status: int = 422) -> None:
        super().__init__(detail)
        self.detail = detail
        self.status = status


@dataclass(frozen=True)
class TrainSpec:
    """What to train: a model name, a dataset version, and the pipeline's settings."""

    config: PipelineConfig
    dataset: str  # NAME[:VERSION]
    task: str | None = None  # the dataset's own by default
    champion: bool = False  # refuse it unless it beats the deployed version
    tune_trials: int = 0
    tune_timeout_s: float = 600.0  # seconds the tuner may spend in all
    tune_max_bytes: int | None = None  # the tuner's size budget for the int8 file
    device_classes: tuple[str, ...] = ()
    created_by: str | None = None


@dataclass(frozen=True)
class UploadSpec:
    """A bring-your-own model: its file, and the dataset that judges it (or none)."""

    config: PipelineConfig
    model_bytes: bytes
    dataset: str | None
    quantize: bool = True
    unevaluated: bool = False
    champion: bool = False
    device_classes: tuple[str, ...] = ()
    created_by: str | None = None
    filename: str = ""


def onnx_only(device_classes: tuple[str, ...]) -> frozenset[str]:
    return frozenset({ONNX_RUNTIME})


def no_budgets(device_classes: tuple[str, ...]) -> dict[str, dict[str, float]]:
    return {}


def class_health(
    profiles: dict[str, dict[str, float]], config: PipelineConfig
) -> dict[str, dict[str, float]]:
    """Each class's health budgets from its profile, but a budget the build set itself
    (one that is not the pipeline's default) wins for every class."""
    default = PipelineConfig()
    own = {
        k for k in ("latency_budget_us", "memory_budget_mb", "tolerance")
        if getattr(config, k) != getattr(default, k)
    }  # fmt: skip
    out = {c: {k: v for k, v in b.items() if k not in own} for c, b in profiles.items()}
    return {c: b for c, b in out.items() if b}
