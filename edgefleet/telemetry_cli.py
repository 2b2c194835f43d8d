"""``edgefleet telemetry``: a device's or a group's telemetry windows merged per
resolution (calls, errors, latency, CPU, memory), and a model's live figures per
version (docs/telemetry.md)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from edgefleet.options import DEFAULT_HUB, ApiKey, HubUrl, Json, client
from edgefleet.output import emit, stamp, table

telemetry = typer.Typer(
    no_args_is_help=True, help="Telemetry windows per device or group; live figures per model."
)

Start = Annotated[
    str | None,
    typer.Option(
        "--since", help="From: epoch seconds, ISO 8601 or relative such as -2h (default: -1h)."
    ),
]
End = Annotated[
    str | None, typer.Option("--until", help="To: a time as for --since (default: now).")
]
Resolution = Annotated[
    float | None,
    typer.Option("--resolution", help="Seconds per point: windows are merged per this span."),
]


def register(app: typer.Typer) -> None:
    """``edgefleet telemetry ...``."""
    from edgefleet.models_cli import performance

    telemetry.command("device", help="One device's windows, merged per --resolution.")(device)
    telemetry.command("group", help="The windows of every device with a tag, merged.")(group)
    telemetry.command(
        "model", help="A model's live accuracy or MAE per version (as models performance)."
    )(performance)
    app.add_typer(telemetry, name="telemetry")


def device(
    device_id: Annotated[str, typer.Argument(metavar="DEVICE", help="The device's id.")],
    since: Start = None,
    until: End = None,
    resolution: Resolution = None,
    hub: HubUrl = DEFAULT_HUB,
    api_key: ApiKey = None,
    json: Json = False,
) -> int:
    with client(hub, api_key) as c:
        found = c.telemetry(device=device_id, start=since, end=until, resolution_s=resolution)
    emit(found, json, render_series)
    return 0


def group(
    tag: Annotated[str, typer.Argument(metavar="TAG", help="The group: a device tag.")],
    since: Start = None,
    until: End = None,
    resolution: Resolution = None,
    hub: HubUrl = DEFAULT_HUB,
    api_key: ApiKey = None,
    json: Json = False,
) -> int:
    with client(hub, api_key) as c:
        found = c.telemetry(group=tag, start=since, end=until, resolution_s=resolution)
    emit(found, json, render_series)
    return 0


def render_series(s: dict[str, Any]) -> Any:
    """One row per point: calls, errors, latency percentiles, live figure, CPU, memory."""
    who = f"device {s['device']}" if s.get("device") else f"group {s.get('group')}"
    title = (
        f"{who} ({s['devices']} device(s)), {stamp(s['start'])} to {stamp(s['end'])},"
        f" {s['resolution_s']:g} s per point"
    )
    rows = []
    for p in s["points"]:
        lat = p.get("latency_us") or {}
        figure = (
            f"acc {p['accuracy']:.3f}" if p.get("accuracy") is not None
            else f"MAE {p['mae']:.4g}" if p.get("mae") is not None
            else None
        )  # fmt: skip
        rss = p.get("rss_bytes_max")
        rows.append(
            (stamp(p["start"], "%H:%M:%S"), p["count"], p["errors"], _us(lat.get("p50")),
             _us(lat.get("p95")), _us(lat.get("p99")), figure, p.get("cpu_pct"),
             f"{rss / 2**20:.0f} MiB" if rss else None)
        )  # fmt: skip
    columns = ["start", "calls>", "errors>", "p50>", "p95>", "p99>", "live", "cpu %>", "rss>"]
    return table(columns, rows, title=title)


def _us(x: float | None) -> str | None:
    return None if x is None else f"{x / 1000:.2f} ms"
