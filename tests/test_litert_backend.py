"""The agent's LiteRT backend (agent/litert.py) on real .tflite files, through the same
Predictor the ONNX backend serves: outputs equal the interpreter's own, batches and rows,
load failures are ModelLoadErrors, a bad input an InferenceError, threads are safe."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from tflite_models import wine_split, wine_tflite

from agent.litert import LiteRtBackend
from agent.predictor import Predictor
from agent.runtime import InferenceError, ModelLoadError, SessionCache
from shared.tflite import interpreter_class

pytestmark = [pytest.mark.tflite, pytest.mark.slow]


@pytest.mark.parametrize("int8", [False, True], ids=["fp32-dynamic-batch", "int8-batch-of-one"])
def test_predictions_equal_the_interpreters_own(int8: bool) -> None:
    model = wine_tflite(int8=int8)
    session = LiteRtBackend().load_bytes(model)
    assert session.backend == "tflite"
    assert session.inputs[0].shape == ((None if not int8 else 1), 13)
    rows = wine_split().x_holdout
    predictor = Predictor()
    predictor.swap(session, "wine", 1, classes=("c0", "c1", "c2"))
    [name] = session.output_names
    got = predictor.predict(rows)[name]

    raw = interpreter_class()(model_content=model, num_threads=1)
    inp, out = raw.get_input_details()[0], raw.get_output_details()[0]
    want = []
    for row in rows:  # the interpreter alone, one row at a time
        raw.resize_tensor_input(inp["index"], [1, 13])
        raw.allocate_tensors()
        raw.set_tensor(inp["index"], row[None].astype(np.float32))
        raw.invoke()
        want.append(raw.get_tensor(out["index"])[0])
    assert got.shape == (len(rows), 3)
    np.testing.assert_allclose(got, np.array(want), atol=1e-6)
    one = predictor.predict(rows[0])[name]  # one row gives one row back
    assert one.shape == (1, 3)


def test_load_failures_are_model_load_errors(tmp_path: Path) -> None:
    backend = LiteRtBackend()
    with pytest.raises(ModelLoadError, match="not a TFLite model"):
        backend.load_bytes(b"\x00" * 64)
    with pytest.raises(ModelLoadError, match="not a loadable TFLite model"):
        backend.load_bytes(b"\x1c\x00\x00\x00TFL3" + b"\x00" * 100)  # the magic, no model
    with pytest.raises(ModelLoadError, match="expected"):
        backend.load_bytes(wine_tflite(int8=False), sha256="0" * 64)
    with pytest.raises(ModelLoadError, match="cannot read"):
        backend.load(tmp_path / "missing.tflite")


def test_a_wrong_input_is_an_inference_error_and_the_model_keeps_serving() -> None:
    predictor = Predictor()
    predictor.swap(LiteRtBackend().load_bytes(wine_tflite(int8=True)), "wine", 2)
    with pytest.raises(InferenceError, match="wine v2"):
        predictor.predict(np.zeros((1, 5), np.float32))  # 5 features for 13
    assert predictor.predict(wine_split().x_holdout[:3])  # still serving


def test_threads_share_one_session_safely() -> None:
    cache = SessionCache(LiteRtBackend())
    session = cache.load_bytes(wine_tflite(int8=False))
    assert cache.load_bytes(wine_tflite(int8=False)) is session  # one per sha256
    predictor = Predictor()
    predictor.swap(session, "wine", 1)
    rows = wine_split().x_holdout
    [name] = session.output_names
    want = predictor.predict(rows)[name]
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            for _ in range(50):
                for i in range(0, len(rows), 7):
                    np.testing.assert_allclose(
                        predictor.predict(rows[i : i + 7])[name], want[i : i + 7], atol=1e-6
                    )
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
