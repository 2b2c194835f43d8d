"""The ``edgefleet`` command's Typer application: a thin front over the hub, the agent and
the simulator. Its entry is edgefleet/cli.py, which runs ``edgefleet agent run`` without
building this tree.

Built with Typer (help from each option's ``help=``, Rich tables, shell completion). Each
command group lives in its own module and is listed in :data:`COMMAND_GROUPS`: a new
group (fleet-as-code's ``apply``/``diff``, say) is a module with a ``register(app)`` and
one line there. Each command imports what it needs when it runs, so a device with just
the ``agent`` extra runs ``edgefleet agent run`` without the hub's dependencies.

Exit codes: 0 done, 1 an error said in one line on stderr (a traceback only with ``-v``),
2 a usage error, 130 Ctrl-C.
"""

from __future__ import annotations

import importlib
import logging
import sys
from dataclasses import dataclass
from typing import Annotated

import typer

from edgefleet.options import API_KEY_ENV, DEFAULT_HUB

__all__ = ["API_KEY_ENV", "COMMAND_GROUPS", "DEFAULT_HUB", "app", "build_app", "main"]

# Each module has ``register(app: typer.Typer) -> None``; their order is the help's order.
COMMAND_GROUPS: tuple[str, ...] = (
    "edgefleet.hub_cli",  # hub serve|wait|classes|status|apikey
    "edgefleet.broker_cli",  # broker config
    "edgefleet.ca_cli",  # ca show|rotate|prompt|finish, broker renew-cert (through the API)
    "edgefleet.keys_cli",  # keys (the hub's signing keys, on its disk)
    "edgefleet.fleet_cli",  # devices, enrol-token, deploy
    "edgefleet.classes_cli",  # classes
    "edgefleet.deployments_cli",  # deployments
    "edgefleet.rollout_cli",  # rollout
    "edgefleet.models_cli",  # models
    "edgefleet.datasets_cli",  # datasets
    "edgefleet.drift_cli",  # drift
    "edgefleet.telemetry_cli",  # telemetry
    "edgefleet.captures_cli",  # captures
    "edgefleet.loop_cli",  # loop
    "edgefleet.access_cli",  # api-keys, signing-keys, audit (through the API)
    "edgefleet.fleetfile_cli",  # diff, apply (the fleet as code)
    "edgefleet.agent_cli",  # agent run|enrol
    "edgefleet.sim_cli",  # sim run, demo
)


@dataclass
class Invocation:
    """What the root options set, read back by :func:`main` when a command fails."""

    verbose: bool = False


def _root(
    ctx: typer.Context,
    verbose: Annotated[
        bool, typer.Option("-v", "--verbose", help="Debug logging, and tracebacks on error.")
    ] = False,
) -> None:
    """The edge-ML fleet: hub, devices, models, rollouts."""
    if isinstance(ctx.obj, Invocation):
        ctx.obj.verbose = verbose
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def build_app() -> typer.Typer:
    """The whole command tree (also walked by docs/cli.md's generator and the tests)."""
    root = typer.Typer(
        name="edgefleet",
        help="The edge-ML fleet: a hub, its devices, models, datasets and rollouts.",
        no_args_is_help=True,
        rich_markup_mode="rich",
        pretty_exceptions_enable=False,
        context_settings={"help_option_names": ["-h", "--help"]},
    )
    root.callback()(_root)
    for name in COMMAND_GROUPS:
        importlib.import_module(name).register(root)
    return root


app = build_app()


def main(argv: list[str] | None = None) -> int:
    """Run ``edgefleet ARGV`` (default: the process's arguments); the exit code."""
    invocation = Invocation()
    command = typer.main.get_command(app)
    try:
        code = command.main(args=argv, prog_name="edgefleet", standalone_mode=False, obj=invocation)
        return int(code or 0)
    except typer.Abort:
        return 1
    except typer.TyperException as e:  # a usage error: Click's message, exit 2
        _show_usage_error(e)
        return int(getattr(e, "exit_code", 2))
    except Exception as e:  # a clear one-line error for the operator, not a traceback
        if invocation.verbose:
            raise
        print(f"edgefleet: error: {_one_line(e)}{_hint(e)}", file=sys.stderr)
        return 1


def _show_usage_error(e: typer.TyperException) -> None:
    if sys.stderr.isatty():
        from typer import rich_utils

        rich_utils.rich_format_error(e)  # type: ignore[arg-type]
    else:
        e.show(file=sys.stderr)  # type: ignore[attr-defined]


def _one_line(e: Exception) -> str:
    text = str(e) or type(e).__name__
    return " ".join(text.split())


def _hint(e: Exception) -> str:
    if getattr(e, "status", None) == 401:
        return f" (give --api-key or set {API_KEY_ENV})"
    if getattr(e, "status", None) == 403:
        return " (ask an admin for a key with that role)"
    return ""


if __name__ == "__main__":
    sys.exit(main())
