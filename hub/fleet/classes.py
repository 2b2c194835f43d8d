"""Device classes as data: what the hub knows of each kind of device it serves.

Each class is a folder of ``firmware-images/`` holding a ``profile.toml``: the runtime its
agent runs models with (``onnxruntime``, or ``tflite`` with LiteRT or tflite-runtime), the
architectures and Python it is built for, its memory and latency budgets, and the extras
its agent package installs. The hub reads them at start (``HubConfig.classes_dir``, the
checkout's ``firmware-images/`` by default), serves them (``GET /device-classes``,
``edgefleet hub classes``), sizes health-check budgets by them and picks for each device
the artefact its class runs (int8 ONNX for onnxruntime, full-int8 .tflite for LiteRT).

A profile that does not parse or says something impossible stops the hub's start with
an error naming the file and the field: a class the hub half understood would send
devices models they cannot run.

Exceptions::

    ClassError(detail)      a profile that cannot be read or is invalid; an unknown class
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

__all__ = [
    "ARTEFACTS",
    "DEFAULT_CLASSES_DIR",
    "RUNTIMES",
    "ClassError",
    "DeviceClass",
    "DeviceClasses",
    "load_classes",
]

PROFILE: Final = "profile.toml"
# the checkout's firmware-images/ (hub/fleet/classes.py -> the repository's root)
DEFAULT_CLASSES_DIR: Final = Path(__file__).resolve().parents[2] / "firmware-images"
# runtime -> the artefact a class of that runtime installs
ARTEFACTS: Final[Mapping[str, str]] = {"onnxruntime": "onnx", "tflite": "tflite"}
RUNTIMES: Final = tuple(ARTEFACTS)
INTERPRETERS: Final[Mapping[str, tuple[str, ...]]] = {
    "onnxruntime": ("onnxruntime",),
    "tflite": ("ai-edge-litert", "tflite-runtime"),
}
ARCHITECTURES: Final = ("amd64", "arm64", "armhf")  # Debian's names
_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")


class ClassError(Exception):
    """A device-class profile that cannot be read or is invalid, or an unknown class."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


@dataclass(frozen=True)
class DeviceClass:
    """One kind of device, as its ``profile.toml`` describes it."""

    name: str
    runtime: str  # onnxruntime | tflite
    interpreter: str  # onnxruntime | ai-edge-litert | tflite-runtime
    architectures: tuple[str, ...]
    python: str  # a version specifier, e.g. ">=3.11"
    numpy: str  # a version specifier, or "" for any
    extras: tuple[str, ...]  # the edgefleet extras its agent installs
    packages: tuple[str, ...]  # further requirements (e.g. "tflite-runtime>=2.14")
    memory_budget_mb: float  # RSS a model may add when loaded
    latency_budget_us: float  # p95 of one single-row inference
    description: str = ""
    # max |difference| per golden value its runtime may show against the hub's (None:
    # the build's); an older interpreter's int8 kernels may round differently
    golden_tolerance: float | None = None

    def health(self) -> dict[str, float]:
        """The health budgets a manifest carries for this class (``class_health``)."""
        out = {
            "latency_budget_us": self.latency_budget_us,
            "memory_budget_mb": self.memory_budget_mb,
        }
        if self.golden_tolerance is not None:
            out["tolerance"] = self.golden_tolerance
        return out

    @property
    def artefact(self) -> str:
        """The model format this class runs: ``onnx`` or ``tflite``."""
        return ARTEFACTS[self.runtime]

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["architectures"] = list(self.architectures)
        out["extras"] = list(self.extras)
        out["packages"] = list(self.packages)
        out["artefact"] = self.artefact
        return out


class DeviceClasses:
    """The classes the hub knows, by name."""

    def __init__(self, classes: Mapping[str, DeviceClass], source: Path | None = None) -> None:
        self._classes = dict(sorted(classes.items()))
        self.source = source

    def __iter__(self) -> Iterator[DeviceClass]:
        return iter(self._classes.values())

    def __len__(self) -> int:
        return len(self._classes)

    def __contains__(self, name: object) -> bool:
        return name in self._classes

    def names(self) -> tuple[str, ...]:
        return tuple(self._classes)

    def runtimes(self, names: tuple[str, ...]) -> frozenset[str]:
        """The runtimes the classes ``names`` run models with (onnxruntime for none, or
        for any name when the hub knows no classes at all).

        Raises:
            ValueError: a class the hub does not know (the known ones named).
        """
        if not names or not self._classes:
            return frozenset({"onnxruntime"})
        try:
            return frozenset(self.get(n).runtime for n in names)
        except ClassError as e:
            raise ValueError(e.detail) from e

    def budget_mb(self, name: str | None) -> float | None:
        """The memory budget of class ``name``; None for a class the hub does not know."""
        found = self._classes.get(name) if name is not None else None
        return found.memory_budget_mb if found is not None else None

    def health(self, names: tuple[str, ...]) -> dict[str, dict[str, float]]:
        """The health budgets of the known classes among ``names`` (unknown: none)."""
        return {n: self._classes[n].health() for n in names if n in self._classes}

    def get(self, name: str) -> DeviceClass:
        """The class ``name``.

        Raises:
            ClassError: no such class (the message lists the known ones).
        """
        found = self._classes.get(name)
        if found is None:
            known = ", ".join(self._classes) or "none"
            raise ClassError(f"no device class {name!r} (known: {known})")
        return found


def load_classes(directory: Path = DEFAULT_CLASSES_DIR) -> DeviceClasses:
    """Every ``<directory>/<class>/profile.toml``; none when the directory does not exist.

    Raises:
        ClassError: a profile that does not parse or is invalid (the file and field named),
            or a profile whose ``device_class`` is not its folder's name.
    """
    if not directory.is_dir():
        return DeviceClasses({}, None)
    classes: dict[str, DeviceClass] = {}
    for profile in sorted(directory.glob(f"*/{PROFILE}")):
        cls = parse_profile(profile)
        if cls.name != profile.parent.name:
            raise ClassError(
                f"{profile}: device_class {cls.name!r} is not its folder's name"
                f" {profile.parent.name!r}"
            )
        classes[cls.name] = cls
    return DeviceClasses(classes, directory)


def parse_profile(path: Path) -> DeviceClass:
    """One ``profile.toml``.

    Raises:
        ClassError: unreadable, not TOML, a missing or invalid field, an unknown one.
    """
    try:
        raw = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise ClassError(f"{path}: {e}") from e
    return _profile(raw, str(path))


def _profile(raw: dict[str, Any], where: str) -> DeviceClass:
    fields = {
        "device_class",
        "runtime",
        "interpreter",
        "architectures",
        "python",
        "numpy",
        "extras",
        "packages",
        "memory_budget_mb",
        "latency_budget_us",
        "description",
        "golden_tolerance",
    }
    unknown = sorted(set(raw) - fields)
    if unknown:
        raise ClassError(f"{where}: unknown settings: {', '.join(unknown)}")

    def text(key: str, default: str | None = None) -> str:
        value = raw.get(key, default)
        if not isinstance(value, str) or (default is None and not value):
            raise ClassError(f"{where}: {key} must be a non-empty string")
        return value

    def texts(key: str) -> tuple[str, ...]:
        value = raw.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise ClassError(f"{where}: {key} must be a list of strings")
        return tuple(value)

    def budget(key: str) -> float:
        value = raw.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise ClassError(f"{where}: {key} must be a positive number")
        return float(value)

    name = text("device_class")
    if not _NAME.match(name):
        raise ClassError(f"{where}: device_class {name!r}: lower-case letters, digits and -")
    runtime = text("runtime")
    if runtime not in ARTEFACTS:
        raise ClassError(f"{where}: runtime {runtime!r} is not one of {', '.join(RUNTIMES)}")
    interpreter = text("interpreter", INTERPRETERS[runtime][0])
    if interpreter not in INTERPRETERS[runtime]:
        allowed = ", ".join(INTERPRETERS[runtime])
        raise ClassError(f"{where}: interpreter {interpreter!r} for {runtime}: one of {allowed}")
    architectures = texts("architectures")
    bad = [a for a in architectures if a not in ARCHITECTURES]
    if not architectures or bad:
        raise ClassError(
            f"{where}: architectures must name some of {', '.join(ARCHITECTURES)}"
            + (f" (not {', '.join(bad)})" if bad else "")
        )
    return DeviceClass(
        name=name,
        runtime=runtime,
        interpreter=interpreter,
        architectures=architectures,
        python=text("python"),
        numpy=text("numpy", ""),
        extras=texts("extras"),
        packages=texts("packages"),
        memory_budget_mb=budget("memory_budget_mb"),
        latency_budget_us=budget("latency_budget_us"),
        description=text("description", ""),
        golden_tolerance=budget("golden_tolerance") if "golden_tolerance" in raw else None,
    )
