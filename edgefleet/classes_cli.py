"""``edgefleet classes``: the device classes the hub knows (firmware-images/): runtime,
artefact, architectures, memory and latency budgets (docs/devices.md)."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from edgefleet.options import DEFAULT_HUB, ApiKey, HubUrl, Json, client
from edgefleet.output import emit, table

classes = typer.Typer(no_args_is_help=True, help="Device classes: runtime, architectures, budgets.")


def register(app: typer.Typer) -> None:
    """``edgefleet classes list|show`` (``hub classes`` is the same list)."""
    classes.command("list", help="The device classes the hub knows.")(class_list)
    classes.command("show", help="One device class, every field.")(show)
    app.add_typer(classes, name="classes")


def class_list(hub: HubUrl = DEFAULT_HUB, api_key: ApiKey = None, json: Json = False) -> int:
    with client(hub, api_key) as c:
        found = c.device_classes()
    emit(found, json, render_classes)
    return 0


def render_classes(rows: list[dict[str, Any]]) -> Any:
    """Classes as a table: runtime, interpreter, architectures, memory, p95 budget."""
    return table(
        ["class", "runtime", "interpreter", "arch", "memory>", "p95>"],
        [
            (k["name"], k["runtime"], k["interpreter"], ",".join(k["architectures"]),
             f"{k['memory_budget_mb']:.0f} MB", f"{k['latency_budget_us'] / 1000:.1f} ms")
            for k in rows
        ],
    )  # fmt: skip


def show(
    name: Annotated[str, typer.Argument(metavar="CLASS", help="The class's name (classes list).")],
    hub: HubUrl = DEFAULT_HUB,
    api_key: ApiKey = None,
    json: Json = False,
) -> int:
    with client(hub, api_key) as c:
        found = c.device_class(name)
    emit(found, json, lambda k: table(["field", "value"], sorted(k.items()), title=f"class {name}"))
    return 0
