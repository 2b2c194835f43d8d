"""Admin API: the hub's CA and its broker's server certificate, and their rotation
(ADR 0035, docs/operations.md "Certificates"; the steps: hub/transport/rotations.py).

Reading is safe on any replica. A change runs on the leader alone: it answers the
devices' renewals, so its CA is the one that must rotate; another replica answers 409
``not_leader``. Without a TLS broker (``--broker-tls``) every change is refused 409
``no_tls_broker``: there is no broker certificate or trust to change.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, HTTPException
from pydantic import BaseModel, Field

from hub.api.deps import DENIALS, Audit, HubDep, operation_id
from hub.api.security import Admin
from hub.api.views.certificates import BrokerRenewal, CaFinish, CaPrompt, CaRotation, CaStatus
from hub.trust.pki import PkiError

router = APIRouter(generate_unique_id_function=operation_id)

REFUSALS: dict[int | str, dict[str, Any]] = {
    **DENIALS,
    409: {
        "description": "not_leader: this replica is not the leader; no_tls_broker: the hub"
        " has no TLS broker; rotation_under_way / no_rotation; devices_behind (finish)"
    },
}


class BeginRequest(BaseModel):
    name: str | None = Field(default=None, min_length=1, max_length=64)  # the new CA's CN


class FinishRequest(BaseModel):
    force: bool = False  # leave the devices still behind: they must be re-enrolled


def _refused(e: PkiError) -> HTTPException:
    return HTTPException(409, f"{e.reason}: {e.detail}")


@router.get("/ca", name="ca.show", response_model=CaStatus, responses=DENIALS)
def show(h: HubDep, who: Admin) -> dict[str, Any]:
    """The CA issuing now, the retired ones still trusted, the devices still on a retired
    CA, and the broker's server certificate (its expiry, whether it is due)."""
    return h.rotations.status()


@router.post("/ca/rotation", name="ca.rotate", response_model=CaRotation, responses=REFUSALS)
def rotate(
    h: HubDep, who: Admin, audit: Audit, req: Annotated[BeginRequest | None, Body()] = None
) -> dict[str, Any]:
    """Begin a CA rotation: a new CA issues from now on, the broker trusts both and is
    reloaded, and every device on the old CA is asked to renew."""
    try:
        done = h.rotations.begin((req or BeginRequest()).name)
    except PkiError as e:
        raise _refused(e) from e
    audit.change(
        "ca",
        before={"ca": done["retired"][0]["id"]},
        after={"ca": done["ca"]["id"], "prompted": done["prompted"]},
    )
    return done


@router.post("/ca/rotation/prompt", name="ca.prompt", response_model=CaPrompt, responses=REFUSALS)
def prompt(h: HubDep, who: Admin, audit: Audit) -> dict[str, Any]:
    """Ask every device still on a retired CA to renew now."""
    try:
        done = h.rotations.prompt()
    except PkiError as e:
        raise _refused(e) from e
    audit.change("ca", after={"prompted": done["prompted"]})
    return done


@router.post("/ca/rotation/finish", name="ca.finish", response_model=CaFinish, responses=REFUSALS)
def finish(
    h: HubDep, who: Admin, audit: Audit, req: Annotated[FinishRequest | None, Body()] = None
) -> dict[str, Any]:
    """Finish the rotation: the broker gets a server certificate from the new CA and
    trusts it alone; the retired CAs are dropped. Refused while a device is behind,
    naming them, unless ``force`` (they then come back by re-enrolment)."""
    force = (req or FinishRequest()).force
    try:
        done = h.rotations.finish(force=force)
    except PkiError as e:
        raise _refused(e) from e
    audit.change(
        "ca",
        before={"retired": [c["id"] for c in done["dropped"]]},
        after={"ca": done["ca"]["id"], "force": force, "left_behind": done["left_behind"]},
    )
    return done


@router.post(
    "/broker/certificate",
    name="broker.certificate.renew",
    response_model=BrokerRenewal,
    responses=REFUSALS,
)
def renew_broker_certificate(h: HubDep, who: Admin, audit: Audit) -> dict[str, Any]:
    """Re-issue the broker's server certificate now and reload the broker: connected
    devices stay connected, new connections meet the new certificate."""
    try:
        done = h.rotations.renew_broker_certificate()
    except PkiError as e:
        raise _refused(e) from e
    audit.change("broker", after={"serial": done["certificate"]["serial"]})
    return done
