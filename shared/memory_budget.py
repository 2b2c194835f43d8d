"""Whether one more model (or a new version of one) fits a device's memory budget.

One rule for both sides: the device checks it before it downloads (agent/core/budget.py),
and the hub before it sends the deploy command, from what the device reported it runs
(hub/fleet/rollouts.py). The budget is the device class's ``memory_budget_mb``
(firmware-images/<class>/profile.toml)::

    MEMORY_FACTOR x (the new file's length + the active file of every *other* model)
        <= memory_budget_mb

The new version replaces its model's active one, so that one does not count. A loaded
int8 session holds its weights (about the file's size) and the runtime's arenas and graph
copies beside them (about as much again, more for small models), and the version it
replaces stays loaded during probation for a rollback: ``MEMORY_FACTOR`` = 3 covers the
three.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

__all__ = ["MEMORY_FACTOR", "MIB", "footprint_bytes", "no_room"]

MEMORY_FACTOR: Final = 3  # loaded bytes per byte of model file (weights, arenas, the previous)
MIB: Final = 2**20  # bytes


def footprint_bytes(length: int) -> int:
    """The memory a model file of ``length`` bytes is counted for once loaded."""
    return MEMORY_FACTOR * length


def no_room(
    model: str, length: int, others: Mapping[str, int], budget_mb: float | None
) -> str | None:
    """Why ``model`` in a file of ``length`` bytes does not fit beside the active files of
    the other models (``others``: model -> file length), or None: it fits (or there is no
    budget)."""
    if budget_mb is None:
        return None
    others = {name: n for name, n in others.items() if name != model}
    need = footprint_bytes(length + sum(others.values()))
    budget = budget_mb * MIB
    if need <= budget:
        return None
    beside = ", ".join(f"{n} {footprint_bytes(b) / MIB:.1f}" for n, b in sorted(others.items()))
    return (
        f"{model} needs {footprint_bytes(length) / MIB:.1f} MiB"
        + (f" beside {beside} MiB" if beside else "")
        + f": {need / MIB:.1f} MiB > this device's budget of {budget_mb:g} MiB"
        + f" ({MEMORY_FACTOR} x the model files)"
    )
