"""The device's memory budget: whether one more model (or a new version of one) fits.

A device serving several models keeps them all loaded, so what they take together is
bounded by the device's budget (``CoreConfig.memory_budget_mb``: its class's
``memory_budget_mb`` in firmware-images/<class>/profile.toml). The rule is
shared/memory_budget.py's, the hub's too; the device checks it when the signed metadata
names the new file's length, before anything is downloaded. A deploy that would not fit
fails with ``no_room`` and says by how much.
"""

from __future__ import annotations

from collections.abc import Mapping

from agent.core.state import InstalledModel
from shared.memory_budget import MEMORY_FACTOR, MIB, footprint_bytes
from shared.memory_budget import no_room as no_room_beside

__all__ = ["MEMORY_FACTOR", "MIB", "footprint_bytes", "no_room"]


def no_room(
    models: Mapping[str, InstalledModel], model: str, length: int, budget_mb: float | None
) -> str | None:
    """Why ``model`` in a file of ``length`` bytes does not fit beside the other installed
    models, or None: it fits (or the device has no budget)."""
    others = {
        name: m["files"][str(m["version"])]["length"]
        for name, m in models.items()
        if name != model and str(m["version"]) in m["files"]
    }
    return no_room_beside(model, length, others, budget_mb)
