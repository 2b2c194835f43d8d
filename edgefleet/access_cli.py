"""``edgefleet api-keys``, ``signing-keys`` and ``audit``: who may call the hub, the keys
it signs with, and the record of every change, through the admin API (admin keys).

``edgefleet hub apikey`` makes keys from the hub's database (the first admin's); ``edgefleet
keys`` works on the signing keys on the hub's disk while it is stopped.
"""

from __future__ import annotations

import sys
import time
from typing import Annotated, Any, Literal

import typer

from edgefleet.hub_cli import render_api_keys
from edgefleet.keys_cli import RoleName
from edgefleet.options import DEFAULT_HUB, ApiKey, HubUrl, Json, client
from edgefleet.output import emit, print_json, stamp, table

api_keys = typer.Typer(
    no_args_is_help=True, help="API keys through the API (admin): create, list, revoke."
)
signing = typer.Typer(
    no_args_is_help=True, help="The hub's signing keys through the API (admin): list, rotate."
)


def register(app: typer.Typer) -> None:
    """``edgefleet api-keys ...``, ``signing-keys ...`` and ``audit``."""
    api_keys.command("create", help="Create a key and print it once.")(key_create)
    api_keys.command("list", help="Keys (never their secrets).")(key_list)
    api_keys.command("revoke", help="Revoke a key.")(key_revoke)
    app.add_typer(api_keys, name="api-keys")
    signing.command("list", help="Roles, thresholds, key ids, root version.")(signing_list)
    signing.command("rotate", help="Replace a role's keys; root N+1 is signed by N.")(
        signing_rotate
    )
    app.add_typer(signing, name="signing-keys")
    app.command("audit", help="The audit log: every change, who made it, newest first.")(audit)


def key_create(
    name: Annotated[str, typer.Option("--name", help="Who or what holds the key.")],
    role: Annotated[
        Literal["viewer", "operator", "admin"],
        typer.Option("--role", help="viewer reads, operator changes the fleet, admin all."),
    ],
    hub: HubUrl = DEFAULT_HUB,
    api_key: ApiKey = None,
    json: Json = False,
) -> int:
    with client(hub, api_key) as c:
        made = c.create_api_key(name, role)
    if json:
        print_json(made)
        return 0
    print(made["key"])
    print(
        f"({role} key {made['keyid']} '{name}': shown once, only its hash is kept)",
        file=sys.stderr,
    )
    return 0


def key_list(hub: HubUrl = DEFAULT_HUB, api_key: ApiKey = None, json: Json = False) -> int:
    with client(hub, api_key) as c:
        found = c.api_keys()
    emit(found, json, render_api_keys)
    return 0


def key_revoke(
    keyid: Annotated[
        str, typer.Argument(metavar="KEYID", help="The key's id (the part after ef_).")
    ],
    hub: HubUrl = DEFAULT_HUB,
    api_key: ApiKey = None,
    json: Json = False,
) -> int:
    with client(hub, api_key) as c:
        row = c.revoke_api_key(keyid)
    if json:
        print_json(row)
    else:
        print(f"revoked {row['keyid']} ({row['role']} '{row['name']}')")
    return 0


def signing_list(hub: HubUrl = DEFAULT_HUB, api_key: ApiKey = None, json: Json = False) -> int:
    from edgefleet.keys_cli import render_keys

    with client(hub, api_key) as c:
        found = c.signing_keys()
    emit(found, json, render_keys)
    return 0


def signing_rotate(
    role: Annotated[
        RoleName, typer.Argument(metavar="ROLE", help="The role whose keys are replaced.")
    ],
    threshold: Annotated[
        int | None, typer.Option("--threshold", help="New threshold (default: unchanged).")
    ] = None,
    key_count: Annotated[
        int | None, typer.Option("--keys", help="Keys to make (default: as many as now).")
    ] = None,
    hub: HubUrl = DEFAULT_HUB,
    api_key: ApiKey = None,
    json: Json = False,
) -> int:
    with client(hub, api_key) as c:
        found = c.rotate_signing_key(role, threshold, key_count)
    if json:
        print_json(found)
    else:
        print(
            f"rotated {role}: root is now version {found['root_version']}; threshold"
            f" {found['threshold']}, {len(found['keyids'])} key(s)"
        )
    return 0


def audit(
    actor: Annotated[str | None, typer.Option("--actor", help="A keyid or key name.")] = None,
    action: Annotated[
        str | None, typer.Option("--action", help="An action, e.g. deployment.create.")
    ] = None,
    outcome: Annotated[
        Literal["ok", "denied", "error"] | None, typer.Option("--outcome", help="Only these.")
    ] = None,
    since: Annotated[
        float | None, typer.Option("--since", help="Seconds back (e.g. 3600), or an epoch time.")
    ] = None,
    limit: Annotated[int | None, typer.Option("--limit", help="At most this many.")] = None,
    hub: HubUrl = DEFAULT_HUB,
    api_key: ApiKey = None,
    json: Json = False,
) -> int:
    if since is not None and since < 10**9:  # a span, not an epoch time
        since = time.time() - since
    with client(hub, api_key) as c:
        found = c.audit(actor=actor, action=action, outcome=outcome, since=since, limit=limit)
    emit(found, json, render_audit)
    return 0


def render_audit(rows: list[dict[str, Any]]) -> Any:
    """Audit records: when, who, what, on what, how it ended."""
    return table(
        ["time", "actor", "role", "action", "target", "outcome", "status>", "detail"],
        [
            (stamp(r["ts"]), r.get("actor_name") or r.get("actor_keyid"), r.get("role"),
             r["action"], r.get("target"), _outcome(r), r["status"], r.get("detail"))
            for r in rows
        ],
    )  # fmt: skip


def _outcome(r: dict[str, Any]) -> str:
    """ok, denied or error; ``denied x12`` for a summary of refused calls."""
    count = r.get("count") or 1
    return str(r["outcome"]) + (f" x{count}" if count > 1 else "")
