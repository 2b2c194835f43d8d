"""Admin API: devices, their enrolment (one-time tokens, certificates) and revocation."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Body, HTTPException, Query
from pydantic import BaseModel, Field
from sqlmodel import Session, col, select

from hub.api.deps import DENIALS, Audit, HubDep, operation_id
from hub.api.security import Admin, Operator, Viewer
from hub.api.views.devices import (
    DeviceView,
    EnrolResponse,
    EnrolTokenCreated,
    EnrolTokenView,
    RevocationResult,
    RevokedSince,
)
from hub.app import Hub
from hub.store.tables import Device, DeviceTag, EnrolToken, Revocation, session
from hub.trust.enrolment import ENROL_TTL_DEFAULT_S, ENROL_TTL_MAX_S, EnrolRefused
from hub.trust.identities import DeviceRevoked, DeviceTaken
from hub.trust.pki import PkiError
from shared.protocol import is_device_id

router = APIRouter(generate_unique_id_function=operation_id)

ENROL_TOKEN_LIST_MAX = 1000  # tokens per listing


class EnrolRequest(BaseModel):
    device_id: str
    token: str = Field(min_length=1, max_length=256)
    device_class: str | None = Field(None, max_length=64)
    csr: str | None = Field(None, max_length=16384)  # PEM, for the device's own key


# x509 CRL reason names (RFC 5280 §5.3.1), as hub/trust/pki.py takes them
CrlReason = Literal[
    "unspecified",
    "key_compromise",
    "affiliation_changed",
    "superseded",
    "cessation_of_operation",
    "privilege_withdrawn",
]


class RevokeRequest(BaseModel):
    reason: CrlReason = "unspecified"


class EnrolTokenCreate(BaseModel):
    device_id: str | None = None  # bind the token to this device id
    ttl_s: int = Field(ENROL_TTL_DEFAULT_S, ge=1, le=ENROL_TTL_MAX_S)  # seconds


# ---------------------------------------------------------------- devices and enrolment
# Enrolment tokens are operator work: provisioning devices is day-to-day fleet work, and a
# token admits a device to the broker and its models, not to this API. Re-enrolling a known
# device is admin work: whoever holds that token can take over the device's identity.


@router.post(
    "/enrol",
    name="device.enrol",
    response_model=EnrolResponse,
    responses={
        403: {
            "description": "the enrolment token was refused, the device is revoked, or the"
            " id is a name of the hub's (reserved_identity)"
        },
        409: {"description": "the device id is enrolled: re-enrolment is admin work"},
        422: {"description": "a bad device id or CSR"},
    },
)
def enrol(req: EnrolRequest, h: HubDep, audit: Audit) -> EnrolResponse:
    """Trade a one-time enrolment token for the hub's TUF root, the broker's address
    and, for a CSR, a certificate for the device's own key."""
    if not is_device_id(req.device_id):
        raise HTTPException(422, f"invalid device id {req.device_id!r}: letters, digits, _.-")
    audit.target = req.device_id
    before = {
        "enrolled": h.identities.taken(req.device_id),
        "revoked": req.device_id in h.identities.revoked,
    }
    try:
        enrolment = h.enrol_device(req.device_id, req.token, req.device_class, req.csr)
    except EnrolRefused as e:
        audit.actor_keyid = f"enrol-token:{e.token_id}" if e.token_id else None
        raise HTTPException(403, str(e)) from e
    except DeviceRevoked as e:
        raise HTTPException(403, str(e)) from e
    except DeviceTaken as e:
        raise HTTPException(409, str(e)) from e
    except PkiError as e:
        raise _pki_refusal(e) from e
    audit.actor_keyid = f"enrol-token:{enrolment.token_id}"
    audit.change(
        req.device_id,
        before=before,
        after={
            "device_id": req.device_id,
            "device_class": req.device_class,
            "token_id": enrolment.token_id,
            "certificate": enrolment.fields.get("certificate") is not None,
            "enrolled": h.identities.taken(req.device_id),
            "revoked": req.device_id in h.identities.revoked,
        },
    )
    cls = req.device_class
    profile = h.classes.get(cls) if cls is not None and cls in h.classes else None
    return EnrolResponse(
        **enrolment.fields,
        runtime=profile.runtime if profile else None,
        memory_budget_mb=profile.memory_budget_mb if profile else None,
    )


def _pki_refusal(e: PkiError) -> HTTPException:
    """403 for a name of the hub's (no token can grant it), 422 for a bad CSR."""
    if e.reason == "reserved_identity":
        return HTTPException(403, f"enrolment refused: {e}")
    return HTTPException(422, f"certificate request refused: {e}")


@router.get("/devices", name="device.list", response_model=list[DeviceView], responses=DENIALS)
def list_devices(h: HubDep, who: Viewer, status: str | None = None) -> list[DeviceView]:
    """Devices by id; ``status`` filters (``revoked`` lists the revoked ones)."""
    with session(h.engine) as s:
        q = select(Device).order_by(col(Device.id))
        if status is not None and status != "revoked":
            q = q.where(Device.status == status)
        views = _views(s, list(s.exec(q)))
    if status is None:
        return views
    return [v for v in views if (v.status == "revoked") == (status == "revoked")]


@router.get("/devices/{device_id}", name="device.get", response_model=DeviceView, responses=DENIALS)
def get_device(device_id: str, h: HubDep, who: Viewer) -> DeviceView:
    dev = _device(h, device_id)
    with session(h.engine) as s:
        return _views(s, [dev])[0]


FEW = 100  # devices whose tags are read by id; more: every tag in one query


def _views(s: Session, devices: list[Device]) -> list[DeviceView]:
    """The devices with their revocations and tags (one query each)."""
    revoked = {r.device_id: r for r in s.exec(select(Revocation))}
    tags: dict[str, list[str]] = {}
    for device_id, tag in s.exec(
        select(DeviceTag.device_id, DeviceTag.tag).order_by(DeviceTag.tag)
    ):
        tags.setdefault(device_id, []).append(tag)
    out = []
    for d in devices:
        view = DeviceView.model_validate(d, from_attributes=True)
        view.tags = tags.get(d.id, [])
        row = revoked.get(d.id)
        if row is not None:
            view.status = "revoked"
            view.revoked = RevokedSince(revoked_at=row.revoked_at, reason=row.reason, by=row.by)
        out.append(view)
    return out


@router.post(
    "/devices/{device_id}/reenrol",
    name="device.reenrol",
    status_code=201,
    response_model=EnrolTokenCreated,
    responses=DENIALS,
)
def reenrol(device_id: str, h: HubDep, who: Admin, audit: Audit) -> EnrolTokenCreated:
    """A one-time re-enrolment token for a known device (shown once): with it the
    device gets a new certificate, its old ones are superseded and a revocation is
    lifted. Only an admin may issue one."""
    if not h.identities.taken(device_id):
        _device(h, device_id)
    try:
        new = h.issue_enrol_token(who.keyid, device_id, reenrol=True)
    except PkiError as e:
        raise _pki_refusal(e) from e
    audit.change(
        device_id,
        before={"revoked": device_id in h.identities.revoked},
        after={
            "token_id": new.record.id,
            "reenrol": True,
            "expires_at": new.record.expires_at,
        },
    )
    return _token_created(new.record, new.token)


@router.post(
    "/devices/{device_id}/revoke",
    name="device.revoke",
    response_model=RevocationResult,
    responses=DENIALS,
)
def revoke(
    device_id: str,
    h: HubDep,
    who: Admin,
    audit: Audit,
    req: Annotated[RevokeRequest | None, Body()] = None,
) -> RevocationResult:
    """Revoke the device's certificates: the broker refuses it from the next CRL reload
    and cuts its open connection (dynamic-security plugin); the hub ignores it at once.
    Re-enrolment lifts it. A device that enrolled but never connected can be revoked too."""
    if not h.identities.taken(device_id):
        _device(h, device_id)
    before = device_id in h.identities.revoked
    try:
        row = h.revoke_device(device_id, (req or RevokeRequest()).reason, who.keyid)
    except PkiError as e:
        raise HTTPException(422, str(e)) from e
    notice, connection = h.identities.broker_notice, h.identities.connection_notice
    after = {"revoked": True, "reason": row.reason, "serials": row.serials, "broker": notice}
    audit.change(device_id, before={"revoked": before}, after={**after, "connection": connection})
    return RevocationResult(**row.model_dump(), broker=notice, connection=connection)


@router.post(
    "/enrol-tokens",
    name="enrol_token.create",
    status_code=201,
    response_model=EnrolTokenCreated,
    responses={**DENIALS, 409: {"description": "the device id is enrolled: use reenrol"}},
)
def create_enrol_token(
    h: HubDep, who: Operator, audit: Audit, req: Annotated[EnrolTokenCreate, Body()]
) -> EnrolTokenCreated:
    """A one-time enrolment token, bound to a device id if given (shown once)."""
    if req.device_id is not None and not is_device_id(req.device_id):
        raise HTTPException(422, f"invalid device id {req.device_id!r}: letters, digits, _.-")
    try:
        new = h.issue_enrol_token(who.keyid, req.device_id, req.ttl_s)
    except DeviceTaken as e:
        raise HTTPException(409, str(e)) from e
    except PkiError as e:
        raise _pki_refusal(e) from e
    audit.change(
        new.record.id,
        after={"device_id": req.device_id, "expires_at": new.record.expires_at},
    )
    return _token_created(new.record, new.token)


@router.get(
    "/enrol-tokens",
    name="enrol_token.list",
    response_model=list[EnrolTokenView],
    responses=DENIALS,
)
def list_enrol_tokens(
    h: HubDep,
    who: Operator,
    limit: Annotated[int, Query(ge=1, le=ENROL_TOKEN_LIST_MAX)] = 100,
) -> list[EnrolToken]:
    """Enrolment tokens, newest first (never the tokens themselves)."""
    return h.enrol_tokens.list(limit)


@router.delete(
    "/enrol-tokens/{token_id}",
    name="enrol_token.revoke",
    response_model=EnrolTokenView,
    responses=DENIALS,
)
def revoke_enrol_token(token_id: str, h: HubDep, who: Operator, audit: Audit) -> EnrolToken:
    try:
        row = h.enrol_tokens.revoke(token_id)
    except KeyError as e:
        raise HTTPException(404, f"no enrolment token {token_id!r}") from e
    except EnrolRefused as e:
        raise HTTPException(409, f"enrolment token {token_id} cannot be revoked: {e}") from e
    audit.change(token_id, before={"revoked_at": None}, after={"revoked_at": row.revoked_at})
    return row


def _device(h: Hub, device_id: str) -> Device:
    with session(h.engine) as s:
        dev = s.get(Device, device_id)
    if dev is None:
        raise HTTPException(404, f"no device {device_id!r}")
    return dev


def _token_created(row: EnrolToken, token: str) -> EnrolTokenCreated:
    return EnrolTokenCreated(
        id=row.id, token=token, device_id=row.device_id, expires_at=row.expires_at
    )
