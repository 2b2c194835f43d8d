"""The roles of the hub's TUF repository: their names, key plans and metadata lifetimes.

``root`` signs every other role's keys; ``targets``, ``snapshot`` and ``timestamp`` are
online and signed in that chain; ``director`` signs deploy and rollback commands and its
keys travel in root under ``x-edgefleet-director`` (hub/trust/repository.py says more).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Literal, TypeGuard

from securesystemslib.signer import Signer
from tuf.api.metadata import (
    Root,
    Snapshot,
    Targets,
    Timestamp,
)

__all__ = [
    "MAX_THRESHOLD",
    "ONLINE_ROLES",
    "ROLES",
    "TOP_ROLES",
    "ChainRole",
    "Expiry",
    "RepositoryError",
    "check_plan",
    "director_field",
    "expires_in",
    "is_online",
    "key_plan",
    "remaining",
    "renew",
]

TOP_ROLES: Final = ("root", "targets", "snapshot", "timestamp")
ONLINE_ROLES: Final = ("targets", "snapshot", "timestamp")
ROLES: Final = (*TOP_ROLES, "director")  # every role `edgefleet keys rotate` knows
MAX_THRESHOLD: Final = 16  # keys per role

ChainRole = Literal["targets", "snapshot", "timestamp"]  # signed in this order, each by the last


class RepositoryError(Exception):
    """The repository cannot do what was asked (a root key offline, a bad threshold...)."""


@dataclass(frozen=True)
class Expiry:
    """Lifetime of each role's metadata, in seconds, counted from each signing."""

    root: float = 365 * 86400
    targets: float = 90 * 86400
    snapshot: float = 7 * 86400
    timestamp: float = 1 * 86400

    def __post_init__(self) -> None:
        for role in TOP_ROLES:
            if not getattr(self, role) > 0:
                raise ValueError(f"expiry of {role} must be > 0 seconds")


def is_online(role: str) -> TypeGuard[ChainRole]:
    """Whether ``role`` is one of the online roles the hub re-signs on its own."""
    return role in ONLINE_ROLES


def director_field(signers: list[Signer], threshold: int) -> dict[str, Any]:
    """Root's ``x-edgefleet-director`` field: the director's public keys and threshold."""
    return {
        "keys": {s.public_key.keyid: s.public_key.to_dict() for s in signers},
        "threshold": threshold,
    }


def key_plan(
    thresholds: Mapping[str, int], counts: Mapping[str, int]
) -> dict[str, tuple[int, int]]:
    """Role -> (threshold, keys to make); keys default to the threshold.

    Raises:
        RepositoryError: an unknown role, or a threshold or key count out of range.
    """
    unknown = (set(thresholds) | set(counts)) - set(ROLES)
    if unknown:
        raise RepositoryError(f"unknown role(s) {sorted(unknown)}: one of {', '.join(ROLES)}")
    plan = {}
    for role in ROLES:
        need = int(thresholds.get(role, 1))
        count = int(counts.get(role, need))
        check_plan(role, need, count)
        plan[role] = (need, count)
    return plan


def check_plan(role: str, threshold: int, keys: int) -> None:
    """Check one role's threshold and the number of keys to make for it.

    Raises:
        RepositoryError: either is out of 1..MAX_THRESHOLD, or there are fewer keys than
            the threshold.
    """
    if not 1 <= threshold <= MAX_THRESHOLD:
        raise RepositoryError(f"threshold of {role} must be 1..{MAX_THRESHOLD}, got {threshold}")
    if not threshold <= keys <= MAX_THRESHOLD:
        raise RepositoryError(
            f"{role} needs {threshold} signature(s): make {threshold}..{MAX_THRESHOLD} keys,"
            f" not {keys}"
        )


def _now() -> datetime:
    return datetime.now(UTC)


def remaining(signed: Root | Targets | Snapshot | Timestamp) -> float:
    """Seconds until ``signed`` expires (negative once it has)."""
    return (signed.expires - _now()).total_seconds()


def expires_in(seconds: float) -> datetime:
    """Now + ``seconds``, rounded up to the whole second that TUF's format keeps."""
    return (_now() + timedelta(seconds=seconds)).replace(microsecond=0) + timedelta(seconds=1)


def renew(signed: Targets | Snapshot | Timestamp, lifetime: float, bump: bool) -> None:
    """A fresh expiry ``lifetime`` seconds away and, if ``bump``, the next version."""
    if bump:
        signed.version += 1
    signed.expires = expires_in(lifetime)
