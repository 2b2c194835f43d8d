"""Views of the hub's CA and its broker's server certificate, and what a rotation did
(hub/api/routes/certificates.py, hub/transport/rotations.py)."""

from __future__ import annotations

from hub.api.views.base import View

__all__ = [
    "BrokerCertificate",
    "BrokerRenewal",
    "CaFinish",
    "CaPrompt",
    "CaRotation",
    "CaStatus",
    "CaView",
    "CertificateView",
]


class CertificateView(View):
    subject: str
    issuer: str
    serial: str  # hex
    not_before: str  # ISO 8601, UTC
    not_after: str


class CaView(CertificateView):
    id: str  # the subject key identifier, hex: how the ledger names an issuer


class BrokerCertificate(CertificateView):
    due: bool  # past 2/3 of its lifetime: the leader's timer re-issues it
    path: str


class CaStatus(View):
    ca: CaView  # the CA issuing now
    retired: list[CaView]  # still trusted while a rotation is under way
    devices_behind: list[str]  # live certificates from a retired CA only
    broker_certificate: BrokerCertificate | None  # None: no TLS broker configured


class CaRotation(View):
    ca: CaView  # the new CA
    retired: list[CaView]
    prompted: int  # devices asked to renew now
    broker: str  # what the broker reload did, in words


class CaPrompt(View):
    prompted: int
    devices_behind: list[str]


class CaFinish(View):
    ca: CaView
    dropped: list[CaView]  # the retired CAs, their keys deleted
    broker_certificate: CertificateView  # issued by the new CA
    left_behind: list[str]  # devices that must be re-enrolled (force)
    broker: str


class BrokerRenewal(View):
    certificate: CertificateView
    broker: str
