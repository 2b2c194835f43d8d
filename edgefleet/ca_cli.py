"""``edgefleet ca show|rotate|prompt|finish`` and ``edgefleet broker renew-cert``: the hub's
CA and its broker's server certificate, rotated through the admin API (admin keys) on the
running hub's leader (docs/operations.md "Certificates", ADR 0035).

A CA rotation: ``ca rotate`` (a new CA; the broker trusts both; devices asked to renew),
``ca show`` until no device is behind (``ca prompt`` asks them again), ``ca finish``.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from edgefleet.broker_cli import broker
from edgefleet.options import DEFAULT_HUB, ApiKey, HubUrl, Json, client
from edgefleet.output import emit, table

ca = typer.Typer(
    no_args_is_help=True,
    help="The hub's CA through the API (admin): show it, rotate it without an outage.",
)


def register(app: typer.Typer) -> None:
    """``edgefleet ca ...`` and ``edgefleet broker renew-cert``."""
    ca.command("show", help="The CA, retired CAs, devices behind, the broker's certificate.")(show)
    ca.command("rotate", help="Begin: a new CA, trusted beside the old; devices renew.")(rotate)
    ca.command("prompt", help="Ask the devices still on the old CA to renew now.")(prompt)
    ca.command("finish", help="Drop the old CA once no device is behind (or --force).")(finish)
    app.add_typer(ca, name="ca")
    broker.command(
        "renew-cert", help="Re-issue the broker's server certificate now (through the hub)."
    )(renew_cert)


def _cert_line(label: str, c: Any) -> str:
    return f"{label}: {c['subject']} (serial {c['serial']}, expires {c['not_after']})"


def render_status(s: Any) -> Any:
    """The CA, the retired ones, the broker's certificate, the devices behind."""
    rows = [("CA", s["ca"]["subject"], s["ca"]["id"][:16], s["ca"]["not_after"], "")]
    rows += [("retired", c["subject"], c["id"][:16], c["not_after"], "") for c in s["retired"]]
    b = s["broker_certificate"]
    if b is not None:
        due = "due: the hub re-issues it" if b["due"] else ""
        rows.append(("broker", b["subject"], b["serial"][:16], b["not_after"], due))
    behind = s["devices_behind"]
    title = f"{len(behind)} device(s) behind" + (f": {', '.join(behind[:20])}" if behind else "")
    if b is None:
        title += " (no TLS broker configured)"
    return table(["", "subject", "id / serial", "expires", "note"], rows, title=title)


def show(hub: HubUrl = DEFAULT_HUB, api_key: ApiKey = None, json: Json = False) -> int:
    with client(hub, api_key) as c:
        found = c.ca()
    emit(found, json, render_status)
    return 0


def rotate(
    name: Annotated[
        str | None, typer.Option("--name", help="The new CA's name (default: dated).")
    ] = None,
    hub: HubUrl = DEFAULT_HUB,
    api_key: ApiKey = None,
    json: Json = False,
) -> int:
    with client(hub, api_key) as c:
        done = c.begin_ca_rotation(name)

    def said(d: Any) -> None:
        print(_cert_line("new CA", d["ca"]))
        for old in d["retired"]:
            print(_cert_line("retired (still trusted)", old))
        print(f"broker: {d['broker']}")
        print(f"{d['prompted']} device(s) asked to renew; then: edgefleet ca show, ca finish")

    emit(done, json, said)
    return 0


def prompt(hub: HubUrl = DEFAULT_HUB, api_key: ApiKey = None, json: Json = False) -> int:
    with client(hub, api_key) as c:
        done = c.prompt_ca_rotation()
    emit(done, json, lambda d: print(f"{d['prompted']} device(s) asked to renew"))
    return 0


def finish(
    force: Annotated[
        bool,
        typer.Option("--force", help="Finish with devices still behind: they must be re-enrolled."),
    ] = False,
    hub: HubUrl = DEFAULT_HUB,
    api_key: ApiKey = None,
    json: Json = False,
) -> int:
    with client(hub, api_key) as c:
        done = c.finish_ca_rotation(force=force)

    def said(d: Any) -> None:
        print(_cert_line("CA", d["ca"]))
        for old in d["dropped"]:
            print(_cert_line("dropped", old))
        print(_cert_line("broker certificate", d["broker_certificate"]))
        print(f"broker: {d['broker']}")
        if d["left_behind"]:
            print(f"left behind (re-enrol them): {', '.join(d['left_behind'])}")
        print("restart the hub's replicas; re-issue the hub's identities: edgefleet broker config")

    emit(done, json, said)
    return 0


def renew_cert(hub: HubUrl = DEFAULT_HUB, api_key: ApiKey = None, json: Json = False) -> int:
    with client(hub, api_key) as c:
        done = c.renew_broker_certificate()

    def said(d: Any) -> None:
        print(_cert_line("broker certificate", d["certificate"]))
        print(f"broker: {d['broker']}")

    emit(done, json, said)
    return 0
