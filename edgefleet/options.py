"""The options many ``edgefleet`` commands share, as Typer parameter types.

``--hub`` and ``--api-key`` on every command that calls the admin API, ``--json`` on
every command that shows data. The client is imported when a command runs: a device
with only the agent extra never loads it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from edgefleet.client import HubClient

__all__ = ["API_KEY_ENV", "DEFAULT_HUB", "ApiKey", "HubUrl", "Json", "client"]

DEFAULT_HUB = "http://127.0.0.1:8700"
API_KEY_ENV = "EDGEFLEET_API_KEY"

HubUrl = Annotated[
    str, typer.Option("--hub", help="The hub's admin API, e.g. http://hub.example:8700.")
]
ApiKey = Annotated[
    str | None,
    typer.Option(
        "--api-key",
        envvar=API_KEY_ENV,
        show_envvar=True,
        help="API key ef_<keyid>_<secret> (its role decides what it may do).",
    ),
]
Json = Annotated[
    bool,
    typer.Option("--json", help="Print the data as JSON on stdout, and nothing else there."),
]


def client(hub: str, api_key: str | None, timeout: float = 30.0) -> HubClient:
    """A client of the hub at ``hub`` (closed by ``with``)."""
    from edgefleet.client import HubClient

    return HubClient(hub, api_key=api_key, timeout=timeout)
