"""The operator's CA and broker-certificate rotations on the running hub (ADR 0035,
docs/operations.md "Certificates"): what the admin API (hub/api/routes/certificates.py)
and the leader's maintenance timer call.

The steps are hub/trust/ca_rotation.py's and hub/transport/brokercert.py's; this module
finds the broker's files in the hub's ``broker_tls_dir`` (what ``edgefleet broker config``
wrote), reloads the broker the way the hub reloads it for a CRL (``--broker-reload``,
hub/trust/identities.py ``publish_crl``), and says in words what it did.

Only the leader runs them: it is the process that answers renewals (one ledger writer,
ADR 0035) and so the one whose CA must be the rotated one; another replica refuses with
``not_leader`` (and is restarted after ``begin`` and ``finish`` to read the new CA).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography import x509

from hub.store.tables import AuditRecord, session
from hub.transport import brokercert
from hub.transport.brokerconf import BrokerFiles
from hub.trust import ca_rotation, cadir
from hub.trust.identities import Identities
from hub.trust.pki import HUB_IDENTITY, PkiError

__all__ = ["Rotations", "broker_files", "certificate_view"]

log = logging.getLogger(__name__)

Publish = Callable[[str, bytes], None]


def broker_files(tls_dir: Path) -> BrokerFiles:
    """The broker's TLS files in ``tls_dir``, as ``edgefleet broker config`` named them.

    The names the server certificate carries are read from it (a re-issued one keeps
    them); the listener's port and address are not needed to rotate and are left unset.

    Raises:
        PkiError: ``no_tls_broker``: no server certificate there.
    """
    directory = tls_dir.resolve()
    server_cert = directory / "server.crt"
    try:
        cert = x509.load_pem_x509_certificate(server_cert.read_bytes())
    except (OSError, ValueError) as e:
        raise PkiError("no_tls_broker", f"cannot read {server_cert}: {e}") from e
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = [*san.get_values_for_type(x509.DNSName)]
        names += [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    except x509.ExtensionNotFound:
        names = []
    return BrokerFiles(
        directory=directory,
        config=directory / "mosquitto.conf",
        acl=directory / "acl",
        ca=directory / "ca.crt",
        server_cert=server_cert,
        server_key=directory / "server.key",
        crl=directory / "crl.pem",
        hub_cert=directory / "hub.crt",
        hub_key=directory / "hub.key",
        port=0,  # not read by a rotation
        bind="",
        server_names=tuple(names),
        hub_identity=HUB_IDENTITY,
    )


def certificate_view(cert: x509.Certificate) -> dict[str, Any]:
    """What the operator reads of a certificate."""
    return {
        "subject": cert.subject.rfc4514_string(),
        "issuer": cert.issuer.rfc4514_string(),
        "serial": format(cert.serial_number, "x"),
        "not_before": cert.not_valid_before_utc.isoformat(),
        "not_after": cert.not_valid_after_utc.isoformat(),
    }


def _ca_view(cert: x509.Certificate) -> dict[str, Any]:
    return {"id": cadir.ca_id(cert), **certificate_view(cert)}


class Rotations:
    """The hub's CA and its broker's server certificate, rotated on an operator's word
    or (the server certificate) by the leader's timer when it is due.

    Args:
        identities: the hub's CA and its CRL publication (which reloads the broker).
        tls_dir: the broker's files (None: no TLS broker: every change is refused).
        publish: sends a device a message (the ``renew_hint`` of a CA rotation).
        leading: whether this process is the hub's leader now.
    """

    def __init__(
        self,
        identities: Identities,
        tls_dir: Path | None,
        publish: Publish,
        leading: Callable[[], bool],
    ) -> None:
        self.identities = identities
        self.ca = identities.ca
        self.tls_dir = tls_dir
        self.publish = publish
        self.leading = leading
        self._lock = threading.Lock()  # the timer and the API: one change at a time

    def _files(self) -> BrokerFiles:
        """The broker's files, for a change.

        Raises:
            PkiError: ``not_leader``; ``no_tls_broker``.
        """
        if not self.leading():
            raise PkiError(
                "not_leader",
                "this hub replica is not the leader: send it to the leader (GET /health)",
            )
        if self.tls_dir is None:
            raise PkiError(
                "no_tls_broker",
                "the hub has no TLS broker configured (broker_tls_dir, --broker-tls):"
                " there is no broker certificate or broker trust to change",
            )
        return broker_files(self.tls_dir)

    def _reload(self) -> str:
        """Reload the broker as for a CRL (the CRL is written again too); what happened."""
        self.identities.publish_crl()
        return self.identities.broker_notice

    def status(self) -> dict[str, Any]:
        """The CA, the retired ones, the devices still behind, the broker's certificate."""
        broker: dict[str, Any] | None = None
        if self.tls_dir is not None:
            files = broker_files(self.tls_dir)
            cert = x509.load_pem_x509_certificate(files.server_cert.read_bytes())
            due = brokercert.server_certificate_due(files)
            broker = {**certificate_view(cert), "due": due, "path": str(files.server_cert)}
        return {
            "ca": _ca_view(self.ca.certificate),
            "retired": [_ca_view(cert) for _, cert in self.ca.retired],
            "devices_behind": ca_rotation.devices_behind(self.ca),
            "broker_certificate": broker,
        }

    def renew_broker_certificate(self, days: float = brokercert.SERVER_CERT_DAYS) -> dict[str, Any]:
        """Issue the broker a new server certificate now and reload it.

        Raises:
            PkiError: ``not_leader``; ``no_tls_broker``.
        """
        with self._lock:
            files = self._files()
            issued = brokercert.rotate_server_certificate(self.ca, files, None, days=days)
            notice = self._reload()
        cert = x509.load_pem_x509_certificate(issued.cert_pem)
        log.info("broker server certificate %x issued: %s", issued.serial, notice)
        return {"certificate": certificate_view(cert), "broker": notice}

    def begin(self, name: str | None = None) -> dict[str, Any]:
        """A new CA; the broker trusts both; the devices on the old one are asked to renew.

        Raises:
            PkiError: ``not_leader``; ``no_tls_broker``; ``rotation_under_way``.
        """
        with self._lock:
            files = self._files()
            old = self.ca.certificate
            new = ca_rotation.begin(self.ca, name)
            brokercert.publish_trust(self.ca, files, None)
            notice = self._reload()
            prompted = ca_rotation.prompt(self.ca, self.publish, time.time())
        log.warning("CA rotation begun: %s retired, %d device(s) prompted", old.subject, prompted)
        return {
            "ca": _ca_view(new),
            "retired": [_ca_view(old)],
            "prompted": prompted,
            "broker": notice,
        }

    def prompt(self) -> dict[str, Any]:
        """Ask the devices still on a retired CA to renew now.

        Raises:
            PkiError: ``not_leader``; ``no_tls_broker``; ``no_rotation``.
        """
        with self._lock:
            self._files()
            if not self.ca.retired:
                raise PkiError("no_rotation", "no CA rotation is under way (begin one first)")
            prompted = ca_rotation.prompt(self.ca, self.publish, time.time())
        return {"prompted": prompted, "devices_behind": ca_rotation.devices_behind(self.ca)}

    def finish(self, *, force: bool = False) -> dict[str, Any]:
        """A server certificate from the new CA, the retired CAs dropped, the broker
        reloaded with the new CA alone.

        Raises:
            PkiError: ``not_leader``; ``no_tls_broker``; ``no_rotation``;
                ``devices_behind`` (nothing changed) unless ``force``.
        """
        with self._lock:
            files = self._files()
            if not self.ca.retired:
                raise PkiError("no_rotation", "no CA rotation is under way (begin one first)")
            left = ca_rotation.devices_behind(self.ca)
            dropped = [_ca_view(cert) for _, cert in self.ca.retired]
            issued = brokercert.finish_ca_rotation(self.ca, files, None, force=force)
            notice = self._reload()
        log.warning("CA rotation finished: %d device(s) left behind", len(left))
        cert = x509.load_pem_x509_certificate(issued.cert_pem)
        return {
            "ca": _ca_view(self.ca.certificate),
            "dropped": dropped,
            "broker_certificate": certificate_view(cert),
            "left_behind": left if force else [],
            "broker": notice,
        }

    def refresh(self) -> bool:
        """The leader's timer: re-issue the broker's server certificate once it is due
        (2/3 of its lifetime), log it and audit it (``broker.certificate.renew``)."""
        if self.tls_dir is None or not self.leading():
            return False
        try:
            if not brokercert.server_certificate_due(broker_files(self.tls_dir)):
                return False
        except (PkiError, OSError) as e:  # said each round; the rest of maintenance goes on
            log.error("cannot check the broker's server certificate: %s", e)
            return False
        old = x509.load_pem_x509_certificate((self.tls_dir / "server.crt").read_bytes())
        done = self.renew_broker_certificate()
        log.warning(
            "the broker's server certificate was due (expires %s): re-issued, %s",
            old.not_valid_after_utc.isoformat(),
            done["broker"],
        )
        with session(self.identities.engine) as s:
            s.add(
                AuditRecord(
                    ts=time.time(),
                    actor_name="hub:maintenance",
                    action="broker.certificate.renew",
                    method="TIMER",
                    path=str(self.tls_dir / "server.crt"),
                    target="broker",
                    before={"serial": format(old.serial_number, "x")},
                    after={"serial": done["certificate"]["serial"], "broker": done["broker"]},
                    outcome="ok",
                    status=0,
                    detail=f"due: expires {old.not_valid_after_utc.isoformat()}",
                )
            )
            s.commit()
        return True
