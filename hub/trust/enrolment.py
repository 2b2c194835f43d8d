"""One-time enrolment tokens: a device trades one for the hub's root, its certificate
and the broker's address.

A token (``eft_<secret>``) is single use, expires, may be bound to one device id, and is
kept only as a hash. It is used up by one conditional UPDATE, so of two concurrent
enrolments with one token exactly one wins.

Errors::

    EnrolRefused(reason)     HTTP 403; ``reason`` is "unknown", "used", "revoked",
                             "expired" or "wrong_device"
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Engine, or_, update
from sqlmodel import col, select

from hub.access.keys import KEYID_BYTES, SECRET_BYTES, AuthError, digest
from hub.store.tables import EnrolToken, session

ENROL_TOKEN_PREFIX = "eft_"
ENROL_TTL_DEFAULT_S = 3600  # seconds
ENROL_TTL_MAX_S = 7 * 86400  # seconds


class EnrolRefused(AuthError):
    def __init__(self, reason: str, message: str, token_id: str | None = None) -> None:
        super().__init__(f"enrolment token refused ({reason}): {message}")
        self.reason = reason
        self.token_id = token_id


@dataclass(frozen=True)
class NewEnrolToken:
    record: EnrolToken
    token: str  # shown once, never stored


class EnrolTokens:
    """One-time enrolment tokens: a device trades one for the hub's root and broker."""

    def __init__(self, engine: Engine, clock: Callable[[], float] = time.time) -> None:
        self.engine = engine
        self.clock = clock  # tests freeze it to check expiry

    def issue(
        self,
        created_by: str,
        device_id: str | None = None,
        ttl_s: int = ENROL_TTL_DEFAULT_S,
        *,
        reenrol: bool = False,
    ) -> NewEnrolToken:
        if not 0 < ttl_s <= ENROL_TTL_MAX_S:
            raise ValueError(f"ttl_s must be within 1..{ENROL_TTL_MAX_S} seconds")
        if reenrol and device_id is None:
            raise ValueError("a re-enrolment token is bound to a device id")
        token = ENROL_TOKEN_PREFIX + secrets.token_urlsafe(SECRET_BYTES)
        t = self.clock()
        row = EnrolToken(
            id=secrets.token_hex(KEYID_BYTES),
            token_sha256=digest(token),
            device_id=device_id,
            reenrol=reenrol,
            expires_at=t + ttl_s,
            created_at=t,
            created_by=created_by,
        )
        with session(self.engine) as s:
            s.add(row)
            s.commit()
        return NewEnrolToken(row, token)

    def consume(self, token: str, device_id: str) -> EnrolToken:
        """Use a token up for ``device_id``: one UPDATE, so of two concurrent uses one wins.

        Raises:
            EnrolRefused: unknown, used, revoked, expired, or bound to another device id.
        """
        h, t = digest(token), self.clock()
        with session(self.engine) as s:
            result = s.exec(
                update(EnrolToken)
                .where(
                    col(EnrolToken.token_sha256) == h,
                    col(EnrolToken.used_at).is_(None),
                    col(EnrolToken.revoked_at).is_(None),
                    col(EnrolToken.expires_at) > t,
                    or_(
                        col(EnrolToken.device_id).is_(None), col(EnrolToken.device_id) == device_id
                    ),
                )
                .values(used_at=t, used_by_device=device_id)
                .execution_options(synchronize_session=False)
            )
            s.commit()
            row = s.exec(select(EnrolToken).where(EnrolToken.token_sha256 == h)).first()
            won = result.rowcount == 1
        if won and row is not None:
            return row
        raise _refusal(row, t)

    def find(self, token: str) -> EnrolToken | None:
        """The record of ``token`` (used or not), without using it up."""
        with session(self.engine) as s:
            return s.exec(
                select(EnrolToken).where(EnrolToken.token_sha256 == digest(token))
            ).first()

    def list(self, limit: int = 100) -> list[EnrolToken]:
        with session(self.engine) as s:
            q = select(EnrolToken).order_by(col(EnrolToken.created_at).desc()).limit(limit)
            return list(s.exec(q))

    def revoke(self, token_id: str) -> EnrolToken:
        """Make an unused token unusable.

        Raises:
            KeyError: no such token.
            EnrolRefused: the token was already used or revoked ("used", "revoked").
        """
        with session(self.engine) as s:
            result = s.exec(
                update(EnrolToken)
                .where(
                    col(EnrolToken.id) == token_id,
                    col(EnrolToken.used_at).is_(None),
                    col(EnrolToken.revoked_at).is_(None),
                )
                .values(revoked_at=self.clock())
                .execution_options(synchronize_session=False)
            )
            s.commit()
            row = s.get(EnrolToken, token_id, populate_existing=True)
        if row is None:
            raise KeyError(token_id)
        if result.rowcount != 1:
            raise _refusal(row, self.clock())
        return row


def _refusal(row: EnrolToken | None, t: float) -> EnrolRefused:
    """Why a token could not be used. Says nothing about tokens of other device ids."""
    if row is None:
        return EnrolRefused("unknown", "no such enrolment token")
    if row.revoked_at is not None:
        return EnrolRefused("revoked", "the token was revoked", row.id)
    if row.used_at is not None:
        return EnrolRefused("used", "the token was already used", row.id)
    if row.expires_at <= t:
        return EnrolRefused("expired", "the token has expired", row.id)
    return EnrolRefused("wrong_device", "the token is bound to another device id", row.id)
