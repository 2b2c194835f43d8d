"""Whether a model fits a dataset: its input takes the rows, its output gives what we score.

The same rules for every format (ADR 0014): one float32 input ``[N, *row shape]`` (the
batch axis dynamic or 1), and class scores ``[N, classes]`` (``probabilities``, or the
only float32 output of rank 2) for a classifier, or one value per row (``value``, or the
only float32 ``[N]`` / ``[N, 1]``) for a regressor. Each refusal says what differs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from hub.ml.errors import PipelineError
from hub.ml.runner import ModelRunner
from hub.ml.training_data import Dataset
from shared.manifest import TensorSpec

__all__ = ["SCORES_OUTPUT", "VALUE_OUTPUT", "check_compatible", "scores_output", "value_output"]

SCORES_OUTPUT: Final = "probabilities"
VALUE_OUTPUT: Final = "value"
FLOAT: Final = "float32"


def scores_output(runner: ModelRunner) -> str:
    """The name of the class-score output: ``probabilities``, or the only float [N, k]."""
    outputs = runner.outputs()
    if any(o.name == SCORES_OUTPUT for o in outputs):
        return SCORES_OUTPUT
    candidates = [o.name for o in outputs if o.dtype == FLOAT and len(o.shape) == 2]
    if len(candidates) != 1:
        raise PipelineError(
            f"no class-score output: need '{SCORES_OUTPUT}' or one float32 [N, classes] output,"
            f" found {_described(outputs)}"
        )
    return candidates[0]


def value_output(runner: ModelRunner) -> str:
    """The name of a regressor's output: ``value``, or the only float [N] / [N, 1]."""
    outputs = runner.outputs()
    if any(o.name == VALUE_OUTPUT for o in outputs):
        return VALUE_OUTPUT
    candidates = [
        o.name
        for o in outputs
        if o.dtype == FLOAT
        and (len(o.shape) == 1 or (len(o.shape) == 2 and o.shape[1] in (1, None)))
    ]
    if len(candidates) != 1:
        raise PipelineError(
            f"no regression output: need '{VALUE_OUTPUT}' or one float32 [N, 1] output,"
            f" found {_described(outputs)}"
        )
    return candidates[0]


def check_compatible(runner: ModelRunner, data: Dataset) -> str:
    """Refuse a model the dataset (and so the devices' rows) cannot feed or score.

    Returns:
        The name of the output that gives class scores or values.

    Raises:
        PipelineError: what differs between the model and the dataset.
    """
    inputs = runner.inputs()
    if len(inputs) != 1:
        raise PipelineError(f"the model must take one input, it takes {len(inputs)}")
    (inp,) = inputs
    shown = shape_text((None, *data.row_shape))
    if inp.dtype != FLOAT or len(inp.shape) != 1 + len(data.row_shape):
        raise PipelineError(
            f"input '{inp.name}' must be float32 {shown} for this dataset,"
            f" got {inp.dtype} {shape_text(inp.shape)}"
        )
    if inp.shape[0] not in (None, 1):
        raise PipelineError(
            f"input '{inp.name}' has a fixed batch of {inp.shape[0]} rows: it must be 1 or dynamic"
        )
    for axis, (size, need) in enumerate(zip(inp.shape[1:], data.row_shape, strict=True), 1):
        if size is not None and size != need:
            what = "features" if len(data.row_shape) == 1 else f"values on axis {axis}"
            raise PipelineError(
                f"input '{inp.name}' takes {size} {what}; the dataset has {need} {shown}"
            )
    if data.is_classifier:
        return _check_scores(runner, data)
    name = value_output(runner)
    got = runner.run(data.x_holdout[:2], name)
    if got.size != 2:
        raise PipelineError(f"output '{name}' gave shape {got.shape} for 2 rows, expected (2, 1)")
    return name


def shape_text(shape: Sequence[int | None]) -> str:
    """``[N, 13]``: a shape as the messages show it (N: a dynamic axis)."""
    return "[" + ", ".join("N" if d is None else str(d) for d in shape) + "]"


def _check_scores(runner: ModelRunner, data: Dataset) -> str:
    k = len(data.classes)
    name = scores_output(runner)
    scores = next(o for o in runner.outputs() if o.name == name)
    if scores.dtype != FLOAT or len(scores.shape) != 2:
        raise PipelineError(
            f"output '{name}' must be float32 [N, {k}], got {scores.dtype}"
            f" {shape_text(scores.shape)}"
        )
    if scores.shape[1] is not None and scores.shape[1] != k:
        raise PipelineError(
            f"output '{name}' gives {scores.shape[1]} class scores; the dataset has {k} classes"
        )
    got = runner.run(data.x_holdout[:2], name)
    if got.shape != (2, k):
        raise PipelineError(f"output '{name}' gave shape {got.shape} for 2 rows, expected (2, {k})")
    return name


def _described(outputs: tuple[TensorSpec, ...]) -> str:
    return ", ".join(f"{o.name} {o.dtype} {shape_text(o.shape)}" for o in outputs)
