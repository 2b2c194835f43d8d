"""``edgefleet rollout``: start, follow, pause, resume and abort rollouts.

``edgefleet rollout watch ID`` redraws a live view once a second (counts per device
state, the current wave, the failure ratio) until the rollout is finished, then prints
each device's outcome; ``--device DEV`` prints that device's event history instead.
Ctrl-C stops the watching, not the rollout: the CLI says so, with the commands to watch
or abort it, and exits 130.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:  # imported when used: a device with the agent extra has no httpx
    from edgefleet.client import HubClient

WATCH_S = 1.0  # seconds between redraws


def register(subparsers: Any, api: argparse.ArgumentParser) -> None:
    """Add ``rollout create|list|watch|pause|resume|abort``; ``api``: --hub/--api-key."""
    rollout = subparsers.add_parser("rollout", help="staged rollouts with gates and rollback")
    actions = rollout.add_subparsers(metavar="ACTION")

    create = actions.add_parser("create", parents=[api], help="start a rollout")
    create.add_argument("--model", required=True)
    create.add_argument("--version", type=int, help="default: the latest")
    who = create.add_argument_group("which devices (default: all)")
    who.add_argument("--devices", nargs="+", metavar="ID")
    who.add_argument("--device-class")
    who.add_argument("--tag", action="append", default=[], dest="tags")
    who.add_argument("--group", help="devices tagged GROUP; later members follow")
    how = create.add_argument_group("how")
    how.add_argument("--canary", type=int, default=0, help="devices in a first wave")
    how.add_argument("--canary-percent", type=float, default=0.0)
    how.add_argument("--waves", type=int, default=1, help="waves after the canary")
    how.add_argument("--rate", type=float, dest="rate_per_min", help="devices per minute")
    how.add_argument("--max-failure-ratio", type=float, default=0.2)
    how.add_argument("--min-sample", type=int, default=5)
    how.add_argument("--device-timeout", type=float, default=600.0, dest="device_timeout_s")
    how.add_argument("--retries", type=int, default=2)
    how.add_argument("--no-rollback", action="store_false", dest="rollback_on_halt")
    how.add_argument("--seed", help="shuffles the waves (default: the rollout id)")
    how.add_argument(
        "--probation-s",
        type=float,
        help="seconds each device watches live traffic before it calls the version"
        " healthy (default: the model's manifest)",
    )
    how.add_argument(
        "--probation-min-inferences",
        type=int,
        help="live inferences needed to judge the probation (default: the manifest's)",
    )
    create.add_argument("--watch", action="store_true", help="then follow it")
    create.set_defaults(func=_create)

    listing = actions.add_parser("list", parents=[api], help="rollouts, newest first")
    listing.set_defaults(func=_list)

    watch = actions.add_parser("watch", parents=[api], help="follow a rollout live")
    watch.add_argument("id")
    watch.add_argument("--device", help="print this device's event history")
    watch.set_defaults(func=_watch)

    for name, helptext in (("pause", "stop sending"), ("resume", "send again")):
        p = actions.add_parser(name, parents=[api], help=helptext)
        p.add_argument("id")
        p.set_defaults(func=_action, action=name)
    abort = actions.add_parser("abort", parents=[api], help="stop for good")
    abort.add_argument("id")
    abort.add_argument("--rollback", action="store_true", help="put changed devices back")
    abort.set_defaults(func=_action, action="abort")


def _client(args: argparse.Namespace) -> HubClient:
    from edgefleet.client import HubClient

    return HubClient(args.hub, api_key=args.api_key)


def _create(args: argparse.Namespace) -> int:
    fields = (
        "version", "devices", "device_class", "tags", "group", "canary", "canary_percent",
        "waves", "rate_per_min", "max_failure_ratio", "min_sample", "device_timeout_s",
        "retries", "rollback_on_halt", "seed", "probation_s", "probation_min_inferences",
    )  # fmt: skip
    spec = {k: getattr(args, k) for k in fields if getattr(args, k) is not None}
    with _client(args) as client:
        st = client.create_rollout(args.model, **spec)
        print(
            f"rollout {st['id']}: {st['model']} v{st['version']} to {st['devices']} devices "
            f"in {st['waves']} wave(s)"
        )
        print(f"  probation: {probation_terms(st['spec'])}")
        if args.watch:
            return follow_or_say(client, st["id"], args.hub)
    return 0


def _list(args: argparse.Namespace) -> int:
    with _client(args) as client:
        for r in client.rollouts():
            kind = "deploy" if r["spec"].get("kind") == "deployment" else "rollout"
            print(
                f"{r['id']}  {r['state']:<9}  {kind:<7}  {r['model']} v{r['version']}  "
                f"{time.strftime('%Y-%m-%d %H:%M', time.localtime(r['created_at']))}"
            )
    return 0


def _watch(args: argparse.Namespace) -> int:
    with _client(args) as client:
        if args.device:
            for e in client.rollout_events(args.id, device=args.device):
                stamp = time.strftime("%H:%M:%S", time.localtime(e["ts"]))
                reason = f" ({e['reason']})" if e.get("reason") else ""
                print(f"{stamp}  v{e['version']}  {e['stage']}{reason}  {e.get('detail') or ''}")
            return 0
        return follow_or_say(client, args.id, args.hub)


def _action(args: argparse.Namespace) -> int:
    body = {"rollback": True} if getattr(args, "rollback", False) else {}
    with _client(args) as client:
        st = client.rollout_action(args.id, args.action, **body)
    print(f"rollout {st['id']}: {st['state']}")
    return 0


def follow_or_say(client: HubClient, rollout_id: str, hub: str) -> int:
    """:func:`follow`; on Ctrl-C, say that the rollout goes on and how to reach it."""
    try:
        return follow(client, rollout_id)
    except KeyboardInterrupt:
        print(interrupted("rollout", rollout_id, hub), file=sys.stderr)
        raise  # the CLI exits 130


def interrupted(kind: str, rollout_id: str, hub: str) -> str:
    """What Ctrl-C while following a rollout (or a deployment, one) leaves behind: the
    commands to reach it again (with the hub it was started on)."""
    at = f" --hub {hub}"
    return (
        f"\nstopped watching; the {kind} {rollout_id} continues on the hub.\n"
        f"  watch it:  edgefleet rollout watch {rollout_id}{at}\n"
        f"  abort it:  edgefleet rollout abort {rollout_id}{at}"
        "  (add --rollback to put back the devices it changed)"
    )


def follow(client: HubClient, rollout_id: str, out: TextIO | None = None) -> int:
    """Redraw the rollout's view until it is finished; 0 if it completed, 1 otherwise."""
    out = out or sys.stdout  # (looked up now: a test captures it)
    tty = out.isatty()
    drawn = 0
    last = ""
    while True:
        st = client.rollout(rollout_id)
        view = render(st)
        if tty:
            out.write(f"\x1b[{drawn}F\x1b[J" if drawn else "")
            out.write(view + "\n")
            drawn = view.count("\n") + 1
        elif view != last:  # a log, not an animation: print what changed
            out.write(view + "\n")
        out.flush()
        last = view
        if st["finished"]:
            break
        time.sleep(WATCH_S)
    for d in client.rollout_devices(rollout_id):
        reason = f" ({d['reason']})" if d.get("reason") else ""
        out.write(f"  {d['device_id']:<24} wave {d['wave'] + 1}  {outcome(d)}{reason}\n")
    return 0 if st["state"] == "completed" else 1


def render(st: dict[str, Any]) -> str:
    """The live view of one rollout status (``GET /rollouts/{id}``)."""
    counts = "  ".join(f"{k} {v}" for k, v in sorted(st["counts"].items()))
    lines = [
        f"rollout {st['id']}  {st['model']} v{st['version']}  {st['state'].upper()}"
        f"  wave {st['wave']}/{st['waves']}",
        f"  {st['converged']}/{st['devices']} healthy  failures {st['failures']}"
        f" ({st['failure_ratio']:.0%})  rolled back {st['rolled_back']}",
        f"  {counts}",
    ]
    lines += probation_lines(st)
    if st.get("offline"):
        lines.append(f"  {st['offline']} offline: sent again when they are back")
    if st.get("halted_reason"):
        lines.append(f"  halted: {st['halted_reason']}")
    return "\n".join(lines)


def probation_terms(spec: dict[str, Any]) -> str:
    """The probation a rollout asked for, in words."""
    seconds, least = spec.get("probation_s"), spec.get("probation_min_inferences")
    if seconds is None and least is None:
        return "as the model's manifest says (each device reports it when it activates)"
    said = [f"{seconds:g} s" if seconds is not None else "the manifest's length"]
    said.append(f"at least {least} inferences" if least is not None else "the manifest's minimum")
    return ", ".join(said) + " (this rollout's)"


def probation_lines(st: dict[str, Any]) -> list[str]:
    """Devices on probation: time left and the live inferences seen against the minimum;
    and the healthy ones whose probation saw no inference."""
    lines = []
    if st.get("in_probation"):
        lines.append(f"  on probation {st['in_probation']}:")
        for p in st.get("probation", []):
            if p["left_s"] > 0:
                left = f"{p['left_s']:.0f} s left"
            elif p["min_inferences"] and p["inferences"] < p["min_inferences"]:
                left = f"waiting for traffic, up to {p['max_left_s']:.0f} s more"
            else:
                left = "being judged"
            least = p["min_inferences"] if p["min_inferences"] is not None else "?"
            lines.append(f"    {p['device']:<24} {left}  {p['inferences']}/{least} inferences seen")
        hidden = st["in_probation"] - len(st.get("probation", []))
        if hidden > 0:
            lines.append(f"    … and {hidden} more")
    if st.get("healthy_without_traffic"):
        lines.append(
            f"  {st['healthy_without_traffic']} healthy with no inferences during probation"
            " (no evidence either way)"
        )
    return lines


def outcome(row: dict[str, Any]) -> str:
    """A device's state, saying when "healthy" rested on no traffic at all."""
    if row["state"] == "healthy" and (row.get("probation") or {}).get("inferences") == 0:
        return "healthy (no inferences during probation)"
    return str(row["state"])
