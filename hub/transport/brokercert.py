"""The broker's server certificate, re-issued before it expires without a fleet outage.

Measured on Mosquitto 2.0.11 (tests/test_broker_rotation.py, docs/operations.md): on
SIGHUP it reloads its listener's ``certfile``/``keyfile``, ``cafile`` and ``crlfile``;
new connections get the new server certificate, and connections already open stay open
on the old one. Rewriting the files without SIGHUP changes nothing. So a rotation is:
issue a new server certificate from the hub's CA, write key then certificate atomically,
SIGHUP. No device disconnects; each one meets the new certificate at its next connection
(it trusts the CA, not the certificate).
"""

from __future__ import annotations

import datetime as dt
import os
import signal

from cryptography import x509

from hub.transport.brokerconf import BrokerFiles
from hub.trust import ca_rotation
from hub.trust.pki import BROKER_IDENTITY, CertificateAuthority, IssuedCert
from shared.atomic import write_atomic

__all__ = [
    "SERVER_CERT_DAYS",
    "finish_ca_rotation",
    "publish_trust",
    "rotate_server_certificate",
    "server_certificate_due",
]

SERVER_CERT_DAYS = 825.0  # days: the CA's default for service certificates
RENEW_FRACTION = 2 / 3  # of the server certificate's lifetime


def server_certificate_due(files: BrokerFiles, *, fraction: float = RENEW_FRACTION) -> bool:
    """Whether the broker's server certificate has passed ``fraction`` of its lifetime."""
    cert = x509.load_pem_x509_certificate(files.server_cert.read_bytes())
    start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    return dt.datetime.now(dt.UTC) >= start + (end - start) * fraction


def rotate_server_certificate(
    ca: CertificateAuthority, files: BrokerFiles, pid: int | None, *, days: float = SERVER_CERT_DAYS
) -> IssuedCert:
    """Issue the broker a new server certificate (same names), write it, SIGHUP ``pid``.

    Args:
        pid: the Mosquitto process to signal; None: the operator reloads it
            (``systemctl reload mosquitto``).
    """
    issued, key = ca.issue_service(BROKER_IDENTITY, server_names=files.server_names, days=days)
    owner = files.server_key.stat()  # the account Mosquitto reads it as (write_broker_config)
    write_atomic(files.server_key, key, mode=0o600)
    if os.geteuid() == 0:
        os.chown(files.server_key, owner.st_uid, owner.st_gid)
    write_atomic(files.server_cert, issued.cert_pem, mode=0o644)
    if pid is not None:
        os.kill(pid, signal.SIGHUP)
    return issued


def publish_trust(ca: CertificateAuthority, files: BrokerFiles, pid: int | None) -> None:
    """Write the broker's CA bundle (the CA and any a rotation retired) and one CRL per
    CA (Mosquitto refuses a client whose CA has no CRL), then SIGHUP ``pid``."""
    write_atomic(files.ca, ca.trust_pem, mode=0o644)
    write_atomic(files.crl, ca.crl_pem(), mode=0o644)
    if pid is not None:
        os.kill(pid, signal.SIGHUP)


def finish_ca_rotation(
    ca: CertificateAuthority, files: BrokerFiles, pid: int | None, *, force: bool = False
) -> IssuedCert:
    """The last step of a CA rotation (hub/trust/ca_rotation.py): a server certificate
    from the new CA, the retired CAs dropped, the broker's trust rewritten and reloaded.

    Raises:
        PkiError: ``devices_behind`` (nothing changed), unless ``force``.
    """
    if not force:
        ca_rotation.check_none_behind(ca)  # before anything changes
    issued = rotate_server_certificate(ca, files, None)
    ca_rotation.finish(ca, force=True)
    publish_trust(ca, files, pid)
    return issued
