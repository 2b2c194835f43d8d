"""Certificate renewal over the device's own MQTT link: the messages, and when to renew.

A device renews its client certificate before it expires (docs/devices.md "Certificate
renewal", ADR 0035). It makes a fresh key pair, and publishes a ``renew_request`` on
``ef/v1/dev/{id}/renew`` (only it may write there: the broker's ACL ties the topic to the
certificate it connected with). The hub answers with a ``renew_answer`` on
``ef/v1/dev/{id}/cert`` (only it may read there): the new certificate and the CA bundle
to trust, or a refusal with a reason from :data:`REFUSALS`. On the same topic a
``renew_hint`` asks the device to renew now, whatever its schedule (a CA rotation).

When: at ``fraction`` of the certificate's lifetime, moved by a per-device offset within
``spread`` (a fraction of the lifetime too), so that a fleet enrolled on one day does not
renew in one minute. The offset is deterministic (a hash of the device id and the
certificate's serial): a device restarted any number of times renews at the same moment,
and the hub could predict it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any, Final

__all__ = [
    "ANSWER_SCHEMA",
    "DEFAULT_FRACTION",
    "DEFAULT_SPREAD",
    "HINT_SCHEMA",
    "MAX_PEM_CHARS",
    "REFUSALS",
    "REQUEST_SCHEMA",
    "renew_at",
]

DEFAULT_FRACTION: Final = 2 / 3  # of the lifetime: a 365-day certificate renews near day 243
DEFAULT_SPREAD: Final = 0.1  # of the lifetime: renewals spread over ~36 days for 365 days
MAX_PEM_CHARS: Final = 16 * 2**10  # characters of a CSR, certificate or CA bundle

# Why the hub refused a renewal (the ``reason`` of a refused renew_answer):
REFUSALS: Final = frozenset(
    {
        "bad_csr",  # the CSR does not parse, or has not exactly one CN
        "bad_signature",  # the CSR is not signed by the key it carries
        "identity_mismatch",  # the CSR names another device than the topic's
        "weak_key",  # not an EC P-256 (or Ed25519) key
        "reused_key",  # the key is in an earlier certificate of this device
        "expired",  # the device holds no unexpired, unrevoked certificate: re-enrol
        "too_soon",  # a new key too soon after the last renewal: retry later
        "unavailable",  # the hub cannot issue now (retry later)
    }
)


def _pem(x: Any) -> bool:
    return isinstance(x, str) and 0 < len(x) <= MAX_PEM_CHARS and x.isascii()


def _reason(x: Any) -> bool:
    return x in REFUSALS


def _short(x: Any) -> bool:
    return isinstance(x, str) and 0 < len(x) <= 256


def _detail(x: Any) -> bool:
    return isinstance(x, str) and len(x) <= 1024 and x.isprintable()


REQUEST_SCHEMA: Final[Mapping[str, tuple[Any, bool]]] = {
    "csr": (_pem, True),  # PEM, CN = the device id, signed by the new key
}
ANSWER_SCHEMA: Final[Mapping[str, tuple[Any, bool]]] = {
    "request": (_short, True),  # the id of the renew_request it answers
    "ok": (lambda x: isinstance(x, bool), True),
    "certificate": (_pem, False),  # PEM: when ok
    "ca_bundle": (_pem, False),  # PEM, every CA the device must trust: when ok
    "reason": (_reason, False),  # one of REFUSALS: when not ok
    "detail": (_detail, False),
}


HINT_SCHEMA: Final[Mapping[str, tuple[Any, bool]]] = {
    "reason": (_short, True),  # why the hub asks for a renewal now, e.g. "ca_rotation"
}


def renew_at(
    not_before: float,
    not_after: float,
    device_id: str,
    serial: int,
    *,
    fraction: float = DEFAULT_FRACTION,
    spread: float = DEFAULT_SPREAD,
) -> float:
    """When (epoch seconds) a device renews the certificate valid from ``not_before`` to
    ``not_after``: at ``fraction`` of its lifetime plus an offset in ``[-spread/2,
    spread/2)`` of it, from a hash of ``device_id`` and ``serial``.

    Raises:
        ValueError: ``fraction`` or ``spread`` outside (0, 1), or a renewal moment that
            would fall outside the certificate's lifetime.
    """
    if not 0 < fraction < 1 or not 0 <= spread < 1:
        raise ValueError(f"need 0 < fraction < 1 and 0 <= spread < 1, got {fraction}, {spread}")
    low, high = fraction - spread / 2, fraction + spread / 2
    if low <= 0 or high >= 1:
        raise ValueError(f"fraction {fraction} ± spread/2 {spread / 2} leaves the lifetime")
    digest = hashlib.sha256(f"{device_id}/{serial:x}".encode()).digest()
    unit = int.from_bytes(digest[:8], "big") / 2**64  # uniform in [0, 1)
    lifetime = not_after - not_before
    return not_before + lifetime * (low + spread * unit)
