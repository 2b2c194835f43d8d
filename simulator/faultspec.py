"""The ``[[fault]]`` tables of a scenario: which faults there are and what each takes.

Kinds (carried out by simulator/faults.py, on the real code path, nothing mocked):

- ``crash_mid_download``: once the device has ``after_chunks`` chunks of its download,
  its connection is reset (the broker publishes its Last Will) and its ``Device`` is
  thrown away; ``restart_after_s`` later a new ``Device`` starts from the same state
  directory and must resume from its persisted bitmap.
- ``disconnect``: the connection is reset for ``duration_s``; the device runs on.
- ``slow_link``: what the broker sends the device reaches it ``delay_ms`` later and at
  most ``rate_per_s`` messages a second (in the selector loop, order kept).
- ``corrupt_chunks``: a chunk blob has one byte of its data flipped with probability
  ``p``; the device must refuse it by its signed sha256 and ask again.
- ``faulty_class``: devices of ``device_class`` load models with a runtime whose float
  outputs are shifted by ``shift``, so the real health check (golden outputs) fails.
- ``broker_restart``: the scenario's Mosquitto stops and starts again on its port.
- ``hub_restart``: the hub process is killed (SIGKILL) and started again ``down_s``
  later on the same data directory and ports.

Exceptions::

    FaultError(field, message)   a fault table that is not valid
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "COMMON",
    "DEVICE_KINDS",
    "KINDS",
    "PARAMS",
    "PROCESS_KINDS",
    "FaultError",
    "FaultSpec",
]

DEVICE_KINDS = (
    "crash_mid_download",
    "disconnect",
    "slow_link",
    "corrupt_chunks",
    "faulty_class",
)
PROCESS_KINDS = ("broker_restart", "hub_restart")
KINDS = DEVICE_KINDS + PROCESS_KINDS

_REQUIRED = object()
# kind -> {parameter: (type, default)}; at_s, fraction, count, device_class are common.
PARAMS: dict[str, dict[str, tuple[type, Any]]] = {
    "crash_mid_download": {"restart_after_s": (float, 2.0), "after_chunks": (int, 1)},
    "disconnect": {"duration_s": (float, _REQUIRED)},
    "slow_link": {
        "delay_ms": (float, 0.0),
        "rate_per_s": (float, None),
        "duration_s": (float, None),
    },
    "corrupt_chunks": {"p": (float, _REQUIRED), "duration_s": (float, None)},
    "faulty_class": {"shift": (float, 0.25)},
    "broker_restart": {"down_s": (float, 0.0)},
    "hub_restart": {"down_s": (float, 0.0)},
}
COMMON = ("kind", "at_s", "fraction", "count", "device_class")


class FaultError(ValueError):
    """A fault table that is not valid: ``field`` names what is wrong."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True)
class FaultSpec:
    """One ``[[fault]]`` table, validated.

    Attributes:
        kind: one of KINDS.
        at_s: seconds after the rollout starts.
        fraction / count: how many of the eligible devices it hits (device faults only;
            neither given: all of them).
        device_class: only devices of this class are eligible (required by faulty_class).
        params: the kind's own parameters (PARAMS), defaults filled in.
    """

    kind: str
    at_s: float = 0.0
    fraction: float | None = None
    count: int | None = None
    device_class: str | None = None
    params: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    @classmethod
    def from_table(cls, table: Mapping[str, Any]) -> FaultSpec:
        """Raises: FaultError naming the first bad field."""
        kind = table.get("kind")
        if kind is None:
            raise FaultError("kind", f"missing (one of {', '.join(KINDS)})")
        if kind not in KINDS:
            raise FaultError("kind", f"unknown kind {kind!r} (one of {', '.join(KINDS)})")
        schema = PARAMS[kind]
        for key in table:
            if key not in COMMON and key not in schema:
                allowed = ", ".join([*COMMON[1:], *schema])
                raise FaultError(key, f"unknown field for {kind} (allowed: {allowed})")
        at_s = _number(table, "at_s", float, 0.0)
        if at_s is None or at_s < 0:
            raise FaultError("at_s", f"must be >= 0 seconds, got {table.get('at_s')!r}")
        fraction = _number(table, "fraction", float, None)
        count = _number(table, "count", int, None)
        device_class = table.get("device_class")
        if device_class is not None and (not isinstance(device_class, str) or not device_class):
            raise FaultError("device_class", f"must be a class name, got {device_class!r}")
        if kind in PROCESS_KINDS:
            for key in ("fraction", "count", "device_class"):
                if key in table:
                    raise FaultError(key, f"{kind} hits a process, not devices")
        if fraction is not None and count is not None:
            raise FaultError("count", "give fraction or count, not both")
        if fraction is not None and not 0 < fraction <= 1:
            raise FaultError("fraction", f"must be within (0, 1], got {fraction}")
        if count is not None and count < 1:
            raise FaultError("count", f"must be >= 1, got {count}")
        if kind == "faulty_class" and device_class is None:
            raise FaultError("device_class", "missing (faulty_class needs the class it hits)")
        params = {name: _number(table, name, t, d) for name, (t, d) in schema.items()}
        _check_params(kind, params)
        return cls(kind, at_s, fraction, count, device_class, params)


def _number(table: Mapping[str, Any], name: str, kind: type, default: Any) -> Any:
    value = table.get(name, default)
    if value is _REQUIRED:
        raise FaultError(name, f"missing (required by {table['kind']})")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else int):
        what = "a number" if kind is float else "an integer"
        raise FaultError(name, f"must be {what}, got {value!r}")
    return kind(value)


def _check_params(kind: str, p: Mapping[str, Any]) -> None:
    for name, value in p.items():
        if value is not None and value < 0:
            raise FaultError(name, f"must be >= 0, got {value}")
    if kind == "corrupt_chunks" and not 0 < p["p"] <= 1:
        raise FaultError("p", f"must be within (0, 1], got {p['p']}")
    if kind == "slow_link" and not p["delay_ms"] and not p["rate_per_s"]:
        raise FaultError("delay_ms", "slow_link needs delay_ms > 0 or rate_per_s > 0")
    if kind == "crash_mid_download" and p["after_chunks"] < 1:
        raise FaultError("after_chunks", "must be >= 1")
    if kind == "disconnect" and p["duration_s"] <= 0:
        raise FaultError("duration_s", "must be > 0 seconds")
