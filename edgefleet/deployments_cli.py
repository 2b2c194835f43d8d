"""``edgefleet deploy`` (one model version to devices, all at once) and ``edgefleet
deployments`` (create, list, show, events).

``deploy --wait`` follows a deployment until every device has an outcome (a device away
longer than ``--device-timeout`` times out), prints the outcome and exits 0 when every
device is healthy, 1 otherwise; Ctrl-C says the deployment goes on and how to follow or
stop it, and exits 130.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from typing import Annotated, Any

import typer

from edgefleet.options import DEFAULT_HUB, ApiKey, HubUrl, Json, client
from edgefleet.output import emit, print_json, stamp, table
from edgefleet.rollout_cli import render_events, split_ids
from edgefleet.rollout_view import healthy_bar, interrupted, live_console

__all__ = ["deploy", "outcome", "progress_line", "register"]

deployments = typer.Typer(
    no_args_is_help=True, help="Deployments: one version to devices, all at once."
)

DeploymentId = Annotated[
    str, typer.Argument(metavar="DEPLOYMENT", help="The deployment's id (deployments list).")
]
Model = Annotated[str, typer.Option("--model", help="The model to deploy (models list).")]
Version = Annotated[
    int | None, typer.Option("--version", help="Its version (default: the latest).")
]
Devices = Annotated[
    list[str] | None,
    typer.Option("--devices", metavar="ID[,ID...]", help="Device ids; repeatable (default: all)."),
]
DeviceTimeout = Annotated[
    float | None,
    typer.Option(
        "--device-timeout",
        help="Seconds of silence or absence before a device times out (default 600).",
    ),
]
Retries = Annotated[
    int | None, typer.Option("--retries", help="Re-sends to a silent device (default 2).")
]
Probation = Annotated[
    float | None,
    typer.Option("--probation-s", help="Seconds of probation (default: the model's manifest)."),
]
ProbationMin = Annotated[
    int | None,
    typer.Option(
        "--probation-min-inferences", help="Live inferences to judge it (default: the manifest's)."
    ),
]
Wait = Annotated[bool, typer.Option("--wait", help="Follow progress until the end.")]


def register(app: typer.Typer) -> None:
    """``edgefleet deployments ...`` (``deploy`` is registered by edgefleet/fleet_cli.py)."""
    deployments.command("create", help="Deploy a model version (as edgefleet deploy).")(deploy)
    deployments.command("list", help="Deployments, newest first.")(deployment_list)
    deployments.command("show", help="One deployment: counts per stage, each device.")(show)
    deployments.command("events", help="A deployment's events, per device.")(events)
    app.add_typer(deployments, name="deployments")


def deploy(
    model: Model,
    version: Version = None,
    devices: Devices = None,
    device_timeout: DeviceTimeout = None,
    retries: Retries = None,
    probation_s: Probation = None,
    probation_min_inferences: ProbationMin = None,
    wait: Wait = False,
    hub: HubUrl = DEFAULT_HUB,
    api_key: ApiKey = None,
    json: Json = False,
) -> int:
    options = {
        "device_timeout_s": device_timeout,
        "retries": retries,
        "probation_s": probation_s,
        "probation_min_inferences": probation_min_inferences,
    }
    body = {k: v for k, v in options.items() if v is not None}
    say = sys.stderr if json else sys.stdout  # --json: only the JSON on stdout
    with client(hub, api_key) as c:
        st: Mapping[str, Any] = c.create_deployment(
            model, version=version, devices=split_ids(devices), **body
        )
        print(
            f"deployment {st['id']}: {model} v{st['version']} to {st['devices']} devices", file=say
        )
        if not wait:
            if json:
                print_json(st)
            return 0
        st = _wait(c, st, hub, say)
    if json:
        print_json(st)
    else:
        print(render_outcome(st))
    return 0 if st["converged"] == st["devices"] else 1


def _wait(c: Any, st: Mapping[str, Any], hub: str, say: Any) -> Mapping[str, Any]:
    """Follow the deployment to its end: a live bar on a terminal, a line per change in a
    log; Ctrl-C says it goes on, and how to reach it."""
    try:
        if say.isatty():
            return _wait_live(c, st, say)
        last = ""
        while not st["finished"]:
            time.sleep(1)
            st = c.deployment(st["id"], devices=False)
            line = progress_line(st)
            if line != last:
                print(line, file=say, flush=True)
            last = line
        return dict(c.deployment(st["id"]))
    except KeyboardInterrupt:
        print(interrupted("deployment", st["id"], hub), file=sys.stderr)
        raise


def _wait_live(c: Any, st: Mapping[str, Any], out: Any) -> Mapping[str, Any]:
    from rich.console import Group
    from rich.live import Live
    from rich.text import Text

    with Live(console=live_console(out), auto_refresh=False) as live:
        while not st["finished"]:
            time.sleep(1)
            st = c.deployment(st["id"], devices=False)
            live.update(Group(Text(progress_line(st)), healthy_bar(st)), refresh=True)
    return dict(c.deployment(st["id"]))


def render_outcome(st: Mapping[str, Any]) -> str:
    """The final line, then each device that did not end healthy."""
    lines = [outcome(st)]
    for d in st["per_device"]:
        if d.get("outcome", d["stage"]) != "healthy":
            why = "  ".join(str(x) for x in (d["reason"], d["detail"]) if x)
            lines.append(f"  {d['device']:<24}{d.get('outcome', d['stage']):<11}  {why}".rstrip())
    return "\n".join(lines)


def progress_line(st: Mapping[str, Any]) -> str:
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


def outcome(st: Mapping[str, Any]) -> str:
    """The deployment's final line: how many healthy, and what became of the others."""
    others = {k: v for k, v in st["stages"].items() if k != "healthy"}
    blind = st.get("healthy_without_traffic", 0)
    untested = f" ({blind} with no inferences during probation)" if blind else ""
    if not others:
        return f"deployment {st['id']}: all {st['devices']} devices healthy{untested}"
    rest = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in sorted(others.items()))
    done = f"{st['converged']}/{st['devices']} healthy{untested}"
    return f"deployment {st['id']} finished: {done}, {rest}"


def deployment_list(hub: HubUrl = DEFAULT_HUB, api_key: ApiKey = None, json: Json = False) -> int:
    with client(hub, api_key) as c:
        found = c.deployments()
    emit(found, json, render_deployments)
    return 0


def render_deployments(rows: list[dict[str, Any]]) -> Any:
    """Deployments as a table."""
    return table(
        ["id", "model", "version>", "devices>", "created"],
        [
            (
                d["id"],
                d["model"],
                d["version"],
                d["devices"],
                stamp(d["created_at"], "%Y-%m-%d %H:%M"),
            )
            for d in rows
        ],
    )


def show(
    deployment_id: DeploymentId,
    hub: HubUrl = DEFAULT_HUB,
    api_key: ApiKey = None,
    json: Json = False,
) -> int:
    with client(hub, api_key) as c:
        st = c.deployment(deployment_id)
    emit(st, json, render_deployment)
    return 0


def render_deployment(st: dict[str, Any]) -> Any:
    """A deployment's progress line and each device's stage."""
    from rich.console import Group
    from rich.text import Text

    head = Text(
        f"deployment {st['id']}  v{st['version']}  {'finished' if st['finished'] else 'running'}\n"
        + progress_line(st)
    )
    rows = [
        (d["device"], d.get("outcome", d["stage"]), d.get("reason"), d.get("detail"))
        for d in st.get("per_device") or []
    ]
    return Group(head, table(["device", "stage", "reason", "detail"], rows))


def events(
    deployment_id: DeploymentId,
    device: Annotated[str | None, typer.Option("--device", help="Only this device's.")] = None,
    hub: HubUrl = DEFAULT_HUB,
    api_key: ApiKey = None,
    json: Json = False,
) -> int:
    with client(hub, api_key) as c:
        found = c.events(deployment_id, device=device)
    emit(found, json, render_events)
    return 0
