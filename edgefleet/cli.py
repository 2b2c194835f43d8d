"""The ``edgefleet`` command's entry: ``edgefleet agent run`` runs without the rest.

A device runs one command line for months: ``edgefleet agent run --config FILE``.
Building the whole Typer tree for it (edgefleet/cli_app.py) imports Typer, Rich, pydantic
and every command group: ~13 MB of RSS the daemon never uses (``python -m bench
memory``). So :func:`main` runs that command line itself and hands every other one
(``--help`` included) to the Typer application. ``edgefleet.cli.app`` and the other
names of edgefleet/cli_app.py are still read from here; they load it on first use.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

__all__ = ["main"]

_VERBOSE = ("-v", "--verbose")
EX_CONFIG = 78  # sysexits.h; the agent's systemd unit does not restart on it


def main(argv: list[str] | None = None) -> int:
    """Run ``edgefleet ARGV`` (default: the process's arguments); the exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    code = _agent_run(args)
    if code is not None:
        return code
    from edgefleet.cli_app import main as run_app

    return run_app(argv)


def _agent_run(args: list[str]) -> int | None:
    """``[-v] agent run --config FILE`` run here, as edgefleet/agent_cli.py's ``run``
    would; None for any other command line (the Typer application takes it)."""
    verbose = False
    while args and args[0] in _VERBOSE:
        verbose, args = True, args[1:]
    if args[:2] != ["agent", "run"]:
        return None
    rest = args[2:]
    if len(rest) == 2 and rest[0] == "--config":
        config = rest[1]
    elif len(rest) == 1 and rest[0].startswith("--config="):
        config = rest[0].removeprefix("--config=")
    else:
        return None  # help, or a usage error: Typer says it
    logging.basicConfig(  # as the application's root callback does
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        from agent.daemon import AgentConfig, run_daemon

        run_daemon(AgentConfig.load(Path(config)), source=config)
        return 0
    except Exception as e:  # one line for the operator, as the application's main does
        if verbose:
            raise
        text = " ".join((str(e) or type(e).__name__).split())
        print(f"edgefleet: error: {text}", file=sys.stderr)
        from shared.pkcs11 import Pkcs11Error

        # a token that is missing or locked stays so: systemd stops restarting on EX_CONFIG
        return EX_CONFIG if isinstance(e, Pkcs11Error) else 1


def __getattr__(name: str) -> Any:
    """``app``, ``build_app``, ``COMMAND_GROUPS``...: edgefleet/cli_app.py's, loaded now."""
    import edgefleet.cli_app

    try:
        return getattr(edgefleet.cli_app, name)
    except AttributeError:
        raise AttributeError(f"module 'edgefleet.cli' has no attribute {name!r}") from None


if __name__ == "__main__":
    sys.exit(main())
