"""A seeded generator of machine-vibration features (the built-in dataset).

The hub trains on it and the simulated devices infer on it, with labels, so live
accuracy can be measured. numpy only: both sides import it.

Each row describes one measurement window of a rotating machine: overall vibration
statistics, energy in the bands where faults show (1x, 2x, 3x shaft speed, bearing
defect frequencies, high frequency), temperature, speed, motor current and phase.
Four conditions: normal, imbalance (1x energy, 90° phase), misalignment (2x energy,
axial vibration, 180° phase) and bearing wear (impulsive: kurtosis, defect bands,
heat). Fault severity ranges from barely visible to obvious, so the classes overlap
and a good model reaches the low-to-mid nineties, not 100%.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

CLASSES: tuple[str, ...] = ("normal", "imbalance", "bearing_wear", "misalignment")
FEATURES: tuple[str, ...] = (
    "rms_g",
    "peak_g",
    "crest_factor",
    "kurtosis",
    "skewness",
    "band_1x",
    "band_2x",
    "band_3x",
    "band_bpfo",
    "band_bpfi",
    "band_hf",
    "temp_c",
    "speed_krpm",
    "current_a",
    "axial_ratio",
    "phase_deg",
)
N_FEATURES = len(FEATURES)

Features = npt.NDArray[np.float32]
Labels = npt.NDArray[np.int64]


@dataclass(frozen=True)
class Shift:
    """A covariate shift applied to generated rows (for drift scenarios).

    scale/offset act per feature: ``x * scale + offset``; ``None`` leaves it alone.
    """

    scale: tuple[float, ...] | None = None
    offset: tuple[float, ...] | None = None


BASELINE_SPEED_KRPM = (1.2, 3.6)  # krpm: the shaft speeds of the training data


@dataclass(frozen=True)
class Regime:
    """A concept shift: a new operating regime where the same signatures mean other classes.

    A machine moved to a new operating point (here: a faster speed band, e.g. after a
    gearbox change) shows its faults differently: with the default ``signatures`` an
    imbalanced machine shows what was misalignment's signature (2x energy, axial
    vibration, 180° phase) and a misaligned one what was imbalance's (1x energy, 90°
    phase). A model trained on the baseline calls them the wrong way round. The speed
    band is the visible part (a PSI/JS detector sees ``speed_krpm`` and the speed-driven
    bands move) and the part a retrained model learns from: below the band the old
    mapping holds, inside it the new one, so captured labelled rows restore accuracy.

    Attributes:
        speed_krpm: (low, high) shaft speed of the regime (baseline: BASELINE_SPEED_KRPM).
        signatures: per class (CLASSES order), the class whose signature its rows show.
    """

    speed_krpm: tuple[float, float] = (4.0, 5.0)
    signatures: tuple[int, ...] = (0, 3, 2, 1)

    def __post_init__(self) -> None:
        low, high = self.speed_krpm
        if not 0 < low < high:
            raise ValueError(f"speed_krpm must be 0 < low < high, got {self.speed_krpm}")
        if sorted(self.signatures) != list(range(len(CLASSES))):
            raise ValueError(f"signatures must be a permutation of 0..{len(CLASSES) - 1}")


def generate(
    n: int,
    *,
    seed: int,
    class_weights: tuple[float, ...] = (0.55, 0.15, 0.15, 0.15),
    shift: Shift | None = None,
    regime: Regime | None = None,
) -> tuple[Features, Labels]:
    """Generate ``n`` labelled rows.

    Args:
        n: number of rows.
        seed: the same seed gives the same rows.
        class_weights: probability of each class in CLASSES order.
        shift: optional covariate shift (applied after ``regime``).
        regime: optional concept shift; ``None`` is the baseline regime.

    Returns:
        (features float32 [n, 16], labels int64 [n])
    """
    if n < 0:
        raise ValueError("n must be >= 0")
    rng = np.random.default_rng(seed)
    w = np.asarray(class_weights, dtype=np.float64)
    if w.shape != (len(CLASSES),) or (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"class_weights must be {len(CLASSES)} non-negative numbers")
    y = rng.choice(len(CLASSES), size=n, p=w / w.sum()).astype(np.int64)
    if regime is None:
        x = _features(rng, y, BASELINE_SPEED_KRPM)
    else:
        shown = np.asarray(regime.signatures, dtype=np.int64)[y]
        x = _features(rng, shown, regime.speed_krpm)
    if shift is not None:
        if shift.scale is not None:
            x *= np.asarray(shift.scale, dtype=np.float32)
        if shift.offset is not None:
            x += np.asarray(shift.offset, dtype=np.float32)
    return x, y


def _features(rng: np.random.Generator, y: Labels, speed_krpm: tuple[float, float]) -> Features:
    n = len(y)
    speed = rng.uniform(speed_krpm[0], speed_krpm[1], n)  # krpm
    load = rng.uniform(0.3, 1.0, n)
    severity = rng.gamma(2.0, 0.5, n)  # 0 .. ~3, mostly around 1
    imb = (y == 1) * severity
    brg = (y == 2) * severity
    mis = (y == 3) * severity

    def noise(scale: float) -> npt.NDArray[np.float64]:
        return rng.normal(0.0, scale, n)

    band_1x = 0.20 * speed**2 * (1 + 1.3 * imb) * rng.lognormal(0, 0.35, n)
    band_2x = 0.08 * speed * (1 + 1.6 * mis + 0.2 * imb) * rng.lognormal(0, 0.35, n)
    band_3x = 0.04 * speed * (1 + 0.8 * mis) * rng.lognormal(0, 0.4, n)
    band_bpfo = 0.03 * (1 + 2.0 * brg) * rng.lognormal(0, 0.45, n)
    band_bpfi = 0.02 * (1 + 1.6 * brg) * rng.lognormal(0, 0.45, n)
    band_hf = 0.05 * (1 + 1.2 * brg + 0.1 * load) * rng.lognormal(0, 0.4, n)
    rms = np.sqrt(band_1x**2 + band_2x**2 + band_3x**2 + band_bpfo**2 + band_hf**2) + 0.02
    kurtosis = 3.0 + 1.8 * brg + np.abs(noise(0.5))
    crest = 1.5 + 0.35 * kurtosis + noise(0.2)
    peak = rms * crest
    skew = noise(0.15) + 0.2 * brg
    temp = 40 + 15 * load + 4 * brg + 1.5 * mis + noise(2.5)
    current = 8 + 12 * load + 0.6 * imb + 0.9 * mis + noise(0.6)
    axial = 0.3 + 0.35 * mis + noise(0.08)
    phase = np.where(
        y == 1, 90 + noise(25), np.where(y == 3, 180 - 40 / (1 + mis) + noise(30), noise(45))
    )
    phase = np.mod(phase, 360.0)
    cols = [
        rms,
        peak,
        crest,
        kurtosis,
        skew,
        band_1x,
        band_2x,
        band_3x,
        band_bpfo,
        band_bpfi,
        band_hf,
        temp,
        speed,
        current,
        axial,
        phase,
    ]
    return np.stack(cols, axis=1).astype(np.float32)


class SensorStream:
    """An endless per-device stream of labelled rows (what a simulated device measures).

    Each device gets its own seed, so devices differ but every run repeats exactly.
    """

    def __init__(
        self,
        seed: int,
        *,
        class_weights: tuple[float, ...] = (0.55, 0.15, 0.15, 0.15),
        shift: Shift | None = None,
        regime: Regime | None = None,
    ) -> None:
        self._seed = seed
        self._draws = 0
        self.class_weights = class_weights
        self.shift = shift  # may be set while the stream runs (a drift scenario)
        self.regime = regime  # likewise

    def next(self, n: int) -> tuple[Features, Labels]:
        """The next ``n`` rows of this device's stream."""
        self._draws += 1
        return generate(
            n,
            seed=hash((self._seed, self._draws)) & 0x7FFF_FFFF,
            class_weights=self.class_weights,
            shift=self.shift,
            regime=self.regime,
        )
