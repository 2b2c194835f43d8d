"""Signed-manifest fixtures for tests that drive the agent core without a hub."""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

from shared.chunks import chunk_hashes
from shared.manifest import HealthCheck, Manifest, TensorSpec
from shared.trust import VerifiedTarget

HEALTH = HealthCheck(
    golden_inputs=((0.0,) * 16,),
    golden_outputs=((0.25,) * 4,),
    golden_output="probabilities",
    tolerance=1e-3,
    latency_budget_us=5000,
    memory_budget_mb=64,
    probation_s=5,
    probation_min_inferences=10,
    max_error_ratio=0.05,
)


def manifest(version: int, data: bytes, chunk_size: int, **overrides: Any) -> Manifest:
    """Model ``m`` v``version`` of ``data``; ``health_<field>=`` changes one health field."""
    health = {
        k.removeprefix("health_"): overrides.pop(k)
        for k in list(overrides)
        if k.startswith("health_")
    }
    fields: dict[str, Any] = dict(
        model="m",
        channel="stable",
        version=version,
        format="onnx",
        runtime="onnxruntime",
        device_classes=(),
        inputs=(TensorSpec("input", "float32", (None, 16)),),
        outputs=(TensorSpec("probabilities", "float32", (None, 4)),),
        classes=("a", "b", "c", "d"),
        chunk_size=chunk_size,
        chunks=tuple(chunk_hashes(data, chunk_size)),
        health=dataclasses.replace(overrides.pop("health", HEALTH), **health),
    )
    fields.update(overrides)
    return Manifest(**fields)


def make_target(
    version: int, data: bytes, chunk_size: int = 1024, **overrides: Any
) -> VerifiedTarget:
    """The verified target the core would get for :func:`manifest`."""
    m = manifest(version, data, chunk_size, **overrides)
    return VerifiedTarget(
        f"m/{version}/model.onnx", len(data), hashlib.sha256(data).hexdigest(), m.to_custom()
    )
