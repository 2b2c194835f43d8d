#!/usr/bin/env python3
"""Write docs/cli.md, the ``edgefleet`` command tree, from the Typer app itself, so the
page cannot drift from the code: each command's help, its arguments and its options.

    scripts/cli_docs.py          rewrite docs/cli.md
    scripts/cli_docs.py --check  exit 1 if docs/cli.md is not what the app says
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "cli.md"
HEAD = """# The `edgefleet` command

Generated from the app by `scripts/cli_docs.py` (a test checks it is current); the same
text as `edgefleet COMMAND --help`. Every command that calls the hub takes `--hub URL`
and `--api-key KEY` (default `$EDGEFLEET_API_KEY`), and every command that shows data
takes `--json`: the data as JSON on stdout and nothing else there (progress and notes go
to stderr). Tables and colours are for a terminal; a pipe gets plain text, as does
`NO_COLOR=1`. Errors are one line on stderr (`-v` for a traceback); exit codes: 0 done,
1 an error, 2 a usage error, 130 Ctrl-C. Shell completion: `edgefleet --install-completion`.

How the command is built: docs/adr/0026-cli-on-typer.md.
"""
SHARED = {"--hub", "--api-key", "--help", "--json"}  # said once, in HEAD


def commands(command: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[str, Any]]:
    yield " ".join(("edgefleet", *path)), command
    for name, sub in getattr(command, "commands", {}).items():
        yield from commands(sub, (*path, name))


def _param(p: Any) -> str:
    if p.param_type_name == "argument":
        return f"- `{(p.metavar or p.name).upper()}`: {p.help}"
    names = ", ".join(f"`{o}`" for o in [*p.opts, *p.secondary_opts])
    default = p.default
    shown = "" if default in (None, False, [], ()) or p.is_flag else f" (default `{default}`)"
    return f"- {names}: {p.help}{shown}"


def page() -> str:
    import typer

    from edgefleet.cli import app

    out = [HEAD, "## Commands", ""]
    tree = list(commands(typer.main.get_command(app)))
    for name, command in tree[1:]:
        depth = name.count(" ") - 1
        first = (command.help or "").split("\n")[0]
        out.append(f"{'  ' * depth}- `{name}`: {first}")
    for name, command in tree[1:]:
        params = [p for p in command.params if not set(getattr(p, "opts", [])) & SHARED]
        if hasattr(command, "commands") and not params:
            continue  # a group and nothing more
        takes_json = any("--json" in getattr(p, "opts", []) for p in command.params)
        said = " ".join((command.help or "").split()) + (" Takes `--json`." if takes_json else "")
        out += ["", f"### `{name}`", "", said]
        if params:
            out += ["", *(_param(p) for p in params)]
    return "\n".join(out) + "\n"


def main() -> int:
    text = page()
    if "--check" in sys.argv[1:]:
        if PAGE.read_text() != text:
            print(f"{PAGE} is out of date: run scripts/cli_docs.py", file=sys.stderr)
            return 1
        return 0
    PAGE.write_text(text)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
