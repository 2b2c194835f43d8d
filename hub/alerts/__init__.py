"""Alerts to webhooks: drift alerts, rollout halts and closed-loop outcomes, sent to the
receivers an admin configured as Alertmanager webhook payloads, signed (HMAC-SHA256),
retried with backoff, and every try recorded (docs/alerts.md, ADR 0025).

The outbox (:mod:`hub.alerts.outbox`) reads the rows that record what happened, behind
cursors kept in the database; the :class:`Dispatcher` sends what is due. Errors::

    AlertError
    ├── ReceiverError     a receiver that is not valid, unknown, or already there
    └── SignatureError    a webhook that does not check (:func:`verify`, a receiver's side)
"""

from hub.alerts.dispatcher import Dispatcher
from hub.alerts.errors import AlertError, ReceiverError, SignatureError
from hub.alerts.history import DELIVERIES_LIMIT, STATUSES
from hub.alerts.messages import KINDS
from hub.alerts.policy import DeliveryPolicy
from hub.alerts.receivers import Receivers, ReceiverSpec, public
from hub.alerts.signing import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign, verify

__all__ = [
    "DELIVERIES_LIMIT",
    "KINDS",
    "SIGNATURE_HEADER",
    "STATUSES",
    "TIMESTAMP_HEADER",
    "AlertError",
    "DeliveryPolicy",
    "Dispatcher",
    "ReceiverError",
    "ReceiverSpec",
    "Receivers",
    "SignatureError",
    "public",
    "sign",
    "verify",
]
