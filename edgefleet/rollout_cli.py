"""``edgefleet rollout``: start, list, show, follow, pause, resume and abort rollouts, and
their devices and events (docs/rollouts.md).

``edgefleet rollout watch ID`` (and ``create --watch``) redraws a live view until the
rollout is finished, then prints each device's outcome (edgefleet/rollout_view.py);
``--device DEV`` prints that device's event history instead. Ctrl-C stops the watching,
not the rollout: the CLI says so, with the commands to watch or abort it, and exits 130.
"""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer

from edgefleet.options import DEFAULT_HUB, ApiKey, HubUrl, Json, client
from edgefleet.output import emit, print_json, stamp, table
from edgefleet.rollout_view import follow, follow_or_say, outcome, probation_terms, render

__all__ = ["follow", "register", "split_ids"]

rollout = typer.Typer(no_args_is_help=True, help="Staged rollouts with gates and rollback.")

RolloutId = Annotated[
    str, typer.Argument(metavar="ROLLOUT", help="The rollout's id (rollout list).")
]
WHO = "Which devices (default: all)"
HOW = "How"


def _opt(*names: str, panel: str = HOW, **kw: Any) -> Any:
    return typer.Option(*names, rich_help_panel=panel, **kw)


Model = Annotated[str, typer.Option("--model", help="The model to roll out (models list).")]
Version = Annotated[
    int | None, typer.Option("--version", help="Its version (default: the latest).")
]
Devices = Annotated[
    list[str] | None,
    _opt("--devices", panel=WHO, metavar="ID[,ID...]", help="These devices; repeatable."),
]
DeviceClass = Annotated[
    str | None, _opt("--device-class", panel=WHO, help="Devices of this class.")
]
Tags = Annotated[
    list[str] | None,
    _opt("--tag", panel=WHO, metavar="TAG", help="Devices with this tag; repeatable."),
]
Group = Annotated[
    str | None, _opt("--group", panel=WHO, help="Devices tagged GROUP; later members follow.")
]
Canary = Annotated[int, _opt("--canary", help="Devices in a first wave, the canary.")]
CanaryPercent = Annotated[
    float, _opt("--canary-percent", help="The canary as a share of the devices (0..100).")
]
Waves = Annotated[int, _opt("--waves", help="Waves after the canary.")]
Rate = Annotated[float | None, _opt("--rate", help="At most this many devices a minute.")]
MaxFailure = Annotated[
    float, _opt("--max-failure-ratio", help="Halt once this share of a wave fails (0..1).")
]
MinSample = Annotated[int, _opt("--min-sample", help="Outcomes needed before the ratio counts.")]
DeviceTimeout = Annotated[
    float, _opt("--device-timeout", help="Seconds of silence before a device times out.")
]
Retries = Annotated[int, _opt("--retries", help="Re-sends to a silent device.")]
NoRollback = Annotated[
    bool, _opt("--no-rollback", help="On a halt, leave changed devices as they are.")
]
Seed = Annotated[str | None, _opt("--seed", help="Shuffles the waves (default: the rollout id).")]
Probation = Annotated[
    float | None,
    _opt(
        "--probation-s",
        help="Seconds each device watches live traffic before it calls the version healthy"
        " (default: the model's manifest).",
    ),
]
ProbationMin = Annotated[
    int | None,
    _opt(
        "--probation-min-inferences",
        help="Live inferences needed to judge the probation (default: the manifest's).",
    ),
]
Watch = Annotated[bool, typer.Option("--watch", help="Then follow it until it ends.")]


def register(app: typer.Typer) -> None:
    """``edgefleet rollout ...``."""
    rollout.command("create", help="Start a rollout.")(create)
    rollout.command("list", help="Rollouts, newest first.")(rollout_list)
    rollout.command("show", help="One rollout's status, once.")(show)
    rollout.command("watch", help="Follow a rollout live (or one device's history).")(watch)
    rollout.command("devices", help="Each device of a rollout: wave, state, reason.")(devices)
    rollout.command("events", help="A rollout's events, per device.")(events)
    rollout.command("pause", help="Stop sending to more devices.")(pause)
    rollout.command("resume", help="Send again.")(resume)
    rollout.command("abort", help="Stop for good.")(abort)
    app.add_typer(rollout, name="rollout")


def split_ids(values: list[str] | None) -> list[str] | None:
    """``--devices a,b --devices c``: the ids in order (``None`` for none given)."""
    ids = [v for value in values or [] for v in value.split(",") if v]
    return ids or None


def create(
    model: Model,
    version: Version = None,
    devices: Devices = None,
    device_class: DeviceClass = None,
    tag: Tags = None,
    group: Group = None,
    canary: Canary = 0,
    canary_percent: CanaryPercent = 0.0,
    waves: Waves = 1,
    rate: Rate = None,
    max_failure_ratio: MaxFailure = 0.2,
    min_sample: MinSample = 5,
    device_timeout: DeviceTimeout = 600.0,
    retries: Retries = 2,
    no_rollback: NoRollback = False,
    seed: Seed = None,
    probation_s: Probation = None,
    probation_min_inferences: ProbationMin = None,
    watch: Watch = False,
    hub: HubUrl = DEFAULT_HUB,
    api_key: ApiKey = None,
    json: Json = False,
) -> int:
    spec = {
        "version": version, "devices": split_ids(devices), "device_class": device_class,
        "tags": tag or [], "group": group, "canary": canary, "canary_percent": canary_percent,
        "waves": waves, "rate_per_min": rate, "max_failure_ratio": max_failure_ratio,
        "min_sample": min_sample, "device_timeout_s": device_timeout, "retries": retries,
        "rollback_on_halt": not no_rollback, "seed": seed, "probation_s": probation_s,
        "probation_min_inferences": probation_min_inferences,
    }  # fmt: skip
    say = sys.stderr if json else sys.stdout  # --json: only the JSON on stdout
    with client(hub, api_key) as c:
        st = c.create_rollout(model, **{k: v for k, v in spec.items() if v is not None})
        print(
            f"rollout {st['id']}: {st['model']} v{st['version']} to {st['devices']} devices "
            f"in {st['waves']} wave(s)",
            file=say,
        )
        print(f"  probation: {probation_terms(st['spec'])}", file=say)
        code = follow_or_say(c, st["id"], hub, say) if watch else 0
        if json:
            print_json(c.rollout(st["id"]) if watch else st)
    return code


def rollout_list(hub: HubUrl = DEFAULT_HUB, api_key: ApiKey = None, json: Json = False) -> int:
    with client(hub, api_key) as c:
        found = c.rollouts()
    emit(found, json, render_rollouts)
    return 0


def render_rollouts(rows: list[dict[str, Any]]) -> Any:
    """Rollouts (and deployments, one wave each) as a table."""
    return table(
        ["id", "state", "kind", "model", "version>", "created"],
        [
            (
                r["id"],
                r["state"],
                "deploy" if r["spec"].get("kind") == "deployment" else "rollout",
                r["model"],
                r["version"],
                stamp(r["created_at"], "%Y-%m-%d %H:%M"),
            )
            for r in rows
        ],
    )


def show(
    rollout_id: RolloutId, hub: HubUrl = DEFAULT_HUB, api_key: ApiKey = None, json: Json = False
) -> int:
    with client(hub, api_key) as c:
        st = c.rollout(rollout_id)
    emit(st, json, render)
    return 0


def watch(
    rollout_id: RolloutId,
    device: Annotated[
        str | None, typer.Option("--device", help="Print this device's event history instead.")
    ] = None,
    hub: HubUrl = DEFAULT_HUB,
    api_key: ApiKey = None,
) -> int:
    with client(hub, api_key) as c:
        if device:
            emit(c.rollout_events(rollout_id, device=device), False, render_events)
            return 0
        return follow_or_say(c, rollout_id, hub)


def devices(
    rollout_id: RolloutId, hub: HubUrl = DEFAULT_HUB, api_key: ApiKey = None, json: Json = False
) -> int:
    with client(hub, api_key) as c:
        found = c.rollout_devices(rollout_id)
    emit(found, json, render_devices)
    return 0


def render_devices(rows: list[dict[str, Any]]) -> Any:
    """A rollout's devices: wave, outcome, attempts, why."""
    return table(
        ["device", "wave>", "state", "attempts>", "reason"],
        [
            (d["device_id"], d["wave"] + 1, outcome(d), d.get("attempts"), d.get("reason"))
            for d in rows
        ],
    )


def events(
    rollout_id: RolloutId,
    device: Annotated[str | None, typer.Option("--device", help="Only this device's.")] = None,
    hub: HubUrl = DEFAULT_HUB,
    api_key: ApiKey = None,
    json: Json = False,
) -> int:
    with client(hub, api_key) as c:
        found = c.rollout_events(rollout_id, device=device)
    emit(found, json, render_events)
    return 0


def render_events(rows: list[dict[str, Any]]) -> Any:
    """Events as a table: when, device, version, stage (and why), detail."""
    return table(
        ["time", "device", "version>", "stage", "detail"],
        [
            (
                stamp(e["ts"], "%H:%M:%S"),
                e.get("device") or e.get("device_id"),
                e.get("version"),
                e["stage"] + (f" ({e['reason']})" if e.get("reason") else ""),
                e.get("detail"),
            )
            for e in rows
        ],
    )


def _act(
    rollout_id: str, action: str, hub: str, api_key: str | None, json: bool, **body: Any
) -> int:
    with client(hub, api_key) as c:
        st = c.rollout_action(rollout_id, action, **body)
    if json:
        print_json(st)
    else:
        print(f"rollout {st['id']}: {st['state']}")
    return 0


def pause(
    rollout_id: RolloutId, hub: HubUrl = DEFAULT_HUB, api_key: ApiKey = None, json: Json = False
) -> int:
    return _act(rollout_id, "pause", hub, api_key, json)


def resume(
    rollout_id: RolloutId, hub: HubUrl = DEFAULT_HUB, api_key: ApiKey = None, json: Json = False
) -> int:
    return _act(rollout_id, "resume", hub, api_key, json)


def abort(
    rollout_id: RolloutId,
    rollback: Annotated[
        bool, typer.Option("--rollback", help="Put back the devices it changed.")
    ] = False,
    hub: HubUrl = DEFAULT_HUB,
    api_key: ApiKey = None,
    json: Json = False,
) -> int:
    body = {"rollback": True} if rollback else {}
    return _act(rollout_id, "abort", hub, api_key, json, **body)
