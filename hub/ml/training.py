"""Training and export: a StandardScaler + MLP (scikit-learn), then ONNX (skl2onnx).

A classifier exports ``label`` and ``probabilities``; a regressor is fitted on the
standardised target and exports ``value`` [N, 1], with the inverse of that
standardisation added to the graph. Conv nets are hub/ml/convnet.py's.

Training is seeded and runs on one BLAS thread (``BLAS_THREADS``), so the same config
gives the same bytes on any core count. The export turns ZipMap off (plain tensors) and
pins the opset the config names.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import onnx
from onnx import helper, numpy_helper
from skl2onnx import to_onnx
from skl2onnx.common.data_types import FloatTensorType
from sklearn.neural_network import MLPClassifier, MLPRegressor
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from hub.ml.config import PipelineConfig
from hub.ml.errors import PipelineError
from hub.ml.training_data import Dataset

__all__ = ["INPUT_NAME", "VALUE_OUTPUT", "Fitted", "export_onnx", "fit"]

INPUT_NAME = "input"
VALUE_OUTPUT = "value"  # a regressor's output, float32 [N, 1]
MAX_EPOCHS = 200  # early stopping ends training long before (about 30 epochs here)
PATIENCE = 10  # epochs without a gain before training stops (scikit-learn's default)
TOL = 1e-4  # the gain in validation score that counts (scikit-learn's default)
# One BLAS thread: a 16-64-64-4 MLP gains nothing from more (0.55 s either way), two
# OpenBLAS threads on two busy cores took 25-34 s instead of 0.8-1.5 s, and the
# trained weights then depend on the core count.
BLAS_THREADS = 1


@dataclass(frozen=True)
class Fitted:
    """A fitted scikit-learn pipeline, and the target scaling of a regressor."""

    model: Pipeline
    y_mean: float = 0.0
    y_std: float = 1.0
    regressor: bool = False


def fit(
    data: Dataset,
    config: PipelineConfig,
    params: dict[str, Any] | None = None,
    on_epoch: Callable[[float], None] | None = None,
) -> Fitted:
    """A StandardScaler + MLP fitted on ``data``'s training rows, an epoch at a time.

    As scikit-learn's own early stopping, a tenth of the rows (seeded) is kept to judge
    each epoch, training stops after ``PATIENCE`` epochs without a gain over ``TOL`` and
    the best epoch's weights are kept; run here so ``on_epoch`` can report progress (the
    fraction of ``MAX_EPOCHS`` done), and judged by the validation loss rather than
    accuracy (see ``_loss``).

    Args:
        params: the tuner's overrides of the MLP's settings (``hidden``, ``alpha``,
            ``learning_rate_init``).

    Raises:
        PipelineError: scikit-learn could not train on these rows.
    """
    p = params or {}
    settings: dict[str, Any] = {
        "hidden_layer_sizes": tuple(p.get("hidden", config.hidden)),
        "alpha": float(p.get("alpha", 1e-4)),
        "learning_rate_init": float(p.get("learning_rate_init", 1e-3)),
        "random_state": config.seed,
    }
    y: npt.NDArray[Any] = data.y_train
    y_mean, y_std = 0.0, 1.0
    if data.is_classifier:
        estimator: Any = MLPClassifier(**settings)
    else:
        y_mean, y_std = float(np.mean(y)), float(np.std(y)) or 1.0
        y = (y - y_mean) / y_std
        estimator = MLPRegressor(**settings)
    x = data.x_train.reshape(len(data.x_train), -1)
    scaler = StandardScaler().fit(x)
    classes = np.arange(len(data.classes)) if data.is_classifier else None
    try:
        with threadpool_limits(limits=BLAS_THREADS, user_api="blas"):
            _epochs(estimator, scaler.transform(x), y, classes, config.seed, on_epoch)
    except ValueError as e:
        raise PipelineError(f"training failed: {e}") from e
    model = make_pipeline(scaler, estimator)
    return Fitted(model, y_mean, y_std, regressor=not data.is_classifier)


def _epochs(
    estimator: Any,
    x: npt.NDArray[Any],
    y: npt.NDArray[Any],
    classes: npt.NDArray[Any] | None,
    seed: int,
    on_epoch: Callable[[float], None] | None,
) -> None:
    order = np.random.default_rng(seed).permutation(len(x))
    n_val = max(1, len(x) // 10)
    val, tr = np.sort(order[:n_val]), np.sort(order[n_val:])
    best: tuple[list[Any], list[Any]] | None = None
    best_score, stale = -np.inf, 0
    extra = {"classes": classes} if classes is not None else {}
    for epoch in range(1, MAX_EPOCHS + 1):
        estimator.partial_fit(x[tr], y[tr], **extra)
        score = -_loss(estimator, x[val], y[val], classes)
        if score > best_score + TOL:
            best_score, stale = score, 0
            best = ([c.copy() for c in estimator.coefs_], [b.copy() for b in estimator.intercepts_])
        else:
            stale += 1
        if on_epoch is not None:
            on_epoch(epoch / MAX_EPOCHS)
        if stale >= PATIENCE:
            break
    if best is not None:
        estimator.coefs_, estimator.intercepts_ = best


def _loss(
    estimator: Any, x: npt.NDArray[Any], y: npt.NDArray[Any], classes: npt.NDArray[Any] | None
) -> float:
    """Validation loss: log loss (classifier) or mean squared error (regressor).

    Smoother than accuracy on a small validation part (14 rows of wine move accuracy
    in steps of 7 points, and training stopped at a third of the accuracy it reaches).
    """
    if classes is None:
        return float(np.mean((estimator.predict(x) - y) ** 2))
    proba = np.clip(estimator.predict_proba(x)[np.arange(len(y)), y], 1e-12, 1.0)
    return float(-np.mean(np.log(proba)))


def export_onnx(fitted: Fitted | Pipeline, n_features: int, opset: int) -> bytes:
    """The fitted model as ONNX: ``input`` float32 [N, n_features] → ``label`` int64 [N]
    and ``probabilities`` float32 [N, classes], or ``value`` float32 [N, 1]."""
    if isinstance(fitted, Pipeline):
        fitted = Fitted(fitted)
    onx = to_onnx(
        fitted.model,
        initial_types=[(INPUT_NAME, FloatTensorType([None, n_features]))],
        options={"zipmap": False} if not fitted.regressor else None,
        target_opset={"": opset, "ai.onnx.ml": 1},
    )
    if fitted.regressor:
        _unscale_output(onx, fitted.y_mean, fitted.y_std)
    return bytes(onx.SerializeToString())


def _unscale_output(model: onnx.ModelProto, mean: float, std: float) -> None:
    """Turn the regressor's standardised output into ``value`` = output * std + mean."""
    graph = model.graph
    (out,) = graph.output
    scaled = out.name
    graph.initializer.extend(
        [
            numpy_helper.from_array(np.array([std], dtype=np.float32), "value_std"),
            numpy_helper.from_array(np.array([mean], dtype=np.float32), "value_mean"),
        ]
    )
    graph.node.extend(
        [
            helper.make_node("Mul", [scaled, "value_std"], ["value_scaled"]),
            helper.make_node("Add", ["value_scaled", "value_mean"], [VALUE_OUTPUT]),
        ]
    )
    del graph.output[:]
    graph.output.append(
        helper.make_tensor_value_info(VALUE_OUTPUT, onnx.TensorProto.FLOAT, [None, 1])
    )
