"""Publishing a built model version with an artefact per runtime of its device classes.

ADR 0020: one version, its int8 ONNX file as the version's own target and each sibling
(a ``.tflite`` for LiteRT classes) signed as a target of its own, all with the health
budgets of the version's device classes. hub/ml/builds.py (training, uploads) and
hub/ml/retrain.py (the closed loop's retrains) both publish through :func:`publish_version`
and ask :func:`extra_runtimes` which siblings the classes need.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hub.ml.build_specs import ONNX_RUNTIME, HealthFor, RuntimesFor
from hub.ml.build_specs import class_health as class_health_of
from hub.ml.config import PipelineConfig
from hub.ml.manifest import BuiltModel
from hub.ml.registry import Registry
from hub.store.tables import ModelVersion

__all__ = ["Published", "artefact_json", "extra_runtimes", "publish_version"]


@dataclass(frozen=True)
class Published:
    """A version just signed, and each of its artefacts by runtime (``artefact_json``)."""

    row: ModelVersion
    artefacts: dict[str, dict[str, Any]]


def extra_runtimes(runtimes_for: RuntimesFor, device_classes: tuple[str, ...]) -> tuple[str, ...]:
    """The runtimes beyond onnxruntime that ``device_classes`` need, in order.

    Raises:
        ValueError: an unknown device class (the known ones named).
    """
    return tuple(sorted(set(runtimes_for(device_classes)) - {ONNX_RUNTIME}))


def publish_version(
    registry: Registry,
    built: BuiltModel,
    *,
    config: PipelineConfig,
    source: str,
    device_classes: tuple[str, ...],
    health_for: HealthFor,
    dataset: str | None = None,
) -> Published:
    """Sign ``built`` as the next version of its model, then each of its siblings as that
    version's artefact for their runtime, with the class health budgets of
    ``device_classes`` in every manifest.

    Raises:
        RegistryError: a sibling for a runtime the version has already.
    """
    class_health = class_health_of(health_for(device_classes), config)
    row = registry.publish(
        built,
        config=config,
        source=source,
        device_classes=device_classes,
        dataset=dataset,
        class_health=class_health,
    )
    artefacts = {row.runtime: artefact_json(row.target, built)}
    for other in built.siblings:
        extra = registry.add_artefact(
            row,
            other,
            config=config,
            device_classes=device_classes,
            class_health=class_health,
        )
        artefacts[extra.runtime] = artefact_json(extra.target, other)
    return Published(row, artefacts)


def artefact_json(target: str, built: BuiltModel) -> dict[str, Any]:
    """One artefact of a published version, as a build's result lists it."""
    return {
        "target": target,
        "format": built.format,
        "size_bytes": len(built.model_bytes),
        "metrics": built.metrics.get("int8", {}),
        "gates": list(built.gates),
    }
