"""The one error of the hub's CA (hub/trust/pki.py lists its reasons)."""

from __future__ import annotations

__all__ = ["PkiError"]


class PkiError(ValueError):
    """A certificate request or CA operation the hub refuses.

    Attributes:
        reason: a stable, short code (``bad_csr``, ``identity_mismatch``, ...).
        detail: what exactly was wrong, for the operator or the log line.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
