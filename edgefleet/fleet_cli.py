"""``edgefleet devices`` (list, show, revoke, re-enrol, tags) and ``edgefleet enrol-token``
(issue, list, revoke): the fleet, through the admin API (edgefleet/client.py). ``edgefleet
deploy`` is registered here, next to the devices it targets; it lives with the
deployments (edgefleet/deployments_cli.py).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from typing import Annotated, Any, Literal

import typer

from edgefleet.options import DEFAULT_HUB, ApiKey, HubUrl, Json, client
from edgefleet.output import emit, print_json, stamp, table

# x509 CRL reason names the hub takes (hub/api/routes/devices.py)
CrlReason = Literal[
    "unspecified",
    "key_compromise",
    "affiliation_changed",
    "superseded",
    "cessation_of_operation",
    "privilege_withdrawn",
]

devices = typer.Typer(
    help="The devices: list (the default), show, revoke, re-enrol, tag.",
    invoke_without_command=True,
)
tags = typer.Typer(
    no_args_is_help=True, help="A device's tags (groups for rollouts, telemetry, captures)."
)
tokens = typer.Typer(
    help="One-time enrolment tokens: issue one (the default), list, revoke.",
    invoke_without_command=True,
)

DeviceId = Annotated[str, typer.Argument(metavar="DEVICE", help="The device's id.")]
Status = Annotated[
    str | None,
    typer.Option("--status", help="Only devices in this state: online, offline, revoked."),
]


def register(app: typer.Typer) -> None:
    """``edgefleet devices ...``, ``enrol-token ...`` and ``deploy``."""
    devices.callback()(devices_default)
    devices.command("list", help="Devices: status, model and version, class, last seen.")(
        devices_list
    )
    devices.command("show", help="One device as last reported.")(show)
    devices.command("revoke", help="Revoke a device's certificates (admin).")(revoke)
    devices.command("reenrol", help="A fresh enrolment token bound to a known device (admin).")(
        reenrol
    )
    tags.command("set", help="Replace a device's tags.")(tags_set)
    devices.add_typer(tags, name="tags")
    app.add_typer(devices, name="devices")
    tokens.callback()(token_default)
    tokens.command("list", help="Enrolment tokens, newest first (never the tokens).")(token_list)
    tokens.command("revoke", help="Revoke an unused enrolment token (operator).")(token_revoke)
    app.add_typer(tokens, name="enrol-token")
    from edgefleet.deployments_cli import deploy

    app.command("deploy", help="Deploy a model version to devices, all at once.")(deploy)


def devices_default(
    ctx: typer.Context,
    hub: HubUrl = DEFAULT_HUB,
    api_key: ApiKey = None,
    status: Status = None,
    json: Json = False,
) -> int:
    """List devices when no action is named."""
    if ctx.invoked_subcommand is not None:
        return 0
    return devices_list(hub, api_key, status, json)


def devices_list(
    hub: HubUrl = DEFAULT_HUB, api_key: ApiKey = None, status: Status = None, json: Json = False
) -> int:
    with client(hub, api_key) as c:
        found = c.devices(status)
    emit(found, json, render_devices)
    return 0


def render_devices(rows: list[dict[str, Any]]) -> Any:
    """Devices as a table: a revoked one says since when and why."""
    return table(
        ["id", "status", "model", "class", "last seen", "revoked"],
        [
            (
                d["id"],
                "revoked" if d.get("revoked") else d["status"],
                f"{d['model'] or '-'}:{d['version'] or '-'}",
                d.get("device_class"),
                stamp(d.get("last_seen")),
                _revoked_note(d),
            )
            for d in rows
        ],
    )


def _revoked_note(d: dict[str, Any]) -> str | None:
    rev = d.get("revoked")
    if not rev:
        return None
    return f"{stamp(rev['revoked_at'], '%Y-%m-%d %H:%M')}: {rev['reason']}"


def show(
    device_id: DeviceId, hub: HubUrl = DEFAULT_HUB, api_key: ApiKey = None, json: Json = False
) -> int:
    with client(hub, api_key) as c:
        found = c.device(device_id)
    emit(found, json, render_device)
    return 0


def render_device(d: dict[str, Any]) -> Any:
    """One device, field by field; each model it runs."""
    models = d.get("models") or {}
    rows: list[tuple[str, Any]] = [
        ("status", "revoked" if d.get("revoked") else d["status"]),
        ("class", d.get("device_class")),
        ("runtime", d.get("runtime")),
        ("agent", d.get("agent_version")),
        ("root version", d.get("root_version")),
        ("models", ", ".join(f"{n} v{m.get('version')}" for n, m in models.items()) or None),
        ("first seen", stamp(d.get("first_seen"))),
        ("last seen", stamp(d.get("last_seen"))),
        ("revoked", _revoked_note(d)),
    ]
    return table(["field", "value"], rows, title=f"device {d['id']}")


def revoke(
    device_id: DeviceId,
    reason: Annotated[
        CrlReason, typer.Option("--reason", help="Why, as an x509 CRL reason.")
    ] = "unspecified",
    hub: HubUrl = DEFAULT_HUB,
    api_key: ApiKey = None,
    json: Json = False,
) -> int:
    with client(hub, api_key) as c:
        r = c.revoke_device(device_id, reason)
    if json:
        print_json(r)
        return 0
    print(f"device {r['device_id']} revoked ({r['reason']}): {len(r['serials'])} certificate(s)")
    print(f"  the hub ignores it from now on; the broker: {r['broker']}")
    print(f"  its open connection: {r.get('connection', 'not disconnected: unknown')}")
    print(f"  to admit it again an admin re-enrols it: edgefleet devices reenrol {device_id}")
    return 0


def reenrol(
    device_id: DeviceId, hub: HubUrl = DEFAULT_HUB, api_key: ApiKey = None, json: Json = False
) -> int:
    with client(hub, api_key) as c:
        t = c.reenrol(device_id)
    return _say_token(t, json)


def tags_set(
    device_id: DeviceId,
    tag: Annotated[
        list[str] | None,
        typer.Argument(metavar="TAG...", help="Its tags, all of them (none: clear them)."),
    ] = None,
    hub: HubUrl = DEFAULT_HUB,
    api_key: ApiKey = None,
    json: Json = False,
) -> int:
    with client(hub, api_key) as c:
        r = c.set_tags(device_id, tag or [])
    if json:
        print_json(r)
    else:
        print(f"device {device_id}: tags {', '.join(r.get('tags') or tag or []) or '(none)'}")
    return 0


def token_default(
    ctx: typer.Context,
    device_id: Annotated[
        str | None, typer.Option("--device-id", help="Bind the token to this device id.")
    ] = None,
    ttl: Annotated[
        int | None, typer.Option("--ttl", help="Seconds until it expires (default 3600).")
    ] = None,
    hub: HubUrl = DEFAULT_HUB,
    api_key: ApiKey = None,
    json: Json = False,
) -> int:
    """Issue a one-time enrolment token (operator) when no action is named."""
    if ctx.invoked_subcommand is not None:
        return 0
    with client(hub, api_key) as c:
        t = c.create_enrol_token(device_id, ttl)
    return _say_token(t, json)


def _say_token(t: Mapping[str, Any], as_json: bool) -> int:
    if as_json:
        print_json(t)
        return 0
    print(t["token"])
    until = stamp(t["expires_at"])
    bound = f" for device {t['device_id']}" if t["device_id"] else ""
    print(f"(one-time enrolment token {t['id']}{bound}, valid until {until})", file=sys.stderr)
    return 0


def token_list(
    hub: HubUrl = DEFAULT_HUB,
    api_key: ApiKey = None,
    limit: Annotated[int, typer.Option("--limit", help="At most this many, newest first.")] = 100,
    json: Json = False,
) -> int:
    with client(hub, api_key) as c:
        found = c.enrol_tokens(limit=limit)
    emit(found, json, render_tokens)
    return 0


def render_tokens(rows: list[dict[str, Any]]) -> Any:
    """Enrolment tokens: whom for, until when, used or revoked."""
    now = time.time()

    def state(t: dict[str, Any]) -> str:
        if t.get("revoked_at"):
            return "revoked"
        if t.get("used_at"):
            return f"used by {t.get('used_by_device')}"
        return "expired" if t["expires_at"] < now else "unused"

    return table(
        ["id", "device", "kind", "expires", "state", "by"],
        [
            (t["id"], t.get("device_id"), "re-enrol" if t.get("reenrol") else "enrol",
             stamp(t["expires_at"]), state(t), t.get("created_by"))
            for t in rows
        ],
    )  # fmt: skip


def token_revoke(
    token_id: Annotated[
        str, typer.Argument(metavar="TOKEN_ID", help="The token's id (not the token).")
    ],
    hub: HubUrl = DEFAULT_HUB,
    api_key: ApiKey = None,
    json: Json = False,
) -> int:
    with client(hub, api_key) as c:
        t = c.revoke_enrol_token(token_id)
    if json:
        print_json(t)
    else:
        print(f"enrolment token {t['id']} revoked")
    return 0
