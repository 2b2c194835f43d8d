"""Dashboard sessions: an API key, checked once at sign-in, becomes a session cookie.

The cookie holds a random token (:data:`TOKEN_BYTES`); the hub keeps, in its memory, the
token's SHA-256 with the key's principal and the session's CSRF token. A hub restart
signs everyone out (sessions are cheap to make again; nothing of them reaches disk).

A session ends when it has been idle for ``idle_s``, when it is ``absolute_s`` old, at
sign-out, or when its API key is revoked (checked on every request, as a Bearer key is).
A request authenticated by the cookie that changes something (POST, PUT, PATCH, DELETE)
must carry the session's CSRF token in :data:`CSRF_HEADER`, compared in constant time;
without it the answer is 403. Bearer-key requests carry no cookie and need no token.

Errors: :class:`~hub.access.keys.Unauthenticated` (401) for an unknown, expired or
revoked session; :class:`CsrfRefused` (403) for a change without the right token.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy import Engine

from hub.access.keys import DEV_KEYID, Principal, Unauthenticated
from hub.store.tables import ApiKey, session

__all__ = [
    "COOKIE",
    "CSRF_HEADER",
    "CsrfRefused",
    "Session",
    "SessionPolicy",
    "SessionStore",
]

COOKIE = "ef_session"  # the cookie's name
CSRF_HEADER = "x-csrf-token"  # the header a cookie-authenticated change carries
TOKEN_BYTES = 32  # random bytes in a session token and in a CSRF token
IDLE_S = 8 * 3600.0  # seconds a session lives without a request
ABSOLUTE_S = 12 * 3600.0  # seconds a session lives at most, however busy
MAX_SESSIONS = 10_000  # sessions kept at once; the oldest goes when a new one comes


class CsrfRefused(Exception):
    """A change authenticated by the session cookie came without its CSRF token (403);
    ``principal`` is the session's (the audit record names it)."""

    def __init__(self, message: str, principal: Principal) -> None:
        super().__init__(message)
        self.principal = principal


@dataclass(frozen=True)
class SessionPolicy:
    """How long a session lives (seconds)."""

    idle_s: float = IDLE_S
    absolute_s: float = ABSOLUTE_S

    def __post_init__(self) -> None:
        if not 0 < self.idle_s <= self.absolute_s:
            raise ValueError(f"need 0 < idle_s <= absolute_s, got {self.idle_s}, {self.absolute_s}")


@dataclass
class Session:
    """One signed-in operator: whose key, and the CSRF token the pages send back."""

    principal: Principal
    csrf: str
    created: float
    seen: float = field(default=0.0)


KeyActive = Callable[[str], bool]  # keyid -> the key is still usable


def key_checker(engine: Engine, *, dev_mode: bool) -> KeyActive:
    """Whether a key is still usable: present and not revoked (the development key: while
    the hub is in development mode)."""

    def active(keyid: str) -> bool:
        if keyid == DEV_KEYID:
            return dev_mode
        with session(engine) as s:
            row = s.get(ApiKey, keyid)
        return row is not None and row.revoked_at is None

    return active


class SessionStore:
    """The hub's sessions, in memory (thread-safe: routes run in a thread pool).

    Args:
        key_active: tells whether a session's key is still usable (:func:`key_checker`).
        policy: the sessions' lifetimes.
        clock: seconds, monotonic enough for expiry (``time.time``; a test freezes it).
    """

    def __init__(
        self,
        key_active: KeyActive,
        policy: SessionPolicy | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.key_active = key_active
        self.policy = policy or SessionPolicy()
        self.clock = clock
        self._lock = threading.Lock()
        self._sessions: dict[str, Session] = {}  # by the SHA-256 of the cookie's token

    def open(self, principal: Principal) -> tuple[str, Session]:
        """A new session for ``principal`` (whose key was just checked): its cookie token
        (given once, never stored) and the session."""
        token = secrets.token_urlsafe(TOKEN_BYTES)
        t = self.clock()
        new = Session(principal, secrets.token_urlsafe(TOKEN_BYTES), created=t, seen=t)
        with self._lock:
            if len(self._sessions) >= MAX_SESSIONS:
                oldest = min(self._sessions, key=lambda k: self._sessions[k].created)
                del self._sessions[oldest]
            self._sessions[_digest(token)] = new
        return token, new

    def get(self, token: str | None) -> Session:
        """The live session of a cookie's token; touching it resets its idle time.

        Raises:
            Unauthenticated: no token, an unknown one, an expired session, or a revoked key
                (which ends every session of that key).
        """
        if not token:
            raise Unauthenticated("not signed in: sign in at /ui or send 'Authorization: Bearer'")
        t = self.clock()
        with self._lock:
            found = self._sessions.get(_digest(token))
            if found is not None and self._expired(found, t):
                del self._sessions[_digest(token)]
                raise Unauthenticated("the session expired: sign in again", found.principal.keyid)
        if found is None:
            raise Unauthenticated("unknown session: sign in again")
        keyid = found.principal.keyid
        if not self.key_active(keyid):
            self.end_key(keyid)
            raise Unauthenticated(f"API key {keyid} was revoked: its sessions ended", keyid)
        found.seen = t
        return found

    def close(self, token: str | None) -> bool:
        """Sign out: forget the session (True if there was one)."""
        with self._lock:
            return self._sessions.pop(_digest(token or ""), None) is not None

    def end_key(self, keyid: str) -> int:
        """End every session of a key; how many there were."""
        with self._lock:
            gone = [k for k, v in self._sessions.items() if v.principal.keyid == keyid]
            for k in gone:
                del self._sessions[k]
        return len(gone)

    def __len__(self) -> int:
        with self._lock:
            return len(self._sessions)

    def _expired(self, s: Session, t: float) -> bool:
        return t - s.seen > self.policy.idle_s or t - s.created > self.policy.absolute_s


def check_csrf(s: Session, sent: str | None) -> None:
    """Raise :class:`CsrfRefused` unless ``sent`` is the session's CSRF token."""
    if not sent:
        raise CsrfRefused(
            f"missing CSRF token: a change signed in by cookie needs {CSRF_HEADER}", s.principal
        )
    if not hmac.compare_digest(sent.encode(), s.csrf.encode()):
        raise CsrfRefused("wrong CSRF token for this session: reload the page", s.principal)


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()
