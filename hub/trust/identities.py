"""Device identities on the hub: certificates at enrolment, revocation, the broker's CRL.

A device enrols with its own CSR and gets a client certificate from the hub's CA
(hub/trust/pki.py). Revoking a device revokes every certificate it was issued, records it, and
publishes a new CRL for the broker, then runs the configured reload command (Mosquitto
rereads its CRL on SIGHUP). A CRL does not cut a connection that is already open
(DESIGN §8): the broker's connections (hub/transport/dynsec.py, ADR 0036) are told to cut
it and deny it every topic, and the hub ignores its messages and sends it nothing.
A device id that has a certificate (or a revocation) is taken: only an admin's
re-enrolment token for it (``POST /devices/{id}/reenrol``) may give it a new identity,
which supersedes its old certificates or lifts its revocation.

Errors::

    PkiError (hub/trust/pki.py)     a CSR or device id that cannot be used (``reason``
                                    says why: ``reserved_identity`` for the hub's names)
    DeviceTaken               the id is enrolled or revoked and the token is no re-enrolment
      DeviceRevoked           … it is revoked
"""

from __future__ import annotations

import logging
import subprocess
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Protocol

from sqlalchemy import Engine
from sqlmodel import select

from hub.store.tables import Revocation, session
from hub.trust.pki import CertificateAuthority, IssuedCert
from hub.trust.renewal import DEVICE_DAYS, Renewals
from shared.atomic import write_atomic

log = logging.getLogger(__name__)

CRL_REPUBLISH_S = 86400.0  # seconds between CRL re-issues (each is valid 7 days)
RELOAD_TIMEOUT_S = 10.0  # seconds the broker reload command may take


class BrokerConnections(Protocol):
    """What the broker does with a device's open connection (hub/transport/dynsec.py).
    Each call answers a sentence for the operator; none raises."""

    def cut(self, device_id: str) -> str: ...

    def restore(self, device_id: str) -> str: ...

    def sync(self, revoked: Iterable[str]) -> str: ...


class DeviceTaken(Exception):
    """The device id already has an identity; only an admin's re-enrolment may replace it."""


class DeviceRevoked(DeviceTaken):
    """The device id is revoked; only an admin's re-enrolment may enrol it again."""


class Identities:
    """Issues device certificates and keeps the revocation list, in SQL and for the broker.

    Args:
        engine: the hub's database.
        ca: the hub's CA.
        crl_path: where the broker reads its CRL (None: no TLS broker to tell).
        reload_command: run after each CRL write, e.g. ``("systemctl", "reload",
            "mosquitto")`` or ``("kill", "-HUP", "<pid>")``.
        connections: cuts a revoked device's open connection (None: nothing can).
        device_days: the lifetime of a device certificate, at enrolment and renewal.
    """

    def __init__(
        self,
        engine: Engine,
        ca: CertificateAuthority,
        *,
        crl_path: Path | None = None,
        reload_command: Sequence[str] | None = None,
        reread_s: float | None = None,
        connections: BrokerConnections | None = None,
        device_days: float = DEVICE_DAYS,
    ) -> None:
        self.engine = engine
        self.device_days = device_days  # lifetime of device certificates
        # devices renew over their MQTT link (hub/trust/renewal.py)
        self.renewals = Renewals(ca, engine, days=device_days)
        # hub replicas: read the revocations again when older than this (another replica
        # may have revoked a device); None: this process makes every change
        self.reread_s = reread_s
        self.ca = ca
        self.crl_path = crl_path
        self.reload_command = tuple(reload_command or ())
        self._lock = threading.Lock()
        self._crl_written = 0.0
        # what the last CRL publication did, for the operator who revoked a device
        self.broker_notice = "no TLS broker configured: nothing to tell"
        self.connections = connections
        # what the broker did with the last revoked device's open connection
        self.connection_notice = "not disconnected: no broker to tell"
        self._read_revoked()

    def _read_revoked(self) -> None:
        self._read_at = time.monotonic()
        with session(self.engine) as s:
            self._revoked = frozenset(s.exec(select(Revocation.device_id)))

    @property
    def revoked(self) -> frozenset[str]:
        if self.reread_s is not None and time.monotonic() - self._read_at > self.reread_s:
            self._read_revoked()
        return self._revoked

    def check_csr(self, device_id: str, csr_pem: bytes) -> None:
        """Refuse a bad CSR before the enrolment token is used up.

        Raises:
            PkiError: the CSR cannot be used.
        """
        self.ca.check_csr(csr_pem, device_id)

    def taken(self, device_id: str) -> bool:
        """Whether the id has been issued a certificate or is revoked."""
        return device_id in self._revoked or bool(self.ca.serials_for(device_id))

    def check_enrolment(self, device_id: str, *, reenrol: bool) -> None:
        """Refuse to enrol a taken id without a re-enrolment token (before it is used up).

        Raises:
            PkiError: ``reserved_identity``: the id is a name of the hub's (whatever the
                token, a re-enrolment too).
            DeviceRevoked: the id is revoked.
            DeviceTaken: the id is enrolled.
        """
        self.ca.check_device_name(device_id)
        if reenrol:
            return
        how = "POST /devices/{id}/reenrol"
        if device_id in self._revoked:
            raise DeviceRevoked(f"device {device_id} is revoked: an admin must re-enrol it ({how})")
        if self.ca.serials_for(device_id):
            raise DeviceTaken(
                f"device {device_id} is already enrolled: an admin must re-enrol it ({how})"
            )

    def issue(self, device_id: str, csr_pem: bytes, *, reenrol: bool) -> IssuedCert:
        """Issue the device's certificate. A taken id needs a re-enrolment token: its old
        certificates are then revoked as superseded, and a revocation is lifted.

        Raises:
            DeviceTaken / DeviceRevoked: the id is taken and this is no re-enrolment.
            PkiError: the CSR cannot be used.
        """
        self.check_enrolment(device_id, reenrol=reenrol)
        old = self.ca.serials_for(device_id)
        cert = self.ca.issue_device(csr_pem, device_id, days=self.device_days)
        if old and device_id not in self._revoked:
            with self._lock:
                for serial in old:  # a key that may have leaked must not connect any more
                    self.ca.revoke(serial, "superseded")
            self.publish_crl()
            log.warning(
                "device %s re-enrolled: %d old certificate(s) superseded", device_id, len(old)
            )
        if device_id in self._revoked:
            with self._lock, session(self.engine) as s:
                row = s.get(Revocation, device_id)
                if row is not None:
                    s.delete(row)
                    s.commit()
                self._revoked = self._revoked - {device_id}
            log.warning("device %s re-enrolled: its revocation is lifted", device_id)
            if self.connections is not None:  # the broker denies it every topic until then
                log.warning("device %s: %s", device_id, self.connections.restore(device_id))
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
        if self.connections is not None:
            self.connection_notice = self.connections.cut(device_id)
        return row

    def sync_connections(self) -> str | None:
        """Make the broker's denials the revocations (a command it missed, a state file it
        lost); what it did, or None with nothing to tell."""
        if self.connections is None:
            return None
        return self.connections.sync(self.revoked)

    def publish_crl(self) -> bool:
        """Write a fresh CRL where the broker reads it and run the reload command.

        ``broker_notice`` says what happened, in words for the operator: reloaded, the
        reload left to them (no command configured), or the reload failed.
        """
        if self.crl_path is None:
            self.broker_notice = "no TLS broker configured: nothing to tell"
            return False
        with self._lock:
            write_atomic(self.crl_path, self.ca.crl_pem(), mode=0o644)
            self._crl_written = time.time()
        if not self.reload_command:
            self.broker_notice = (
                f"CRL written to {self.crl_path}; no reload command is configured"
                " (--broker-reload): reload the broker (SIGHUP) to apply it"
            )
            log.warning("%s", self.broker_notice)
            return True
        command = " ".join(self.reload_command)
        try:
            subprocess.run(self.reload_command, check=True, timeout=RELOAD_TIMEOUT_S)
        except (OSError, subprocess.SubprocessError) as e:
            self.broker_notice = f"CRL written, but the broker reload ({command}) failed: {e}"
            log.error("%s", self.broker_notice)
            return True
        self.broker_notice = f"CRL written and the broker reloaded ({command})"
        return True

    def refresh_crl(self) -> bool:
        """Re-issue the CRL once a day, well before its 7-day validity runs out (an expired
        CRL makes Mosquitto refuse every client, the hub included)."""
        if self.crl_path is None or time.time() - self._crl_written < CRL_REPUBLISH_S:
            return False
        return self.publish_crl()
