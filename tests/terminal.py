"""The CLI as a person at a terminal runs it: a real pseudo-terminal as its stdin, stdout
and stderr, so Rich draws colours, live views and bars as it would there."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

__all__ = ["COLOUR", "on_a_terminal"]

COLOUR = re.compile(r"\x1b\[[\d;]*(?:3\d|9[0-7])[;m]")  # a foreground colour code


def on_a_terminal(args: list[str], exit_code: int = 0, **env: str) -> str:
    """``edgefleet ARGS`` with a real pseudo-terminal: what a person sees (the command
    must exit with ``exit_code``)."""
    root = Path(__file__).resolve().parent.parent
    clean = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "FORCE_COLOR")}
    script = f"import sys; from edgefleet.cli import main; sys.exit(main({args!r}))"
    primary, secondary = os.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        stdin=secondary, stdout=secondary, stderr=secondary,
        env={**clean, "TERM": "xterm-256color", "PYTHONPATH": str(root), **env},
    )  # fmt: skip
    os.close(secondary)
    chunks = []
    while True:
        try:
            data = os.read(primary, 65536)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(primary)
    assert proc.wait(60) == exit_code
    return b"".join(chunks).decode()
