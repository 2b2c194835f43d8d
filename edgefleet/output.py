"""What the ``edgefleet`` command shows: one data path, two renderings.

A command that shows data fetches it once (a response model or a list of them, as
edgefleet/client.py returns it, or a dict) and hands it to :func:`emit` with a renderer. With
``--json`` the data itself goes to stdout as JSON and nothing else does (progress and
notes go to stderr); without it the renderer turns the same data into Rich tables or
lines (docs/adr/0026-cli-on-typer.md).

Colours only on a terminal: on a pipe, a file or with ``NO_COLOR`` set, Rich writes
plain text, and a table in a pipe is never wrapped (:data:`PIPE_WIDTH`).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from pydantic import BaseModel
from rich import box
from rich.console import Console, RenderableType
from rich.table import Table

__all__ = ["PIPE_WIDTH", "cell", "console", "emit", "print_json", "stamp", "table"]

PIPE_WIDTH = 4096  # characters: a table in a pipe or a log is never wrapped or cut


def console(*, stderr: bool = False) -> Console:
    """A Rich console on stdout (or stderr), looked up now (a test may have replaced it):
    colours and the terminal's width on a terminal, plain and unwrapped otherwise."""
    stream = sys.stderr if stderr else sys.stdout
    tty = stream.isatty()
    return Console(
        file=stream,
        width=None if tty else PIPE_WIDTH,
        no_color=not tty or "NO_COLOR" in os.environ,
        markup=False,  # the hub's text is shown as it is, brackets included
        highlight=False,
        emoji=False,
        soft_wrap=not tty,
    )


def print_json(data: Any) -> None:
    """Machine output: the data as JSON on stdout, and nothing else. A response model
    (hub/api/views/) is written as the hub sent it."""
    sys.stdout.write(json.dumps(data, indent=2, default=_plain) + "\n")
    sys.stdout.flush()


def _plain(v: Any) -> Any:
    """What JSON cannot write itself: a response model as its JSON, anything else as text."""
    if isinstance(v, BaseModel):
        return v.model_dump(mode="json", exclude_unset=True)
    return str(v)


def emit(data: Any, as_json: bool, render: Callable[[Any], RenderableType | None]) -> None:
    """``data`` as JSON (``as_json``), or as ``render`` shows it to a person."""
    if as_json:
        print_json(data)
        return
    shown = render(data)
    if isinstance(shown, str):
        print(shown)
    elif shown is not None:
        console().print(shown)


def table(columns: Sequence[str], rows: Iterable[Sequence[Any]], *, title: str = "") -> Table:
    """A plain table: a column named ``"bytes>"`` is right-aligned (numbers); cells as
    :func:`cell` shows them."""
    t = Table(
        box=box.SIMPLE_HEAD,
        show_edge=False,
        pad_edge=False,
        title=title or None,
        title_justify="left",
        header_style="bold",
    )
    for c in columns:
        right = c.endswith(">")
        t.add_column(c.rstrip(">"), justify="right" if right else "left", overflow="fold")
    for row in rows:
        t.add_row(*(cell(v) for v in row))
    return t


def cell(v: Any) -> str:
    """A value as a table shows it: ``-`` for none, a list comma-separated, a dict as
    compact JSON."""
    if v is None:
        return "-"
    if isinstance(v, list | tuple):
        return ", ".join(map(str, v))
    if isinstance(v, Mapping):
        return json.dumps(v, separators=(",", ":"), default=_plain)
    return str(v)


def stamp(ts: float | None, fmt: str = "%Y-%m-%d %H:%M:%S") -> str:
    """An epoch time in local time, ``-`` for none."""
    return time.strftime(fmt, time.localtime(ts)) if ts else "-"
