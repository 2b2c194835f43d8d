"""The agent renews its client certificate before it expires (ADR 0035, docs/devices.md).

When: at ``renew_fraction`` of the certificate's lifetime, moved by a deterministic
per-device offset within ``renew_spread`` (shared/renewal.py :func:`renew_at`); or at
once when the hub sends a ``renew_hint`` (a CA rotation).

How: a fresh EC P-256 key (``next.key``, mode 0600, written before anything is sent, so
a retry after a restart asks for the same key), a CSR for it, a ``renew_request`` on the
device's ``renew`` topic. The hub answers on ``cert``; the certificate is checked (its key
is ``next.key``, its CN this device, it chains to the CA bundle sent with it) and kept as
``next.crt`` and ``next-ca.crt``. The daemon then reconnects with it; only once the broker
accepted the new certificate are the files promoted (``next.*`` replace ``device.*`` and
``ca.crt``, each rename atomic). A new certificate the broker refuses is dropped and the
old one, still valid, used again. No answer: the request is sent again after
``retry_s``, doubling up to ``RETRY_MAX_S``.

Files in the identity directory (beside agent/identity.py's)::

    next.key      the key being renewed onto (until promoted)
    next.crt      its certificate, not yet proven with the broker
    next-ca.crt   the CA bundle sent with it

A refusal is logged with its reason (shared/renewal.py ``REFUSALS``); ``expired`` stops
the renewals: an admin must re-enrol the device (``POST /devices/{id}/reenrol``, then
``edgefleet agent enrol`` with the token).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from agent.identity import CA_FILE, CERT_FILE, KEY_FILE
from shared import protocol
from shared.atomic import fsync_dir, write_atomic
from shared.renewal import DEFAULT_FRACTION, DEFAULT_SPREAD, renew_at

__all__ = ["NEXT_CA", "NEXT_CERT", "NEXT_KEY", "RETRY_MAX_S", "CertRenewal"]

log = logging.getLogger(__name__)

NEXT_KEY = "next.key"
NEXT_CERT = "next.crt"
NEXT_CA = "next-ca.crt"
RETRY_MAX_S = 3600.0  # seconds: the longest wait between two requests without an answer
SWITCH_TIMEOUT_S = 30.0  # seconds the broker has to accept a new certificate


class CertRenewal:
    """One device's renewal: what to send when, what to do with the answer.

    Args:
        directory: the identity directory (agent/enrol.py ``identity_dir``).
        device_id: this device.
        publish: ``publish(topic, payload)`` at QoS 1 over the device's link.
        fraction, spread: when to renew (shared/renewal.py).
        retry_s: the first wait for an answer before asking again.
        clock: epoch seconds.
    """

    def __init__(
        self,
        directory: Path,
        device_id: str,
        publish: Callable[[str, bytes], None],
        *,
        fraction: float = DEFAULT_FRACTION,
        spread: float = DEFAULT_SPREAD,
        retry_s: float = 60.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.directory = directory
        self.device_id = device_id
        self.publish = publish
        self.fraction, self.spread = fraction, spread
        self.retry_s = retry_s
        self.clock = clock
        self._wait_s = retry_s
        self._next_request = 0.0  # no request before this (a retry's backoff)
        self.stopped_reason: str | None = None  # set by an ``expired`` refusal
        self.switching_since: float | None = None  # connecting with next.crt since then
        self.renewed = 0  # certificates promoted by this process
        self._now = False  # the hub asked for a renewal now (renew_hint)
        self._finish_promotion()

    # ------------------------------------------------------------------ when

    def due_at(self) -> float:
        """When the current certificate is to be renewed (epoch seconds)."""
        cert = _load_cert(self.directory / CERT_FILE)
        return renew_at(
            cert.not_valid_before_utc.timestamp(),
            cert.not_valid_after_utc.timestamp(),
            self.device_id,
            cert.serial_number,
            fraction=self.fraction,
            spread=self.spread,
        )

    @property
    def ready_to_switch(self) -> bool:
        """A new certificate waits to be tried with the broker."""
        return (self.directory / NEXT_CERT).exists() and self.switching_since is None

    def tick(self, connected: bool) -> None:
        """Ask for a new certificate when one is due and no answer is awaited."""
        now = self.clock()
        if not connected or self.stopped_reason or (self.directory / NEXT_CERT).exists():
            return
        if now < max(now if self._now else self.due_at(), self._next_request):
            return
        csr = _csr(self._next_key(), self.device_id)
        self.publish(
            protocol.topic(self.device_id, "renew"),
            protocol.encode("renew_request", {"csr": csr.decode()}, ts=now),
        )
        log.info("asked the hub to renew this device's certificate (next in %.0f s)", self._wait_s)
        self._next_request = now + self._wait_s
        self._wait_s = min(self._wait_s * 2, RETRY_MAX_S)

    # ------------------------------------------------------------------ the answer

    def on_answer(self, payload: bytes) -> bool:
        """Handle a ``renew_answer``; True when a new certificate waits to be tried.

        Raises:
            ProtocolError: not a valid renew_answer (the caller counts and drops it).
        """
        message = protocol.decode(payload, expect=protocol.TOPIC_TYPES["cert"])
        body = message.body
        if message.type == "renew_hint":  # the hub asks for a renewal now (CA rotation)
            log.info("the hub asks for a certificate renewal now (%s)", body["reason"])
            self._now, self._next_request, self._wait_s = True, 0.0, self.retry_s
            return False
        if not body["ok"]:
            return self._refused(str(body.get("reason")), str(body.get("detail", "")))
        key_path = self.directory / NEXT_KEY
        if not key_path.exists():
            log.warning("a renewed certificate arrived, but no renewal is under way: ignored")
            return False
        why = _check(body, _load_key(key_path), self.device_id)
        if why is not None:
            log.error("the hub's renewed certificate is unusable (%s): kept the old one", why)
            self._next_request = self.clock() + self._wait_s
            return False
        write_atomic(self.directory / NEXT_CA, str(body["ca_bundle"]).encode(), mode=0o644)
        write_atomic(self.directory / NEXT_CERT, str(body["certificate"]).encode(), mode=0o644)
        log.info("received a renewed certificate; reconnecting with it")
        return True

    def _refused(self, reason: str, detail: str) -> bool:
        if reason == "expired":
            self.stopped_reason = detail
            log.error(
                "certificate renewal refused (expired): %s; an admin must re-enrol this"
                " device (POST /devices/%s/reenrol, then edgefleet agent enrol)",
                detail,
                self.device_id,
            )
            return False
        if reason == "reused_key":  # a key the hub has seen: make another next time
            (self.directory / NEXT_KEY).unlink(missing_ok=True)
        log.warning("certificate renewal refused (%s): %s; retrying later", reason, detail)
        self._next_request = self.clock() + self._wait_s
        return False

    # ------------------------------------------------------------------ the switch

    def switching(self) -> tuple[Path, Path, Path]:
        """The daemon reconnects now with these (certificate, key, CA bundle)."""
        self.switching_since = self.clock()
        d = self.directory
        return d / NEXT_CERT, d / NEXT_KEY, d / NEXT_CA

    def switch_failed(self, why: str) -> tuple[Path, Path]:
        """The broker did not take the new certificate: drop it, go back to the old one.

        Returns: the old certificate and key, to reconnect with.
        """
        log.error("the broker refused the renewed certificate (%s): back to the old one", why)
        for name in (NEXT_CERT, NEXT_KEY, NEXT_CA):
            (self.directory / name).unlink(missing_ok=True)
        self.switching_since = None
        self._next_request = self.clock() + self._wait_s
        return self.directory / CERT_FILE, self.directory / KEY_FILE

    def switch_overdue(self) -> bool:
        since = self.switching_since
        return since is not None and self.clock() - since > SWITCH_TIMEOUT_S

    def connected(self) -> None:
        """The broker accepted a connection: if it was with the new certificate, it is
        proven: promote it."""
        if self.switching_since is None:
            return
        self.switching_since = None
        d = self.directory
        os.replace(d / NEXT_CA, d / CA_FILE)
        os.replace(d / NEXT_KEY, d / KEY_FILE)  # a crash here: finished at the next start
        os.replace(d / NEXT_CERT, d / CERT_FILE)
        fsync_dir(d)
        self.renewed += 1
        self._wait_s, self._next_request, self._now = self.retry_s, 0.0, False
        log.info("renewed certificate in use (serial %x)", _load_cert(d / CERT_FILE).serial_number)

    def _finish_promotion(self) -> None:
        """A promotion interrupted between its renames: device.key is already the new key."""
        d = self.directory
        if (d / NEXT_CERT).exists() and not (d / NEXT_KEY).exists():
            os.replace(d / NEXT_CERT, d / CERT_FILE)
            fsync_dir(d)

    def _next_key(self) -> ec.EllipticCurvePrivateKey:
        path = self.directory / NEXT_KEY
        if path.exists():
            return _load_key(path)
        key = ec.generate_private_key(ec.SECP256R1())
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        write_atomic(path, pem, mode=0o600)
        return key


def _check(body: object, key: ec.EllipticCurvePrivateKey, device_id: str) -> str | None:
    """Why the certificate in a renew_answer cannot be used, or None."""
    assert isinstance(body, dict)
    try:
        cert = x509.load_pem_x509_certificate(str(body.get("certificate", "")).encode())
        cas = x509.load_pem_x509_certificates(str(body.get("ca_bundle", "")).encode())
    except ValueError as e:
        return f"bad_cert: {e}"
    if cert.not_valid_after_utc <= dt.datetime.now(dt.UTC):
        return "expired"
    if _spki(cert.public_key()) != _spki(key.public_key()):
        return "wrong_key: not the key this device asked for"
    cns = [c.value for c in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    if cns != [device_id]:
        return f"wrong_identity: {cns}"
    for ca in cas:
        try:
            cert.verify_directly_issued_by(ca)
            return None
        except (ValueError, TypeError, InvalidSignature):
            continue
    return "wrong_ca: not signed by a CA of the bundle sent with it"


def _csr(key: ec.EllipticCurvePrivateKey, device_id: str) -> bytes:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, device_id)])
    csr = x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, hashes.SHA256())
    return csr.public_bytes(serialization.Encoding.PEM)


def _load_key(path: Path) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{path} is not an EC private key")
    return key


def _load_cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _spki(public_key: object) -> bytes:
    if not isinstance(public_key, ec.EllipticCurvePublicKey):
        return b""
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
