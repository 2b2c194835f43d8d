"""Views of API keys, the audit log and the signing keys (hub/api/routes/access.py,
signing.py)."""

from __future__ import annotations

from typing import Any

from hub.api.views.base import Exact, View

__all__ = ["ApiKeyCreated", "ApiKeyView", "AuditRecordView", "KeyRotation", "SigningKeys"]


class ApiKeyView(Exact):
    """An API key as listed: never its secret or the secret's hash."""

    name: str
    role: str  # viewer | operator | admin
    keyid: str
    created_at: float
    created_by: str
    revoked_at: float | None


class ApiKeyCreated(ApiKeyView):
    key: str  # shown once: the hub keeps only a hash


class AuditRecordView(Exact):
    id: int
    ts: float
    actor_keyid: str | None = None
    actor_name: str | None = None
    role: str | None = None
    action: str
    method: str
    path: str
    target: str | None = None
    before: dict[str, Any] | None = None
    after: dict[str, Any] | None = None
    outcome: str  # ok | denied | error
    status: int
    detail: str | None = None
    client: str | None = None
    claimed_keyid: str | None = None
    count: int = 1


class SigningKeys(View):
    """Per role (root, targets, snapshot, timestamp, director): ``threshold``, ``keyids``,
    ``keys_here``; root also its ``version`` and ``expires``."""

    root: dict[str, Any]
    targets: dict[str, Any]
    snapshot: dict[str, Any]
    timestamp: dict[str, Any]
    director: dict[str, Any]


class KeyRotation(View):
    role: str
    root_version: int
    threshold: int
    keyids: list[str]
    keys_here: int
