"""``edgefleet agent run|enrol``: the device daemon and its enrolment (docs/agent.md).

Imports only the agent's modules, so a device with just the ``agent`` extra runs them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from edgefleet.options import DEFAULT_HUB

DEFAULT_ENDPOINT = "127.0.0.1:8780"  # agent/config.py DEFAULT_ENDPOINT (not imported: lazy)

agent = typer.Typer(no_args_is_help=True, help="The device daemon and its enrolment.")


def register(app: typer.Typer) -> None:
    """``edgefleet agent run`` and ``agent enrol``."""
    agent.command(
        "run",
        help="Run the agent daemon (INFO log on stderr; -v for DEBUG; stop with SIGTERM/Ctrl-C).",
    )(run)
    agent.command("enrol", help="Enrol with a hub: pin its root, write a config.")(enrol)
    app.add_typer(agent, name="agent")


def run(
    config: Annotated[Path, typer.Option("--config", help="The agent's config (TOML).")],
) -> int:
    from agent.daemon import AgentConfig, run_daemon

    run_daemon(AgentConfig.load(config), source=str(config))
    return 0


def enrol(
    token: Annotated[str, typer.Option("--token", help="A one-time enrolment token.")],
    device_id: Annotated[str, typer.Option("--device-id", help="This device's id.")],
    state_dir: Annotated[
        Path, typer.Option("--state-dir", help="Where the agent keeps its keys and models.")
    ],
    config_out: Annotated[Path, typer.Option("--config-out", help="Write the TOML config here.")],
    hub: Annotated[str, typer.Option("--hub", help="The hub's admin API.")] = DEFAULT_HUB,
    device_class: Annotated[
        str, typer.Option("--device-class", help="This device's class (hub classes).")
    ] = "generic",
    endpoint: Annotated[
        str,
        typer.Option(
            "--endpoint",
            help="The local inference endpoint, host:port ('' for none; one port per agent"
            " on a machine).",
        ),
    ] = DEFAULT_ENDPOINT,
    key: Annotated[
        str,
        typer.Option(
            "--key",
            help="A key pair already in a PKCS#11 token: pkcs11:token=..;object=..?pin-source="
            "env:VAR|file:/path (docs/devices.md). Default: a key file made here.",
        ),
    ] = "",
) -> int:
    from http.client import HTTPException
    from urllib.error import URLError

    from agent.enrol import enrol as enrol_with
    from edgefleet.connection import enrol_error

    try:
        enrol_with(
            hub_url=hub,
            token=token,
            device_id=device_id,
            device_class=device_class,
            state_dir=state_dir,
            config_out=config_out,
            endpoint=endpoint,
            key=key,
        )
    except (URLError, ConnectionError, TimeoutError, HTTPException, json.JSONDecodeError) as e:
        raise enrol_error(hub, e) from e  # one line: the hub's reason, or why no hub
    print(f"enrolled {device_id}; config written to {config_out}")
    return 0
