"""The hub's certificate authority: device identities for MQTT over TLS (DESIGN §4).

A device makes its own key pair and sends a certificate signing request (CSR); the hub
checks it and issues a client certificate whose common name is the device id. The broker
(hub/transport/brokerconf.py) trusts only this CA, takes the certificate's CN as the MQTT username
and lets device ``{id}`` touch only ``ef/v1/dev/{id}/...``. The hub's own MQTT client and
the broker's server certificate are issued here too (:meth:`CertificateAuthority.issue_service`).

Files in the CA's directory (mode 0700)::

    ca.key        the CA's private key (EC P-256, PKCS#8 PEM, mode 0600)
    ca.crt        the self-signed CA certificate (10 years)
    ledger.json   every certificate issued and every serial revoked (atomic replace)

Keys: ECDSA P-256 with SHA-256 everywhere. Mosquitto 2.0.11 on OpenSSL 3 also accepts
Ed25519 client certificates, so a device CSR may carry an Ed25519 key; RSA and other
curves are refused (``weak_key``) to keep one small, fast key type on the devices.

Exceptions::

    PkiError(reason, detail)
        bad_csr             the CSR does not parse, is too long, or has no single CN
        bad_signature       the CSR is not signed by the key it carries (tampered)
        identity_mismatch   the CSR's CN is not the device id being enrolled
        bad_identity        the device id is not a valid protocol device id
        reserved_identity   the name belongs to the hub, the broker or another service:
                            every name starting ``edgefleet-`` and every service name issued
        identity_held       a service certificate asked for a name a device holds
        weak_key            the key is not EC P-256 (or Ed25519)
        bad_reason          an unknown revocation reason
        bad_ca              the CA directory is incomplete or its files do not match
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from hub.trust import cadir
from hub.trust.csr import check_key, key_id, key_pem, parse_csr, public_der, single_cn
from hub.trust.pki_error import PkiError
from hub.trust.profiles import client_extensions, self_signed_ca, server_extensions
from hub.trust.sharing import SharedFileLock
from shared.atomic import write_atomic
from shared.protocol import is_device_id

__all__ = [
    "BROKER_IDENTITY",
    "HUB_IDENTITY",
    "SERVICE_PREFIX",
    "CertificateAuthority",
    "IssuedCert",
    "PkiError",
    "RevokedCert",
    "is_service_name",
]

HUB_IDENTITY = "edgefleet-hub"  # the CN (and so the MQTT username) of the hub's client
BROKER_IDENTITY = "edgefleet-broker"  # the CN of the broker's server certificate
RESERVED_IDENTITIES = frozenset({HUB_IDENTITY, BROKER_IDENTITY})
# Every name the hub or `edgefleet broker config` issues starts with this (the hub, the
# broker, the ingest workers ``edgefleet-ingest-N``); the ACL gives those names rights over
# other devices' topics, so no device may enrol under any of them, now or later.
SERVICE_PREFIX = "edgefleet-"

CA_VALIDITY = dt.timedelta(days=3650)
CLOCK_SKEW = dt.timedelta(minutes=5)  # not_before is back-dated by this much
CRL_VALIDITY = dt.timedelta(days=7)  # Mosquitto refuses every client once the CRL expires

_REVOCATION_REASONS = cadir.REVOCATION_REASONS


@dataclass(frozen=True)
class IssuedCert:
    """A certificate the CA signed."""

    serial: int
    cert_pem: bytes
    not_after: dt.datetime  # UTC
    subject: str  # the common name: a device id or a service name


@dataclass(frozen=True)
class RevokedCert:
    """One entry of the revocation ledger."""

    serial: int
    reason: str  # a name of cryptography's x509.ReasonFlags, e.g. "key_compromise"
    revoked_at: dt.datetime  # UTC
    subject: str | None  # the CN it was issued to, when the CA issued it


class CertificateAuthority:
    """The hub's CA: issues device and service certificates, keeps the revocation list.

    Thread-safe: issuing and revoking take one lock, and the ledger is replaced
    atomically on every change.
    """

    def __init__(
        self, directory: Path, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate
    ) -> None:
        self.directory = directory
        self._key = key
        self._cert = cert
        self._ledger_path = directory / "ledger.json"
        self._ledger = cadir.load_ledger(self._ledger_path)
        # CAs a rotation retired: still trusted, still signing CRLs (hub/trust/cadir.py)
        self.retired: list[cadir.Authority] = cadir.load_retired(directory)
        # hub replicas share the ledger: :meth:`share` makes each change cross-process
        self._lock = SharedFileLock(self._ledger_path, self._reload_ledger)

    def share(self) -> None:
        """Hub replicas share this directory: lock the ledger across processes, and read
        it again before use when another replica changed it (ADR 0032)."""
        self._lock.shared = True

    def _reload_ledger(self) -> None:
        self._ledger = cadir.load_ledger(self._ledger_path)

    # ------------------------------------------------------------------ opening

    @classmethod
    def open_or_init(
        cls, directory: Path, *, name: str = "edgefleet hub CA"
    ) -> CertificateAuthority:
        """Open the CA in ``directory``, creating its key, certificate and ledger if absent.

        Raises:
            PkiError: ``bad_ca`` when only some of its files exist or they do not match.
        """
        directory = Path(directory)
        key_path, cert_path = directory / "ca.key", directory / "ca.crt"
        if not key_path.exists() and not cert_path.exists():
            directory.mkdir(parents=True, exist_ok=True)
            os.chmod(directory, 0o700)
            key = ec.generate_private_key(ec.SECP256R1())
            now = _now()
            cert = self_signed_ca(key, name, now - CLOCK_SKEW, now + CA_VALIDITY)
            write_atomic(key_path, key_pem(key), mode=0o600)
            write_atomic(cert_path, cert.public_bytes(serialization.Encoding.PEM), mode=0o644)
            ca = cls(directory, key, cert)
            with ca._lock:
                ca._save_ledger()
            return ca
        cadir.finish_rotation_write(directory)  # a rotation cut short between two renames
        try:
            loaded = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        except (OSError, ValueError) as e:
            raise PkiError("bad_ca", f"cannot read the CA in {directory}: {e}") from e
        if not isinstance(loaded, ec.EllipticCurvePrivateKey) or public_der(
            loaded.public_key()
        ) != public_der(cert.public_key()):
            raise PkiError("bad_ca", f"{key_path} is not the key of {cert_path}")
        return cls(directory, loaded, cert)

    @property
    def ca_pem(self) -> bytes:
        """The CA certificate (PEM): what the broker and the devices trust."""
        return self._cert.public_bytes(serialization.Encoding.PEM)

    @property
    def certificate(self) -> x509.Certificate:
        return self._cert

    # ------------------------------------------------------------------ issuing

    def issue_device(
        self,
        csr_pem: bytes,
        device_id: str,
        *,
        days: float = 365,
        via: str = "enrol",
    ) -> IssuedCert:
        """Check a device's CSR and issue its client certificate (CN = ``device_id``).

        Args:
            days: its lifetime (a fraction of a day in tests of renewal).
            via: how it was asked for, kept in the ledger: ``enrol`` or ``renewal``.

        Raises:
            PkiError: as :meth:`check_csr`.
        """
        public_key = self.check_csr(csr_pem, device_id)
        with self._lock:
            return self._issue(
                public_key, device_id, days, client_extensions(), kind="device", via=via
            )

    def issued_pem(self, serial: int) -> bytes | None:
        """The PEM of a certificate a renewal issued (None for others: not kept)."""
        with self._lock:
            pem = self._ledger["issued"].get(str(serial), {}).get("pem")
        return None if pem is None else str(pem).encode()

    @property
    def trust_pem(self) -> bytes:
        """Every CA certificate a device and the broker must trust now (PEM): this CA and
        the retired ones of a rotation under way."""
        pems = [c.public_bytes(serialization.Encoding.PEM) for _, c in self.retired]
        return b"".join([self.ca_pem, *pems])

    def rotate(self, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> None:
        """Issue from now on with ``key``/``cert``; the current CA is retired, still
        trusted (hub/trust/ca_rotation.py checks the new pair first)."""
        with self._lock:
            cadir.retire(self.directory, (self._key, self._cert))
            write_atomic(self.directory / "ca.key.new", key_pem(key), mode=0o600)
            write_atomic(self.directory / "ca.crt", cert.public_bytes(serialization.Encoding.PEM))
            os.replace(self.directory / "ca.key.new", self.directory / "ca.key")
            self.retired = [*self.retired, (self._key, self._cert)]
            self._key, self._cert = key, cert

    def drop_retired(self) -> list[x509.Certificate]:
        """Stop trusting the retired CAs (their keys are deleted); what was dropped."""
        with self._lock:
            dropped = [c for _, c in self.retired]
            for cert in dropped:
                cadir.drop_retired(self.directory, cert)
            self.retired = []
        return dropped

    def device_ids(self) -> set[str]:
        """Every subject a device certificate was issued to."""
        with self._lock:
            issued = self._ledger["issued"].values()
            return {e["subject"] for e in issued if e.get("kind", "device") == "device"}

    def device_history(self, subject: str) -> list[dict[str, Any]]:
        """Every device certificate issued to ``subject``, oldest first: ``serial``,
        ``not_after`` (datetime), ``key`` (hub/trust/csr.py ``key_id``; None in ledgers
        older than renewal), ``via``, ``revoked`` (bool)."""
        with self._lock:
            services = set(self._ledger["services"])
            rows = [
                {
                    "serial": int(serial),
                    "not_after": dt.datetime.fromisoformat(entry["not_after"]),
                    "issued_at": entry.get("issued_at", ""),
                    "key": entry.get("key"),
                    "via": entry.get("via", "enrol"),
                    "ca": entry.get("ca"),
                    "revoked": serial in self._ledger["revoked"],
                }
                for serial, entry in self._ledger["issued"].items()
                if entry["subject"] == subject
                and entry.get("kind", "service" if subject in services else "device") == "device"
            ]
        return sorted(rows, key=lambda r: (r["issued_at"], r["not_after"]))

    def check_csr(self, csr_pem: bytes, device_id: str) -> Any:
        """Check a device's CSR without issuing anything; its public key.

        Raises:
            PkiError: ``bad_csr``, ``bad_signature``, ``identity_mismatch``,
                ``bad_identity``, ``reserved_identity`` or ``weak_key``.
        """
        if not is_device_id(device_id):
            raise PkiError("bad_identity", f"{device_id!r} is not a valid device id")
        csr = parse_csr(csr_pem)
        if not csr.is_signature_valid:
            raise PkiError("bad_signature", "the CSR is not signed by the key it carries")
        cn = single_cn(csr.subject)
        if cn != device_id:
            raise PkiError("identity_mismatch", f"CSR is for {cn!r}, enrolling {device_id!r}")
        public_key = csr.public_key()
        check_key(public_key)
        self.check_device_name(device_id)
        return public_key

    def check_device_name(self, device_id: str) -> None:
        """Refuse a device id that is, or may one day be, a name of the hub's services.

        Raises:
            PkiError: ``reserved_identity``.
        """
        with self._lock:
            issued = device_id in self._ledger["services"]
        if issued or device_id in RESERVED_IDENTITIES or is_service_name(device_id):
            raise PkiError(
                "reserved_identity",
                f"{device_id!r} is a name of the hub's: names starting {SERVICE_PREFIX!r}"
                " and every service name are reserved for the hub's own identities",
            )

    def check_service_names(self, names: Sequence[str]) -> None:
        """Refuse to issue service certificates for names a device holds.

        A device enrolled under such a name before it was reserved (an older hub) would
        get the service's rights in the broker's ACL the moment the service is configured.

        Raises:
            PkiError: ``identity_held``, naming the devices and how to free the names.
        """
        held = {name: self.device_serials(name) for name in names}
        held = {name: serials for name, serials in held.items() if serials}
        if not held:
            return
        which = ", ".join(
            f"{name} (certificate serial {', '.join(format(n, 'x') for n in serials)})"
            for name, serials in sorted(held.items())
        )
        how = " and ".join(f"POST /devices/{name}/revoke" for name in sorted(held))
        raise PkiError(
            "identity_held",
            f"a device holds {which}: revoke it on the hub's API ({how}), restart the"
            " broker, then run this again; or ask for fewer service names (--ingest-workers)",
        )

    def device_serials(self, subject: str) -> list[int]:
        """Serials of the unrevoked, unexpired device certificates issued to ``subject``.

        Ledgers written before certificates recorded their kind: a certificate whose
        subject was never issued as a service is a device's.
        """
        now = _now()
        with self._lock:
            services = set(self._ledger["services"])
            return [
                int(serial)
                for serial, entry in self._ledger["issued"].items()
                if entry["subject"] == subject
                and entry.get("kind", "service" if subject in services else "device") == "device"
                and serial not in self._ledger["revoked"]
                and dt.datetime.fromisoformat(entry["not_after"]) > now
            ]

    def issue_service(
        self, name: str, *, server_names: Sequence[str] = (), days: float = 825
    ) -> tuple[IssuedCert, bytes]:
        """Issue a certificate and a fresh P-256 key for one of the hub's own services.

        With ``server_names`` it is a TLS server certificate (the broker) whose subject
        alternative names are those DNS names and IP addresses; without, a TLS client
        certificate (the hub's MQTT identity, CN ``edgefleet-hub``). The name is then
        reserved: no device can enrol under it.

        Returns:
            The certificate and its private key (PKCS#8 PEM, unencrypted).
        """
        if not name or "/" in name or "+" in name or "#" in name:
            raise PkiError("bad_identity", f"{name!r} is not a usable service name")
        self.check_service_names([name])
        key = ec.generate_private_key(ec.SECP256R1())
        extensions = server_extensions(server_names) if server_names else client_extensions()
        with self._lock:
            if name not in self._ledger["services"]:
                self._ledger["services"].append(name)
            issued = self._issue(key.public_key(), name, days, extensions, kind="service")
        return issued, key_pem(key)

    def _issue(
        self,
        public_key: Any,
        subject: str,
        days: float,
        extensions: list[tuple[x509.ExtensionType, bool]],
        *,
        kind: str,
        via: str | None = None,
    ) -> IssuedCert:
        now = _now()
        not_after = now + dt.timedelta(days=days)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(self._cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            # back-dated by CLOCK_SKEW, or a tenth of a short lifetime (tests of renewal)
            .not_valid_before(now - min(CLOCK_SKEW, (not_after - now) / 10))
            .not_valid_after(not_after)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(self._authority_key_id(), critical=False)
        )
        for ext, critical in extensions:
            builder = builder.add_extension(ext, critical=critical)
        cert = builder.sign(self._key, hashes.SHA256())
        serial = cert.serial_number
        self._ledger["issued"][str(serial)] = {
            "subject": subject,
            "not_after": not_after.isoformat(),
            "kind": kind,  # "device" or "service"
            "issued_at": dt.datetime.now(dt.UTC).isoformat(),
            "key": key_id(public_key),  # a renewal may not bring back an earlier key
            "ca": cadir.ca_id(self._cert),  # the issuer: a CA rotation tracks who moved
        }
        if via is not None:
            self._ledger["issued"][str(serial)]["via"] = via
        if via == "renewal":  # sent again, unchanged, to a device whose answer was lost
            self._ledger["issued"][str(serial)]["pem"] = cert.public_bytes(
                serialization.Encoding.PEM
            ).decode()
        self._save_ledger()
        return IssuedCert(serial, cert.public_bytes(serialization.Encoding.PEM), not_after, subject)

    # ------------------------------------------------------------------ revocation

    def revoke(self, serial: int, reason: str = "unspecified") -> None:
        """Add ``serial`` to the revocation list (idempotent: a second call changes nothing).

        Publish the change to the broker with hub.brokerconf.reload_crl; that stops new
        connections only, so the hub must also refuse a revoked device's messages.

        Raises:
            PkiError: ``bad_reason`` for a reason not in x509.ReasonFlags (by name).
        """
        if reason not in _REVOCATION_REASONS:
            raise PkiError("bad_reason", f"{reason!r}; one of {sorted(_REVOCATION_REASONS)}")
        with self._lock:
            if str(serial) in self._ledger["revoked"]:
                return
            self._ledger["revoked"][str(serial)] = {
                "reason": reason,
                "revoked_at": _now().isoformat(),
            }
            self._save_ledger()

    def is_revoked(self, serial: int) -> bool:
        with self._lock:
            return str(serial) in self._ledger["revoked"]

    def revoked(self) -> list[RevokedCert]:
        """Every revoked certificate, oldest revocation first."""
        with self._lock:
            entries = [
                RevokedCert(
                    serial=int(serial),
                    reason=entry["reason"],
                    revoked_at=dt.datetime.fromisoformat(entry["revoked_at"]),
                    subject=self._ledger["issued"].get(serial, {}).get("subject"),
                )
                for serial, entry in self._ledger["revoked"].items()
            ]
        return sorted(entries, key=lambda e: e.revoked_at)

    def serials_for(self, subject: str) -> list[int]:
        """The serials of every certificate issued to ``subject`` (to revoke a device)."""
        with self._lock:
            return [int(s) for s, e in self._ledger["issued"].items() if e["subject"] == subject]

    def crl_pem(self, *, validity: dt.timedelta = CRL_VALIDITY) -> bytes:
        """A CRL signed by the CA listing every revoked serial (PEM).

        Its next_update is ``validity`` from now. Mosquitto refuses every TLS client once
        the CRL it loaded has expired, so the hub must rewrite it and signal the broker
        (hub.brokerconf.reload_crl) well before then, e.g. daily.
        """
        now = _now()
        with self._lock:
            self._ledger["crl_number"] += 1
            number = self._ledger["crl_number"]
            self._save_ledger()
            revoked = dict(self._ledger["revoked"])
            authorities = [(self._key, self._cert), *self.retired]
        # one CRL per CA the broker trusts: Mosquitto refuses a client whose CA has none
        return b"".join(
            cadir.crl_pem(a, revoked, number, now=now, skew=CLOCK_SKEW, validity=validity)
            for a in authorities
        )

    # ------------------------------------------------------------------ internals

    def _authority_key_id(self) -> x509.AuthorityKeyIdentifier:
        return cadir.authority_key_id(self._cert)

    def _save_ledger(self) -> None:
        data = json.dumps(self._ledger, indent=1, sort_keys=True).encode()
        write_atomic(self._ledger_path, data, mode=0o600)


# --------------------------------------------------------------------------- helpers


def is_service_name(name: str) -> bool:
    """Whether ``name`` is in the hub's own namespace (any case: ``Edgefleet-hub`` too)."""
    return name.lower().startswith(SERVICE_PREFIX)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)
