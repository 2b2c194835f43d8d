"""Dataset versions as files: the rows of a capture, merged across devices into one npz.

Each verified upload waits in staging as ``<device>.npz`` (its arrays and the model
version they came from) until its capture ends. The capture's verified uploads are then
concatenated in device order, with a ``device_index`` array naming each row's device,
into the npz artifact a ``DatasetVersion`` row points at (content-addressed by sha256).
"""

from __future__ import annotations

import io
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

__all__ = [
    "NO_LABEL",
    "CapturedData",
    "captured_data",
    "merge_device_rows",
    "to_npz",
    "write_device_rows",
]

NO_LABEL: Final = -1  # label of a row the device's application gave none for
OUTPUT_PREFIX: Final = "out."  # npz name prefix of the model outputs the device computed


@dataclass(frozen=True)
class CapturedData:
    """The rows of a dataset version."""

    x: npt.NDArray[np.float32]  # [rows, features]
    labels: npt.NDArray[np.int64]  # [rows]; NO_LABEL where the device had none
    outputs: dict[str, npt.NDArray[Any]]  # the model's outputs as the device computed them
    devices: tuple[str, ...]
    device_index: npt.NDArray[np.int32]  # [rows]: index into ``devices``

    @property
    def labelled(self) -> npt.NDArray[np.bool_]:
        mask: npt.NDArray[np.bool_] = self.labels != NO_LABEL
        return mask


def write_device_rows(path: Path, version: int, arrays: Mapping[str, npt.NDArray[Any]]) -> None:
    """Keep one device's verified arrays in staging until its capture ends."""
    buf = io.BytesIO()
    # numpy's stub: **arrays might hold "allow_pickle" (a bool) for all mypy knows
    np.savez(buf, version=np.array(version), **arrays)  # type: ignore[arg-type]
    path.write_bytes(buf.getvalue())


def merge_device_rows(paths: Sequence[Path]) -> tuple[int, dict[str, npt.NDArray[Any]]]:
    """The devices' staged rows as one set of arrays, and the model version most came from.

    An array only some devices sent is left out; ``device_index`` gives each row's
    position in ``paths``.
    """
    parts = []
    for path in paths:
        with np.load(path, allow_pickle=False) as z:
            parts.append({name: z[name] for name in z.files})
    versions = Counter(int(p["version"]) for p in parts)
    arrays: dict[str, npt.NDArray[Any]] = {
        name: np.concatenate([p[name] for p in parts])
        for name in parts[0]
        if name != "version" and all(name in p for p in parts)
    }
    arrays["device_index"] = np.concatenate(
        [np.full(len(p["x"]), i, dtype=np.int32) for i, p in enumerate(parts)]
    )
    return versions.most_common(1)[0][0], arrays


def to_npz(arrays: Mapping[str, npt.NDArray[Any]]) -> bytes:
    """The artifact of a dataset version: its arrays as an npz file."""
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # type: ignore[arg-type]  # numpy's stub, as above
    return buf.getvalue()


def captured_data(npz: bytes, devices: tuple[str, ...]) -> CapturedData:
    """A dataset version's rows, read back from its artifact."""
    with np.load(io.BytesIO(npz), allow_pickle=False) as z:
        arrays = {name: z[name] for name in z.files}
    outputs = {k[len(OUTPUT_PREFIX) :]: v for k, v in arrays.items() if k.startswith(OUTPUT_PREFIX)}
    return CapturedData(
        arrays["x"],
        arrays["labels"],
        outputs,
        devices,
        arrays["device_index"],
    )
