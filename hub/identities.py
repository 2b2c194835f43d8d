"""Device identities on the hub: certificates at enrolment, revocation, the broker's CRL.

A device enrols with its own CSR and gets a client certificate from the hub's CA
(hub/pki.py). Revoking a device revokes every certificate it was issued, records it, and
publishes a new CRL for the broker, then runs the configured reload command (Mosquitto
rereads its CRL on SIGHUP). A CRL does not cut a connection that is already open
(DESIGN §8), so the hub also ignores a revoked device's messages and sends it nothing.
Only re-enrolment with a token bound to that device (``POST /devices/{id}/reenrol``)
lifts a revocation.

Errors::

    PkiError (hub/pki.py)     a CSR that cannot be used (``reason`` says why)
    DeviceRevoked             an unbound token was used for a revoked device id
"""

from __future__ import annotations

import logging
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from sqlalchemy import Engine
from sqlmodel import select

from hub.db import Revocation, session
from hub.pki import CertificateAuthority, IssuedCert
from shared.atomic import write_atomic

log = logging.getLogger(__name__)

CRL_REPUBLISH_S = 86400.0  # seconds between CRL re-issues (each is valid 7 days)
RELOAD_TIMEOUT_S = 10.0  # seconds the broker reload command may take


class DeviceRevoked(Exception):
    """The device id is revoked; only a token bound to it (re-enrolment) may enrol it."""


class Identities:
    """Issues device certificates and keeps the revocation list, in SQL and for the broker.

    Args:
        engine: the hub's database.
        ca: the hub's CA.
        crl_path: where the broker reads its CRL (None: no TLS broker to tell).
        reload_command: run after each CRL write, e.g. ``("systemctl", "reload",
            "mosquitto")`` or ``("kill", "-HUP", "<pid>")``.
    """

    def __init__(
        self,
        engine: Engine,
        ca: CertificateAuthority,
        *,
        crl_path: Path | None = None,
        reload_command: Sequence[str] | None = None,
    ) -> None:
        self.engine = engine
        self.ca = ca
        self.crl_path = crl_path
        self.reload_command = tuple(reload_command or ())
        self._lock = threading.Lock()
        self._crl_written = 0.0
        with session(engine) as s:
            self._revoked = frozenset(s.exec(select(Revocation.device_id)))

    @property
    def revoked(self) -> frozenset[str]:
        return self._revoked

    def check_csr(self, device_id: str, csr_pem: bytes) -> None:
        """Refuse a bad CSR before the enrolment token is used up.

        Raises:
            PkiError: the CSR cannot be used.
        """
        self.ca.check_csr(csr_pem, device_id)

    def issue(self, device_id: str, csr_pem: bytes, *, bound: bool) -> IssuedCert:
        """Issue the device's certificate. A revoked id needs a token ``bound`` to it (a
        re-enrolment), which lifts the revocation.

        Raises:
            DeviceRevoked: the id is revoked and the token was not bound to it.
            PkiError: the CSR cannot be used.
        """
        if device_id in self._revoked and not bound:
            raise DeviceRevoked(
                f"device {device_id} is revoked: an admin must re-enrol it"
                " (POST /devices/{id}/reenrol)"
            )
        cert = self.ca.issue_device(csr_pem, device_id)
        if device_id in self._revoked:
            with self._lock, session(self.engine) as s:
                row = s.get(Revocation, device_id)
                if row is not None:
                    s.delete(row)
                    s.commit()
                self._revoked = self._revoked - {device_id}
            log.warning("device %s re-enrolled: its revocation is lifted", device_id)
        return cert

    def revoke(self, device_id: str, reason: str, by: str | None) -> Revocation:
        """Revoke every certificate of ``device_id`` and tell the broker.

        Raises:
            PkiError: ``bad_reason`` for a reason that is not an x509 CRL reason.
        """
        with self._lock:
            serials = self.ca.serials_for(device_id)
            for serial in serials:
                self.ca.revoke(serial, reason)
            with session(self.engine) as s:
                row = s.get(Revocation, device_id) or Revocation(device_id=device_id)
                row.reason, row.by, row.revoked_at = reason, by, time.time()
                row.serials = sorted({*row.serials, *(format(n, "x") for n in serials)})
                s.add(row)
                s.commit()
                s.refresh(row)
            self._revoked = self._revoked | {device_id}
        self.publish_crl()
        return row

    def publish_crl(self) -> bool:
        """Write a fresh CRL where the broker reads it and run the reload command."""
        if self.crl_path is None:
            return False
        with self._lock:
            write_atomic(self.crl_path, self.ca.crl_pem(), mode=0o644)
            self._crl_written = time.time()
        if not self.reload_command:
            log.warning("CRL written to %s: reload the broker (SIGHUP) to apply it", self.crl_path)
            return True
        try:
            subprocess.run(self.reload_command, check=True, timeout=RELOAD_TIMEOUT_S)
        except (OSError, subprocess.SubprocessError) as e:
            log.error("broker reload %s failed: %s", " ".join(self.reload_command), e)
        return True

    def refresh_crl(self) -> bool:
        """Re-issue the CRL once a day, well before its 7-day validity runs out (an expired
        CRL makes Mosquitto refuse every client, the hub included)."""
        if self.crl_path is None or time.time() - self._crl_written < CRL_REPUBLISH_S:
            return False
        return self.publish_crl()
