"""The pre-activation health check, on real onnxruntime sessions."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from models import (  # tests/models.py
    make_conv_onnx,
    make_log_onnx,
    make_mlp_onnx,
    make_regressor_onnx,
    quantize_int8,
)

from agent.health import HealthResult, load_and_check, run_health_check
from agent.runtime import ModelSession, OnnxBackend, SessionCache
from shared.chunks import DEFAULT_CHUNK_SIZE, chunk_hashes
from shared.manifest import HealthCheck, Manifest, TensorSpec
from shared.sensors import generate

INPUTS = (TensorSpec("input", "float32", (None, 16)),)
OUTPUTS = (
    TensorSpec("label", "int64", (None,)),
    TensorSpec("probabilities", "float32", (None, 4)),
)
GENEROUS_US = 1_000_000.0  # a latency budget no machine misses (1 s per row)


@pytest.fixture(scope="module")
def fp32_bytes() -> bytes:
    return make_mlp_onnx(hidden=(16,), n=500)


@pytest.fixture(scope="module", params=["fp32", "int8"])
def model_bytes(request: pytest.FixtureRequest, fp32_bytes: bytes) -> bytes:
    return fp32_bytes if request.param == "fp32" else quantize_int8(fp32_bytes)


def golden_check(session: ModelSession, rows: int = 8, **overrides: Any) -> HealthCheck:
    """The health check the hub would sign for this exact model."""
    x, _ = generate(rows, seed=21)
    probs = session.run(x)[1]
    fields: dict[str, Any] = {
        "golden_inputs": tuple(tuple(map(float, r)) for r in x),
        "golden_outputs": tuple(tuple(map(float, r)) for r in probs),
        "golden_output": "probabilities",
        "tolerance": 1e-3,
        "latency_budget_us": GENEROUS_US,
        "memory_budget_mb": 1024.0,
        "probation_s": 10.0,
        "probation_min_inferences": 10,
        "max_error_ratio": 0.05,
    }
    fields.update(overrides)
    return HealthCheck(**fields)


def manifest_for(data: bytes, health: HealthCheck, **overrides: Any) -> Manifest:
    fields: dict[str, Any] = {
        "model": "vibration",
        "channel": "stable",
        "version": 1,
        "format": "onnx",
        "runtime": "onnxruntime",
        "device_classes": (),
        "inputs": INPUTS,
        "outputs": OUTPUTS,
        "classes": ("normal", "imbalance", "bearing_wear", "misalignment"),
        "chunk_size": DEFAULT_CHUNK_SIZE,
        "chunks": tuple(chunk_hashes(data)) or ("0" * 64,),
        "health": health,
    }
    fields.update(overrides)
    return Manifest(**fields)


@pytest.fixture
def staged(tmp_path: Path, model_bytes: bytes) -> Iterator[tuple[Path, ModelSession]]:
    path = tmp_path / "model.onnx"
    path.write_bytes(model_bytes)
    yield path, OnnxBackend().load(path)


def test_the_real_model_passes(staged: tuple[Path, ModelSession]) -> None:
    _, session = staged
    result = run_health_check(session, golden_check(session), INPUTS, OUTPUTS)
    assert result.ok, result.failures
    assert result.failures == ()
    assert result.max_golden_diff is not None and result.max_golden_diff <= 1e-6
    assert result.p95_us is not None and 0 < result.p95_us < GENEROUS_US
    assert result.rss_growth_mb is None  # no rss_fn: not measured


def test_load_and_check_passes_and_measures_memory(staged: tuple[Path, ModelSession]) -> None:
    path, session = staged
    manifest = manifest_for(path.read_bytes(), golden_check(session))
    loaded, result = load_and_check(OnnxBackend(), path, manifest, sha256=session.sha256)
    assert result.ok, result.failures
    assert loaded is not None and loaded.sha256 == session.sha256
    assert result.rss_growth_mb is not None and result.rss_growth_mb < 1024


def test_altered_golden_outputs_fail_naming_the_row(staged: tuple[Path, ModelSession]) -> None:
    _, session = staged
    health = golden_check(session)
    outputs = [list(r) for r in health.golden_outputs]
    outputs[3][1] += 0.41
    altered = dataclasses.replace(health, golden_outputs=tuple(map(tuple, outputs)))
    result = run_health_check(session, altered, INPUTS, OUTPUTS)
    assert not result.ok
    assert result.failures == (
        "golden output 'probabilities' row 3 differs by 0.41 > tolerance 0.001",
    )
    assert result.max_golden_diff == pytest.approx(0.41, abs=1e-6)


def test_many_bad_golden_rows_are_summarised(staged: tuple[Path, ModelSession]) -> None:
    _, session = staged
    health = golden_check(session)
    shifted = tuple(tuple(v + 1.0 for v in r) for r in health.golden_outputs)
    result = run_health_check(
        session, dataclasses.replace(health, golden_outputs=shifted), INPUTS, OUTPUTS
    )
    assert len(result.failures) == 4
    assert result.failures[-1] == "... and 5 more golden rows out of tolerance"


def test_a_too_small_latency_budget_fails(staged: tuple[Path, ModelSession]) -> None:
    _, session = staged
    health = golden_check(session, latency_budget_us=0.001)
    result = run_health_check(session, health, INPUTS, OUTPUTS)
    assert not result.ok and len(result.failures) == 1
    assert result.failures[0].startswith("p95 latency ")
    assert result.failures[0].endswith(" µs > budget 0.001 µs")
    assert result.p95_us is not None and result.p95_us > 0.001


@pytest.mark.parametrize(
    ("inputs", "outputs", "failure"),
    [
        (
            (TensorSpec("input", "float32", (None, 8)),),
            OUTPUTS,
            "input 'input' has shape [None, 16], manifest says [None, 8]",
        ),
        (
            (TensorSpec("input", "float64", (None, 16)),),
            OUTPUTS,
            "input 'input' has dtype float32, manifest says float64",
        ),
        (
            (TensorSpec("features", "float32", (None, 16)),),
            OUTPUTS,
            "input 'features' is missing from the model",
        ),
        (
            INPUTS,
            (OUTPUTS[0], TensorSpec("probabilities", "float32", (None, 3))),
            "output 'probabilities' has shape [None, 4], manifest says [None, 3]",
        ),
        (INPUTS, OUTPUTS[:1], "output 'probabilities' is not in the manifest"),
    ],
)
def test_spec_mismatch_fails(
    staged: tuple[Path, ModelSession],
    inputs: tuple[TensorSpec, ...],
    outputs: tuple[TensorSpec, ...],
    failure: str,
) -> None:
    _, session = staged
    result = run_health_check(session, golden_check(session), inputs, outputs)
    assert not result.ok
    assert failure in result.failures


def test_golden_inputs_of_the_wrong_width_fail_without_raising(
    staged: tuple[Path, ModelSession],
) -> None:
    _, session = staged
    health = golden_check(session)
    narrow = tuple(r[:8] for r in health.golden_inputs)
    result = run_health_check(
        session, dataclasses.replace(health, golden_inputs=narrow), INPUTS, OUTPUTS
    )
    assert not result.ok
    assert any(f.startswith("golden inputs fail to run: ") for f in result.failures)
    assert any(f.startswith("single-row inference fails: ") for f in result.failures)


def test_golden_output_not_in_the_model_fails(staged: tuple[Path, ModelSession]) -> None:
    _, session = staged
    result = run_health_check(
        session, golden_check(session, golden_output="scores"), INPUTS, OUTPUTS
    )
    assert result.failures == ("golden output 'scores' is not an output of the model",)


def test_golden_outputs_of_the_wrong_shape_fail(staged: tuple[Path, ModelSession]) -> None:
    _, session = staged
    health = golden_check(session)
    short = tuple(r[:3] for r in health.golden_outputs)
    result = run_health_check(
        session, dataclasses.replace(health, golden_outputs=short), INPUTS, OUTPUTS
    )
    assert result.failures == ("golden output 'probabilities' has shape [8, 4], expected [8, 3]",)


def test_nan_outputs_fail_the_golden_check() -> None:
    session = OnnxBackend().load_bytes(make_log_onnx(4))
    spec_in = (TensorSpec("input", "float32", (None, 4)),)
    spec_out = (
        TensorSpec("label", "int64", (None,)),
        TensorSpec("probabilities", "float32", (None, 4)),
    )
    health = HealthCheck(
        golden_inputs=((1.0, 1.0, 1.0, 1.0), (1.0, -1.0, 1.0, 1.0)),
        golden_outputs=((0.0, 0.0, 0.0, 0.0), (0.0, 0.0, 0.0, 0.0)),
        golden_output="probabilities",
        tolerance=1e-6,
        latency_budget_us=GENEROUS_US,
        memory_budget_mb=1024,
        probation_s=1,
        probation_min_inferences=1,
        max_error_ratio=0.1,
    )
    result = run_health_check(session, health, spec_in, spec_out)
    assert result.failures == (
        "golden output 'probabilities' row 1 differs by inf > tolerance 1e-06",
    )


def test_memory_growth_over_budget_fails(staged: tuple[Path, ModelSession]) -> None:
    path, session = staged
    readings = iter([100 * 2**20, 300 * 2**20])  # before the load, after the check
    manifest = manifest_for(path.read_bytes(), golden_check(session, memory_budget_mb=64))
    _, result = load_and_check(OnnxBackend(), path, manifest, rss_fn=lambda: next(readings))
    assert result.failures == ("memory grew by 200.0 MiB > budget 64 MiB",)
    assert result.rss_growth_mb == 200.0


@pytest.mark.parametrize("content", ["empty", "garbage", "truncated"])
def test_a_corrupt_file_is_a_failed_result(tmp_path: Path, fp32_bytes: bytes, content: str) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(
        {
            "empty": b"",
            "garbage": b"\x08\x07garbage that is not protobuf",
            "truncated": fp32_bytes[: len(fp32_bytes) // 2],
        }[content]
    )
    session = OnnxBackend().load_bytes(fp32_bytes)
    manifest = manifest_for(fp32_bytes, golden_check(session))
    loaded, result = load_and_check(OnnxBackend(), path, manifest)
    assert loaded is None and not result.ok
    assert len(result.failures) == 1
    assert result.failures[0].startswith("the model does not load: onnxruntime cannot load")


def test_a_missing_or_substituted_file_is_a_failed_result(
    tmp_path: Path, fp32_bytes: bytes
) -> None:
    session = OnnxBackend().load_bytes(fp32_bytes)
    manifest = manifest_for(fp32_bytes, golden_check(session))
    loaded, result = load_and_check(OnnxBackend(), tmp_path / "absent.onnx", manifest)
    assert loaded is None and result.failures[0].startswith("the model does not load: cannot read")
    path = tmp_path / "model.onnx"
    path.write_bytes(make_log_onnx(16))  # a valid model, but not the signed one
    loaded, result = load_and_check(OnnxBackend(), path, manifest, sha256=session.sha256)
    assert loaded is None and "sha256" in result.failures[0]


def test_a_session_cache_can_stand_for_the_backend(tmp_path: Path, fp32_bytes: bytes) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(fp32_bytes)
    cache = SessionCache(OnnxBackend())
    session = cache.get(None, path)
    manifest = manifest_for(fp32_bytes, golden_check(session))
    loaded, result = load_and_check(
        cache, path, manifest, sha256=session.sha256, check_memory=False
    )
    assert result.ok, result.failures
    assert loaded is session and result.rss_growth_mb is None


def test_detail_fits_an_event() -> None:
    result = HealthResult.failed(*(f"failure number {i}" for i in range(1000)))
    assert len(result.detail) == 4096 and result.detail.endswith("...")
    assert HealthResult.failed("a", "b").detail == "a; b"


def test_golden_of_a_label_output(staged: tuple[Path, ModelSession]) -> None:
    _, session = staged
    x, _ = generate(5, seed=3)
    labels = session.run(x)[0]
    health = golden_check(
        session,
        golden_inputs=tuple(tuple(map(float, r)) for r in x),
        golden_outputs=tuple((float(v),) for v in labels),
        golden_output="label",
        tolerance=0.0,
    )
    assert run_health_check(session, health, INPUTS, OUTPUTS).ok
    wrong = tuple((float((v + 1) % 4),) for v in labels)
    result = run_health_check(
        session, dataclasses.replace(health, golden_outputs=wrong), INPUTS, OUTPUTS
    )
    assert len(result.failures) == 4 and "row 0 differs by" in result.failures[0]
    assert np.isfinite(result.max_golden_diff or np.nan)


def test_a_two_input_model_fails_without_running(staged: tuple[Path, ModelSession]) -> None:
    _, session = staged
    two = dataclasses.replace(session, inputs=(*INPUTS, TensorSpec("extra", "float32", (None, 1))))
    result = run_health_check(two, golden_check(session), INPUTS, OUTPUTS)
    assert result.failures == (
        "input 'extra' is not in the manifest",
        "the model has 2 inputs; the agent serves one",
    )


# ------------------------------------------------------------ conv nets and regressors


def flat_golden(session: ModelSession, x: np.ndarray, output: str, **overrides: Any) -> HealthCheck:
    """The health check the hub signs for a conv net: rows flattened (ADR 0014)."""
    want = session.run(x)[list(session.output_names).index(output)]
    fields: dict[str, Any] = {
        "golden_inputs": tuple(tuple(map(float, r)) for r in x.reshape(len(x), -1)),
        "golden_outputs": tuple(tuple(map(float, np.ravel(r))) for r in want),
        "golden_output": output,
        "tolerance": 1e-4,
        "latency_budget_us": GENEROUS_US,
        "memory_budget_mb": 1024.0,
        "probation_s": 10.0,
        "probation_min_inferences": 10,
        "max_error_ratio": 0.05,
    }
    fields.update(overrides)
    return HealthCheck(**fields)


@pytest.mark.parametrize(
    ("row_shape", "task", "window", "output"),
    [
        ((8, 8), "classification", False, "probabilities"),
        ((6, 6, 3), "classification", False, "probabilities"),
        ((6, 6, 3), "regression", False, "value"),
        ((20, 3), "regression", True, "value"),
    ],
)
def test_flattened_golden_rows_are_reshaped_to_the_models_input(
    row_shape: tuple[int, ...], task: str, window: bool, output: str
) -> None:
    session = OnnxBackend().load_bytes(make_conv_onnx(row_shape, task=task, window=window))
    x = np.random.default_rng(4).normal(size=(6, *row_shape)).astype(np.float32)
    health = flat_golden(session, x, output)
    if task == "regression":
        assert all(len(r) == 1 for r in health.golden_outputs)  # rows of one value
    result = run_health_check(session, health, session.inputs, session.outputs)
    assert result.ok, result.failures
    assert result.max_golden_diff is not None and result.max_golden_diff <= 1e-6
    # a regressor whose value drifted from the signed one fails, naming the row
    moved = [list(r) for r in health.golden_outputs]
    moved[4][0] += 0.5
    bad = run_health_check(
        session,
        dataclasses.replace(health, golden_outputs=tuple(map(tuple, moved))),
        session.inputs,
        session.outputs,
    )
    assert f"golden output {output!r} row 4 differs by 0.5 > tolerance 0.0001" in bad.failures


def test_golden_rows_that_do_not_fit_the_image_fail_without_raising() -> None:
    session = OnnxBackend().load_bytes(make_conv_onnx((6, 6, 3)))
    x = np.random.default_rng(5).normal(size=(3, 6, 6, 3)).astype(np.float32)
    health = flat_golden(session, x, "probabilities")
    short = tuple(r[:-1] for r in health.golden_inputs)  # 107 values, not 6*6*3
    result = run_health_check(
        session, dataclasses.replace(health, golden_inputs=short), session.inputs, session.outputs
    )
    assert result.failures == (
        "golden rows of 107 values do not fit an input of shape [None, 6, 6, 3]",
    )


def test_a_regressor_golden_check_through_its_manifest(tmp_path: Path) -> None:
    data = make_regressor_onnx()
    path = tmp_path / "model.onnx"
    path.write_bytes(data)
    session = OnnxBackend().load(path)
    x, _ = generate(5, seed=22)
    health = flat_golden(session, x, "value")
    manifest = manifest_for(data, health, outputs=session.outputs, classes=())
    loaded, result = load_and_check(OnnxBackend(), path, manifest, check_memory=False)
    assert result.ok and loaded is not None, result.failures
