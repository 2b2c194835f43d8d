"""The model pipeline's errors (hub/ml/pipeline.py and the steps it runs).

Exceptions::

    PipelineError(detail)                      bad data, unusable model, failed step
    ├── ConfigError(detail)                    a setting out of range (also a ValueError)
    └── GateError(accuracy_fp32, accuracy_int8, max_loss_points)
"""

from __future__ import annotations

__all__ = ["ConfigError", "GateError", "PipelineError"]


class PipelineError(Exception):
    """A pipeline step could not produce a usable model (bad data, bad model, failed step)."""


class ConfigError(PipelineError, ValueError):
    """A pipeline setting out of range (a ValueError too, like other bad arguments)."""


class GateError(PipelineError):
    """The int8 model lost more accuracy than the gate allows.

    Attributes:
        accuracy_fp32: held-out accuracy of the float model (0..1).
        accuracy_int8: held-out accuracy of the int8 model (0..1).
        max_loss_points: the largest loss allowed, in percentage points.
    """

    def __init__(self, accuracy_fp32: float, accuracy_int8: float, max_loss_points: float):
        self.accuracy_fp32 = accuracy_fp32
        self.accuracy_int8 = accuracy_int8
        self.max_loss_points = max_loss_points
        loss = (accuracy_fp32 - accuracy_int8) * 100
        super().__init__(
            f"int8 model refused: accuracy {accuracy_int8:.4f} (int8) vs {accuracy_fp32:.4f}"
            f" (fp32) is a loss of {loss:.2f} points, over the {max_loss_points:.2f} allowed"
        )
