"""The ``edgefleet`` command as a whole (edgefleet/cli.py): every command and option says
what it is for, every command that shows data takes ``--json``, ``--help`` reads as
plain sentences (no docstring markup), and a pipe gets no colour codes.

Walks the Typer app itself (the tree a user's ``--help`` and shell completion see); no
hub is needed (tests/test_cli_json.py runs the read commands against one).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
import typer
from terminal import COLOUR, on_a_terminal

from edgefleet.cli import app, main

# Commands that show no data, or show it in a form of their own, and why.
NO_JSON = {
    "hub serve": "runs the hub",
    "hub wait": "waits; the exit code is the answer",
    "agent run": "runs the device daemon",
    "agent enrol": "writes the device's config",
    "broker config": "writes the broker's files",
    "sim run": "prints its summary as JSON already",
    "demo": "runs a demo; --summary writes its JSON",
    "datasets download": "writes the file",
    "rollout watch": "a live view; rollout show --json is the data",
}
MARKUP = re.compile(r"``|:func:|:class:|:meth:|:data:|\bArgs:|\bReturns:|\bRaises:")


def walk(command: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[str, Any]]:
    """Each command of the tree (Typer's Click commands), by its words."""
    yield " ".join(path), command
    for name, sub in getattr(command, "commands", {}).items():
        yield from walk(sub, (*path, name))


COMMANDS = dict(walk(typer.main.get_command(app)))
LEAVES = {
    name: c
    for name, c in COMMANDS.items()
    if name and (not hasattr(c, "commands") or c.invoke_without_command)
}


def test_the_tree_has_every_area_of_the_api() -> None:
    for needed in (
        "devices", "devices show", "devices revoke", "devices reenrol", "devices tags set",
        "classes list", "classes show", "models train", "models upload", "models list",
        "models runs", "models performance", "models lineage", "datasets list",
        "rollout create", "rollout list", "rollout show", "rollout watch", "rollout pause",
        "rollout resume", "rollout abort", "rollout devices", "rollout events",
        "deployments create", "deployments list", "deployments show", "deployments events",
        "drift alerts", "drift scores", "drift events", "drift policy show", "drift policy set",
        "telemetry device", "telemetry group", "telemetry model", "captures start",
        "captures show", "captures datasets", "captures label", "loop policy show",
        "loop policy set", "loop runs", "loop run", "api-keys create", "api-keys list",
        "api-keys revoke", "signing-keys list", "signing-keys rotate", "enrol-token",
        "enrol-token list", "enrol-token revoke", "audit", "deploy", "hub serve", "agent run",
    ):  # fmt: skip
        assert needed in COMMANDS, needed


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_and_option_has_help(name: str) -> None:
    command = COMMANDS[name]
    assert (command.help or "").strip(), f"`edgefleet {name}` has no help"
    for param in command.params:
        said = getattr(param, "help", None)
        assert said and said.strip(), f"`edgefleet {name}` {param.name} has no help"


@pytest.mark.parametrize("name", sorted(LEAVES))
def test_every_command_that_shows_data_takes_json(name: str) -> None:
    options = {o for p in LEAVES[name].params for o in getattr(p, "opts", [])}
    if name in NO_JSON:
        assert "--json" not in options, f"{name}: listed as without --json, but has it"
    else:
        assert "--json" in options, f"`edgefleet {name}` shows data but takes no --json"


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_help_reads_as_sentences(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    argv = [*name.split(), "--help"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "Usage: edgefleet" in out
    assert not MARKUP.findall(out), f"`edgefleet {name} --help` shows markup: {out}"
    assert "\x1b[" not in out  # a pipe: no colour codes


def test_usage_errors_exit_2_and_name_the_problem(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["rollout", "create"]) == 2
    err = capsys.readouterr().err
    assert "Missing option '--model'" in err and "Traceback" not in err
    assert main(["models", "lineage", "vibration"]) == 2
    assert "give NAME:VERSION" in capsys.readouterr().err
    assert main(["nosuch"]) == 2
    assert "No such command 'nosuch'" in capsys.readouterr().err
    assert main([]) == 2  # no command: the help, as a usage error
    assert "Usage: edgefleet" in capsys.readouterr().out


def test_completion_is_offered(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "--install-completion" in out and "--show-completion" in out


def test_docs_cli_md_is_what_the_app_says() -> None:
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    done = subprocess.run(
        [sys.executable, str(root / "scripts" / "cli_docs.py"), "--check"],
        capture_output=True,
        text=True,
        cwd=root,
    )
    assert done.returncode == 0, done.stderr


def test_the_agent_commands_load_nothing_of_the_hub() -> None:
    """A device with only the agent extra runs ``edgefleet agent ...``."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from edgefleet.cli import main\n"
        "assert main(['agent', 'run', '--help']) == 0\n"
        "heavy = ('fastapi', 'sqlmodel', 'sklearn', 'hub', 'uvicorn', 'onnx', 'httpx')\n"
        "print('loaded:' + ','.join(sorted(m for m in sys.modules if m.split('.')[0] in heavy)))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "loaded:", done.stdout


def test_colours_on_a_terminal_and_none_with_no_color() -> None:
    assert COLOUR.search(on_a_terminal(["keys", "--help"]))
    plain = on_a_terminal(["keys", "--help"], NO_COLOR="1")
    assert "Usage: " in plain and not COLOUR.search(plain)


def documented_commands() -> Iterator[tuple[str, list[str]]]:
    """``edgefleet ...`` as README.md and docs/*.md write it in code (a backtick span, or a
    line of a shell block): (file, its words up to the first option or value; ``a|b`` and
    ``a/b`` name alternatives, the first is checked)."""
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    for path in [root / "README.md", *sorted((root / "docs").glob("*.md"))]:
        text = path.read_text()
        spans = re.findall(r"`(edgefleet [^`]+)`", text)
        for block in re.findall(r"```[a-z]*\n(.*?)```", text, flags=re.S):
            spans += re.findall(r"^(?:\$ )?(edgefleet .*)$", block, flags=re.M)
        for span in spans:
            words = []
            for word in span.split()[1:]:
                if word.startswith("-") and not words:
                    continue  # a root option: edgefleet -v hub serve
                first = re.split(r"[|/]", word)[0]
                if not re.fullmatch(r"[a-z][a-z-]*", first):
                    break
                words.append(first)
            yield path.name, words


def test_every_command_the_docs_name_exists() -> None:
    wrong = []
    named = list(documented_commands())
    assert len(named) > 100  # README.md, docs/*.md and docs/cli.md name them
    for where, words in named:
        known: list[str] = []
        for word in words:
            if " ".join([*known, word]) not in COMMANDS:
                break
            known.append(word)
        command = COMMANDS.get(" ".join(known))
        left = words[len(known) :]
        needs_action = hasattr(command, "commands") and not command.invoke_without_command
        if words and (not known or (left and needs_action)):
            wrong.append(f"{where}: edgefleet {' '.join(words)}")
    assert wrong == []
