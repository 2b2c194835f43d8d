"""A small conv net for image and window datasets, trained with PyTorch, exported to ONNX.

Rows are images ``[H, W]`` / ``[H, W, C]`` (2-D convolutions) or sensor windows
``[T, C]`` (1-D convolutions over T). Each block is conv 3 → ReLU → max-pool 2; then a
dense layer and the head. The ONNX file takes ``input`` float32 ``[N, *row_shape]``
exactly as the dataset stores rows: the channel axis and the transpose are inside the
graph, and the input standardisation (per channel, from the training rows) is folded
into the first conv (which pads nothing, so the fold is exact). A classifier gives
``label`` int64 [N] and ``probabilities`` float32 [N, k], like the MLP of
hub/ml/training.py; a regressor gives ``value`` float32 [N, 1], the target's
standardisation folded into the last layer. The TorchScript
exporter (ADR 0014) writes it at the pipeline's opset with a dynamic batch axis;
hub/ml/convnet_torch.py holds everything that needs torch, imported only when used.
``train_convnet`` also hands back the trained weights as numbers (``ConvWeights``), from
which hub/ml/tflite_convnet.py lays the same net out for LiteRT devices.

Measured with ``python -m bench convnet`` and sweeps like it (torch 2.13 CPU,
onnxruntime 1.32, 2 shared cores with AVX-512 VNNI; int8 is ``quantize_int8`` on 512
training rows; latency per row at batch 1, one intra-op thread, fp32 and int8
alternating in blocks, medians; a quarter of the rows held out):

- widths: int8 pays only once the convs have work to do. Digits at 16x16, int8 time
  per row over fp32: (16, 32) 1.33x, (32, 64) 0.91-0.96x, (32, 64, 128) 0.78x,
  (48, 96) 0.67-0.73x, file 0.275x. At 8x8 int8 was 1.28-1.38x *slower* at every
  width, hence 16x16 digits. Windows [128, 3]: (16, 32) 0.86x, (32, 64) 0.61x,
  (48, 96) 0.47x, file 0.262x; (32, 64, 128) as fast but lost 1.5 points on one seed.
- default (48, 96), dense 64, 20 epochs: digits 98.9-99.1% (int8 0.22 points below
  at most, over six seeds), windows 90.8-92.0% (int8 within 0.4 points over seven
  seeds); training 7-16 s on the 1,348 / 2,250 training rows (a loaded machine).
- label smoothing 0.1: without it the windows net's logits ran to ±250, the int8
  logit step was 1.6, and near-ties collapsed to the lowest class (24 of the 25 rows
  where int8 and fp32 disagreed): up to 1.5 points lost. With it, 0.4 at most, and
  digits rose from 98.0% to 99.0% (mean of five seeds).
- per-channel weight scales: no accuracy gain on either dataset (within ±0.5 points
  over three to five seeds), 1-5% slower, +3-4 KB: the pipeline's per-tensor default
  stays.
- not taken (measured before label smoothing): global average pooling for windows
  (int8 lost up to 1.3 points, the file shrank less), weight decay 1e-2 or 5e-2,
  input-noise augmentation, 10 epochs (int8 lost up to 2.1 points on windows), 30
  (no better than 20).
- one torch thread: two trained 1.5x faster but gave other bytes for the same seed.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np
import numpy.typing as npt

from hub.ml.errors import ConfigError, PipelineError

__all__ = [
    "KINDS",
    "TASKS",
    "ConvConfig",
    "ConvLayer",
    "ConvWeights",
    "TrainedConvNet",
    "conv_config",
    "conv_search_space",
    "fit_convnet",
    "row_kind",
    "train_convnet",
]

TASKS = ("classification", "regression")
KINDS = ("image", "window")
KERNEL = 3  # conv kernel side, in pixels / samples: rows are at least this long
POOL = 2  # max-pool size and stride after each conv block (while the rows are that long)
# A 3-D row [A, B] is a window [T, C] when it is narrow and long, else an image [H, W].
WINDOW_MAX_CHANNELS = 16
WINDOW_MIN_ASPECT = 4  # T >= 4 * C
MISSING_TORCH = "conv nets need the hub-torch extra: pip install 'edgefleet[hub-torch]'"

FloatRows = npt.NDArray[np.float32]


@dataclass(frozen=True)
class ConvConfig:
    """How to build and train the conv net.

    ``time_budget_s`` trades determinism for a bound: training stops after the epoch
    that crosses it, so a slower machine trains fewer epochs (different bytes).
    """

    channels: tuple[int, ...] = (48, 96)  # conv block widths, one block per entry
    dense: int = 64  # width of the dense layer before the head
    epochs: int = 20
    batch_size: int = 64  # rows per optimiser step
    learning_rate: float = 3e-3  # AdamW, cosine-decayed to 0 over ``epochs``
    weight_decay: float = 1e-4  # AdamW's decoupled weight decay
    seed: int = 7
    time_budget_s: float | None = None  # seconds; stop after the epoch that crosses it
    label_smoothing: float = 0.1  # classifiers: keeps logits in a range int8 resolves

    def __post_init__(self) -> None:
        object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))
        problems = [
            msg
            for bad, msg in (
                (not self.channels or min(self.channels) < 1, "channels must be >= 1 each"),
                (self.dense < 1, "dense must be >= 1"),
                (self.epochs < 1, "epochs must be >= 1"),
                (self.batch_size < 1, "batch_size must be >= 1"),
                (not self.learning_rate > 0, "learning_rate must be > 0"),
                (not self.weight_decay >= 0, "weight_decay must be >= 0"),
                (not 0 <= self.label_smoothing < 1, "label_smoothing must be within 0..1"),
                (
                    self.time_budget_s is not None and not self.time_budget_s > 0,
                    "time_budget_s must be > 0",
                ),
            )
            if bad
        ]
        if problems:
            raise ConfigError("bad conv net config: " + "; ".join(problems))


@dataclass(frozen=True)
class ConvLayer:
    """One conv block of a trained net, in PyTorch's layout: ``kernel`` [out, in, K(, K)]."""

    kernel: FloatRows
    bias: FloatRows  # [out]
    padding: tuple[int, ...]  # zeros on each side, per spatial axis
    pooled: bool  # a max-pool of POOL follows the ReLU


@dataclass(frozen=True)
class ConvWeights:
    """A trained conv net as numbers, standardisation folded in: what an exporter to
    another runtime (hub/ml/tflite_convnet.py) lays out without torch.

    ``features_shape`` is the conv blocks' output in PyTorch's channels-first order
    ``(C, *spatial)``, the order the first dense layer's inputs are flattened in.
    ``dense`` holds ``(weight [out, in], bias [out])`` pairs, ReLU between them; the
    last one gives logits (a classifier: softmax follows) or the value in the target's
    units.
    """

    kind: str  # "image" | "window"
    row_shape: tuple[int, ...]
    classify: bool
    convs: tuple[ConvLayer, ...]
    features_shape: tuple[int, ...]
    dense: tuple[tuple[FloatRows, FloatRows], ...]


@dataclass(frozen=True)
class TrainedConvNet:
    """A trained conv net: its fp32 ONNX file and its weights for other exports."""

    onnx: bytes
    weights: ConvWeights


def row_kind(row_shape: tuple[int, ...]) -> str:
    """``"image"`` or ``"window"`` for rows of this shape, when the dataset does not say.

    [H, W, C] is an image; [A, B] is a window [T, C] when B <= WINDOW_MAX_CHANNELS and
    A >= WINDOW_MIN_ASPECT * B (a long, narrow recording), else an image [H, W].

    Raises:
        PipelineError: rows of this shape are neither.
    """
    if len(row_shape) == 3:
        return "image"
    if len(row_shape) == 2:
        t, c = row_shape
        return "window" if c <= WINDOW_MAX_CHANNELS and t >= WINDOW_MIN_ASPECT * c else "image"
    raise PipelineError(
        f"conv nets take rows [H, W], [H, W, C] or [T, C]; got rows of shape {list(row_shape)}"
    )


def train_convnet(
    x_train: npt.ArrayLike,
    y_train: npt.ArrayLike,
    *,
    task: str,
    n_outputs: int,
    config: ConvConfig,
    opset: int = 15,
    progress: Callable[[float], None] | None = None,
    kind: str | None = None,
) -> TrainedConvNet:
    """Train a conv net on rows ``x_train``: its fp32 ONNX file and its weights.

    Args:
        x_train: training rows, float32 [N, H, W], [N, H, W, C] or [N, T, C].
        y_train: int64 class indices 0..n_outputs-1, or float32 regression targets.
        task: ``"classification"`` or ``"regression"``.
        n_outputs: the number of classes; 1 for regression.
        config: architecture and training settings.
        opset: the ONNX opset of the export.
        progress: called after each epoch with the fraction of epochs done (0..1).
        kind: ``"image"`` or ``"window"`` (the dataset's kind); ``None`` guesses from
            the row shape (``row_kind``): pass it for 3-D rows, which may be either.

    Returns:
        The ONNX model (``input`` float32 [N, *row_shape] → ``label`` int64 [N] and
        ``probabilities`` float32 [N, k], or ``value`` float32 [N, 1]) and the weights
        it holds (``ConvWeights``).

    Raises:
        PipelineError: bad rows, labels or arguments, torch is missing, or training or
            the export failed.
    """
    x, y = _checked(x_train, y_train, task, n_outputs)
    kind = _checked_kind(kind, x.shape[1:])
    torch_half = _torch_half()
    try:
        with torch_half.torch_session(config.seed):
            net = torch_half.ConvNet(
                x,
                y,
                kind=kind,
                classify=task == "classification",
                n_outputs=n_outputs,
                config=config,
            )
            torch_half.train(net, x, y, config, progress)
            onnx = bytes(torch_half.export_onnx(net, x.shape[1:], opset))
            return TrainedConvNet(onnx, torch_half.weights(net))
    except RuntimeError as e:  # torch's own errors (and its exporter's) are RuntimeErrors
        raise PipelineError(f"conv net training failed: {type(e).__name__}: {e}") from e


def fit_convnet(
    x_train: npt.ArrayLike,
    y_train: npt.ArrayLike,
    *,
    task: str,
    n_outputs: int,
    config: ConvConfig,
    opset: int = 15,
    progress: Callable[[float], None] | None = None,
    kind: str | None = None,
) -> bytes:
    """:func:`train_convnet`'s ONNX file (fp32) alone; the same arguments and errors."""
    return train_convnet(
        x_train,
        y_train,
        task=task,
        n_outputs=n_outputs,
        config=config,
        opset=opset,
        progress=progress,
        kind=kind,
    ).onnx


def _torch_half() -> ModuleType:
    """hub/ml/convnet_torch.py, or a PipelineError naming the extra when torch is missing."""
    try:
        return importlib.import_module("hub.ml.convnet_torch")
    except ImportError as e:
        if (e.name or "").split(".")[0] != "torch":
            raise
        raise PipelineError(MISSING_TORCH) from e


def _checked(
    x_train: npt.ArrayLike, y_train: npt.ArrayLike, task: str, n_outputs: int
) -> tuple[FloatRows, npt.NDArray[Any]]:
    """The rows as float32 and labels as int64 / float32, or a PipelineError saying why."""
    if task not in TASKS:
        raise PipelineError(f"task must be one of {', '.join(TASKS)}; got {task!r}")
    x, y = np.asarray(x_train), np.asarray(y_train)
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise PipelineError(f"rows must be numbers (float32), got dtype {x.dtype}")
    if x.ndim not in (3, 4):
        raise PipelineError(
            "conv nets take rows [N, H, W], [N, H, W, C] or [N, T, C];"
            f" got an array of shape {list(x.shape)} (tabular rows go to the MLP)"
        )
    if len(x) < 2 or min(x.shape[1:]) < 1:
        raise PipelineError(f"need at least 2 non-empty rows, got shape {list(x.shape)}")
    if y.shape != (len(x),):
        raise PipelineError(f"y must be [{len(x)}] (one per row), got shape {list(y.shape)}")
    x = x.astype(np.float32)
    if not np.isfinite(x).all():
        raise PipelineError("rows contain NaN or infinity")
    if task == "regression":
        if n_outputs != 1:
            raise PipelineError(f"a regression has n_outputs 1, got {n_outputs}")
        if not np.issubdtype(y.dtype, np.number) or not np.isfinite(y).all():
            raise PipelineError(f"regression targets must be finite numbers, got {y.dtype}")
        return x, y.astype(np.float32)
    if not np.issubdtype(y.dtype, np.integer):
        raise PipelineError(f"class labels must be integers (int64), got dtype {y.dtype}")
    if n_outputs < 2 or y.min() < 0 or y.max() >= n_outputs:
        raise PipelineError(
            f"class labels must be indices 0..{n_outputs - 1} of n_outputs >= 2 classes,"
            f" got {y.min()}..{y.max()}"
        )
    return x, y.astype(np.int64)


def _checked_kind(kind: str | None, row_shape: tuple[int, ...]) -> str:
    """``kind`` (or the guess from the row shape), checked against the rows."""
    if kind is None:
        kind = row_kind(row_shape)
    if kind not in KINDS:
        raise PipelineError(f"kind must be one of {', '.join(KINDS)}; got {kind!r}")
    if kind == "window" and len(row_shape) != 2:
        raise PipelineError(f"window rows are [T, C]; got rows of shape {list(row_shape)}")
    spatial = row_shape[:1] if kind == "window" else row_shape[:2]
    if min(spatial) < KERNEL:
        axes = "T" if kind == "window" else "H and W"
        raise PipelineError(
            f"{kind} rows must be at least {KERNEL} long along {axes} (the conv kernel);"
            f" got rows of shape {list(row_shape)}"
        )
    return kind


def conv_config(seed: int, params: dict[str, Any] | None = None) -> ConvConfig:
    """The build's conv net settings: the defaults, with the tuner's ``params`` over them.

    ``params`` may name ``width`` (the first block's channels; the second doubles it),
    ``dense``, ``epochs``, ``learning_rate`` and ``weight_decay``.
    """
    p = params or {}
    base = ConvConfig(seed=seed)
    width = int(p.get("width", base.channels[0]))
    return ConvConfig(
        channels=(width, 2 * width),
        dense=int(p.get("dense", base.dense)),
        epochs=int(p.get("epochs", base.epochs)),
        learning_rate=float(p.get("learning_rate", base.learning_rate)),
        weight_decay=float(p.get("weight_decay", base.weight_decay)),
        seed=seed,
    )


def conv_search_space() -> dict[str, list[int] | tuple[float, float]]:
    """What the tuner varies for a conv net: choices (lists) and log ranges (tuples).

    Widths start at 32: below, int8 is slower than fp32 at batch 1 (measured, above).
    """
    return {
        "width": [32, 48, 64],
        "dense": [32, 64, 128],
        "epochs": [10, 20, 30],
        "learning_rate": (1e-3, 1e-2),
        "weight_decay": (1e-5, 1e-3),
    }
