"""Which devices run a model, and at which version, among all the models each device
runs (``Device.models``; ``Device.model`` / ``version`` hold only its first)."""

from __future__ import annotations

from collections import Counter

from sqlmodel import Session, col, select

from hub.store.tables import Device


def running(s: Session, model: str) -> dict[str, int]:
    """Device id -> the version of ``model`` it runs, for every device that runs it."""
    q = select(Device).where((col(Device.model) == model) | col(Device.models).is_not(None))
    out = {}
    for device in s.exec(q):
        version = device.version_of(model)
        if version is not None:
            out[device.id] = version
    return out


def most_run(s: Session, model: str) -> int | None:
    """The version of ``model`` most devices run (None: no device runs it)."""
    counts = Counter(running(s, model).values())
    return counts.most_common(1)[0][0] if counts else None
