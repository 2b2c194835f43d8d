"""``edgefleet loop``: the closed loop (alert, capture, retrain, canary to the drifted
devices): a model's policy, and its runs with their steps (docs/loop.md)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from edgefleet.options import DEFAULT_HUB, ApiKey, HubUrl, Json, client
from edgefleet.output import emit, stamp, table

loop = typer.Typer(
    no_args_is_help=True, help="The closed loop: its policy per model, and its runs."
)
policy = typer.Typer(
    no_args_is_help=True, help="A model's loop policy: on or off, how it captures and deploys."
)

Model = Annotated[str, typer.Argument(metavar="MODEL", help="The model's name.")]
POLICY_FIELDS = (
    "enabled", "capture_rows", "capture_s", "canary_percent", "waves", "max_failure_ratio",
    "min_sample", "cooldown_s", "gather_s",
)  # fmt: skip


def register(app: typer.Typer) -> None:
    """``edgefleet loop ...``."""
    policy.command("show", help="The model's loop policy (off until turned on).")(policy_show)
    policy.command(
        "set", help="Change the model's loop policy; the fields not given stay as they are."
    )(policy_set)
    loop.add_typer(policy, name="policy")
    loop.command("runs", help="Runs of the loop, newest first.")(runs)
    loop.command("run", help="One run of the loop, step by step.")(run)
    app.add_typer(loop, name="loop")


def policy_show(
    model: Model, hub: HubUrl = DEFAULT_HUB, api_key: ApiKey = None, json: Json = False
) -> int:
    with client(hub, api_key) as c:
        found = c.loop_policy(model)
    emit(found, json, render_policy)
    return 0


def render_policy(p: dict[str, Any]) -> Any:
    rows = [(k, p.get(k)) for k in POLICY_FIELDS]
    by = (
        f", set by {p['updated_by']} at {stamp(p.get('updated_at'))}" if p.get("updated_by") else ""
    )
    return table(["setting", "value"], rows, title=f"loop policy of {p['model']}{by}")


def policy_set(
    model: Model,
    enabled: Annotated[
        bool | None, typer.Option("--enabled/--disabled", help="Turn the loop on or off.")
    ] = None,
    capture_rows: Annotated[
        int | None, typer.Option("--capture-rows", help="Rows per drifted device.")
    ] = None,
    capture_s: Annotated[
        float | None, typer.Option("--capture-s", help="Seconds the devices sample.")
    ] = None,
    canary_percent: Annotated[
        float | None, typer.Option("--canary-percent", help="Of the drifted devices, first.")
    ] = None,
    waves: Annotated[int | None, typer.Option("--waves", help="Waves after the canary.")] = None,
    max_failure_ratio: Annotated[
        float | None, typer.Option("--max-failure-ratio", help="Halt the rollout above it.")
    ] = None,
    min_sample: Annotated[
        int | None, typer.Option("--min-sample", help="Outcomes before the ratio counts.")
    ] = None,
    cooldown_s: Annotated[
        float | None, typer.Option("--cooldown-s", help="Seconds before its devices run again.")
    ] = None,
    gather_s: Annotated[
        float | None,
        typer.Option("--gather-s", help="Seconds to wait for alerts arriving together."),
    ] = None,
    hub: HubUrl = DEFAULT_HUB,
    api_key: ApiKey = None,
    json: Json = False,
) -> int:
    values = (enabled, capture_rows, capture_s, canary_percent, waves, max_failure_ratio,
              min_sample, cooldown_s, gather_s)  # fmt: skip
    given = {f: v for f, v in zip(POLICY_FIELDS, values, strict=True) if v is not None}
    with client(hub, api_key) as c:
        current = c.loop_policy(model)
        found = c.set_loop_policy(model, **({f: current[f] for f in POLICY_FIELDS} | given))
    emit(found, json, render_policy)
    return 0


def runs(
    model: Annotated[str | None, typer.Option("--model", help="Only this model's.")] = None,
    limit: Annotated[int | None, typer.Option("--limit", help="At most this many.")] = None,
    hub: HubUrl = DEFAULT_HUB,
    api_key: ApiKey = None,
    json: Json = False,
) -> int:
    with client(hub, api_key) as c:
        found = c.loop_runs(model, limit)
    emit(found, json, render_runs)
    return 0


def render_runs(rows: list[dict[str, Any]]) -> Any:
    return table(
        ["id", "model", "from>", "to>", "stage", "devices>", "started", "detail"],
        [
            (r["id"], r["model"], r.get("from_version"), r.get("version"), r["stage"],
             len(r.get("devices") or []), stamp(r["created_at"]), r.get("detail"))
            for r in rows
        ],
    )  # fmt: skip


def run(
    run_id: Annotated[str, typer.Argument(metavar="RUN", help="The run's id (loop runs).")],
    hub: HubUrl = DEFAULT_HUB,
    api_key: ApiKey = None,
    json: Json = False,
) -> int:
    with client(hub, api_key) as c:
        found = c.loop_run(run_id)
    emit(found, json, render_run)
    return 0


def render_run(r: dict[str, Any]) -> Any:
    """A run's steps, each with when and what."""
    title = (
        f"loop run {r['id']} of {r['model']}: {r['stage']}"
        f" (capture {r.get('capture_id') or '-'}, job {r.get('job_id') or '-'},"
        f" rollout {r.get('rollout_id') or '-'})"
    )
    rows = [
        (stamp(s.get("ts")), s.get("step"), s.get("stage"), s.get("detail"))
        for s in r.get("steps") or []
    ]
    return table(["time", "step", "stage", "detail"], rows, title=title)
