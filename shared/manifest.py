"""The model manifest: the custom fields of a TUF target, covered by its signature.

The hub builds one per model version (hub/ml/pipeline.py); the agent reads it only from
verified targets metadata. Everything a device needs to decide whether, how and when to
install a model is here: identity and version, runtime needs, device classes, I/O schema,
per-chunk hashes, drift baseline and the health check.

Exceptions::

    ManifestError(detail)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Final

from shared.chunks import chunk_count
from shared.protocol import MAX_CHUNK_BYTES


class ManifestError(ValueError):
    """A manifest that is incomplete or inconsistent."""


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # numpy dtype name: "float32", "int64"
    shape: tuple[int | None, ...]  # None for a dynamic dimension (the batch)


@dataclass(frozen=True)
class HealthCheck:
    """What a staged model must show before activation, and during probation after it.

    golden_inputs/golden_outputs: rows and the reference scores (the output named
    ``golden_output``) the hub computed with the exact file it signed.
    """

    golden_inputs: tuple[tuple[float, ...], ...]
    golden_outputs: tuple[tuple[float, ...], ...]
    golden_output: str
    tolerance: float  # max absolute difference per value
    latency_budget_us: float  # p95 of single-row inference on the device
    memory_budget_mb: float  # RSS growth allowed by loading the model
    probation_s: float  # seconds after activation before reporting healthy
    probation_min_inferences: int  # live inferences needed to judge the probation
    max_error_ratio: float  # errors / inferences tolerated during probation

    def __post_init__(self) -> None:
        if not self.golden_inputs or len(self.golden_inputs) != len(self.golden_outputs):
            raise ManifestError("health: golden_inputs and golden_outputs must pair up")
        if self.tolerance < 0 or self.latency_budget_us <= 0 or self.probation_s < 0:
            raise ManifestError("health: tolerance, latency budget and probation out of range")
        if not 0 <= self.max_error_ratio <= 1:
            raise ManifestError("health: max_error_ratio must be within 0..1")


@dataclass(frozen=True)
class Manifest:
    model: str
    channel: str
    version: int
    format: str  # "onnx" | "tflite"
    runtime: str  # "onnxruntime" | "tflite"
    device_classes: tuple[str, ...]  # empty: any class
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    classes: tuple[str, ...]
    chunk_size: int
    chunks: tuple[str, ...]  # sha256 per chunk
    health: HealthCheck
    baseline: Mapping[str, Any] = field(default_factory=dict)
    metrics: Mapping[str, float] = field(default_factory=dict)
    # per device class, the health budgets its profile sets (firmware-images/<class>/
    # profile.toml): latency_budget_us, memory_budget_mb, tolerance; absent: ``health``'s
    class_health: Mapping[str, Mapping[str, float]] = field(default_factory=dict)

    def for_class(self, device_class: str) -> Manifest:
        """This manifest with the health budgets of ``device_class`` (its own, if any)."""
        budgets = self.class_health.get(device_class)
        if not budgets:
            return self
        h = self.health
        health = replace(
            h,
            latency_budget_us=budgets.get("latency_budget_us", h.latency_budget_us),
            memory_budget_mb=budgets.get("memory_budget_mb", h.memory_budget_mb),
            tolerance=budgets.get("tolerance", h.tolerance),
        )
        return replace(self, health=health)

    def __post_init__(self) -> None:
        if self.version < 1:
            raise ManifestError(f"version must be >= 1, got {self.version}")
        if not 0 < self.chunk_size <= MAX_CHUNK_BYTES:
            raise ManifestError(f"chunk_size {self.chunk_size} out of 1..{MAX_CHUNK_BYTES}")
        if not self.chunks or not all(len(h) == 64 for h in self.chunks):
            raise ManifestError("chunks must list one sha256 (hex) per chunk")
        if not self.inputs or not self.outputs:
            raise ManifestError("inputs and outputs must be declared")

    def check_length(self, length: int) -> None:
        """The signed file length must agree with the number of chunk hashes."""
        if chunk_count(length, self.chunk_size) != len(self.chunks):
            raise ManifestError(
                f"{len(self.chunks)} chunk hashes for {length} bytes at {self.chunk_size}"
            )

    def to_custom(self) -> dict[str, Any]:
        """The JSON-able dict stored in the TUF target's ``custom`` field."""
        return asdict(self)

    @classmethod
    def from_custom(cls, custom: Mapping[str, Any]) -> Manifest:
        """Build from a target's ``custom`` field.

        Raises:
            ManifestError: a field is missing or of the wrong type.
        """
        try:
            health = HealthCheck(
                golden_inputs=tuple(
                    tuple(map(float, r)) for r in custom["health"]["golden_inputs"]
                ),
                golden_outputs=tuple(
                    tuple(map(float, r)) for r in custom["health"]["golden_outputs"]
                ),
                golden_output=str(custom["health"]["golden_output"]),
                tolerance=float(custom["health"]["tolerance"]),
                latency_budget_us=float(custom["health"]["latency_budget_us"]),
                memory_budget_mb=float(custom["health"]["memory_budget_mb"]),
                probation_s=float(custom["health"]["probation_s"]),
                probation_min_inferences=int(custom["health"]["probation_min_inferences"]),
                max_error_ratio=float(custom["health"]["max_error_ratio"]),
            )
            return cls(
                model=str(custom["model"]),
                channel=str(custom["channel"]),
                version=int(custom["version"]),
                format=str(custom["format"]),
                runtime=str(custom["runtime"]),
                device_classes=tuple(map(str, custom["device_classes"])),
                inputs=tuple(_spec(s) for s in custom["inputs"]),
                outputs=tuple(_spec(s) for s in custom["outputs"]),
                classes=tuple(map(str, custom["classes"])),
                chunk_size=int(custom["chunk_size"]),
                chunks=tuple(map(str, custom["chunks"])),
                health=health,
                baseline=dict(custom.get("baseline", {})),
                metrics={str(k): float(v) for k, v in dict(custom.get("metrics", {})).items()},
                class_health=_class_health(custom.get("class_health", {})),
            )
        except ManifestError:
            raise
        except (KeyError, TypeError, ValueError) as e:
            raise ManifestError(f"malformed manifest: {type(e).__name__}: {e}") from e


def _spec(s: Mapping[str, Any]) -> TensorSpec:
    shape = tuple(None if d is None else int(d) for d in s["shape"])
    return TensorSpec(name=str(s["name"]), dtype=str(s["dtype"]), shape=shape)


CLASS_HEALTH_FIELDS: Final = frozenset({"latency_budget_us", "memory_budget_mb", "tolerance"})


def _class_health(raw: Any) -> dict[str, dict[str, float]]:
    """``class_health``: per class, positive budgets among :data:`CLASS_HEALTH_FIELDS`.

    Raises:
        ManifestError: another shape, field or value.
    """
    if not isinstance(raw, Mapping):
        raise ManifestError("class_health must map device classes to budgets")
    out: dict[str, dict[str, float]] = {}
    for cls, budgets in raw.items():
        if not isinstance(budgets, Mapping) or not set(budgets) <= CLASS_HEALTH_FIELDS:
            raise ManifestError(f"class_health.{cls}: only {sorted(CLASS_HEALTH_FIELDS)}")
        values = {str(k): float(v) for k, v in budgets.items()}
        if any(v <= 0 for v in values.values()):
            raise ManifestError(f"class_health.{cls}: budgets must be > 0")
        out[str(cls)] = values
    return out
