"""Device certificate renewal on the hub: check a device's request, issue, record, audit.

A device renews over its own mTLS link (shared/renewal.py, ADR 0035): the broker's ACL
lets only the holder of device ``{id}``'s certificate write ``ef/v1/dev/{id}/renew``, so
the topic names who asks. The request carries a CSR for a fresh key; the hub checks it,
issues a certificate for that key (recorded in the CA's ledger with ``via = renewal``),
writes an audit record, and answers on ``ef/v1/dev/{id}/cert``. The device's earlier
certificates stay valid until they expire: nothing is revoked, so a device whose answer
is lost keeps working and asks again.

What is refused (the ``reason`` sent back, logged, audited as ``denied``):

- ``bad_csr``, ``bad_signature``, ``weak_key``: as at enrolment (hub/trust/csr.py);
- ``identity_mismatch``: the CSR's CN is not the id of the topic it came on (or names one
  of the hub's own services);
- ``expired``: the device holds no certificate that is both unexpired and unrevoked (a
  connection that outlived its certificate): the way back is re-enrolment with an admin's
  token (``POST /devices/{id}/reenrol``);
- ``reused_key``: the CSR's key is the key of any certificate this device was issued
  before, the one it connects with included. One exception makes retries safe: the key of
  the device's newest certificate, when a renewal issued it, gets that same certificate
  again (its answer was lost);
- ``too_soon``: a new key less than :attr:`Renewals.min_interval_s` after this device's
  last renewal (a looping device cannot fill the ledger); the device retries later. Not
  while the device's newest certificate is from a CA a rotation retired.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import Engine

from hub.store.tables import AuditRecord, session
from hub.trust import cadir
from hub.trust.csr import key_id, parse_csr
from hub.trust.pki import CertificateAuthority, PkiError
from shared import protocol
from shared.protocol import Message

__all__ = ["DEVICE_DAYS", "MIN_INTERVAL_S", "Renewals"]

log = logging.getLogger(__name__)

DEVICE_DAYS = 365.0  # days a renewed device certificate is valid, as at enrolment
MIN_INTERVAL_S = 3600.0  # seconds between two renewals of one device with different keys
_IDENTITY_REASONS = frozenset({"identity_mismatch", "bad_identity", "reserved_identity"})


class Renewals:
    """Answers devices' renewal requests (the ``renew`` topic, hub/transport/inbound.py).

    Args:
        ca: the hub's CA: it checks, issues and records.
        engine: the hub's database, for the audit log (None: no audit, in unit tests).
        days: the lifetime of a renewed certificate (fractions of a day in tests).
        min_interval_s: see the module docstring (None: :data:`MIN_INTERVAL_S`, or a
            tenth of a lifetime shorter than 10 hours).
        clock: epoch seconds (the audit records' time).
    """

    def __init__(
        self,
        ca: CertificateAuthority,
        engine: Engine | None,
        *,
        days: float = DEVICE_DAYS,
        min_interval_s: float | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.ca = ca
        self.engine = engine
        self.days = days
        # default: an hour, or a tenth of a short lifetime (tests)
        self.min_interval_s = (
            min(MIN_INTERVAL_S, days * 86400 / 10) if min_interval_s is None else min_interval_s
        )
        self.clock = clock

    def answer(self, device_id: str, message: Message) -> bytes:
        """The ``renew_answer`` (encoded) to one ``renew_request`` of ``device_id``."""
        body: dict[str, Any]
        try:
            cert_pem, serial = self._renew(device_id, message.body["csr"].encode())
        except PkiError as e:
            reason = "identity_mismatch" if e.reason in _IDENTITY_REASONS else e.reason
            log.warning("refused %s's certificate renewal (%s): %s", device_id, reason, e.detail)
            self._audit(device_id, "denied", f"{reason}: {e.detail}", None)
            body = {"request": message.id, "ok": False, "reason": reason, "detail": e.detail}
        else:
            self._audit(device_id, "ok", None, {"serial": format(serial, "x")})
            log.info("renewed %s's certificate: serial %x", device_id, serial)
            body = {
                "request": message.id,
                "ok": True,
                "certificate": cert_pem.decode(),
                "ca_bundle": self.ca.trust_pem.decode(),
            }
        return protocol.encode("renew_answer", body, ts=self.clock())

    def _renew(self, device_id: str, csr_pem: bytes) -> tuple[bytes, int]:
        public_key = self.ca.check_csr(csr_pem, device_id)
        kid = key_id(parse_csr(csr_pem).public_key())
        now = dt.datetime.now(dt.UTC)
        history = self.ca.device_history(device_id)
        valid = [h for h in history if not h["revoked"] and h["not_after"] > now]
        if not valid:
            raise PkiError(
                "expired",
                f"{device_id} holds no unexpired, unrevoked certificate: an admin must"
                f" re-enrol it (POST /devices/{device_id}/reenrol)",
            )
        newest = valid[-1]
        if newest["key"] == kid and newest["via"] == "renewal":
            pem = self.ca.issued_pem(newest["serial"])
            if pem is not None:  # a retry whose answer was lost: the same certificate
                return pem, newest["serial"]
        for h in history:
            if h["key"] == kid:
                raise PkiError(
                    "reused_key",
                    f"the key of certificate {h['serial']:x} ({h['via']}); a renewal needs a"
                    " key this device never had a certificate for",
                )
        last = [h for h in valid if h["via"] == "renewal"]
        moving = newest["ca"] != cadir.ca_id(self.ca.certificate)  # a CA rotation
        if last and not moving and _age_s(last[-1]["issued_at"], now) < self.min_interval_s:
            raise PkiError(
                "too_soon",
                f"renewed {_age_s(last[-1]['issued_at'], now):.0f} s ago; at most one renewal"
                f" per {self.min_interval_s:.0f} s: retry with the key of that request",
            )
        del public_key  # checked; issue_device checks the CSR again under the CA's lock
        issued = self.ca.issue_device(csr_pem, device_id, days=self.days, via="renewal")
        return issued.cert_pem, issued.serial

    def _audit(
        self, device_id: str, outcome: str, detail: str | None, after: dict[str, Any] | None
    ) -> None:
        if self.engine is None:
            return
        with session(self.engine) as s:
            s.add(
                AuditRecord(
                    ts=self.clock(),
                    actor_name=f"device:{device_id}",
                    action="device.renew",
                    method="MQTT",
                    path=protocol.topic(device_id, "renew"),
                    target=device_id,
                    after=after,
                    outcome=outcome,
                    status=0,
                    detail=detail,
                )
            )
            s.commit()


def _age_s(issued_at: str, now: dt.datetime) -> float:
    if not issued_at:
        return float("inf")
    return (now - dt.datetime.fromisoformat(issued_at)).total_seconds()
