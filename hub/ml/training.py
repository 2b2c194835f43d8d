"""Training and export: a StandardScaler + MLPClassifier (scikit-learn), then ONNX (skl2onnx).

Training is seeded and runs on one BLAS thread (``BLAS_THREADS``), so the same config
gives the same bytes on any core count. The export turns ZipMap off (plain tensors) and
pins the opset the config names.
"""

from __future__ import annotations

from skl2onnx import to_onnx
from skl2onnx.common.data_types import FloatTensorType
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from hub.ml.config import PipelineConfig
from hub.ml.errors import PipelineError
from hub.ml.training_data import Dataset

__all__ = ["INPUT_NAME", "export_onnx", "fit"]

INPUT_NAME = "input"
MAX_EPOCHS = 200  # early stopping ends training long before (about 30 epochs here)
# One BLAS thread: a 16-64-64-4 MLP gains nothing from more (0.55 s either way), two
# OpenBLAS threads on two busy cores took 25-34 s instead of 0.8-1.5 s, and the
# trained weights then depend on the core count.
BLAS_THREADS = 1


def fit(data: Dataset, config: PipelineConfig) -> Pipeline:
    """A StandardScaler + MLPClassifier fitted on ``data``'s training rows.

    Raises:
        PipelineError: scikit-learn could not train on these rows.
    """
    model = make_pipeline(
        StandardScaler(),
        MLPClassifier(
            hidden_layer_sizes=config.hidden,
            early_stopping=True,
            max_iter=MAX_EPOCHS,
            random_state=config.seed,
        ),
    )
    try:
        with threadpool_limits(limits=BLAS_THREADS, user_api="blas"):
            model.fit(data.x_train, data.y_train)
    except ValueError as e:
        raise PipelineError(f"training failed: {e}") from e
    return model


def export_onnx(model: Pipeline, n_features: int, opset: int) -> bytes:
    """The fitted scikit-learn model as ONNX: ``input`` float32 [N, n_features] →
    ``label`` int64 [N], ``probabilities`` float32 [N, classes]."""
    onx = to_onnx(
        model,
        initial_types=[(INPUT_NAME, FloatTensorType([None, n_features]))],
        options={"zipmap": False},  # plain tensors, not a sequence of maps
        target_opset={"": opset, "ai.onnx.ml": 1},
    )
    return bytes(onx.SerializeToString())
