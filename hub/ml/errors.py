"""The model pipeline's errors (hub/ml/pipeline.py and the steps it runs).

Exceptions::

    PipelineError(detail)                      bad data, unusable model, failed step
    ├── ConfigError(detail)                    a setting out of range (also a ValueError)
    └── ModelRefused(gates, metrics)           a gate refused the model (hub/ml/gates.py)
        └── GateError(accuracy_fp32, accuracy_int8, max_loss_points)   the int8 loss alone
"""

from __future__ import annotations

from typing import Any

__all__ = ["ConfigError", "GateError", "ModelRefused", "PipelineError"]


class PipelineError(Exception):
    """A pipeline step could not produce a usable model (bad data, bad model, failed step)."""


class ConfigError(PipelineError, ValueError):
    """A pipeline setting out of range (a ValueError too, like other bad arguments)."""


class ModelRefused(PipelineError):
    """A gate refused the model; it is kept as a refused run with its figures.

    Attributes:
        gates: every gate judged, as ``{"name", "passed", "detail"}``.
        metrics: the figures it was judged on (``{"fp32": {...}, "int8": {...}}``).
    """

    def __init__(
        self, gates: list[dict[str, Any]], metrics: dict[str, Any], message: str | None = None
    ) -> None:
        self.gates = gates
        self.metrics = metrics
        failed = [f"{g['name']}: {g['detail']}" for g in gates if not g["passed"]]
        super().__init__(message or "model refused by " + "; ".join(failed))


class GateError(ModelRefused):
    """The int8 model lost more accuracy than the gate allows.

    Attributes:
        accuracy_fp32: held-out accuracy of the float model (0..1).
        accuracy_int8: held-out accuracy of the int8 model (0..1).
        max_loss_points: the largest loss allowed, in percentage points.
    """

    def __init__(
        self,
        accuracy_fp32: float,
        accuracy_int8: float,
        max_loss_points: float,
        gates: list[dict[str, Any]] | None = None,
        metrics: dict[str, Any] | None = None,
    ) -> None:
        self.accuracy_fp32 = accuracy_fp32
        self.accuracy_int8 = accuracy_int8
        self.max_loss_points = max_loss_points
        loss = (accuracy_fp32 - accuracy_int8) * 100
        super().__init__(
            gates or [],
            metrics or {},
            f"int8 model refused: accuracy {accuracy_int8:.4f} (int8) vs {accuracy_fp32:.4f}"
            f" (fp32) is a loss of {loss:.2f} points, over the {max_loss_points:.2f} allowed",
        )
