"""Shipped sample datasets for conv nets: digit images and 3-axis vibration windows.

Nothing is downloaded: ``digits_images`` reads scikit-learn's bundled ``load_digits``
(1,797 handwritten digits, 8x8 pixels, 0..16), ``windows_dataset`` synthesises sensor
windows with numpy. Both are seeded; the tests, the conv-net benchmark and the demo
use them, and ``write_npz`` writes either as a dataset upload (arrays ``x`` and ``y``).

The windows are what an accelerometer on a rotating machine records: ``WINDOW_LENGTH``
samples at ``SAMPLE_RATE_HZ`` on three axes (two radial, one axial), with the four
conditions of shared/sensors.py. Imbalance raises the rotating 1x component (the radial
axes 90° apart); misalignment a 2x component strong on the axial axis (180° phase);
bearing wear periodic impacts at the outer-race defect frequency that ring down at a
structural resonance. Fault severity ranges from faint to obvious and sensor noise is
added, so the classes overlap: on 3,000 windows (a quarter held out) gradient boosting
on FFT magnitudes reached 92% and the default conv net 91-92%.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
from sklearn.datasets import load_digits

from hub.ml.errors import PipelineError
from shared.sensors import BASELINE_SPEED_KRPM, CLASSES

__all__ = [
    "DIGIT_CLASSES",
    "WINDOW_CLASSES",
    "digits_images",
    "windows_dataset",
    "write_npz",
]

DIGIT_CLASSES: tuple[str, ...] = tuple(str(d) for d in range(10))
WINDOW_CLASSES: tuple[str, ...] = CLASSES  # normal, imbalance, bearing_wear, misalignment
DIGIT_MAX = 16.0  # load_digits pixel values run 0..16
WINDOW_LENGTH = 128  # samples per window
SAMPLE_RATE_HZ = 1000.0
BPFO_ORDER = 3.6  # outer-race defect frequency, in multiples of the shaft speed
RESONANCE_HZ = 280.0  # where bearing impacts ring
RING_DECAY_S = 0.006  # time constant of one impact's ring-down
NOISE_G = 0.08  # sensor noise, g rms

FloatArray = npt.NDArray[np.float32]
IntLabels = npt.NDArray[np.int64]


def digits_images(seed: int, *, size: int = 16) -> tuple[FloatArray, IntLabels]:
    """scikit-learn's bundled digits as images, in a seeded random order.

    Args:
        seed: the order of the rows (the same seed gives the same order).
        size: image side in pixels: 8 is the original, a multiple of 8 upscales each
            image bilinearly. 16 by default: at 8x8 an int8 conv net ran slower than
            its fp32 twin (hub/ml/convnet.py).

    Returns:
        (x float32 [1797, size, size] in 0..1, y int64 [1797] digits 0..9)

    Raises:
        PipelineError: ``size`` is not a positive multiple of 8.
    """
    if size < 8 or size % 8:
        raise PipelineError(f"size must be a positive multiple of 8, got {size}")
    digits = load_digits()
    x = np.asarray(digits.images, dtype=np.float64) / DIGIT_MAX
    if size != 8:
        x = _upscale(x, size)
    order = np.random.default_rng(seed).permutation(len(x))
    return x[order].astype(np.float32), np.asarray(digits.target, dtype=np.int64)[order]


def _upscale(x: npt.NDArray[np.float64], size: int) -> npt.NDArray[np.float64]:
    """Bilinear upscaling of [N, 8, 8] to [N, size, size] (pixel centres aligned)."""
    src = x.shape[1]
    at = (np.arange(size) + 0.5) * src / size - 0.5
    lo = np.clip(np.floor(at).astype(np.int64), 0, src - 1)
    hi = np.clip(lo + 1, 0, src - 1)
    w = np.clip(at - lo, 0.0, 1.0)
    rows = x[:, lo, :] * (1 - w)[None, :, None] + x[:, hi, :] * w[None, :, None]
    out = rows[:, :, lo] * (1 - w)[None, None, :] + rows[:, :, hi] * w[None, None, :]
    return np.asarray(out, dtype=np.float64)


def windows_dataset(
    n: int, seed: int, *, class_weights: tuple[float, ...] = (0.4, 0.2, 0.2, 0.2)
) -> tuple[FloatArray, IntLabels]:
    """Synthetic 3-axis vibration windows of a rotating machine, labelled by condition.

    Args:
        n: number of windows.
        seed: the same seed gives the same windows.
        class_weights: probability of each class in ``WINDOW_CLASSES`` order.

    Returns:
        (x float32 [n, WINDOW_LENGTH, 3] in g, axes radial x, radial y, axial;
        y int64 [n] indices into ``WINDOW_CLASSES``)

    Raises:
        PipelineError: ``n`` is negative or the weights are not one per class.
    """
    w = np.asarray(class_weights, dtype=np.float64)
    if n < 0:
        raise PipelineError(f"n must be >= 0, got {n}")
    if w.shape != (len(WINDOW_CLASSES),) or (w < 0).any() or w.sum() <= 0:
        raise PipelineError(f"class_weights must be {len(WINDOW_CLASSES)} non-negative numbers")
    rng = np.random.default_rng(seed)
    y = rng.choice(len(WINDOW_CLASSES), size=n, p=w / w.sum()).astype(np.int64)
    t = np.arange(WINDOW_LENGTH) / SAMPLE_RATE_HZ  # s
    shaft_hz = rng.uniform(*BASELINE_SPEED_KRPM, size=(n, 1)) * 1000 / 60
    phase = rng.uniform(0, 2 * np.pi, size=(n, 1))
    severity = 0.4 + rng.gamma(2.0, 0.4, size=(n, 1))  # 0.4 .. ~3, mostly around 1
    imb, brg, mis = ((y == c)[:, None] * severity for c in (1, 2, 3))
    turn = 2 * np.pi * shaft_hz * t + phase  # shaft angle, [n, T]
    one_x = 0.3 * (1 + 1.3 * imb) * rng.lognormal(0, 0.25, size=(n, 1))
    two_x = 0.1 * (1 + 1.6 * mis) * rng.lognormal(0, 0.3, size=(n, 1))
    radial_x = one_x * np.sin(turn) + two_x * np.sin(2 * turn)
    radial_y = one_x * np.sin(turn - np.pi / 2) + two_x * np.sin(2 * turn - np.pi / 2)
    axial = 0.1 * one_x * np.sin(turn) + (0.05 + 0.6 * mis) * two_x * np.sin(2 * turn + np.pi)
    impacts = _bearing_impacts(rng, t, shaft_hz, 0.15 * brg)
    x = np.stack([radial_x + impacts, radial_y + 0.6 * impacts, axial + 0.3 * impacts], axis=2)
    x += rng.normal(0.0, NOISE_G, size=x.shape)
    return x.astype(np.float32), y


def _bearing_impacts(
    rng: np.random.Generator,
    t: npt.NDArray[np.float64],
    shaft_hz: npt.NDArray[np.float64],
    amplitude: npt.NDArray[np.float64],
) -> npt.NDArray[np.float64]:
    """Impacts at the defect frequency, each a decaying ring at ``RESONANCE_HZ``, [n, T]."""
    period = 1.0 / (BPFO_ORDER * shaft_hz)  # s, [n, 1]
    since = np.mod(t[None, :] - rng.uniform(0, 1, size=shaft_hz.shape) * period, period)
    ring = np.exp(-since / RING_DECAY_S) * np.sin(2 * np.pi * RESONANCE_HZ * since)
    return np.asarray(amplitude * ring, dtype=np.float64)


def write_npz(path: Path, x: npt.ArrayLike, y: npt.ArrayLike) -> Path:
    """Write rows as a dataset upload: an npz with arrays ``x`` and ``y``.

    The bytes depend only on the arrays (numpy writes no timestamps), so the same rows
    upload as the same dataset version.

    Args:
        path: the file to write (replaced if it exists).
        x: rows, float32 [N, *row_shape].
        y: labels [N]: int64 class indices, or float32 regression targets.

    Returns:
        ``path``.

    Raises:
        PipelineError: ``x`` and ``y`` do not fit together.
    """
    xa = np.asarray(x, dtype=np.float32)
    ya = np.asarray(y)
    if xa.ndim < 2 or ya.shape != (len(xa),):
        raise PipelineError(f"x must be [N, *row_shape] and y [N], got {xa.shape} and {ya.shape}")
    ya = ya.astype(np.int64 if np.issubdtype(ya.dtype, np.integer) else np.float32)
    with path.open("wb") as f:
        np.savez(f, x=xa, y=ya)
    return path
