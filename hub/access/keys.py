"""Who may call the hub: API keys with roles. The FastAPI dependencies that check them
are in hub/api/security.py, one-time enrolment tokens in hub/trust/enrolment.py, the
audit log in hub/access/audit.py.

API keys look like ``ef_<keyid>_<secret>`` and are sent as ``Authorization: Bearer
<key>``; the hub keeps the keyid and a hash of the secret. Roles are ordered
(``admin`` > ``operator`` > ``viewer``): a role can do what the ones below it can.
Routes declare the role they need (``Operator``, hub/api/security.py).

Errors::

    AuthError                the root of this module's errors
    ├── Unauthenticated      no usable API key (HTTP 401); ``keyid`` names the key claimed
    ├── ApiKeyError          a key-management request that cannot be met; ``reason``
    │                        is "unknown" (404), "revoked" or "last_admin" (409)
    └── EnrolRefused         (hub/trust/enrolment.py) an enrolment token was refused
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from enum import StrEnum

from sqlalchemy import Engine, func, or_, update
from sqlmodel import col, select

from hub.store.tables import ApiKey, now, session

KEY_PREFIX = "ef"
DEV_KEY = "ef_dev_admin"  # accepted as admin in development mode only
DEV_KEYID = "dev"
KEYID_BYTES = 8  # random bytes in a keyid (16 hex digits)
SECRET_BYTES = 32  # random bytes in a key's or enrolment token's secret
CLI_ACTOR = "cli"  # created_by for keys made on the hub's machine with `edgefleet hub apikey`

KEY_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9 _.@-]{0,63}$"  # what a key's name may be

_KEYID = re.compile(r"^[0-9a-f]{16}$")


class Role(StrEnum):
    viewer = "viewer"
    operator = "operator"
    admin = "admin"

    def allows(self, needed: Role) -> bool:
        """True when this role may do what ``needed`` may."""
        return _RANK[self] >= _RANK[needed]


_RANK = {Role.viewer: 0, Role.operator: 1, Role.admin: 2}


class AuthError(Exception):
    """The root of the errors of hub/access/keys.py."""


class Unauthenticated(AuthError):
    def __init__(self, message: str, keyid: str | None = None) -> None:
        super().__init__(message)
        self.keyid = keyid  # the keyid the caller claimed, if the key was well formed


class ApiKeyError(AuthError):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def digest(secret: str) -> str:
    """The stored form of a secret.

    A plain SHA-256 is enough here: secrets are 256 random bits, so there is no dictionary
    to try and nothing a salt or a slow KDF (bcrypt, argon2) would protect; they would only
    cost CPU on every request.
    """
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True)
class Principal:
    """The caller of a request, as its API key says."""

    keyid: str
    name: str
    role: Role


DEV_PRINCIPAL = Principal(DEV_KEYID, "development key", Role.admin)


# ---------------------------------------------------------------- API keys


@dataclass(frozen=True)
class NewApiKey:
    record: ApiKey
    key: str  # the whole key: shown once, never stored


class ApiKeys:
    """API keys in the hub's database: create, check, list, revoke."""

    def __init__(self, engine: Engine, *, dev_mode: bool = False) -> None:
        self.engine = engine
        self.dev_mode = dev_mode

    def create(self, name: str, role: Role, created_by: str) -> NewApiKey:
        """A new key of ``role``; the whole key is in the answer and nowhere else.

        Raises:
            ValueError: a name that does not match KEY_NAME_PATTERN, or an unknown role.
        """
        if not re.match(KEY_NAME_PATTERN, name):
            raise ValueError(f"key name {name!r}: 1-64 letters, digits, space, _.@- ")
        keyid = secrets.token_hex(KEYID_BYTES)
        secret = secrets.token_urlsafe(SECRET_BYTES)
        row = ApiKey(
            keyid=keyid,
            name=name,
            role=Role(role).value,
            secret_sha256=digest(secret),
            created_by=created_by,
        )
        with session(self.engine) as s:
            s.add(row)
            s.commit()
        return NewApiKey(row, f"{KEY_PREFIX}_{keyid}_{secret}")

    def authenticate(self, key: str | None) -> Principal:
        """The principal a presented key stands for.

        Raises:
            Unauthenticated: missing, malformed, unknown, wrong or revoked key, or the
                development key outside development mode.
        """
        if not key:
            raise Unauthenticated("missing API key: send 'Authorization: Bearer <key>'")
        if hmac.compare_digest(key.encode(), DEV_KEY.encode()):
            if not self.dev_mode:
                raise Unauthenticated(
                    "the development key is refused outside development mode", DEV_KEYID
                )
            return DEV_PRINCIPAL
        prefix, _, rest = key.partition("_")
        keyid, _, secret = rest.partition("_")
        if prefix != KEY_PREFIX or not _KEYID.match(keyid) or not secret:
            raise Unauthenticated("malformed API key: expected ef_<keyid>_<secret>")
        with session(self.engine) as s:
            row = s.get(ApiKey, keyid)
        # Compare even when the keyid is unknown, so timing does not tell which keyids exist.
        stored = row.secret_sha256 if row is not None else digest("")
        if not hmac.compare_digest(digest(secret), stored) or row is None:
            raise Unauthenticated("invalid API key", keyid)
        if row.revoked_at is not None:
            raise Unauthenticated(f"API key {keyid} was revoked", keyid)
        return Principal(row.keyid, row.name, Role(row.role))

    def list(self) -> list[ApiKey]:
        with session(self.engine) as s:
            return list(s.exec(select(ApiKey).order_by(col(ApiKey.created_at), col(ApiKey.keyid))))

    def revoke(self, keyid: str) -> ApiKey:
        """Revoke a key; the last active admin key cannot be revoked.

        Raises:
            ApiKeyError: unknown key, already revoked, or the last active admin key.
        """
        t = now()
        admins = (
            select(func.count())
            .select_from(ApiKey)
            .where(ApiKey.role == Role.admin.value, col(ApiKey.revoked_at).is_(None))
            .scalar_subquery()
        )
        with session(self.engine) as s:
            # PostgreSQL: lock the active admin rows so two revocations cannot both see two
            # admins left; SQLite runs the one UPDATE below atomically anyway.
            s.exec(
                select(ApiKey.keyid)
                .where(ApiKey.role == Role.admin.value, col(ApiKey.revoked_at).is_(None))
                .with_for_update()
            ).all()
            result = s.exec(
                update(ApiKey)
                .where(
                    col(ApiKey.keyid) == keyid,
                    col(ApiKey.revoked_at).is_(None),
                    or_(col(ApiKey.role) != Role.admin.value, admins > 1),
                )
                .values(revoked_at=t)
                .execution_options(synchronize_session=False)
            )
            s.commit()
            if result.rowcount == 1:
                row = s.get(ApiKey, keyid, populate_existing=True)
                assert row is not None
                return row
            row = s.get(ApiKey, keyid)
        if row is None:
            raise ApiKeyError("unknown", f"no API key {keyid!r}")
        if row.revoked_at is not None:
            raise ApiKeyError("revoked", f"API key {keyid} is already revoked")
        raise ApiKeyError("last_admin", f"API key {keyid} is the last active admin key")
