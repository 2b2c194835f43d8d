"""The device's memory budget: whether one more model (or a new version of one) fits.

A device serving several models keeps them all loaded, so what they take together is
bounded by the device's budget (``CoreConfig.memory_budget_mb``: its class's
``memory_budget_mb`` in firmware-images/<class>/profile.toml). The rule, checked when the
signed metadata names the new file's length, before anything is downloaded:

    MEMORY_FACTOR x (the new file's length + the active file of every *other* model)
        <= memory_budget_mb

The new version replaces its model's active one, so that one does not count. A loaded
int8 session holds its weights (about the file's size) and the runtime's arenas and
graph copies beside them (about as much again, more for small models), and the version
it replaces stays loaded during probation for a rollback: ``MEMORY_FACTOR`` = 3 covers
the three. A deploy that would not fit fails with ``no_room`` and says by how much.
"""

from __future__ import annotations

from collections.abc import Mapping

from agent.core.state import InstalledModel

MEMORY_FACTOR = 3  # loaded bytes per byte of model file (weights, arenas, the previous one)
MIB = 2**20  # bytes


def footprint_bytes(length: int) -> int:
    """The memory a model file of ``length`` bytes is counted for once loaded."""
    return MEMORY_FACTOR * length


def no_room(
    models: Mapping[str, InstalledModel], model: str, length: int, budget_mb: float | None
) -> str | None:
    """Why ``model`` in a file of ``length`` bytes does not fit beside the other installed
    models, or None: it fits (or the device has no budget)."""
    if budget_mb is None:
        return None
    others = {
        name: m["files"][str(m["version"])]["length"]
        for name, m in models.items()
        if name != model and str(m["version"]) in m["files"]
    }
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
