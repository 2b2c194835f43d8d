"""The gates a model passes before it is signed, each with a name a refusal gives.

- ``int8_loss``: the int8 file may lose at most ``max_int8_loss_points`` points of
  accuracy against its fp32 twin (classifiers), or raise the MAE by at most
  ``max_int8_mae_increase`` of the fp32 MAE (regressors, relative).
- ``floor``: at least ``min_accuracy`` (classifiers) or at most ``max_mae`` (regressors),
  when set.
- ``champion``: no worse than the version now deployed, scored on the same hold-out, when
  asked for (champion/challenger).
- ``sibling``: a version's artefact for another runtime (a .tflite beside the int8 ONNX,
  ADR 0020) agrees with the ONNX artefact on the hold-out: the same class for at least
  ``SIBLING_AGREEMENT`` of the rows, or (regressors) a mean difference of at most
  ``SIBLING_MAE_SHARE`` of the ONNX artefact's MAE. Two files of one version must answer
  alike whichever class of device runs them.

Every gate judged is recorded with its figures, passed or not (a training run's
``gates``); :func:`enforce` raises :class:`~hub.ml.errors.ModelRefused` when one fails.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from hub.ml.config import PipelineConfig
from hub.ml.errors import GateError, ModelRefused
from hub.ml.metrics import headline

__all__ = ["SIBLING_AGREEMENT", "SIBLING_MAE_SHARE", "Gate", "enforce", "judge", "sibling"]

SIBLING_AGREEMENT: Final = 0.97  # share of hold-out rows given the same class
SIBLING_MAE_SHARE: Final = 0.25  # mean |difference| against the ONNX artefact's MAE


@dataclass(frozen=True)
class Gate:
    name: str
    passed: bool
    detail: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def judge(
    task: str,
    fp32: dict[str, Any],
    int8: dict[str, Any],
    config: PipelineConfig,
    champion: dict[str, Any] | None = None,
) -> list[Gate]:
    """Every gate that applies, judged on the figures of the file that ships (``int8``)."""
    gates = [_int8_loss(task, fp32, int8, config)]
    floor = _floor(task, int8, config)
    if floor is not None:
        gates.append(floor)
    if champion is not None:
        gates.append(_champion(task, int8, champion))
    return gates


def enforce(task: str, gates: list[Gate], metrics: dict[str, Any], config: PipelineConfig) -> None:
    """Raise when a gate failed (``GateError`` when it is a classifier's int8 loss alone).

    Raises:
        ModelRefused: a gate failed.
    """
    failed = [g for g in gates if not g.passed]
    if not failed:
        return
    as_json = [g.to_json() for g in gates]
    if task == "classification" and [g.name for g in failed] == ["int8_loss"]:
        raise GateError(
            metrics["fp32"]["accuracy"],
            metrics["int8"]["accuracy"],
            config.max_int8_loss_points,
            as_json,
            metrics,
        )
    raise ModelRefused(as_json, metrics)


def _int8_loss(
    task: str, fp32: dict[str, Any], int8: dict[str, Any], config: PipelineConfig
) -> Gate:
    if task == "classification":
        a32, a8 = fp32["accuracy"], int8["accuracy"]
        loss = (a32 - a8) * 100
        ok = loss <= config.max_int8_loss_points
        return Gate(
            "int8_loss",
            ok,
            f"accuracy {a8:.4f} int8 vs {a32:.4f} fp32: a loss of {loss:.2f} points"
            f" ({'within' if ok else 'over'} the {config.max_int8_loss_points:.2f} allowed)",
        )
    m32, m8 = fp32["mae"], int8["mae"]
    rise = (m8 - m32) / m32 if m32 > 0 else (0.0 if m8 <= m32 else float("inf"))
    ok = rise <= config.max_int8_mae_increase
    return Gate(
        "int8_loss",
        ok,
        f"MAE {m8:.6g} int8 vs {m32:.6g} fp32: {rise * 100:+.2f}%"
        f" ({'within' if ok else 'over'} the {config.max_int8_mae_increase * 100:.2f}% allowed)",
    )


def _floor(task: str, int8: dict[str, Any], config: PipelineConfig) -> Gate | None:
    if task == "classification":
        if config.min_accuracy is None:
            return None
        a = int8["accuracy"]
        ok = a >= config.min_accuracy
        return Gate(
            "floor",
            ok,
            f"accuracy {a:.4f} {'>=' if ok else '<'} the floor {config.min_accuracy:.4f}",
        )
    if config.max_mae is None:
        return None
    m = int8["mae"]
    ok = m <= config.max_mae
    return Gate("floor", ok, f"MAE {m:.6g} {'<=' if ok else '>'} the ceiling {config.max_mae:.6g}")


def _champion(task: str, int8: dict[str, Any], champion: dict[str, Any]) -> Gate:
    mine, theirs = headline(task, int8), headline(task, champion)
    who = f"v{champion.get('version', '?')}"
    if task == "classification":
        ok = mine >= theirs
        return Gate(
            "champion",
            ok,
            f"accuracy {mine:.4f} vs {theirs:.4f} of the deployed {who} on the same hold-out",
        )
    ok = mine <= theirs
    return Gate(
        "champion", ok, f"MAE {mine:.6g} vs {theirs:.6g} of the deployed {who} on the same hold-out"
    )


def sibling(
    task: str,
    mine: npt.NDArray[Any],
    onnx: npt.NDArray[Any],
    onnx_metrics: dict[str, Any],
) -> Gate:
    """How closely an artefact for another runtime answers as the ONNX artefact did, on
    the same hold-out rows (class scores, or values)."""
    if task == "classification":
        agree = float(np.mean(mine.argmax(axis=1) == onnx.argmax(axis=1)))
        ok = agree >= SIBLING_AGREEMENT
        return Gate(
            "sibling",
            ok,
            f"the same class as the ONNX artefact for {agree * 100:.1f}% of the hold-out"
            f" ({'at least' if ok else 'under'} the {SIBLING_AGREEMENT * 100:.0f}% required)",
        )
    diff = float(np.mean(np.abs(mine.reshape(-1) - onnx.reshape(-1))))
    allowed = SIBLING_MAE_SHARE * float(onnx_metrics["mae"])
    ok = diff <= allowed
    return Gate(
        "sibling",
        ok,
        f"a mean difference of {diff:.6g} from the ONNX artefact"
        f" ({'within' if ok else 'over'} the {allowed:.6g} allowed: a quarter of its MAE)",
    )
