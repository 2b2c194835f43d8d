"""The legacy-tflite class in its own environment (DESIGN §8): tflite-runtime 2.14 with
numpy < 2, as such a device has it, runs the hub's int8 .tflite exports (an MLP's, and a
conv net's on images and on windows) through the agent's own backend (agent/litert.py
falls back to tflite_runtime), and its answers stay within the golden tolerance the
class's profile sets.

The environment is a virtualenv of its own (numpy 1, tflite-runtime, the agent's pure
Python dependencies; no LiteRT, no onnxruntime), made once from PyPI and cached under
``.cache/`` (``$EF_CACHE_DIR``) like the Debian root of tests/debian_root.py. The model and
the reference answers (LiteRT's, in this environment) go over as files.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from hub import pipeline_config
from hub.fleet.classes import DEFAULT_CLASSES_DIR, load_classes
from hub.ml.convnet import ConvConfig, train_convnet
from hub.ml.data.samples import digits_images, windows_dataset
from hub.ml.gates import SIBLING_AGREEMENT
from hub.ml.tflite_convnet import export_convnet_tflite_int8
from hub.ml.tflite_export import export_tflite_int8
from hub.ml.training import fit
from hub.ml.training_data import builtin_dataset
from shared.tflite import TFLiteModel

pytestmark = [pytest.mark.slow, pytest.mark.tflite]

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("EF_CACHE_DIR") or ROOT / ".cache")
VENV = CACHE / "legacy-tflite-venv"
# what the legacy-tflite profile installs (firmware-images/legacy-tflite/profile.toml),
# and the core's pure-Python dependencies
REQUIREMENTS = ("numpy<2", "tflite-runtime==2.14.0", "paho-mqtt>=2.1", "psutil>=5.9")
CORE = ("tuf>=5.0", "cryptography>=42")


def legacy_python() -> Path:
    """The cached environment's python, made on first use (about a minute)."""
    python = VENV / "bin" / "python"
    stamp = VENV / ".ready"
    if not stamp.exists():
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(VENV)], check=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", *REQUIREMENTS, *CORE],
            check=True,
            timeout=600,
        )
        stamp.touch()
    return python


DEVICE_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    from agent.litert import LiteRtBackend
    from shared.tflite import interpreter_name
    model, rows = sys.argv[1], sys.argv[2]
    session = LiteRtBackend().load(__import__("pathlib").Path(model))
    out = session.run(np.load(rows))[0]
    print(json.dumps({"interpreter": interpreter_name(), "numpy": np.__version__,
                      "scores": out.tolist()}))
    """
)


def test_tflite_runtime_on_numpy_1_runs_the_hubs_export_within_the_class_tolerance(
    tmp_path: Path,
) -> None:
    config = pipeline_config(hidden=(64, 64))
    data = builtin_dataset(config)
    blob = export_tflite_int8(fit(data, config), data.x_train)
    x, y = data.x_holdout[:200], data.y_holdout[:200]
    litert, legacy, numpy_version = on_both(blob, x, tmp_path)
    diff = float(np.abs(legacy - litert).max())
    tolerance = load_classes(DEFAULT_CLASSES_DIR).get("legacy-tflite").golden_tolerance
    print(
        f"\ntflite-runtime 2.14 on numpy {numpy_version}: accuracy "
        f"{np.mean(legacy.argmax(1) == y):.3f} (LiteRT {np.mean(litert.argmax(1) == y):.3f}),"
        f" max |difference| {diff:.4f} against a class tolerance of {tolerance}"
    )
    assert tolerance is not None and diff <= tolerance
    assert np.mean(legacy.argmax(1) == litert.argmax(1)) >= 0.97


def on_both(blob: bytes, x: np.ndarray, work: Path) -> tuple[np.ndarray, np.ndarray, str]:
    """``x``'s scores from LiteRT here (what golden outputs hold) and from tflite-runtime
    2.14 on numpy 1 through the agent's backend, in the legacy virtualenv; its numpy."""
    model, rows = work / "model.tflite", work / "rows.npy"
    model.write_bytes(blob)
    np.save(rows, x)
    reference = TFLiteModel(blob)
    litert = reference.run(x, [reference.outputs()[0].name])[0]
    env = {"PYTHONPATH": str(ROOT), "PATH": os.environ.get("PATH", "")}
    done = subprocess.run(
        [str(legacy_python()), "-c", DEVICE_SCRIPT, str(model), str(rows)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    assert answer["interpreter"] == "tflite-runtime" and answer["numpy"].startswith("1.")
    return litert, np.asarray(answer["scores"], dtype=np.float32), str(answer["numpy"])


@pytest.mark.parametrize("kind", ["image", "window"])
def test_tflite_runtime_on_numpy_1_runs_the_conv_net_within_the_class_tolerance(
    kind: str, tmp_path: Path
) -> None:
    """legacy-tflite devices get conv nets too: their interpreter (tflite-runtime 2.14,
    numpy 1) runs the file TensorFlow 2.21 made, through the agent's own backend."""
    x, y = digits_images(seed=3) if kind == "image" else windows_dataset(600, seed=3)
    trained = train_convnet(
        x[100:],
        y[100:],
        task="classification",
        n_outputs=int(y.max()) + 1,
        config=ConvConfig(channels=(8, 16), dense=16, epochs=3),
        kind=kind,
    )
    blob = export_convnet_tflite_int8(trained.weights, x[100:], trained.onnx)
    litert, legacy, _ = on_both(blob, x[:100], tmp_path)
    diff = float(np.abs(legacy - litert).max())
    tolerance = load_classes(DEFAULT_CLASSES_DIR).get("legacy-tflite").golden_tolerance
    print(f"\n{kind}: tflite-runtime 2.14 against LiteRT, max |difference| {diff:.4f}")
    assert tolerance is not None and diff <= tolerance
    assert np.mean(legacy.argmax(1) == litert.argmax(1)) >= SIBLING_AGREEMENT
