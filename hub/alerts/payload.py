"""What a receiver is sent: Alertmanager's webhook payload (version "4"), one alert each.

An Alertmanager-compatible receiver takes it as it is: ``status`` firing or resolved,
``receiver``, ``groupLabels``, ``commonLabels``, ``commonAnnotations``, ``externalURL`` and
``alerts[]`` with ``status``, ``labels``, ``annotations``, ``startsAt``, ``endsAt``
(``0001-01-01T00:00:00Z`` while firing, as Alertmanager writes it), ``generatorURL`` and
``fingerprint``. An alert's firing and resolved messages share the fingerprint, made from
the labels that say which alert it is (not from those that change, such as the version).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final

from hub.store.alert_tables import AlertMessage

__all__ = ["UNSET_TIME", "fingerprint", "iso_time", "notification", "notification_body"]

UNSET_TIME: Final = "0001-01-01T00:00:00Z"  # Alertmanager's endsAt of a firing alert
VERSION: Final = "4"


def iso_time(ts: float | None) -> str:
    """RFC 3339 in UTC, as Alertmanager writes times; None is the unset time."""
    if ts is None:
        return UNSET_TIME
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def fingerprint(identity: Mapping[str, str]) -> str:
    """16 hex digits naming one alert: a hash of the labels that identify it."""
    text = "\n".join(f"{k}={identity[k]}" for k in sorted(identity))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def notification(receiver: str, message: AlertMessage, external_url: str) -> dict[str, Any]:
    """The webhook payload of one alert for ``receiver``."""
    labels = dict(message.labels)
    annotations = dict(message.annotations)
    base = external_url.rstrip("/")
    alert = {
        "status": message.status,
        "labels": labels,
        "annotations": annotations,
        "startsAt": iso_time(message.starts_at),
        "endsAt": iso_time(message.ends_at),
        "generatorURL": f"{base}{message.path}" if base and message.path else "",
        "fingerprint": message.fingerprint,
    }
    group = {"alertname": labels.get("alertname", "")}
    return {
        "version": VERSION,
        "groupKey": f"{receiver}:{message.fingerprint}",
        "truncatedAlerts": 0,
        "status": message.status,
        "receiver": receiver,
        "groupLabels": group,
        "commonLabels": labels,
        "commonAnnotations": annotations,
        "externalURL": base,
        "alerts": [alert],
    }


def notification_body(receiver: str, message: AlertMessage, external_url: str) -> bytes:
    """:func:`notification` as the exact bytes sent (and signed)."""
    payload = notification(receiver, message, external_url)
    return json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()
