"""A fleet file on the operator's side: read the TOML, send it to the hub (``POST
/fleet/diff`` or ``/fleet/apply``), and show the answer. A refusal names the line of the
file it is about: the hub says where in the document (a path of keys), :func:`line_of`
finds that path in the file's text.

The format is in docs/fleet-as-code.md; hub/declared/ checks and applies it.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgefleet.client import HubClient, HubClientError

Loc = tuple[str | int, ...]

# A bare or quoted TOML key, and the separators between the parts of a dotted key.
_KEY = re.compile(r'\s*(?:"((?:[^"\\]|\\.)*)"|\'([^\']*)\'|([A-Za-z0-9_-]+))\s*')


class FleetFileError(Exception):
    """The file cannot be read or the hub refused it; each problem names its line."""


@dataclass(frozen=True)
class FleetFile:
    path: Path
    text: str
    document: dict[str, Any]

    def where(self, loc: Loc) -> str:
        """``fleet.toml:12`` for the place ``loc`` (a path of keys), else the file alone."""
        line = line_of(self.text, loc)
        return f"{self.path}:{line}" if line else str(self.path)


def read(path: Path) -> FleetFile:
    """The file, parsed.

    Raises:
        FleetFileError: it is missing, or not TOML (with the parser's line and column).
    """
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise FleetFileError(f"{path}: {e.strerror or e}") from e
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise FleetFileError(f"{path}: not valid TOML: {e}") from e
    fleet = FleetFile(path, text, document)
    _read_secrets(fleet, path.parent)
    return fleet


def _read_secrets(fleet: FleetFile, base: Path) -> None:
    """Each receiver's ``secret_env`` / ``secret_file`` replaced by ``secret``, its value:
    a secret never sits in the fleet file itself.

    Raises:
        FleetFileError: a secret in the file, or one that cannot be read (with its line).
    """
    receivers = fleet.document.get("receivers")
    if not isinstance(receivers, dict):
        return
    for name, decl in receivers.items():
        if not isinstance(decl, dict):
            continue
        where = f"{fleet.where(('receivers', name))}: receivers.{name}"
        if "secret" in decl:
            raise FleetFileError(
                f"{fleet.where(('receivers', name, 'secret'))}: receivers.{name}.secret: "
                "keep the secret out of the file: name it with secret_env or secret_file"
            )
        env, file = decl.pop("secret_env", None), decl.pop("secret_file", None)
        if (env is None) == (file is None):
            raise FleetFileError(f"{where}: give one of secret_env or secret_file")
        if env is not None:
            value = os.environ.get(str(env))
            if not value:
                raise FleetFileError(f"{where}: secret_env: ${env} is not set")
        else:
            try:
                value = (base / str(file)).read_text(encoding="utf-8").strip()
            except OSError as e:
                raise FleetFileError(f"{where}: secret_file: {e.strerror or e}") from e
        decl["secret"] = value


def send(client: HubClient, fleet: FleetFile, *, apply: bool) -> Mapping[str, Any]:
    """The hub's plan of the file (``apply``: its changes, made).

    Raises:
        FleetFileError: the hub refused the file: one line per problem, each with its line.
        HubClientError: any other refusal (a key without the role, a rollout refused).
    """
    call = client.fleet_apply if apply else client.fleet_diff
    try:
        return call(fleet.document)
    except HubClientError as e:
        if e.status != 422:
            raise
        lines = problems(fleet, e.detail if e.detail is not None else e.message)
        raise FleetFileError("\n".join(lines)) from e


def problems(fleet: FleetFile, detail: Any) -> list[str]:
    """The hub's 422 detail as lines ``file:line: place: message``."""
    if not isinstance(detail, list):
        return [f"{fleet.path}: {detail}"]
    out = []
    for err in detail:
        loc = tuple(err.get("loc") or ())
        loc = loc[1:] if loc[:1] == ("body",) else loc
        place = ".".join(str(p) for p in loc) or "(the file)"
        msg = str(err.get("msg", "")).removeprefix("Value error, ")
        if err.get("type") == "extra_forbidden":
            msg = f"unknown key {loc[-1]!r}" if loc else msg
        out.append(f"{fleet.where(loc)}: {place}: {msg}")
    return out


def line_of(text: str, loc: Loc) -> int | None:
    """The 1-based line that defines the longest prefix of ``loc`` (a table header or a
    ``key =`` line), else None. List indexes point into a key's value: its line."""
    keys = [str(p) for p in loc if not isinstance(p, int)]
    best, best_len = None, 0
    table: list[str] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            header = line.strip("[]").split("#")[0].strip().rstrip("]").strip()
            table = _split_key(header) or []
            path = table
        elif "=" in line:
            path = table + (_split_key(line.split("=", 1)[0]) or [])
        else:
            continue
        n = _common(path, keys)
        if n == len(path) and n > best_len:
            best, best_len = number, n
    return best


def _split_key(text: str) -> list[str] | None:
    """A dotted TOML key's parts (``a."b.c".d`` -> a, b.c, d), None if it is not a key."""
    parts, pos = [], 0
    while True:
        m = _KEY.match(text, pos)
        if m is None:
            return None
        parts.append(next(g for g in m.groups() if g is not None))
        pos = m.end()
        if pos >= len(text):
            return parts
        if text[pos] != ".":
            return None
        pos += 1


def _common(path: list[str], keys: list[str]) -> int:
    n = 0
    for a, b in zip(path, keys, strict=False):
        if a != b:
            break
        n += 1
    return n


def render(answer: Mapping[str, Any], *, applied: bool) -> list[str]:
    """The hub's plan as lines: each change, then the notes; or that nothing changes."""
    changes = answer.get("changes", [])
    lines = [_line(c, applied) for c in changes]
    if not changes:
        lines.append("no changes: the hub matches the file")
    lines += [f"note: {n}" for n in answer.get("notes", [])]
    return lines


def _line(change: dict[str, Any], applied: bool) -> str:
    sign = {"add": "+", "set": "~", "start": ">"}.get(change.get("action", ""), "~")
    rollout = (change.get("after") or {}).get("rollout") if change["kind"] == "rollout" else None
    tail = f" (rollout {rollout})" if applied and rollout else ""
    return f"{sign} {change['detail']}{tail}"
