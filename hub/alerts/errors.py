"""The alert delivery's errors, one root::

AlertError
├── ReceiverError     a receiver that is not valid, unknown, or already there
└── SignatureError    a webhook body whose signature does not check (a receiver's side)
"""

from __future__ import annotations

__all__ = ["AlertError", "ReceiverError", "SignatureError"]


class AlertError(Exception):
    """Something about alert delivery went wrong."""


class ReceiverError(AlertError):
    """A receiver that is not valid, unknown, or already there.

    Attributes:
        reason: ``invalid``, ``unknown`` or ``exists``.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class SignatureError(AlertError):
    """A webhook that does not check: ``reason`` is ``missing``, ``malformed``, ``stale``
    or ``mismatch``."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
