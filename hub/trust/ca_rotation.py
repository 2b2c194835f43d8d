"""Rotating the hub's CA without a device falling off (ADR 0035, docs/operations.md).

The CA certificate is valid 10 years; it is rotated before then, or at once after a
suspected leak of its key. Steps, each one a call (the broker's side is in
hub/transport/brokercert.py):

1. :func:`begin`: a new CA key and certificate; the old CA is *retired*: it issues
   nothing more, but stays trusted and keeps signing its CRL. Write the broker's CA bundle
   and CRLs (``publish_trust``) and reload it: the broker now accepts both CAs' devices.
2. Devices move: each renewal is issued by the new CA and its answer carries the bundle
   (old + new), which the device trusts from then on. :func:`prompt` asks every device
   still on the old CA to renew now (a ``renew_hint`` on its ``cert`` topic);
   :func:`devices_behind` lists those not yet moved.
3. :func:`finish`, once none is behind: the broker gets a server certificate from the
   new CA (every moved device trusts it), the retired CA is dropped (its key deleted) and
   the broker reloaded with the new CA alone. Connections open at that moment stay
   (Mosquitto never re-checks them); the hub's own service identities are re-issued by
   ``edgefleet broker config`` and the hub restarted to present them.

A device offline through the whole overlap cannot come back by itself (its certificate's
issuer is no longer trusted): it is re-enrolled with an admin's token.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from hub.trust import cadir
from hub.trust.pki import CA_VALIDITY, CLOCK_SKEW, CertificateAuthority, PkiError
from hub.trust.profiles import self_signed_ca
from shared import protocol

__all__ = ["begin", "check_none_behind", "devices_behind", "finish", "prompt"]


def begin(ca: CertificateAuthority, name: str | None = None) -> x509.Certificate:
    """Make a new CA and issue from it from now on; the current one is retired.

    Raises:
        PkiError: ``rotation_under_way``: a retired CA is still trusted (finish first).
    """
    if ca.retired:
        raise PkiError("rotation_under_way", "finish the rotation under way first")
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    key = ec.generate_private_key(ec.SECP256R1())
    name = name or f"edgefleet hub CA {now:%Y-%m-%d %H%M%S}"  # a new name: no mix-up
    cert = self_signed_ca(key, name, now - CLOCK_SKEW, now + CA_VALIDITY)
    ca.rotate(key, cert)
    return cert


def devices_behind(ca: CertificateAuthority) -> list[str]:
    """Devices with a live certificate but none from the current CA, sorted."""
    now = dt.datetime.now(dt.UTC)
    current = cadir.ca_id(ca.certificate)
    behind = []
    for device_id in ca.device_ids():
        live = [
            h for h in ca.device_history(device_id) if not h["revoked"] and h["not_after"] > now
        ]
        if live and all(h["ca"] != current for h in live):
            behind.append(device_id)
    return sorted(behind)


def prompt(ca: CertificateAuthority, publish: Callable[[str, bytes], None], ts: float) -> int:
    """Ask every device still on a retired CA to renew now; how many were asked."""
    behind = devices_behind(ca)
    hint = protocol.encode("renew_hint", {"reason": "ca_rotation"}, ts=ts)
    for device_id in behind:
        publish(protocol.topic(device_id, "cert"), hint)
    return len(behind)


def finish(ca: CertificateAuthority, *, force: bool = False) -> list[x509.Certificate]:
    """Drop the retired CAs; the caller then re-issues the broker's server certificate
    and writes its trust (hub/transport/brokercert.py ``finish_ca_rotation``).

    Raises:
        PkiError: ``devices_behind``, naming them, unless ``force`` (they must re-enrol).
    """
    if not force:
        check_none_behind(ca)
    return ca.drop_retired()


def check_none_behind(ca: CertificateAuthority) -> None:
    """Refuse while a device is still on a retired CA.

    Raises:
        PkiError: ``devices_behind``, naming them.
    """
    behind = devices_behind(ca)
    if behind:
        raise PkiError(
            "devices_behind",
            f"{len(behind)} device(s) still on the old CA: {', '.join(behind[:10])}; prompt"
            " them to renew, or re-enrol them after finishing with force",
        )
