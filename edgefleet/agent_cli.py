"""``edgefleet agent run|enrol``: the device daemon and its enrolment (docs/agent.md).

Imports only the agent's modules, so a device with just the ``agent`` extra runs them.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

DEFAULT_HUB = "http://127.0.0.1:8700"
DEFAULT_ENDPOINT = "127.0.0.1:8780"  # agent/config.py DEFAULT_ENDPOINT (not imported: lazy)


def register(sub: Any) -> None:
    """Add ``agent run`` and ``agent enrol``."""
    agent = sub.add_parser("agent", help="the device daemon").add_subparsers(metavar="ACTION")
    run = agent.add_parser(
        "run",
        help="run the agent daemon (INFO log on stderr; -v for DEBUG; stop with SIGTERM/Ctrl-C)",
    )
    run.add_argument("--config", type=Path, required=True, help="agent config (TOML)")
    run.set_defaults(func=_agent_run)
    enrol = agent.add_parser("enrol", help="enrol with a hub: pin its root, write a config")
    enrol.add_argument("--hub", default=DEFAULT_HUB)
    enrol.add_argument("--token", required=True, help="a one-time enrolment token")
    enrol.add_argument("--device-id", required=True)
    enrol.add_argument("--device-class", default="generic")
    enrol.add_argument("--state-dir", type=Path, required=True)
    enrol.add_argument("--config-out", type=Path, required=True, help="write the TOML here")
    enrol.add_argument(
        "--endpoint",
        default=DEFAULT_ENDPOINT,
        help="the local inference endpoint, host:port ('' for none; one port per agent"
        f" on a machine; default {DEFAULT_ENDPOINT})",
    )
    enrol.set_defaults(func=_agent_enrol)


def _agent_run(args: argparse.Namespace) -> int:
    from agent.daemon import AgentConfig, run_daemon

    run_daemon(AgentConfig.load(args.config), source=str(args.config))
    return 0


def _agent_enrol(args: argparse.Namespace) -> int:
    from http.client import HTTPException
    from urllib.error import URLError

    from agent.enrol import enrol
    from edgefleet.connection import enrol_error

    try:
        enrol(
            hub_url=args.hub,
            token=args.token,
            device_id=args.device_id,
            device_class=args.device_class,
            state_dir=args.state_dir,
            config_out=args.config_out,
            endpoint=args.endpoint,
        )
    except (URLError, ConnectionError, TimeoutError, HTTPException, json.JSONDecodeError) as e:
        raise enrol_error(args.hub, e) from e  # one line: the hub's reason, or why no hub
    print(f"enrolled {args.device_id}; config written to {args.config_out}")
    return 0
