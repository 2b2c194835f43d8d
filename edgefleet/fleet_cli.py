"""``edgefleet devices [revoke]|enrol-token|deploy``: the fleet, through the admin API
(edgefleet/client.py). Models are edgefleet/models_cli.py's.

``deploy --wait`` follows a deployment until every device has an outcome (a device away
longer than ``--device-timeout`` times out), prints the outcome and exits 0 when every
device is healthy, 1 otherwise; Ctrl-C says the deployment goes on and how to follow or
stop it, and exits 130.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from edgefleet.rollout_cli import interrupted

# x509 CRL reason names the hub takes (hub/api/routes/devices.py)
CRL_REASONS = (
    "unspecified",
    "key_compromise",
    "affiliation_changed",
    "superseded",
    "cessation_of_operation",
    "privilege_withdrawn",
)


def register(sub: Any, api: argparse.ArgumentParser) -> None:
    """Add the commands; ``api``: the parent parser with --hub/--api-key."""
    devs = sub.add_parser("devices", parents=[api], help="list devices (or revoke one)")
    devs.set_defaults(func=_devices)
    actions = devs.add_subparsers(metavar="ACTION")
    rev = actions.add_parser("revoke", parents=[api], help="revoke a device's certificates (admin)")
    rev.add_argument("id")
    rev.add_argument("--reason", choices=CRL_REASONS, default="unspecified")
    rev.set_defaults(func=_revoke)

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
    dep.add_argument(
        "--device-timeout",
        type=float,
        dest="device_timeout_s",
        help="seconds of silence or absence before a device times out (default 600)",
    )
    dep.add_argument("--retries", type=int, help="re-sends to a silent device (default 2)")
    dep.add_argument("--probation-s", type=float, help="default: the model's manifest")
    dep.add_argument("--probation-min-inferences", type=int, help="default: the manifest's")
    dep.add_argument("--wait", action="store_true", help="follow progress until the end")
    dep.set_defaults(func=_deploy)


def _client(args: argparse.Namespace) -> Any:
    from edgefleet.client import HubClient

    return HubClient(args.hub, api_key=args.api_key)


def _devices(args: argparse.Namespace) -> int:
    with _client(args) as c:
        for d in c.devices():
            status = "revoked" if d.get("revoked") else d["status"]
            model = f"{d['model'] or '-'}:{d['version'] or '-'}"
            print(f"{d['id']:<24}{status:<9}{model}{_revoked_note(d)}")
    return 0


def _revoked_note(d: dict[str, Any]) -> str:
    rev = d.get("revoked")
    if not rev:
        return ""
    import time

    since = time.strftime("%Y-%m-%d %H:%M", time.localtime(rev["revoked_at"]))
    return f"  (revoked {since}: {rev['reason']})"


def _revoke(args: argparse.Namespace) -> int:
    with _client(args) as c:
        r = c.revoke_device(args.id, args.reason)
    print(f"device {r['device_id']} revoked ({r['reason']}): {len(r['serials'])} certificate(s)")
    print(f"  the hub ignores it from now on; the broker: {r['broker']}")
    print(f"  to admit it again an admin re-enrols it: POST /devices/{args.id}/reenrol")
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

    options = {
        "device_timeout_s": args.device_timeout_s,
        "retries": args.retries,
        "probation_s": args.probation_s,
        "probation_min_inferences": args.probation_min_inferences,
    }
    body = {k: v for k, v in options.items() if v is not None}
    with _client(args) as c:
        st = c.create_deployment(
            args.model, version=args.version, devices=args.devices or None, **body
        )
        print(f"deployment {st['id']}: {args.model} v{st['version']} to {st['devices']} devices")
        if not args.wait:
            return 0
        try:
            last = ""
            while not st["finished"]:
                time.sleep(1)
                st = c.deployment(st["id"], devices=False)
                line = progress_line(st)
                if line != last:
                    print(line, flush=True)
                last = line
            st = c.deployment(st["id"])
        except KeyboardInterrupt:
            print(interrupted("deployment", st["id"], args.hub), file=sys.stderr)
            raise
    print(outcome(st))
    for d in st["per_device"]:
        if d.get("outcome", d["stage"]) != "healthy":
            why = "  ".join(str(x) for x in (d["reason"], d["detail"]) if x)
            print(f"  {d['device']:<24}{d.get('outcome', d['stage']):<11}  {why}".rstrip())
    return 0 if st["converged"] == st["devices"] else 1


def progress_line(st: dict[str, Any]) -> str:
    """One line of a deployment's progress (``GET /deployments/{id}``)."""
    stages = "  ".join(f"{k} {v}" for k, v in sorted(st["stages"].items()))
    line = f"  {st['converged']}/{st['devices']} healthy  {stages}"
    if st.get("in_probation"):
        line += f"  ({st['in_probation']} on probation)"
    if st.get("offline"):
        line += (
            f"  ({st['offline']} offline: sent again when back, timed out after"
            f" {st['device_timeout_s']:.0f} s away)"
        )
    return line


def outcome(st: dict[str, Any]) -> str:
    """The deployment's final line: how many healthy, and what became of the others."""
    others = {k: v for k, v in st["stages"].items() if k != "healthy"}
    blind = st.get("healthy_without_traffic", 0)
    untested = f" ({blind} with no inferences during probation)" if blind else ""
    if not others:
        return f"deployment {st['id']}: all {st['devices']} devices healthy{untested}"
    rest = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in sorted(others.items()))
    done = f"{st['converged']}/{st['devices']} healthy{untested}"
    return f"deployment {st['id']} finished: {done}, {rest}"
