"""The torch half of hub/ml/convnet.py: the network, its training loop and the ONNX export.

Imported only once hub/ml/convnet.py has found torch, so the rest of the hub never
needs it; hub/ml/convnet.py checks the rows and says why the settings are what they are.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from hub.ml.convnet import KERNEL, POOL, ConvConfig, ConvLayer, ConvWeights

__all__ = ["ConvNet", "export_onnx", "torch_session", "train", "weights"]

MIN_STD = 1e-6  # a constant channel or target is scaled by 1, not divided by ~0
BATCH_AXIS = "N"
TORCH_THREADS = 1  # the same bytes on any core count (hub/ml/convnet.py says more)
# The TorchScript exporter (dynamo=False) is what ADR 0014 chose; torch 2.9+ warns that
# it is deprecated, twice. Exactly these two warnings are silenced around the export.
EXPORT_WARNINGS = (
    r"You are using the legacy TorchScript-based ONNX export",
    r"The feature will be removed\. Please remove usage of this function",
)


class ConvNet(nn.Module):
    """Standardise → conv blocks (conv, ReLU, max-pool) → dense → head.

    ``forward`` takes rows as the dataset stores them ([N, H, W], [N, H, W, C] or
    [N, T, C]) and returns ``(label, probabilities)`` for a classifier, ``value`` for a
    regressor, in the target's own units.
    """

    x_shift: torch.Tensor  # buffers (exported as constants): per-channel or scalar
    x_scale: torch.Tensor
    y_shift: torch.Tensor
    y_scale: torch.Tensor

    def __init__(
        self,
        x: npt.NDArray[np.float32],
        y: npt.NDArray[np.float32] | npt.NDArray[np.int64],
        *,
        kind: str,
        classify: bool,
        n_outputs: int,
        config: ConvConfig,
    ) -> None:
        super().__init__()
        self.kind, self.classify, self.standardise = kind, classify, True
        row_shape = x.shape[1:]
        self.row_shape = tuple(int(n) for n in row_shape)
        has_channels = kind == "window" or len(row_shape) == 3
        spatial = list(row_shape[:-1] if has_channels else row_shape)
        width = row_shape[-1] if has_channels else 1
        conv, pool = (nn.Conv1d, nn.MaxPool1d) if kind == "window" else (nn.Conv2d, nn.MaxPool2d)
        blocks: list[nn.Module] = []
        for i, channels in enumerate(config.channels):
            # The first conv pads nothing, so the input standardisation folds into it
            # exactly (``fold_standardisation``); the others keep their size.
            padding = 0 if i == 0 else KERNEL // 2
            blocks += [conv(width, channels, KERNEL, padding=padding), nn.ReLU()]
            spatial = [s - KERNEL + 1 + 2 * padding for s in spatial]
            if min(spatial) >= POOL:
                blocks.append(pool(POOL))
                spatial = [s // POOL for s in spatial]
            width = channels
        self.features = nn.Sequential(*blocks)
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(width * math.prod(spatial), config.dense),
            nn.ReLU(),
            nn.Linear(config.dense, n_outputs),
        )
        # Per channel over every row and position; images without channels: one scalar.
        axes = tuple(range(x.ndim - 1)) if has_channels else None
        mean, std = x.mean(axis=axes, dtype=np.float64), x.std(axis=axes, dtype=np.float64)
        self.register_buffer("x_shift", _tensor(mean))
        self.register_buffer("x_scale", _tensor(1.0 / np.maximum(std, MIN_STD)))
        y_mean, y_std = (0.0, 1.0) if classify else (float(y.mean()), float(y.std()))
        self.register_buffer("y_shift", _tensor(y_mean))
        self.register_buffer("y_scale", _tensor(max(y_std, MIN_STD)))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits, or the standardised regression target, of raw rows."""
        if self.standardise:
            x = (x - self.x_shift) * self.x_scale
        out: torch.Tensor = self.head(self.features(self.channels_first(x)))
        return out

    def channels_first(self, x: torch.Tensor) -> torch.Tensor:
        """Rows as the convs take them: [N, C, T] or [N, C, H, W]."""
        if self.kind == "window":
            return x.transpose(1, 2)  # [N, T, C] → [N, C, T]
        if x.dim() == 4:
            return x.permute(0, 3, 1, 2)  # [N, H, W, C] → [N, C, H, W]
        return x.unsqueeze(1)  # [N, H, W] → [N, 1, H, W]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | torch.Tensor:
        z = self.logits(x)
        if self.classify:
            probabilities = torch.softmax(z, dim=1)
            return torch.argmax(probabilities, dim=1), probabilities
        if self.standardise:
            z = z * self.y_scale + self.y_shift
        return z

    def fold_standardisation(self) -> None:
        """Fold the input (and target) standardisation into the first conv (and the last
        dense layer): the same function with two (four) fewer nodes in the graph, each
        of which would cost a quantise-dequantise pair in the int8 file.

        Exact because the first conv pads nothing: conv(W, (x - m)·s) + b equals
        conv(W·s, x) + b - Σ W·s·m, per output channel.
        """
        first, last = self.features[0], self.head[-1]
        assert isinstance(first, nn.Conv1d | nn.Conv2d) and first.bias is not None
        assert isinstance(last, nn.Linear)
        with torch.no_grad():
            extra = (1,) * (first.weight.dim() - 2)  # kernel axes
            scale = self.x_scale.reshape(1, -1, *extra) if self.x_scale.dim() else self.x_scale
            shift = self.x_shift.reshape(1, -1, *extra) if self.x_shift.dim() else self.x_shift
            first.bias -= (first.weight * scale * shift).sum(
                dim=tuple(range(1, first.weight.dim()))
            )
            first.weight *= scale
            if not self.classify:
                last.weight *= self.y_scale
                last.bias.mul_(self.y_scale).add_(self.y_shift)
        self.standardise = False

    def target(self, y: torch.Tensor) -> torch.Tensor:
        """Training targets: class indices as they are, regression targets standardised."""
        if self.classify:
            return y
        return ((y - self.y_shift) / self.y_scale).unsqueeze(1)


def _tensor(a: npt.ArrayLike) -> torch.Tensor:
    return torch.from_numpy(np.asarray(a, dtype=np.float32))


def train(
    net: ConvNet,
    x: npt.NDArray[np.float32],
    y: npt.NDArray[np.float32] | npt.NDArray[np.int64],
    config: ConvConfig,
    progress: Callable[[float], None] | None,
) -> None:
    """AdamW, cosine-decayed learning rate, shuffled mini-batches.

    Stops after ``config.epochs``, or after the epoch that crosses ``time_budget_s``.
    """
    xs, ys = torch.from_numpy(x), net.target(torch.from_numpy(y))
    loss_fn: nn.Module = (
        nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
        if net.classify
        else nn.MSELoss()
    )
    optimiser = torch.optim.AdamW(
        net.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
    )
    steps = config.epochs * math.ceil(len(x) / config.batch_size)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=steps)
    order = torch.Generator().manual_seed(config.seed)
    started = time.perf_counter()
    net.train()
    for epoch in range(1, config.epochs + 1):
        shuffled = torch.randperm(len(x), generator=order)
        for start in range(0, len(x), config.batch_size):
            batch = shuffled[start : start + config.batch_size]
            optimiser.zero_grad()
            loss = loss_fn(net.logits(xs[batch]), ys[batch])
            loss.backward()
            optimiser.step()
            schedule.step()
        over_budget = (
            config.time_budget_s is not None
            and time.perf_counter() - started >= config.time_budget_s
        )
        if progress is not None:
            progress(1.0 if over_budget else epoch / config.epochs)
        if over_budget:
            break
    net.eval()


def export_onnx(net: ConvNet, row_shape: tuple[int, ...], opset: int) -> bytes:
    """The trained net as ONNX (TorchScript exporter), with a dynamic batch axis."""
    outputs = ["label", "probabilities"] if net.classify else ["value"]
    example = torch.zeros((1, *row_shape), dtype=torch.float32)
    net = copy.deepcopy(net)
    net.fold_standardisation()
    net.eval()
    with (
        tempfile.TemporaryDirectory(prefix="edgefleet-convnet-") as tmp,
        warnings.catch_warnings(),
        torch.no_grad(),
    ):
        for message in EXPORT_WARNINGS:
            warnings.filterwarnings("ignore", message=message, category=DeprecationWarning)
        path = Path(tmp) / "model.onnx"
        torch.onnx.export(
            net,
            (example,),
            path,
            input_names=["input"],
            output_names=outputs,
            dynamic_axes={name: {0: BATCH_AXIS} for name in ("input", *outputs)},
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )
        return path.read_bytes()


def weights(net: ConvNet) -> ConvWeights:
    """The trained net's weights as numbers, standardisation folded in as the ONNX file has
    it (``fold_standardisation``): the net itself is left as it was."""
    net = copy.deepcopy(net)
    net.fold_standardisation()
    convs: list[ConvLayer] = []
    for layer in net.features:
        if isinstance(layer, nn.Conv1d | nn.Conv2d):
            assert layer.bias is not None and isinstance(layer.padding, tuple)
            padding = tuple(int(p) for p in layer.padding)
            convs.append(ConvLayer(_numpy(layer.weight), _numpy(layer.bias), padding, False))
        elif isinstance(layer, nn.MaxPool1d | nn.MaxPool2d):
            convs[-1] = dataclasses.replace(convs[-1], pooled=True)
    dense = tuple(
        (_numpy(layer.weight), _numpy(layer.bias))
        for layer in net.head
        if isinstance(layer, nn.Linear)
    )
    row_shape = tuple(net.row_shape)
    with torch.no_grad():
        example = torch.zeros((1, *row_shape), dtype=torch.float32)
        features = net.features(net.channels_first(example))
    return ConvWeights(
        kind=net.kind,
        row_shape=row_shape,
        classify=net.classify,
        convs=tuple(convs),
        features_shape=tuple(features.shape[1:]),
        dense=dense,
    )


def _numpy(t: torch.Tensor) -> npt.NDArray[np.float32]:
    return t.detach().cpu().numpy().astype(np.float32)


@contextlib.contextmanager
def torch_session(seed: int) -> Iterator[None]:
    """One torch thread and a private, seeded RNG; both restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(TORCH_THREADS)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            yield
    finally:
        torch.set_num_threads(threads)
