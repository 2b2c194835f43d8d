"""Who may call the hub: API keys with roles, and the FastAPI dependencies that check
them. One-time enrolment tokens are in hub/trust/enrolment.py, the audit log in hub/access/audit.py.

API keys look like ``ef_<keyid>_<secret>`` and are sent as ``Authorization: Bearer
<key>``; the hub keeps the keyid and a hash of the secret. Roles are ordered
(``admin`` > ``operator`` > ``viewer``): a role can do what the ones below it can.
Routes declare the role they need with ``Depends(require(Role.operator))``.

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
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import Engine, func, or_, update
from sqlmodel import col, select

from hub.access.audit import audit_context
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


# ---------------------------------------------------------------- FastAPI dependencies

bearer = HTTPBearer(auto_error=False, description="An API key: ef_<keyid>_<secret>")
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]


def authorize(request: Request, role: Role, key: str | None) -> Principal:
    """Check the key and the role of a request.

    Raises:
        HTTPException: 401 (no usable key, with ``WWW-Authenticate: Bearer``), 403 (the
            key's role is below ``role``).
    """
    keys: ApiKeys = request.app.state.api_keys
    ctx = audit_context(request)
    try:
        who = keys.authenticate(key)
    except Unauthenticated as e:
        ctx.actor_keyid = e.keyid
        raise HTTPException(401, str(e), headers={"WWW-Authenticate": "Bearer"}) from e
    ctx.actor(who)
    request.state.principal = who
    if not who.role.allows(role):
        raise HTTPException(403, f"role {role.value} required; this key's role is {who.role}")
    return who


def require(role: Role) -> Callable[..., Principal]:
    """A dependency that lets in keys of ``role`` or above and returns the caller."""

    def dependency(request: Request, credentials: Credentials) -> Principal:
        return authorize(request, role, credentials.credentials if credentials else None)

    dependency.required_role = role  # type: ignore[attr-defined]  # read by required_role()
    return dependency


def required_role(dependant: Any) -> Role | None:
    """The role a route's dependency tree requires (None for a public route)."""
    for dep in getattr(dependant, "dependencies", []):
        role = getattr(dep.call, "required_role", None)
        if isinstance(role, Role):
            return role
        found = required_role(dep)
        if found is not None:
            return found
    return None


Viewer = Annotated[Principal, Depends(require(Role.viewer))]
Operator = Annotated[Principal, Depends(require(Role.operator))]
Admin = Annotated[Principal, Depends(require(Role.admin))]
