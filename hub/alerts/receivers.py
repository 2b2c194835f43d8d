"""Webhook receivers: who is sent which alerts, configured by an admin (or the hub's config).

A receiver has a name, an ``http``/``https`` URL, a secret that signs what it is sent
(hub/alerts/signing.py; made by the hub when none is given, shown once), the kinds of
alert it wants (drift, rollout, loop) and optionally the models it wants them for. The
secret is kept, since it must sign, but never shown again: :meth:`ReceiverSpec.public`
leaves it out.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import urlsplit

from sqlalchemy import Engine, update
from sqlmodel import col, select

from hub.alerts.errors import ReceiverError
from hub.alerts.messages import KINDS
from hub.store.alert_tables import AlertDelivery, AlertReceiver
from hub.store.tables import session

__all__ = [
    "MAX_MODELS",
    "MAX_SECRET",
    "MAX_URL",
    "MIN_SECRET",
    "NAME_PATTERN",
    "ReceiverSpec",
    "Receivers",
    "public",
    "spec_of",
]

NAME_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
MODEL_PATTERN: Final = NAME_PATTERN  # as the registry names models
MAX_URL: Final = 2048  # characters
MIN_SECRET: Final = 16  # characters
MAX_SECRET: Final = 256
MAX_MODELS: Final = 100  # models one receiver may name
MAX_RECEIVERS: Final = 100


@dataclass(frozen=True)
class ReceiverSpec:
    """A receiver as configured; checks itself on creation (ReceiverError ``invalid``)."""

    name: str
    url: str
    secret: str = field(default="", repr=False)  # empty: the hub makes one
    kinds: tuple[str, ...] = KINDS
    models: tuple[str, ...] = ()  # empty: every model

    def __post_init__(self) -> None:
        problems = check_receiver(self.name, self.url, self.secret, self.kinds, self.models)
        if problems:
            raise ReceiverError("invalid", f"receiver {self.name[:64]!r}: " + "; ".join(problems))

    def wants(self, kind: str, model: str | None) -> bool:
        """Whether an alert of ``kind`` about ``model`` is for this receiver."""
        if kind not in self.kinds:
            return False
        return not self.models or model is None or model in self.models


def check_receiver(
    name: str, url: str, secret: str, kinds: tuple[str, ...], models: tuple[str, ...]
) -> list[str]:
    """What is wrong with a receiver's settings (empty: nothing)."""
    problems = []
    if not re.match(NAME_PATTERN, name):
        problems.append("name: 1-64 letters, digits, _ . - (a letter or digit first)")
    problems += check_url(url)
    if secret and not (MIN_SECRET <= len(secret) <= MAX_SECRET and secret.isprintable()):
        problems.append(f"secret: {MIN_SECRET}-{MAX_SECRET} printable characters")
    if not kinds or set(kinds) - set(KINDS):
        problems.append(f"kinds: one or more of {', '.join(KINDS)}")
    if len(models) > MAX_MODELS or any(not re.match(MODEL_PATTERN, m) for m in models):
        problems.append(f"models: at most {MAX_MODELS} model names")
    return problems


def check_url(url: str) -> list[str]:
    """An absolute http(s) URL with a host, of at most MAX_URL characters."""
    if len(url) > MAX_URL:
        return [f"url: at most {MAX_URL} characters"]
    try:
        parts = urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018 (raises ValueError on a bad port)
    except ValueError:
        return ["url: not a URL"]
    if parts.scheme not in ("http", "https"):
        return [f"url: http:// or https:// only, not {parts.scheme or 'none'!r}"]
    if not host or any(c.isspace() for c in url):
        return ["url: needs a host and no spaces"]
    return []


class Receivers:
    """The receivers in the hub's database. Thread-safe (SQL does the sharing)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def add(self, spec: ReceiverSpec, by: str | None) -> tuple[AlertReceiver, str | None]:
        """Add a receiver; the secret the hub made for it (None: the caller gave one).

        Raises:
            ReceiverError: ``exists`` (the name is taken) or ``invalid`` (one too many).
        """
        made = None if spec.secret else secrets.token_urlsafe(32)
        with session(self.engine) as s:
            if s.get(AlertReceiver, spec.name) is not None:
                raise ReceiverError("exists", f"receiver {spec.name!r} exists: delete it first")
            if len(s.exec(select(AlertReceiver.name)).all()) >= MAX_RECEIVERS:
                raise ReceiverError("invalid", f"at most {MAX_RECEIVERS} receivers")
            row = _row(spec, made or spec.secret, by)
            s.add(row)
            s.commit()
            s.refresh(row)
        return row, made

    def put_config(self, specs: tuple[ReceiverSpec, ...]) -> None:
        """Create or replace the receivers the hub's config names (created_by ``config``).

        Raises:
            ReceiverError: ``invalid``: one without a secret (a secret made at each start
                would be known to no receiver).
        """
        for spec in specs:
            if not spec.secret:
                raise ReceiverError("invalid", f"receiver {spec.name!r} in the config: no secret")
        with session(self.engine) as s:
            for spec in specs:
                s.merge(_row(spec, spec.secret, "config"))
            s.commit()

    def put(self, spec: ReceiverSpec, by: str | None) -> AlertReceiver:
        """Create or replace a receiver with its secret (a fleet file's, hub/declared/);
        what it has pending stays pending.

        Raises:
            ReceiverError: ``invalid``: no secret, or one receiver too many.
        """
        if not spec.secret:
            raise ReceiverError("invalid", f"receiver {spec.name!r}: no secret")
        with session(self.engine) as s:
            if s.get(AlertReceiver, spec.name) is None and (
                len(s.exec(select(AlertReceiver.name)).all()) >= MAX_RECEIVERS
            ):
                raise ReceiverError("invalid", f"at most {MAX_RECEIVERS} receivers")
            row = s.merge(_row(spec, spec.secret, by))
            s.commit()
            s.refresh(row)
        return row

    def get(self, name: str) -> AlertReceiver:
        """Raises: ReceiverError ``unknown``."""
        with session(self.engine) as s:
            row = s.get(AlertReceiver, name)
        if row is None:
            raise ReceiverError("unknown", f"no receiver {name!r}")
        return row

    def find(self, name: str) -> AlertReceiver | None:
        with session(self.engine) as s:
            return s.get(AlertReceiver, name)

    def list(self) -> list[AlertReceiver]:
        with session(self.engine) as s:
            return list(s.exec(select(AlertReceiver).order_by(col(AlertReceiver.name))))

    def delete(self, name: str) -> AlertReceiver:
        """Delete a receiver; what it had pending is dropped.

        Raises:
            ReceiverError: ``unknown``.
        """
        with session(self.engine) as s:
            row = s.get(AlertReceiver, name)
            if row is None:
                raise ReceiverError("unknown", f"no receiver {name!r}")
            s.delete(row)
            s.execute(
                update(AlertDelivery)
                .where(col(AlertDelivery.receiver) == name, col(AlertDelivery.status) == "pending")
                .values(status="dropped", reason="receiver deleted")
            )
            s.commit()
        return row


def spec_of(row: AlertReceiver) -> ReceiverSpec:
    """The settings of a stored receiver."""
    return ReceiverSpec(row.name, row.url, row.secret, tuple(row.kinds), tuple(row.models))


def public(row: AlertReceiver) -> dict[str, Any]:
    """What the API shows of a receiver: never its secret."""
    return {
        "name": row.name,
        "url": row.url,
        "kinds": list(row.kinds),
        "models": list(row.models),
        "created_at": row.created_at,
        "created_by": row.created_by,
    }


def _row(spec: ReceiverSpec, secret: str, by: str | None) -> AlertReceiver:
    return AlertReceiver(
        name=spec.name,
        url=spec.url,
        secret=secret,
        kinds=list(spec.kinds),
        models=list(spec.models),
        created_by=by,
    )
