"""TFLite files through the runner seam and the pipeline, checked against LiteRT directly.

The .tflite files are real (TensorFlow's converter, tests/tflite_models.py); every figure
the hub computes is checked against a fresh ``ai_edge_litert`` interpreter driven here by
hand, as a device would run the file.
"""

from __future__ import annotations

import subprocess
import sys
import types
from collections.abc import Callable
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from ai_edge_litert.interpreter import Interpreter
from tflite_models import wine_split, wine_tflite  # tests/tflite_models.py

from hub import pipeline_config
from hub.ml.errors import PipelineError
from hub.ml.pipeline import build_manifest, import_model
from hub.ml.runner import open_runner
from hub.ml.tflite import TFLiteRunner
from hub.ml.unevaluated import import_unevaluated

pytestmark = [pytest.mark.tflite, pytest.mark.slow]

CONFIG = pipeline_config(name="wine-tflite")
ROOT = Path(__file__).resolve().parent.parent


def litert_rows(model: bytes, rows: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """The model's only output for each row, one invoke per row in a fresh interpreter."""
    it = Interpreter(model_content=model, num_threads=1)
    it.allocate_tensors()
    (inp,), (out,) = it.get_input_details(), it.get_output_details()
    got = []
    for row in rows:
        it.set_tensor(inp["index"], row[None].astype(np.float32))
        it.invoke()
        got.append(it.get_tensor(out["index"])[0].copy())
    return np.array(got)


def test_open_runner_reads_a_tflite_and_its_tensors() -> None:
    fp32, int8 = wine_tflite(int8=False), wine_tflite(int8=True)
    assert fp32[4:8] == b"TFL3"
    runner = open_runner(fp32)
    assert (runner.format, runner.runtime) == ("tflite", "tflite")
    ((inp,), (out,)) = runner.specs()
    assert (inp.dtype, inp.shape, out.dtype, out.shape) == (
        "float32",
        (None, 13),
        "float32",
        (None, 3),
    )
    assert open_runner(int8).inputs()[0].shape == (1, 13)  # batch fixed at 1: run row by row


@pytest.mark.parametrize("int8", [False, True], ids=["dynamic-batch", "batch-of-one"])
def test_runs_in_batches_exactly_as_row_by_row(int8: bool) -> None:
    model, rows = wine_tflite(int8=int8), wine_split().x_holdout
    name = open_runner(model).outputs()[0].name
    np.testing.assert_array_equal(open_runner(model).run(rows, name), litert_rows(model, rows))


def test_a_float_file_is_judged_and_ships_as_it_is() -> None:
    model, data = wine_tflite(int8=False), wine_split()
    built = import_model(model, CONFIG, dataset=data, quantize=True)
    assert built.model_bytes == model and (built.format, built.runtime) == ("tflite", "tflite")
    assert "ships as uploaded" in built.notes[0]
    expected = litert_rows(model, data.x_holdout).argmax(axis=1)
    figures = built.metrics["int8"]
    assert figures["accuracy"] == float(np.mean(expected == data.y_holdout)) >= 0.9
    assert figures["size_bytes"] == len(model) and figures["latency_us_per_row"] > 0
    assert built.metrics["fp32"] == figures  # as uploaded: one file, both slots

    manifest = build_manifest(built, version=1, chunk_size=4096, config=CONFIG)
    assert (manifest.format, manifest.runtime) == ("tflite", "tflite")
    golden = np.array(manifest.health.golden_inputs, dtype=np.float32)
    np.testing.assert_array_equal(litert_rows(model, golden), manifest.health.golden_outputs)
    shares = np.bincount(litert_rows(model, data.x_train).argmax(axis=1), minlength=3)
    assert built.baseline["outputs"]["hist"] == (shares / len(data.x_train)).tolist()


def test_a_full_int8_file_on_raw_features_loses_what_its_input_scale_hides() -> None:
    """One int8 scale for the input tensor: proline (up to 1680) leaves one or two steps to
    features that span less than one unit. Standardised rows keep the accuracy."""
    raw = import_model(wine_tflite(int8=True), CONFIG, dataset=wine_split())
    z = import_model(
        wine_tflite(int8=True, standardized=True),
        CONFIG,
        dataset=wine_split(standardized=True),
    )
    assert raw.accuracy_int8 is not None and raw.accuracy_int8 < 0.8
    assert z.accuracy_int8 is not None and z.accuracy_int8 >= 0.9


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: b"\x00garbage, not a model" * 4, "nor is it a TFLite file"),
        (lambda: wine_tflite(int8=False)[:200], "not a loadable TFLite model"),
        (lambda: wine_tflite(int8=False, features=10), "takes 10 features; the dataset has 13"),
    ],
    ids=["neither", "truncated-tflite", "wrong-width"],
)
def test_refusals(make: Callable[[], bytes], message: str) -> None:
    with pytest.raises(PipelineError, match=message):
        import_model(make(), CONFIG, dataset=wine_split())


def test_falls_back_to_tflite_runtime_then_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model = wine_tflite(int8=False)
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)  # import fails
    fallback = types.ModuleType("tflite_runtime.interpreter")
    fallback.Interpreter = Interpreter  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "tflite_runtime", types.ModuleType("tflite_runtime"))
    monkeypatch.setitem(sys.modules, "tflite_runtime.interpreter", fallback)
    assert TFLiteRunner(model).inputs()[0].shape == (None, 13)

    monkeypatch.setitem(sys.modules, "tflite_runtime.interpreter", None)
    with pytest.raises(
        PipelineError, match=r"needs ai-edge-litert: pip install 'edgefleet\[hub\]'"
    ):
        import_model(model, CONFIG, dataset=wine_split())


def test_judging_a_tflite_file_never_imports_tensorflow(tmp_path: Path) -> None:
    path = tmp_path / "m.tflite"
    path.write_bytes(wine_tflite(int8=False))
    code = (
        "import sys, pathlib\n"
        "sys.path.insert(0, 'tests')\n"
        "from hub import pipeline_config\n"
        "from hub.ml.pipeline import import_model\n"
        "from tflite_models import wine_split\n"
        f"built = import_model(pathlib.Path({str(path)!r}).read_bytes(), pipeline_config(),"
        " dataset=wine_split())\n"
        "print(built.format, sorted(m for m in sys.modules if m.split('.')[0] in"
        " ('tensorflow', 'keras')))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.split("\n")[-2] == "tflite []"


def test_an_unevaluated_tflite_gets_golden_rows_of_its_own_shape() -> None:
    model = wine_tflite(int8=True)  # a batch of one: the golden rows run one by one
    built = import_unevaluated(model, CONFIG)
    assert (built.format, built.runtime, built.task) == ("tflite", "tflite", "unevaluated")
    golden = np.array(built.golden_inputs, dtype=np.float32)
    assert golden.shape == (CONFIG.n_golden, 13)
    np.testing.assert_array_equal(litert_rows(model, golden), built.golden_outputs)
