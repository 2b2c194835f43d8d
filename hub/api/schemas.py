"""What the request models and parameters of several route modules share: bounds and
patterns."""

from __future__ import annotations

from hub.store.names import DEVICE, MAX_INT, MODEL, TAG

__all__ = ["DEVICE", "MAX_INT", "MODEL", "TAG"]
