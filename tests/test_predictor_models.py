"""The Predictor with several models (real onnxruntime sessions): each model is called
by name, swapped and deactivated alone, and counted in its own telemetry window."""

from __future__ import annotations

import numpy as np
import pytest
from models import make_log_onnx, make_mlp_onnx

from agent.predictor import Predictor, SeveralModelsError
from agent.runtime import InferenceError, ModelSession, NoModelError, OnnxBackend
from shared.sensors import generate


@pytest.fixture(scope="module")
def mlp() -> ModelSession:
    return OnnxBackend().load_bytes(make_mlp_onnx(hidden=(16,), n=500))


@pytest.fixture(scope="module")
def log_model() -> ModelSession:
    return OnnxBackend().load_bytes(make_log_onnx())


def test_each_model_by_name_and_the_bare_call_only_with_one(
    mlp: ModelSession, log_model: ModelSession
) -> None:
    p = Predictor()
    x, _ = generate(5, seed=1)
    p.swap(mlp, "vibration", 3)
    assert p.predict(x)["label"].shape == (5,)  # one model: no name needed
    assert p.active == ("vibration", 3)
    p.swap(log_model, "anomaly", 1)
    with pytest.raises(SeveralModelsError) as e:
        p.predict(x)
    assert e.value.models == ("anomaly", "vibration")
    assert p.active is None and p.session is None  # "the only model": there is none
    assert p.models == {"vibration": 3, "anomaly": 1}
    vib = p.predict_versioned(x, "vibration")
    assert (vib.model, vib.version) == ("vibration", 3)
    an = p.predict_versioned(x, "anomaly")
    assert (an.model, an.version) == ("anomaly", 1)
    # each ran its own graph: 16 log values per row, 4 class scores per row
    assert (an.outputs["probabilities"].shape, vib.outputs["probabilities"].shape) == (
        (5, 16),
        (5, 4),
    )
    with pytest.raises(NoModelError, match="'sound'"):
        p.predict(x, "sound")
    # swapping one model's version leaves the other as it was
    p.swap(mlp, "anomaly", 2)
    assert p.models == {"vibration": 3, "anomaly": 2}
    p.deactivate("anomaly")
    assert p.models == {"vibration": 3}
    assert p.predict(x)["label"].shape == (5,)  # one model again
    with pytest.raises(NoModelError):
        p.predict(x, "anomaly")


def test_each_model_is_counted_in_its_own_window(
    mlp: ModelSession, log_model: ModelSession
) -> None:
    p = Predictor()
    p.swap(mlp, "vibration", 3)
    p.swap(log_model, "anomaly", 1)
    x, _ = generate(4, seed=2)
    for _ in range(3):
        p.predict(x, "vibration")
    p.predict(x, "anomaly")
    with pytest.raises(InferenceError):  # a row of the wrong width: counted as an error
        p.predict(np.zeros((2, 3), np.float32), "anomaly")
    windows = p.drain()
    assert (windows["vibration"].count, windows["vibration"].rows) == (3, 12)
    assert (windows["anomaly"].count, windows["anomaly"].errors) == (2, 1)
    assert p.recorder is not None and p.drain()["vibration"].count == 0  # drained
