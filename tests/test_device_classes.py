"""Device classes are data (hub/fleet/classes.py): the profiles in firmware-images/ parse,
and a bad profile is refused with its file and field named."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from edgefleet.client import HubClient, HubClientError
from edgefleet.stage import HubProcess
from hub.access.keys import DEV_KEY
from hub.fleet.classes import DEFAULT_CLASSES_DIR, ClassError, load_classes
from hub.transport.broker import Mosquitto

GOOD = """device_class = "{name}"
runtime = "tflite"
architectures = ["arm64"]
python = ">=3.11"
extras = ["agent-tflite"]
memory_budget_mb = 48
latency_budget_us = 8000
"""


def test_the_shipped_classes_cover_both_runtimes_and_tflite_runtime() -> None:
    classes = load_classes(DEFAULT_CLASSES_DIR)
    assert {"generic-linux", "pi-litert", "legacy-tflite"} <= set(classes.names())
    generic, pi, legacy = (classes.get(n) for n in ("generic-linux", "pi-litert", "legacy-tflite"))
    assert (generic.runtime, generic.artefact, generic.interpreter) == (
        "onnxruntime",
        "onnx",
        "onnxruntime",
    )
    assert (pi.runtime, pi.artefact, pi.interpreter) == ("tflite", "tflite", "ai-edge-litert")
    assert (legacy.interpreter, legacy.numpy) == ("tflite-runtime", "<2")
    assert legacy.as_dict()["artefact"] == "tflite"


def write(tmp_path: Path, name: str, text: str) -> Path:
    folder = tmp_path / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "profile.toml").write_text(text)
    return tmp_path


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (GOOD.replace('runtime = "tflite"', 'runtime = "tensorrt"'), "runtime 'tensorrt'"),
        (GOOD.replace('["arm64"]', '["sparc"]'), "architectures must name.*not sparc"),
        (GOOD.replace("48", "-1"), "memory_budget_mb must be a positive number"),
        (GOOD.replace("python", "pyhton"), "unknown settings: pyhton"),
        (GOOD + 'interpreter = "onnxruntime"\n', "interpreter 'onnxruntime' for tflite"),
        (GOOD.replace(" = ", " "), "profile.toml"),  # not TOML
    ],
)
def test_a_bad_profile_names_its_file_and_field(tmp_path: Path, text: str, message: str) -> None:
    root = write(tmp_path, "board", text.format(name="board"))
    with pytest.raises(ClassError, match=message):
        load_classes(root)


def test_a_profile_must_be_named_as_its_folder(tmp_path: Path) -> None:
    root = write(tmp_path, "board", GOOD.format(name="other"))
    with pytest.raises(ClassError, match="'other' is not its folder's name 'board'"):
        load_classes(root)


def test_an_unknown_class_lists_the_known_ones(tmp_path: Path) -> None:
    classes = load_classes(write(tmp_path, "board", GOOD.format(name="board")))
    with pytest.raises(ClassError, match=r"no device class 'nosuch' \(known: board\)"):
        classes.get("nosuch")
    assert len(load_classes(tmp_path / "missing")) == 0


@pytest.mark.broker
def test_the_hub_serves_its_classes_to_the_api_and_the_cli(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    hub = HubProcess(tmp_path / "hub", mosquitto.address.url).start()
    try:
        with HubClient(hub.url, api_key=DEV_KEY) as c:
            listed = {k["name"]: k for k in c.device_classes()}
            assert listed["pi-litert"]["artefact"] == "tflite"
            assert listed["generic-linux"]["architectures"] == ["amd64", "arm64"]
            with pytest.raises(HubClientError, match="no device class 'nosuch'"):
                c.device_class("nosuch")
        out = subprocess.run(
            [sys.executable, "-m", "edgefleet.cli", "hub", "classes", "--hub", hub.url],
            env={**os.environ, "EDGEFLEET_API_KEY": DEV_KEY},
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
        lines = out.splitlines()
        assert lines[0].split() == ["class", "runtime", "interpreter", "arch", "memory", "p95"]
        rows = {line.split()[0]: line.split()[1:4] for line in lines[2:] if line.strip()}
        assert rows["legacy-tflite"] == ["tflite", "tflite-runtime", "armhf,arm64"], out
    finally:
        hub.stop()


def test_a_manifest_carries_each_classes_budgets_and_a_device_applies_its_own() -> None:
    from manifests import manifest as make_manifest

    from hub.ml.build_specs import class_health
    from hub.ml.config import PipelineConfig
    from shared.manifest import Manifest, ManifestError

    classes = load_classes(DEFAULT_CLASSES_DIR)
    health = class_health(classes.health(("generic-linux", "legacy-tflite")), PipelineConfig())
    assert health["legacy-tflite"] == {
        "latency_budget_us": 20000.0,
        "memory_budget_mb": 32.0,
        "tolerance": 0.05,
    }
    # a budget the build set itself wins for every class
    own = class_health(
        classes.health(("legacy-tflite",)), PipelineConfig(latency_budget_us=50000.0)
    )
    assert own == {"legacy-tflite": {"memory_budget_mb": 32.0, "tolerance": 0.05}}

    custom = {**make_manifest(1, b"x" * 100, 64).to_custom(), "class_health": health}
    manifest = Manifest.from_custom(custom)
    legacy = manifest.for_class("legacy-tflite").health
    assert (legacy.tolerance, legacy.latency_budget_us, legacy.memory_budget_mb) == (
        0.05,
        20000.0,
        32.0,
    )
    assert manifest.for_class("some-other-class") is manifest
    with pytest.raises(ManifestError, match=r"class_health\.x: budgets must be > 0"):
        Manifest.from_custom({**custom, "class_health": {"x": {"tolerance": -1}}})
