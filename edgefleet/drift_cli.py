"""``edgefleet drift``: per-feature drift scores of a model per scope, its alerts and
event stream, and its policy (docs/drift.md)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import typer

from edgefleet.options import DEFAULT_HUB, ApiKey, HubUrl, Json, client
from edgefleet.output import emit, stamp, table

drift = typer.Typer(
    no_args_is_help=True, help="Data drift: scores per model and scope, alerts, events, policy."
)
policy = typer.Typer(no_args_is_help=True, help="A model's drift thresholds and persistence rule.")

Model = Annotated[str, typer.Argument(metavar="MODEL", help="The model's name.")]
ModelFilter = Annotated[str | None, typer.Option("--model", help="Only this model's.")]
Limit = Annotated[int, typer.Option("--limit", help="At most this many.")]
Since = Annotated[
    str | None,
    typer.Option("--since", help="From: epoch seconds, ISO 8601, or relative such as -2h."),
]
Scope = Literal["device", "group", "fleet"]
POLICY_FIELDS = (
    "psi_threshold", "js_threshold", "k", "n", "min_rows", "scope_window_s", "silence_s",
)  # fmt: skip


def register(app: typer.Typer) -> None:
    """``edgefleet drift ...``."""
    drift.command(
        "scores", help="Per-feature PSI/JS of a model for a device, a group or the fleet."
    )(scores)
    drift.command("alerts", help="Drift alerts, newest first (open, stale or cleared).")(alerts)
    drift.command("events", help="Alerts raised, cleared, stale, resumed; oldest first.")(events)
    policy.command("show", help="The model's drift policy (the defaults until one is set).")(
        policy_show
    )
    policy.command(
        "set", help="Change the model's drift policy; the fields not given stay as they are."
    )(policy_set)
    drift.add_typer(policy, name="policy")
    app.add_typer(drift, name="drift")


def scores(
    model: Model,
    scope: Annotated[Scope, typer.Option("--scope", help="Whose windows are merged.")] = "fleet",
    scope_id: Annotated[
        str | None, typer.Option("--id", help="The device id or group tag (scope device, group).")
    ] = None,
    since: Since = None,
    until: Annotated[
        str | None, typer.Option("--until", help="To: a time as for --since (default: now).")
    ] = None,
    hub: HubUrl = DEFAULT_HUB,
    api_key: ApiKey = None,
    json: Json = False,
) -> int:
    range_ = {k: v for k, v in (("since", since), ("until", until)) if v is not None}
    with client(hub, api_key) as c:
        found = c.drift(model, scope, scope_id, **range_)
    emit(found, json, render_scores)
    return 0


def render_scores(report: dict[str, Any]) -> Any:
    """Per version and feature: PSI and JS, drifted or not; the note when too few rows."""
    from rich.console import Group
    from rich.text import Text

    where = report["scope"] + ("" if report["scope"] == "fleet" else f" {report['id']}")
    parts: list[Any] = [Text(f"{report['model']} on {where}: {report['rows']:,} rows")]
    if report.get("note"):
        parts.append(Text(f"  {report['note']}"))
    for v in report["versions"]:
        drifted = set(v.get("drifted") or [])
        rows = [
            (name, _num(s.get("psi")), _num(s.get("js")), "DRIFT" if name in drifted else "")
            for name, s in (v.get("scores") or {}).items()
        ]
        title = (
            f"v{v['version']}: {v['rows']:,} rows, {v['windows']} windows,"
            f" {len(v['devices'])} device(s)"
        )
        parts.append(table(["feature", "psi>", "js>", ""], rows, title=title))
    if not report["versions"]:
        parts.append(Text("  no drift windows in this range"))
    return Group(*parts)


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def alerts(
    model: ModelFilter = None,
    state: Annotated[
        Literal["open", "stale", "cleared"] | None,
        typer.Option("--state", help="Only open, stale or cleared ones."),
    ] = None,
    scope: Annotated[Scope | None, typer.Option("--scope", help="Only this scope's.")] = None,
    limit: Limit = 100,
    hub: HubUrl = DEFAULT_HUB,
    api_key: ApiKey = None,
    json: Json = False,
) -> int:
    with client(hub, api_key) as c:
        found = c.drift_alerts(state=state, model=model, limit=limit)
    if scope is not None:  # the API filters by model and state; the scope is read here
        found = [a for a in found if a["scope"] == scope]
    emit(found, json, render_alerts)
    return 0


def render_alerts(rows: list[dict[str, Any]]) -> Any:
    """Alerts as a table: model, scope, state, since when, drifted features."""
    return table(
        ["id>", "model", "version>", "scope", "state", "opened", "devices>", "features"],
        [
            (a["id"], a["model"], a.get("version"), f"{a['scope']} {a['scope_id']}",
             a.get("stale_reason") or a["state"],
             stamp(a["opened_at"]), len(a.get("devices") or []), ", ".join(a.get("features") or []))
            for a in rows
        ],
    )  # fmt: skip


def events(
    model: ModelFilter = None,
    since: Since = None,
    limit: Limit = 100,
    hub: HubUrl = DEFAULT_HUB,
    api_key: ApiKey = None,
    json: Json = False,
) -> int:
    with client(hub, api_key) as c:
        found = c.drift_events(since=since, model=model, limit=limit)
    emit(found, json, render_events)
    return 0


def render_events(rows: list[dict[str, Any]]) -> Any:
    return table(
        ["time", "alert>", "kind", "model", "scope", "features"],
        [
            (stamp(e["ts"]), e["alert_id"], e["kind"], e["model"], f"{e['scope']} {e['scope_id']}",
             ", ".join(e.get("features") or []))
            for e in rows
        ],
    )  # fmt: skip


def policy_show(
    model: Model, hub: HubUrl = DEFAULT_HUB, api_key: ApiKey = None, json: Json = False
) -> int:
    with client(hub, api_key) as c:
        found = c.drift_policy(model)
    emit(found, json, render_policy)
    return 0


def render_policy(p: dict[str, Any]) -> Any:
    rows = [(k, v) for k, v in p.items() if k != "model"]
    return table(["setting", "value"], rows, title=f"drift policy of {p['model']}")


def policy_set(
    model: Model,
    psi_threshold: Annotated[
        float | None, typer.Option("--psi-threshold", help="A feature drifts above this PSI.")
    ] = None,
    js_threshold: Annotated[
        float | None, typer.Option("--js-threshold", help="Or above this Jensen-Shannon distance.")
    ] = None,
    k: Annotated[
        int | None, typer.Option("--k", help="Alert when k of the last n windows drift.")
    ] = None,
    n: Annotated[int | None, typer.Option("--n", help="The windows the k are counted in.")] = None,
    min_rows: Annotated[
        int | None, typer.Option("--min-rows", help="Rows needed before a score counts.")
    ] = None,
    scope_window_s: Annotated[
        float | None, typer.Option("--scope-window-s", help="Seconds of a group or fleet window.")
    ] = None,
    silence_s: Annotated[
        float | None,
        typer.Option("--silence-s", help="Seconds of silence before a device's alert is stale."),
    ] = None,
    hub: HubUrl = DEFAULT_HUB,
    api_key: ApiKey = None,
    json: Json = False,
) -> int:
    given = dict(
        zip(
            POLICY_FIELDS,
            (psi_threshold, js_threshold, k, n, min_rows, scope_window_s, silence_s),
            strict=True,
        )
    )
    with client(hub, api_key) as c:
        current = c.drift_policy(model)
        merged = {f: current[f] for f in POLICY_FIELDS} | {
            f: v for f, v in given.items() if v is not None
        }
        found = c.set_drift_policy(model, **merged)
    emit(found, json, render_policy)
    return 0
