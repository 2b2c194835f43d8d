"""``edgefleet diff -f fleet.toml`` and ``edgefleet apply -f fleet.toml``: the fleet as
code (docs/fleet-as-code.md). The hub plans; edgefleet/fleetfile.py reads the file and
names the line of each refusal."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.text import Text

from edgefleet.options import DEFAULT_HUB, ApiKey, HubUrl, Json, client
from edgefleet.output import emit

FileOption = Annotated[
    Path,
    typer.Option(
        "-f",
        "--file",
        metavar="FLEET.toml",
        help="The fleet file: groups and tags, rollout, drift and loop policies, receivers.",
    ),
]


def register(app: typer.Typer) -> None:
    """``edgefleet diff`` and ``edgefleet apply``."""
    app.command("diff", help="What apply would change, in order; changes nothing.")(diff)
    app.command("apply", help="Make the fleet file's changes (a second apply changes nothing).")(
        apply
    )


def diff(
    file: FileOption, hub: HubUrl = DEFAULT_HUB, api_key: ApiKey = None, json: Json = False
) -> int:
    return _send(file, hub, api_key, json, apply=False)


def apply(
    file: FileOption, hub: HubUrl = DEFAULT_HUB, api_key: ApiKey = None, json: Json = False
) -> int:
    return _send(file, hub, api_key, json, apply=True)


def _send(file: Path, hub: str, api_key: str | None, json: bool, *, apply: bool) -> int:
    from edgefleet import fleetfile

    fleet = fleetfile.read(file)
    with client(hub, api_key, timeout=120.0) as c:
        answer = fleetfile.send(c, fleet, apply=apply)
    emit(answer, json, lambda a: _render(a, fleetfile.render(a, applied=apply)))
    return 0


def _render(answer: dict[str, Any], lines: list[str]) -> Text:
    out = Text()
    for line in lines:
        style = {"+": "green", "~": "yellow", ">": "cyan"}.get(line[:1], "dim")
        out.append(line + "\n", style=style)
    return out
