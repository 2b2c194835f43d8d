"""``edgefleet devices|enrol-token|deploy``: the fleet, through the admin API
(edgefleet/client.py). Models are edgefleet/models_cli.py's."""

from __future__ import annotations

import argparse
import sys
from typing import Any


def register(sub: Any, api: argparse.ArgumentParser) -> None:
    """Add the commands; ``api``: the parent parser with --hub/--api-key."""
    devs = sub.add_parser("devices", parents=[api], help="list devices")
    devs.set_defaults(func=_devices)

    tok = sub.add_parser(
        "enrol-token", parents=[api], help="issue a one-time enrolment token (operator)"
    )
    tok.add_argument("--device-id", help="bind the token to this device id")
    tok.add_argument("--ttl", type=int, help="seconds until it expires (default 3600)")
    tok.set_defaults(func=_enrol_token)

    dep = sub.add_parser("deploy", parents=[api], help="deploy a model version to devices")
    dep.add_argument("--model", required=True)
    dep.add_argument("--version", type=int)
    dep.add_argument("--devices", nargs="*", help="device ids (default: all)")
    dep.add_argument("--wait", action="store_true", help="follow progress until the end")
    dep.set_defaults(func=_deploy)


def _client(args: argparse.Namespace) -> Any:
    from edgefleet.client import HubClient

    return HubClient(args.hub, api_key=args.api_key)


def _devices(args: argparse.Namespace) -> int:
    with _client(args) as c:
        for d in c.devices():
            print(f"{d['id']:<24}{d['status']:<9}{d['model'] or '-'}:{d['version'] or '-'}")
    return 0


def _enrol_token(args: argparse.Namespace) -> int:
    import time

    with _client(args) as c:
        t = c.create_enrol_token(args.device_id, args.ttl)
    print(t["token"])
    until = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t["expires_at"]))
    bound = f" for device {t['device_id']}" if t["device_id"] else ""
    print(f"(one-time enrolment token {t['id']}{bound}, valid until {until})", file=sys.stderr)
    return 0


def _deploy(args: argparse.Namespace) -> int:
    import time

    with _client(args) as c:
        st = c.deploy(args.model, args.version, args.devices or None)
        print(f"deployment {st['id']}: {args.model} v{st['version']} to {st['devices']} devices")
        while args.wait and not st["finished"]:
            time.sleep(1)
            st = c.deployment(st["id"], devices=False)
            print(f"  {st['converged']}/{st['devices']} healthy  {st['stages']}")
    return 0
